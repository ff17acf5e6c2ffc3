"""MF-λOpt: MF-BPR whose fine-grained Λ is learned by a validation look-ahead (docs/method.md).

Per iteration: one training forward/backward (g_t), then every ``lambda_update_interval``
iterations a Λ-step (:func:`lopt.lookahead.steps.lambda_step`) — the validation loss of the exact
row-wise look-ahead Θ̄_{t+1}(Λ) and its Λ-gradient (:mod:`lopt.lookahead.dispatch`: hand-written
kernels for an Adam Θ optimizer, autograd through the optimizer's replay otherwise), clipped,
stepped by the Λ optimizer, projected to Λ ≥ 0 — and finally the Θ-step with the updated Λ. The
training gradient g_t is reused by both steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lopt.lookahead.steps import lambda_step
from lopt.models.granularity import LambdaGranularity
from lopt.models.rows import BatchRows
from lopt.modules.fix import MFBPRModule
from lopt.types import Triples


class LambdaOptModule(MFBPRModule):
    """MF-λOpt with two optimizers: Θ (``optimizer``) and Λ (``lambda_optimizer``). ``kwargs``:
    :class:`MFBPRModule`'s keyword arguments (penalty_scope, penalty_scale, grad_clip_norm)."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        init_std: float,
        optimizer: Callable[..., torch.optim.Optimizer],
        granularity: LambdaGranularity,
        lambda_optimizer: Callable[..., torch.optim.Optimizer],
        lambda_grad_clip_norm: float | None = None,
        lambda_update_interval: int = 1,
        lookahead_dropout: float = 0.0,
        compile_lookahead: bool = False,
        name: str = "lambda_opt",
        **kwargs: Any,
    ) -> None:
        if not granularity.learnable:
            raise ValueError(
                f"granularity {granularity.name!r} has no learnable Λ; use model=fix for MF-λFix "
                "or pick a learnable granularity (granularity=d|du|di|dui|global|u|i|ui)"
            )
        if lambda_update_interval < 1:
            raise ValueError(f"model.lambda_update_interval must be ≥ 1, got {lambda_update_interval}")
        if not 0.0 <= lookahead_dropout < 1.0:
            raise ValueError(f"model.lookahead_dropout must be in [0, 1), got {lookahead_dropout}")
        super().__init__(n_users, n_items, dim, init_std, optimizer, granularity, name=name, **kwargs)
        self.make_lambda_optimizer = lambda_optimizer
        self.lambda_grad_clip_norm = lambda_grad_clip_norm
        self.lambda_update_interval = lambda_update_interval
        self.lookahead_dropout = lookahead_dropout
        self.compile_lookahead = bool(compile_lookahead)
        self.hparams.update(
            lambda_grad_clip_norm=lambda_grad_clip_norm,
            lambda_update_interval=lambda_update_interval,
            lookahead_dropout=lookahead_dropout,
            compile_lookahead=self.compile_lookahead,
        )

    def configure_optimizers(self) -> Any:
        theta = super().configure_optimizers()
        lam = self.make_lambda_optimizer([p for p in self.granularity.parameters() if p.requires_grad])
        return [theta, lam]

    def lambda_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizers()[1].optimizer

    def before_theta_step(self, batch: dict[str, Triples], rows: BatchRows) -> dict[str, torch.Tensor]:
        """The Λ-step (every ``lambda_update_interval`` iterations), before the Θ-step."""
        if self.global_step % self.lambda_update_interval != 0:
            return {}
        valid_loss, lambda_grad_norm = lambda_step(
            self.model,
            self.theta_optimizer(),
            self.lambda_optimizer(),
            self.granularity,
            batch["train"],
            batch["valid"],
            scope=self.penalty_scope,
            scale=self.penalty_scale,
            clip_norm=self.grad_clip_norm,
            lambda_clip_norm=self.lambda_grad_clip_norm,
            dropout=self.lookahead_dropout if self.training else 0.0,
            compiled=self.compile_lookahead,
            rows=rows,
        )
        return {"train/lookahead_valid_loss": valid_loss, "train/lambda_grad_norm": lambda_grad_norm}
