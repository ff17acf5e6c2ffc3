"""Experiment loggers from the ``logger`` config group."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig


def build_logger(cfg: DictConfig, output_dir: Path) -> Logger | bool:
    """The Lightning logger of ``cfg.logger`` (an empty node means none: ``False``)."""
    return instantiate(cfg.logger) if cfg.logger else False
