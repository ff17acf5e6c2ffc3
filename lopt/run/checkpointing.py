"""Checkpoints that survive faults: atomic writes, saves on signals, honest exit codes, and a
resume that skips a torn file.

* :class:`AtomicCheckpointIO` — every checkpoint Lightning writes (``best.ckpt``, ``last.ckpt``,
  the signal checkpoints) goes to a temp file in the checkpoint's own directory, is fsynced and
  renamed over the target (:func:`lopt.io.atomic_write`): the previous file stays complete until
  the new one is, even on a full disk or across filesystems. Every load is ``weights_only=True``.
* :class:`CheckpointOnSignal` — SIGTERM (Lightning turns it into a ``SIGTERMException`` after
  the current training batch) saves ``last.ckpt`` and the run exits with :data:`EXIT_SIGTERM`;
  the first SIGINT (Ctrl-C) is deferred to the end of the current batch, saves ``last.ckpt`` and
  exits with :data:`EXIT_SIGINT` (a second Ctrl-C stops at once); SIGUSR1 saves and continues.
  Checkpoints are taken between batches: the datamodule's loaders are stateful, so a resumed run
  continues with exactly the batches the interrupted one would have seen.
* :class:`TrainClock` — training seconds summed over every segment of a resumed run.
* :func:`resume_checkpoint` — ``last.ckpt`` if it is intact, else the newest intact checkpoint
  of the run (saying so), else an error naming the torn file and how to start over.
"""

from __future__ import annotations

import logging
import pickle
import signal
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lopt.io import atomic_write

log = logging.getLogger("lopt")

#: Exit status of a run stopped by SIGTERM (after saving ``last.ckpt``): 128 + SIGTERM, what a
#: shell reports for a process ended by SIGTERM. Non-zero, so ``&&``, CI and schedulers do not
#: take a preempted run for a finished one. SLURM requeues a preempted job (``--requeue``) and
#: submitit requeues a timed-out one (on USR2, before any SIGTERM) whatever the exit status;
#: the requeued job resumes from ``last.ckpt``.
EXIT_SIGTERM = 128 + int(signal.SIGTERM)
#: Exit status of a run stopped by Ctrl-C (SIGINT) after saving ``last.ckpt``: 128 + SIGINT.
EXIT_SIGINT = 128 + int(signal.SIGINT)


