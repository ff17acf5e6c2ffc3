"""Callbacks that record what a run does beyond its metrics (Λ statistics and trajectories)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
from omegaconf import DictConfig

from lopt.data.types import PreparedSplit


def build_tracking_callbacks(cfg: DictConfig, split: PreparedSplit, output_dir: Path) -> list[L.Callback]:
    """Tracking callbacks for this run (none yet)."""
    return []
