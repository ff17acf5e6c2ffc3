"""A run's start and stop: what happens before the first step, on signals and on write errors.

``start_run`` (before any data is read): config check, output directory policy (fresh /
overwrite / resume with the recorded config), and for a resume every check that can be made
before the data is read (the recorded config's ``_target_``s, the checkpoint loads weights-only,
something is left to do). Nothing of a resumed run is written before :meth:`RunStart.commit`.
:class:`Phases`: SIGTERM and SIGINT end the process in every phase (data preparation, fit, final
validation, test, refit, result writing) with :data:`~lopt.run.checkpointing.EXIT_SIGTERM` /
:data:`~lopt.run.checkpointing.EXIT_SIGINT`, and one message saying what is saved and the command
that continues the run (or that there is nothing to resume). A full disk or a forbidden write
(ENOSPC, EDQUOT, EACCES, EPERM, EROFS) ends the run with one ``error:`` line naming the file,
what was kept and the resume command.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from lopt.run.checkpointing import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    CheckpointOnSignal,
    RunInterrupted,
    TrainClock,
    inspect_checkpoint,
    resume_checkpoint,
)
from lopt.run.resume import CsvLogKeeper, RunStart, prepare_output_dir, resume_command
from lopt.run.validate import ConfigError, check_config, check_split

__all__ = ["Phases", "RunStart", "check_split", "start_run", "train_seconds"]

log = logging.getLogger("lopt")

#: errno values of a write the run cannot get past: a full disk, a quota, a forbidden or
#: read-only place.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
#: Exit status of a run ended by such a write error.
EXIT_WRITE_ERROR = 1


class RunFailed(SystemExit):
    """The run stopped on an error already reported in one line (exit status ``code``)."""


def start_run(cfg: DictConfig, output_dir: Path, checkpoint_dir: str) -> RunStart:
    """How this start relates to ``output_dir``, all checked before any data is touched: bad
    config values, an output dir holding another run, a resume that would change the recorded
    config or names a forbidden ``_target_``, a missing, torn or non-plain checkpoint, a resume
    with nothing left to do (``start.nothing_to_do`` then says so; nothing is written)."""
    check_config(cfg)
    last = output_dir / checkpoint_dir / "last.ckpt"
    start = prepare_output_dir(cfg, output_dir, last)
    if not start.resuming:
        return start
    check_config(start.cfg)
    ckpt = resume_checkpoint(output_dir / checkpoint_dir)
    state = inspect_checkpoint(ckpt)
    start.checkpoint, start.resume_step = ckpt, state.global_step
    max_epochs = int(start.cfg.trainer.max_epochs)
    finished = (output_dir / "metrics.json").is_file()
    if state.stopped_early:
        start.nothing_to_do = (
            f"the run in {output_dir} stopped early (early stopping) after {state.epochs_trained} epochs: "
            "nothing to resume, nothing was changed"
        )
    elif finished and max_epochs <= state.epochs_trained:
        start.nothing_to_do = (
            f"the run in {output_dir} is finished ({state.epochs_trained} epochs trained, metrics.json "
            "written): nothing to resume, nothing was changed. To train longer, resume with "
            f"trainer.max_epochs above {state.epochs_trained}"
        )
    elif max_epochs < state.epochs_trained:
        raise ConfigError(
            f"trainer.max_epochs={max_epochs} is below the {state.epochs_trained} epochs {ckpt} has "
            f"trained already: resume with trainer.max_epochs ≥ {state.epochs_trained} (nothing was changed)"
        )
    log.info("resuming from %s (step %d; SLURM_RESTART_COUNT=%s)", ckpt, state.global_step,
             os.environ.get("SLURM_RESTART_COUNT") or 0)  # fmt: skip
    return start


def check_data(start: RunStart, fingerprint: str) -> None:
    """A resume's data must be the run's: ``fingerprint`` (of the split prepared now) against the
    one recorded when the run started (ConfigError naming both; nothing is written)."""
    if not start.resuming or start.output_dir is None:
        return
    recorded = (start.record or {}).get("split_fingerprint")
    if recorded is None:
        metrics = start.output_dir / "metrics.json"
        if metrics.is_file():
            try:
                recorded = (json.loads(metrics.read_text()).get("provenance") or {}).get("split_fingerprint")
            except (OSError, ValueError, AttributeError):
                recorded = None
    if recorded is None:
        log.warning("%s records no split fingerprint: the resume cannot check its data", start.output_dir)
        return
    if str(recorded).split("-", 1)[0] != fingerprint.split("-", 1)[0]:
        log.warning(
            "%s recorded its split fingerprint %s in an older format: the resume cannot check its data",
            start.output_dir,
            recorded,
        )
        return
    if recorded != fingerprint:
        raise ConfigError(
            f"the data of {start.output_dir} has changed since the run started: its prepared split is "
            f"{fingerprint}, the run recorded {recorded}. The checkpoint was trained on other data; "
            "restore the data file the run used (its content, not only its name), or start a new run "
            "(nothing was changed)"
        )


def _checkpoint_line(output_dir: Path) -> str | None:
    last = output_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


class Phases:
    """SIGTERM/SIGINT handling for a whole run. ``with phases.phase("final test"):`` names what
    the run is doing; a signal there raises :class:`RunInterrupted`, which :meth:`announce`
    describes. During ``fit`` (:meth:`fit`) Lightning's own SIGTERM handling and
    :class:`CheckpointOnSignal` save ``last.ckpt`` first."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self.name = "start-up"
        self.training_done = False
        self._previous: dict[int, Any] = {}
        self._deferred: str | None = None

    # -- handlers -----------------------------------------------------------------------------
    def _raise(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGTERM:
            raise RunInterrupted("SIGTERM", EXIT_SIGTERM, None)
        raise RunInterrupted("SIGINT", EXIT_SIGINT, None)

    def _defer(self, signum: int, frame: FrameType | None) -> None:
        self._deferred = "SIGTERM"  # Lightning's handler, composed with this one, stops the fit

    def _set(self, signum: int, handler: Any) -> None:
        try:
            previous = signal.signal(signum, handler)
        except ValueError:  # not the main thread: signals stay as they are
            return
        self._previous.setdefault(signum, previous)

    def __enter__(self) -> Phases:
        self._set(signal.SIGTERM, self._raise)
        self._set(signal.SIGINT, self._raise)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Name the phase the run is in (for the message a signal prints)."""
        self.name = name
        if self._deferred is not None:  # a SIGTERM that arrived as the fit ended
            self._deferred = None
            raise RunInterrupted("SIGTERM", EXIT_SIGTERM, None)
        yield

    @contextmanager
    def fit(self, trainer: L.Trainer, start: RunStart) -> Iterator[None]:
        """``trainer.fit``: SIGTERM is Lightning's (a ``SIGTERMException`` after the current
        batch, :class:`CheckpointOnSignal` saves ``last.ckpt``), the first Ctrl-C is
        :class:`CheckpointOnSignal`'s. A resumed run keeps its earlier csv log rows."""
        self.name = "training"
        if start.resuming:
            trainer.callbacks.append(CsvLogKeeper(trainer.loggers, start.resume_step))
        saver = next((c for c in trainer.callbacks if isinstance(c, CheckpointOnSignal)), None)
        self._set(signal.SIGTERM, self._defer)
        try:
            yield
        except SIGTERMException:
            raise RunInterrupted("SIGTERM", EXIT_SIGTERM, saver.path if saver is not None else None) from None
        except RunInterrupted:
            raise
        except SystemExit as exit_:  # Lightning's exit(1) on a second Ctrl-C (nothing saved)
            if saver is None or not saver.interrupted:
                raise
            raise RunInterrupted("SIGINT", EXIT_SIGINT, None) from exit_
        finally:
            try:
                signal.signal(signal.SIGTERM, self._raise)
            except ValueError:
                pass
        self.training_done = True

    # -- messages -----------------------------------------------------------------------------
    def announce(self, stop: RunInterrupted, start: RunStart | None) -> None:
        """One message: the signal, the phase, what is saved, how to continue."""
        saved = str(stop.checkpoint) if stop.checkpoint is not None else _checkpoint_line(self.output_dir)
        where = f"{stop.signame} during {self.name}"
        if saved is None:
            message = (
                f"{where}: nothing to resume (no checkpoint was saved yet); exit status {stop.code}. "
                "Run the same command again."
            )
        else:
            if self.training_done:
                what = f"training is complete and saved in {saved}; the results (metrics.json) were not written"
            elif stop.checkpoint is not None:
                what = f"saved {saved}"
            else:
                what = f"the run is kept as it was ({saved})"
            message = (
                f"{where}: {what}; stopping (exit status {stop.code}). "
                f"Continue with:\n  {resume_command(self.output_dir)}"
            )
        print(message, file=sys.stderr, flush=True)

    def write_error(self, raised: BaseException, err: OSError) -> RunFailed:
        """One ``error:`` line for a full disk or a forbidden write ``err`` (``raised`` or what it
        was raised from), and the exception to raise."""
        filename = _failed_file(raised) or f"a file in {self.output_dir}"
        reason = os.strerror(err.errno) if err.errno else str(err)
        saved = _checkpoint_line(self.output_dir)
        if saved is None:
            kept, then = "nothing to resume", "then run the same command again"
        else:
            kept = f"kept {saved}" + (" (training complete)" if self.training_done else "")
            then = f"then continue with: {resume_command(self.output_dir)}"
        fix = "free space there" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
        print(
            f"error: {reason} writing {filename} during {self.name}; {kept}. {fix.capitalize()}, {then}",
            file=sys.stderr,
            flush=True,
        )
        return RunFailed(EXIT_WRITE_ERROR)


def _failed_file(err: BaseException) -> str | None:
    """The file name carried by ``err`` or the OSErrors it was raised from."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.filename:
            return str(current.filename)
        current = current.__cause__ or current.__context__
    return None


def write_error(err: BaseException) -> OSError | None:
    """``err`` (or what it was raised from) when it is a write the run cannot get past."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in WRITE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def train_seconds(trainer: L.Trainer) -> float:
    """Training seconds of the run, summed over every segment (resumes included)."""
    clock = next((c for c in trainer.callbacks if isinstance(c, TrainClock)), None)
    return clock.seconds() if clock is not None else float("nan")
