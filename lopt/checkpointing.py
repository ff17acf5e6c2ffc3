"""Preemption safety: checkpoint on SIGTERM (then stop) and on SIGUSR1 (then continue).

Lightning turns SIGTERM into a ``SIGTERMException`` raised after the current training batch;
this callback writes ``last.ckpt`` at that point, so a killed or preempted run loses no work.
SIGUSR1 asks for a checkpoint at the end of the current batch without stopping.
Both checkpoints are taken between batches: the datamodule's loaders are stateful, so a
resumed run continues with exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("lopt")


class CheckpointOnSignal(L.Callback):
    """Save ``path`` when the run is terminated (SIGTERM) or asked to (SIGUSR1)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._requested = False
        self._previous: Any = None

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self._requested = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if hasattr(signal, "SIGUSR1"):
            self._previous = signal.signal(signal.SIGUSR1, self._request)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if hasattr(signal, "SIGUSR1") and self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._requested:
            self._requested = False
            self._save(trainer, "SIGUSR1")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self._save(trainer, "SIGTERM")

    def _save(self, trainer: L.Trainer, reason: str) -> None:
        trainer.save_checkpoint(self.path)
        log.info("%s: saved %s at global step %d; continue with resume=true", reason, self.path, trainer.global_step)
