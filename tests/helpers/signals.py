"""A callback that sends this process a real signal mid-training: the tests' preemption."""

from __future__ import annotations

import os

import lightning.pytorch as L


class SignalAtStep(L.Callback):
    """Sends a real signal to this process after training batch ``step`` (the test's 'preemption')."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
