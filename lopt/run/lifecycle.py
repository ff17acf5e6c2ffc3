"""A run's start and stop around training: what happens before the first step and on signals.

``start_run`` (before any data is read): config check, output directory policy (fresh /
overwrite / resume with the recorded config), the checkpoint to resume from.
``stop_before_training`` and ``stop_on_signal``: SIGTERM and SIGINT end the process with
:data:`~lopt.run.checkpointing.EXIT_SIGTERM` / :data:`~lopt.run.checkpointing.EXIT_SIGINT`, after
saving ``last.ckpt`` when training had started, and print the command that continues the run.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import lightning.pytorch as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from lopt.run.checkpointing import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    CheckpointOnSignal,
    RunInterrupted,
    TrainClock,
    resume_checkpoint,
)
from lopt.run.resume import CsvLogKeeper, prepare_output_dir, resume_command
from lopt.run.validate import check_config, check_split

__all__ = ["check_split", "start_run", "stop_before_training", "stop_on_signal", "train_seconds"]

log = logging.getLogger("lopt")


def start_run(cfg: DictConfig, output_dir: Path, checkpoint_dir: str) -> tuple[DictConfig, Path, str | None]:
    """(config to run, output dir, checkpoint to resume from or None), all checked before any
    data is touched: bad config values, an output dir holding another run, a resume that would
    change the recorded config, a missing or torn checkpoint all fail here."""
    check_config(cfg)
    start = prepare_output_dir(cfg, output_dir, output_dir / checkpoint_dir / "last.ckpt")
    cfg = start.cfg
    if start.resuming:
        check_config(cfg)
        ckpt = resume_checkpoint(output_dir / checkpoint_dir)
        log.info("resumed from %s (SLURM_RESTART_COUNT=%s)", ckpt, os.environ.get("SLURM_RESTART_COUNT") or 0)
        return cfg, output_dir, str(ckpt)
    return cfg, output_dir, None


def _announce(stop: RunInterrupted, output_dir: Path) -> None:
    if stop.checkpoint is not None:
        message = (
            f"{stop.signame}: saved {stop.checkpoint}; stopping (exit status {stop.code}). "
            f"Continue with:\n  {resume_command(output_dir)}"
        )
    else:
        message = (
            f"{stop.signame}: stopped before training started, nothing to resume (exit "
            f"status {stop.code}); run the same command again (add overwrite=true)."
        )
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _announcing(output_dir: Path, caught: type[BaseException], stop: RunInterrupted) -> Iterator[None]:
    """``caught`` raised inside becomes ``stop``; a :class:`RunInterrupted` (``stop`` or one raised
    inside) is announced (exit status, resume command) and re-raised."""
    try:
        try:
            yield
        except caught:
            raise stop from None
    except RunInterrupted as raised:
        _announce(raised, output_dir)
        raise


@contextmanager
def stop_before_training(output_dir: Path) -> Iterator[None]:
    """Data preparation: SIGTERM and Ctrl-C stop with their exit status (the split cache is
    written atomically, so nothing half-written is left)."""

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise RunInterrupted("SIGTERM", EXIT_SIGTERM, None)

    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        previous = None
    try:
        with _announcing(output_dir, KeyboardInterrupt, RunInterrupted("SIGINT", EXIT_SIGINT, None)):
            yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def stop_on_signal(trainer: L.Trainer, output_dir: Path, resuming: bool) -> Iterator[None]:
    """``trainer.fit``: SIGTERM/SIGINT (handled by :class:`CheckpointOnSignal`) become
    :class:`RunInterrupted` with the exit status and the resume command printed. A resumed run
    keeps its earlier csv log rows."""
    if resuming:
        trainer.callbacks.append(CsvLogKeeper(trainer.loggers))
    saver = next((c for c in trainer.callbacks if isinstance(c, CheckpointOnSignal)), None)
    last = saver.path if saver is not None else None
    try:
        with _announcing(output_dir, SIGTERMException, RunInterrupted("SIGTERM", EXIT_SIGTERM, last)):
            yield
    except RunInterrupted:  # announced already
        raise
    except SystemExit as exit_:  # Lightning's exit(1) on a second Ctrl-C (nothing saved)
        if saver is None or not saver.interrupted:
            raise
        stop = RunInterrupted("SIGINT", EXIT_SIGINT, None)
        print(
            f"SIGINT: stopped at once (exit status {stop.code}); continue from the last "
            f"checkpoint with:\n  {resume_command(output_dir)}",
            file=sys.stderr,
            flush=True,
        )
        raise stop from exit_


def train_seconds(trainer: L.Trainer) -> float:
    """Training seconds of the run, summed over every segment (resumes included)."""
    clock = next((c for c in trainer.callbacks if isinstance(c, TrainClock)), None)
    return clock.seconds() if clock is not None else float("nan")
