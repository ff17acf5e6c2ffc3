"""MF-BPR as LightningModules with manual optimization: MF-λFix and the shared loop of λOpt.

One iteration (docs/method.md, "Training"):
  1. forward/backward of the non-regularized BPR loss of the training batch → g_t in ``.grad``;
  2. the slot before the Θ-step (``before_theta_step``): nothing for λFix, the Λ-step of λOpt,
     the adversarial gradient of AMF;
  3. the Θ-step: add ∇_Θ Ω(B; Θ, Λ), clip the gradient norm, step the Θ optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lopt.lookahead.steps import theta_step, train_loss
from lopt.models.granularity import LambdaGranularity
from lopt.models.mf import MatrixFactorization
from lopt.models.regularizer import SCOPES, penalty
from lopt.models.rows import BatchRows, batch_rows
from lopt.modules.manual import ManualThetaModule
from lopt.optim.row_sparse import is_row_sparse
from lopt.types import Triples


class MFBPRModule(ManualThetaModule):
    """MF-BPR trained with a penalty Ω(Θ, Λ) whose Λ comes from ``granularity``.

    With the non-learnable ``fix`` granularity this is the paper's MF-λFix; subclasses fill the
    Λ-step slot. ``optimizer`` builds the Θ optimizer from the parameters (a Hydra partial); a
    row-sparse one (:mod:`lopt.optim.row_sparse`) makes the factor gradients row-sparse.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        init_std: float,
        optimizer: Callable[..., torch.optim.Optimizer],
        granularity: LambdaGranularity,
        penalty_scope: str = "batch",
        penalty_scale: float = 1.0,
        grad_clip_norm: float | None = None,
        name: str = "fix",
    ) -> None:
        super().__init__(optimizer, grad_clip_norm)
        if penalty_scope not in SCOPES:
            raise ValueError(f"model.penalty_scope must be one of {SCOPES}, got {penalty_scope!r}")
        sparse = is_row_sparse(optimizer)
        if sparse and penalty_scope != "batch":
            raise ValueError(
                "a row-sparse Θ optimizer (optimizer=sparse_adam|sparse_adagrad|sparse_sgd) needs "
                f"model.penalty_scope=batch (got {penalty_scope!r}: it penalizes every row every step)"
            )
        self.model = MatrixFactorization(n_users, n_items, dim, init_std, sparse_grad=sparse)
        self.granularity = granularity
        self.penalty_scope = penalty_scope
        self.penalty_scale = penalty_scale
        self.save_hyperparameters(
            {
                "n_users": n_users,
                "n_items": n_items,
                "dim": dim,
                "init_std": init_std,
                "name": name,
                "penalty_scope": penalty_scope,
                "penalty_scale": penalty_scale,
                "grad_clip_norm": grad_clip_norm,
                "granularity": granularity.name,
            }
        )

    # ----------------------------------------------------------------------------- model
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return self.model.score_users(users)

    def _lightning_theta_optimizer(self) -> Any:
        optimizers = self.optimizers()
        return optimizers[0] if isinstance(optimizers, list) else optimizers

    def theta_optimizer(self) -> torch.optim.Optimizer:
        """The raw torch Θ optimizer (its state is what the look-ahead reads)."""
        return self._lightning_theta_optimizer().optimizer

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Triples], batch_idx: int) -> torch.Tensor:
        # Stepping through Lightning's wrapper counts Θ-steps as global steps (Λ-steps are not).
        theta_opt = self._lightning_theta_optimizer()
        # set_to_none: the backward's gradient becomes .grad as it is (no zero-fill of the tables
        # and no accumulation pass over them)
        theta_opt.zero_grad(set_to_none=True)
        # the batch's rows, computed once and shared by the forward, the Λ-step and the Θ-step
        rows = batch_rows(batch["train"], self.model.n_users, self.model.n_items)
        loss = train_loss(self.model, batch["train"], rows)
        self._check_finite(loss)
        self.manual_backward(loss)

        slot_logs = self.before_theta_step(batch, rows)

        grad_norm = theta_step(
            self.model,
            theta_opt,
            self.granularity,
            batch["train"],
            scope=self.penalty_scope,
            scale=self.penalty_scale,
            clip_norm=self.grad_clip_norm,
            rows=rows,
        )

        if self._is_logging_step():
            with torch.no_grad():
                reg = penalty(self.model, self.granularity, batch["train"], self.penalty_scope, self.penalty_scale)
            logs = {
                "train/bpr_loss": loss.detach(),
                "train/penalty": reg,
                "train/grad_norm": grad_norm,
                "train/lr": torch.tensor(theta_opt.param_groups[0]["lr"]),
                **slot_logs,
            }
            self.log_dict(logs, on_step=True, on_epoch=False)
        return loss.detach()

    def before_theta_step(self, batch: dict[str, Triples], rows: BatchRows) -> dict[str, torch.Tensor]:
        """Runs between the training backward (g_t in ``.grad``) and the Θ-step (``rows``: the
        training batch's :func:`lopt.models.rows.batch_rows`); returns scalars to log. λFix:
        nothing (the Λ-step slot is absent)."""
        return {}


class FixModule(MFBPRModule):
    """MF-λFix: one global λ (``lambda_value``), fixed for the whole run; no Λ-step. ``kwargs``:
    :class:`MFBPRModule`'s keyword arguments (penalty_scope, penalty_scale, grad_clip_norm, name)."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        init_std: float,
        optimizer: Callable[..., torch.optim.Optimizer],
        lambda_value: float,
        **kwargs: Any,
    ) -> None:
        if not lambda_value >= 0:
            raise ValueError(f"model.lambda_value must be ≥ 0, got {lambda_value}")
        granularity = LambdaGranularity("fix", n_users, n_items, dim, float(lambda_value))
        super().__init__(n_users, n_items, dim, init_std, optimizer, granularity, **kwargs)
        self.lambda_value = float(lambda_value)
        self.hparams.update(lambda_value=self.lambda_value)
