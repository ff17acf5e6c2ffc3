"""``checkpoint.keep``: what stays in a run's ``checkpoints/`` once it has been tested.

* ``all`` — every checkpoint: ``best.ckpt`` (``lopt recommend``) and ``last.ckpt`` (resume).
* ``best`` — ``best.ckpt`` only: the run can still recommend, not be resumed.
* ``none`` — no checkpoint: the results files (metrics.json, …) are the run's whole output.
* ``auto`` (default) — ``all`` for a single run, ``best`` for a job of a multirun (a sweep or
  a study, whose jobs' checkpoints would otherwise fill a disk).

Called after the results are written: an interrupted run keeps everything it needs to resume.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

log = logging.getLogger("lopt")

CHOICES = ("all", "best", "none", "auto")


def resolve_keep(keep: str) -> str:
    """``all``, ``best`` or ``none``: ``auto`` decided by the Hydra mode of this job."""
    if keep not in CHOICES:
        raise ValueError(f"checkpoint.keep={keep!r}: choose one of {', '.join(CHOICES)}")
    if keep != "auto":
        return keep
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return "best" if multirun else "all"


def prune_checkpoints(checkpoint_dir: Path, keep: str, best_name: str = "best.ckpt") -> list[Path]:
    """Remove what ``keep`` (see the module) does not keep from ``checkpoint_dir``; return the
    removed paths."""
    keep = resolve_keep(keep)
    checkpoint_dir = Path(checkpoint_dir)
    if keep == "all" or not checkpoint_dir.is_dir():
        return []
    removed = [p for p in sorted(checkpoint_dir.iterdir()) if keep == "none" or p.name != best_name]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if keep == "none":
        checkpoint_dir.rmdir()
    if removed:
        log.info("checkpoint.keep=%s: removed %s", keep, ", ".join(p.name for p in removed))
    return removed