class RunInterrupted(SystemExit):
    """The run was stopped by a signal after its state was saved; ``code`` is the exit status."""

    def __init__(self, signame: str, code: int, checkpoint: Path | None) -> None:
        super().__init__(code)
        self.signame, self.checkpoint = signame, checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file in the checkpoint's directory + fsync + rename; loads are
    always ``weights_only=True`` (tensors and plain containers only, never arbitrary pickles)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(
        self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return torch.load(path, map_location=map_location, weights_only=True)


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not an intact checkpoint (None when it is): torch checkpoints are zip
    archives, so a truncated or torn file fails the archive's CRC check."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None if bad is None else f"member {bad} fails its CRC check"


def resume_checkpoint(checkpoint_dir: Path, last_name: str = "last.ckpt") -> Path:
    """The checkpoint to resume from: ``last.ckpt`` when intact; else the newest intact
    ``*.ckpt`` of ``checkpoint_dir`` (logged as a fallback, naming the torn file). Nothing is
    written (the resume removes stale temp files once it is sure to go on).
    FileNotFoundError/RuntimeError name the file and say how to start over when nothing intact
    is left."""
    checkpoint_dir = Path(checkpoint_dir)
    last = checkpoint_dir / last_name
    start_over = "start over with overwrite=true (without resume=true), or run into another hydra.run.dir"
    if not last.is_file():
        raise FileNotFoundError(
            f"resume=true but there is no checkpoint at {last}. Point hydra.run.dir at the "
            f"output directory of the run to continue, or {start_over}."
        )
    problem = checkpoint_problem(last)
    if problem is None:
        return last
    others = sorted(
        (p for p in checkpoint_dir.glob("*.ckpt") if p.name != last_name),
        key=lambda p: p.stat().st_mtime_ns,
        reverse=True,
    )
    for candidate in others:
        if checkpoint_problem(candidate) is None:
            log.warning(
                "%s is corrupt (%s): resuming from %s, the newest intact checkpoint "
                "(training repeats the steps after it)",
                last,
                problem,
                candidate,
            )
            return candidate
    raise RuntimeError(
        f"{last} is corrupt ({problem}) and {checkpoint_dir} holds no other intact checkpoint "
        f"to fall back to: {start_over}."
    )


@dataclass(frozen=True)
class CheckpointState:
    """What a resume needs to know of a checkpoint before it commits to it."""

    path: Path
    global_step: int
    #: Epochs whose training is done (the last one may still await its end-of-epoch hooks).
    epochs_trained: int
    #: Early stopping fired in the run that saved it.
    stopped_early: bool


def load_plain(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with every failure turned into a RuntimeError that
    names the file: a checkpoint holding anything but tensors and plain containers is refused
    (a run directory is data; unpickling arbitrary objects from it would run code)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:
        raise RuntimeError(
            f"{path} holds objects other than tensors and plain containers, which lopt never loads "
            f"from a run directory ({str(err).splitlines()[0]}). If you did not put them there, the "
            "run directory was tampered with: start a new run"
        ) from None
    except Exception as err:  # torn zip, bad header, ...
        raise RuntimeError(f"{path} cannot be read as a checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(checkpoint, dict):
        raise RuntimeError(f"{path} is not a Lightning checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


def inspect_checkpoint(path: Path) -> CheckpointState:
    """Load ``path`` (weights only, :func:`load_plain`) and read its step, epochs and whether
    early stopping ended the run; RuntimeError naming the file when it cannot."""
    checkpoint = load_plain(path)
    try:
        progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]
        epochs = int(progress["processed"])
        step = int(checkpoint["global_step"])
    except (KeyError, TypeError, ValueError) as err:
        raise RuntimeError(f"{path} is not a Lightning training checkpoint (no {err} in it)") from None
    stopped = any(
        str(key).startswith("EarlyStopping") and isinstance(state, dict) and int(state.get("stopped_epoch", 0)) > 0
        for key, state in (checkpoint.get("callbacks") or {}).items()
    )
    return CheckpointState(Path(path), step, epochs, stopped)


class TrainClock(L.Callback):
    """Training wall-clock seconds over every segment of a run: the seconds of the segments
    before a resume travel in the checkpoint (this callback's state)."""

    def __init__(self) -> None:
        self.before = 0.0
        self._started: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def seconds(self) -> float:
        """Seconds trained so far, this segment included."""
        running = 0.0 if self._started is None else time.perf_counter() - self._started
        return self.before + running

    def state_dict(self) -> dict[str, float]:
        return {"train_seconds": self.seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = float(state_dict.get("train_seconds", 0.0))


class CheckpointOnSignal(L.Callback):
    """Save ``path`` when the run is terminated (SIGTERM), interrupted (SIGINT) or asked to
    (SIGUSR1); SIGTERM and SIGINT then stop the run with :class:`RunInterrupted`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._requested = False
        self._interrupted = False
        self._saved_for: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C was pressed during this fit."""
        return self._interrupted

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self._requested = True

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        self._interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        log.warning(
            "Ctrl-C: saving %s after the current batch, then stopping (Ctrl-C again to stop at once, without saving)",
            self.path,
        )

    def _install(self, signum: int, handler: Callable[[int, FrameType | None], None]) -> None:
        try:
            self._previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: signals stay as they are
            pass

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if hasattr(signal, "SIGUSR1"):
            self._install(signal.SIGUSR1, self._request)
        self._install(signal.SIGINT, self._interrupt)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._interrupted:
            self._save(trainer, "SIGINT")
            raise RunInterrupted("SIGINT", EXIT_SIGINT, self.path)
        if self._requested:
            self._requested = False
            self._save(trainer, "SIGUSR1")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException) and self._saved_for is None:
            self._save(trainer, "SIGTERM")

    def _save(self, trainer: L.Trainer, reason: str) -> None:
        trainer.save_checkpoint(self.path)
        if reason != "SIGUSR1":
            self._saved_for = reason
        log.info("%s: saved %s at global step %d", reason, self.path, trainer.global_step)
