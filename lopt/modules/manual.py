"""The shared base of the manually optimized ranking modules (MF-BPR and its variants, NeuMF)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from lopt.modules.ranking import RankingModule


class ManualThetaModule(RankingModule):
    """A :class:`RankingModule` with manual optimization and one Θ optimizer, built by ``optimizer``
    (a Hydra partial) from the parameters of ``self.model`` (set by the subclass); logs each
    training epoch's wall time as ``train/epoch_seconds``."""

    def __init__(self, optimizer: Callable[..., torch.optim.Optimizer], grad_clip_norm: float | None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.make_theta_optimizer = optimizer
        self.grad_clip_norm = grad_clip_norm
        self._epoch_started = 0.0

    def configure_optimizers(self) -> Any:
        return self.make_theta_optimizer(self.model.parameters())

    def on_train_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        self.log("train/epoch_seconds", time.perf_counter() - self._epoch_started, on_step=False, on_epoch=True)


__all__ = ["ManualThetaModule"]
