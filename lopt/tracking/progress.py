"""Progress of a run: a rich bar in a terminal, log lines everywhere, the log file always.

A batch job (SLURM, nohup, ``docker run`` without ``-t``) has no terminal, so a progress bar
prints nothing useful there. :class:`LogProgress` writes one line per training epoch instead —
epoch, global step, mean train loss, the Λ-step's validation loss (λOpt, its last logged
value), the validation metrics when the epoch was evaluated, elapsed time and an ETA — and,
within epochs and evaluations longer than ``every_n_seconds``, a line each time that passes.
The train loss is summed on the device; the host reads it once per line, so no step syncs.

In a terminal, :class:`RichBar` shows the bar and writes the same lines to the run's log file
only (``extra=FILE_ONLY``, see :mod:`lopt.tracking.log_routing`), so ``run.log`` reads the same
however the run was started. Epochs are counted from 1 in everything shown (bar, lines, the
run's summary), as ``trainer.max_epochs`` counts them.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.trainer.states import TrainerFn

from lopt.tracking.log_routing import FILE_ONLY

log = logging.getLogger("lopt")

PROGRESS_STYLES = ("auto", "rich", "log", "none")
#: The Λ-step's validation loss, as logged by the λOpt module.
LOOKAHEAD_KEY = "train/lookahead_valid_loss"


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (False for pipes, files, closed streams)."""
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def format_seconds(seconds: float) -> str:
    """``3725.2`` → ``"1:02:05"``; ``59`` → ``"0:59"``."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def make_progress(style: str = "auto", every_n_seconds: float = 60.0) -> L.Callback:
    """The progress callback of ``callbacks.progress``: ``rich`` (a terminal bar; the log lines
    go to the log file only), ``log`` (log lines on the console and in the log file), ``auto``
    (rich iff stderr is a terminal) or ``none`` (nothing on the console; the log file still gets
    the lines)."""
    if style not in PROGRESS_STYLES:
        raise ValueError(f"callbacks.progress.style must be one of {PROGRESS_STYLES}, got {style!r}")
    if style == "auto":
        style = "rich" if stderr_is_terminal() else "log"
    if style == "rich":
        return RichBar(every_n_seconds=every_n_seconds)
    return LogProgress(every_n_seconds=every_n_seconds, console=style == "log")


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.detach().cpu()) if isinstance(value, torch.Tensor) else float(value)


class LogProgress(L.Callback):
    """Log lines for runs without a terminal (see module docstring); ``console=False``: for the
    log file only."""

    def __init__(self, every_n_seconds: float = 60.0, console: bool = True) -> None:
        self.every_n_seconds = float(every_n_seconds or 0.0)
        self.console = bool(console)
        self._fit_started = 0.0
        self._first_epoch = 0
        self._epoch_started = 0.0
        self._last_line = 0.0
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._eval_started = 0.0
        self._last_eval_line = 0.0
        self._evaluated: dict[str, float] | None = None
        self._lookahead: Any = None

    def _info(self, message: str, *args: Any) -> None:
        log.info(message, *args, extra=None if self.console else FILE_ONLY)

    # ----------------------------------------------------------------------------- training
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.monotonic()
        self._first_epoch = trainer.current_epoch  # > 0 when resumed
        self._info("training: %s epochs, %s steps per epoch", self._epochs(trainer), self._batches(trainer) or "?")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_started = self._last_line = time.monotonic()
        self._loss_sum, self._loss_count = None, 0
        self._evaluated = None  # the Λ-step loss stays the last logged one, across epochs

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:  # the module just logged
            value = trainer.callback_metrics.get(LOOKAHEAD_KEY)
            if value is not None:
                self._lookahead = value  # a device tensor: read on the next line only
        now = time.monotonic()
        if self.every_n_seconds > 0 and now - self._last_line >= self.every_n_seconds:
            self._last_line = now
            done, total = batch_idx + 1, self._batches(trainer)
            fraction = done / total if total else 0.0
            eta = (now - self._epoch_started) * (1 / fraction - 1) if fraction > 0 else None
            self._info(
                "epoch %d/%s  batch %d/%s  step %d  train_loss %s  epoch ETA %s",
                trainer.current_epoch + 1,
                self._epochs(trainer),
                done,
                total or "?",
                trainer.global_step,
                self._mean_loss(),
                format_seconds(eta) if eta is not None else "?",
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.monotonic()
        epoch = trainer.current_epoch
        parts = [
            f"epoch {epoch + 1}/{self._epochs(trainer)}",
            f"step {trainer.global_step}",
            f"train_loss {self._mean_loss()}",
        ]
        lookahead = _scalar(self._lookahead)
        if lookahead is not None:
            parts.append(f"lookahead_valid_loss {lookahead:.4f}")
        if self._evaluated is not None:
            parts.append("valid " + " ".join(f"{k}={v:.4f}" for k, v in self._evaluated.items()))
        elapsed = now - self._fit_started
        parts.append(f"elapsed {format_seconds(elapsed)}")
        done = epoch + 1 - self._first_epoch
        remaining = (trainer.max_epochs or 0) - (epoch + 1)
        if done > 0 and remaining >= 0 and trainer.max_epochs and trainer.max_epochs > 0:
            parts.append(f"ETA {format_seconds(elapsed / done * remaining)}")
        self._info("  ".join(parts))
        self._last_line = now

    def _mean_loss(self) -> str:
        if self._loss_sum is None or self._loss_count == 0:
            return "n/a"
        return f"{float(self._loss_sum.cpu()) / self._loss_count:.4f}"

    @staticmethod
    def _epochs(trainer: L.Trainer) -> int | str:
        return trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"

    @staticmethod
    def _batches(trainer: L.Trainer) -> int | None:
        total = trainer.num_training_batches
        return int(total) if isinstance(total, int | float) and total != float("inf") else None

    # ----------------------------------------------------------------------------- evaluation
    def _eval_start(self) -> None:
        self._eval_started = self._last_eval_line = time.monotonic()

    def _eval_batch(self, trainer: L.Trainer, which: str, batch_idx: int, totals: Any) -> None:
        if self.every_n_seconds <= 0:
            return
        now = time.monotonic()
        if now - self._last_eval_line < self.every_n_seconds:
            return
        self._last_eval_line = now
        total = totals[0] if isinstance(totals, list | tuple) and totals else totals
        total = int(total) if isinstance(total, int | float) and total != float("inf") else None
        done = batch_idx + 1
        eta = (now - self._eval_started) * (total / done - 1) if total else None
        self._info(
            "%s evaluation: batch %d/%s  elapsed %s  ETA %s",
            which,
            done,
            total or "?",
            format_seconds(now - self._eval_started),
            format_seconds(eta) if eta is not None else "?",
        )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(trainer, "valid", batch_idx, trainer.num_val_batches)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {
            k.split("/", 1)[1]: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("valid/")
        }
        self._evaluated = {k: v for k, v in metrics.items() if v is not None}
        if trainer.state.fn != TrainerFn.FITTING:  # an evaluation outside fit (the final one)
            self._info(
                "valid (after epoch %d)  %s  took %s",
                trainer.current_epoch,
                " ".join(f"{k}={v:.4f}" for k, v in self._evaluated.items()),
                format_seconds(time.monotonic() - self._eval_started),
            )

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start()
        self._info("test evaluation of the best checkpoint")

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(trainer, "test", batch_idx, trainer.num_test_batches)


class RichBar(RichProgressBar):
    """Lightning's rich progress bar, its epochs counted from 1 (``Epoch 1/15`` … ``Epoch 15/15``,
    as the log lines and ``trainer.max_epochs`` count them; Lightning shows ``Epoch 0/14``), and
    a :class:`LogProgress` whose lines go to the log file only."""

    def __init__(self, every_n_seconds: float = 60.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lines = LogProgress(every_n_seconds=every_n_seconds, console=False)

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            description += f"/{self.trainer.max_epochs}"
        if len(self.validation_description) > len(description):  # as Lightning: no flicker
            description = f"{description:{len(self.validation_description)}}"
        return description


def _bar_then_lines(name: str) -> Any:
    """A :class:`RichBar` hook that runs the bar's hook, then the log lines' one."""

    def hook(self: RichBar, *args: Any, **kwargs: Any) -> None:
        getattr(RichProgressBar, name)(self, *args, **kwargs)
        getattr(self.lines, name)(*args, **kwargs)

    hook.__name__ = name
    return hook


# Every hook LogProgress implements runs on the bar, then on its lines.
for _name in [n for n in vars(LogProgress) if n.startswith("on_")]:
    setattr(RichBar, _name, _bar_then_lines(_name))
del _name
