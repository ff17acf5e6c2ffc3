"""Full-ranking evaluation shared by every recommender LightningModule.

Validation and test loops iterate blocks of users (see ``lopt.data.datamodule.UserBlocks``);
each block is scored against all items and turned into per-user metrics by the
``RankingEvaluator`` the composition root hands over with :meth:`RankingModule.use_evaluators`
(``lopt.pipeline.prepare_data``; docs/protocol.md, "lambdaopt" metrics). The aggregated means are logged as
``valid/<metric>`` and ``test/<metric>``; per-user values are kept for the results files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as L
import torch

from lopt.eval.evaluator import RankingEvaluator
from lopt.eval.metrics import mean_ignoring_nan


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


class RankingModule(L.LightningModule):
    """Base class: subclasses implement ``score_users(users) -> (B, n_items)`` and training."""

    def __init__(self) -> None:
        super().__init__()
        self._eval_blocks: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        #: Mean metrics of the latest validation pass (stored in checkpoints, so the best
        #: checkpoint carries the validation metrics it was selected by).
        self.valid_metrics: dict[str, float] = {}
        self.valid_epoch: int | None = None
        #: Per-user test metrics of the latest test pass: {"user": (n,), metric: (n,)} on CPU.
        self.test_per_user: dict[str, torch.Tensor] = {}
        self.test_metrics: dict[str, float] = {}
        #: The "valid" and "test" evaluators (see :meth:`use_evaluators`).
        self.evaluators: Mapping[str, RankingEvaluator] = {}

    def use_evaluators(self, evaluators: Mapping[str, RankingEvaluator]) -> None:
        """The evaluators of the validation and test passes: ``{"valid": …, "test": …}``."""
        self.evaluators = evaluators

    def score_users(self, users: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ----------------------------------------------------------------------------- training helpers
    def _is_logging_step(self) -> bool:
        every = max(1, self.trainer.log_every_n_steps) if self._trainer is not None else 1
        return self.global_step % every == 0

    def _check_finite(self, loss: torch.Tensor) -> None:
        """Stop with the step and the last validation metrics when ``loss`` is NaN/inf."""
        # One host sync per step on accelerators is avoided: there the check runs on logging steps.
        if loss.device.type != "cpu" and not self._is_logging_step():
            return
        if not torch.isfinite(loss):
            last = ", ".join(f"{k}={v:.4f}" for k, v in self.valid_metrics.items()) or "none yet"
            raise NonFiniteLossError(
                f"non-finite training loss ({float(loss.detach())}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}); last validation metrics: {last}. The last good "
                "checkpoint is kept in the run's checkpoints/ folder. Lower optimizer.lr, check "
                "model.init_std, or set model.grad_clip_norm."
            )

    # ----------------------------------------------------------------------------- evaluation
    def _evaluator(self, which: str) -> RankingEvaluator:
        if which not in self.evaluators:
            raise RuntimeError(
                f"no {which!r} evaluator: build them with lopt.pipeline.build_evaluators and hand them to "
                "module.use_evaluators before validating or testing (lopt.pipeline.prepare_data does it)"
            )
        return self.evaluators[which]

    def _evaluate_block(self, users: torch.Tensor, which: str) -> None:
        evaluator = self._evaluator(which)
        with torch.no_grad():
            scores = self.score_users(users)
            metrics = evaluator.block_metrics(users, scores)
        self._eval_blocks.append((users.cpu(), {k: v.detach().cpu() for k, v in metrics.items()}))

    def _collect(self) -> dict[str, torch.Tensor]:
        users = torch.cat([u for u, _ in self._eval_blocks])
        keys = self._eval_blocks[0][1].keys() if self._eval_blocks else ()
        per_user = {k: torch.cat([m[k] for _, m in self._eval_blocks]) for k in keys}
        self._eval_blocks = []
        return {"user": users, **per_user}

    @staticmethod
    def _means(per_user: dict[str, torch.Tensor]) -> dict[str, float]:
        return {key: mean_ignoring_nan(values) for key, values in per_user.items() if key != "user"}

    def on_validation_epoch_start(self) -> None:
        self._eval_blocks = []

    def validation_step(self, users: torch.Tensor, batch_idx: int) -> None:
        self._evaluate_block(users, "valid")

    def on_validation_epoch_end(self) -> None:
        means = self._means(self._collect())
        self.valid_metrics, self.valid_epoch = means, self.current_epoch
        self.log_dict({f"valid/{k}": v for k, v in means.items()}, prog_bar=False)
        if "auc" in means:
            self.log("valid_auc", means["auc"], prog_bar=True, logger=False)

    def on_test_epoch_start(self) -> None:
        # Every test pass also gathers the beyond-accuracy statistics (the test evaluator's
        # beyond_summary reads them); validation passes never do.
        self._evaluator("test").track_beyond()
        self._eval_blocks = []

    def test_step(self, users: torch.Tensor, batch_idx: int) -> None:
        self._evaluate_block(users, "test")

    def on_test_epoch_end(self) -> None:
        self.test_per_user = self._collect()
        self.test_metrics = self._means(self.test_per_user)
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics.items()})

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lopt_valid_metrics"] = dict(self.valid_metrics)
        checkpoint["lopt_valid_epoch"] = self.valid_epoch

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.valid_metrics = dict(checkpoint.get("lopt_valid_metrics", {}))
        self.valid_epoch = checkpoint.get("lopt_valid_epoch")
