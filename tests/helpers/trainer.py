"""A tiny CPU Lightning Trainer for unit tests: no logger, checkpoints, progress bar or validation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
from torch.utils.data import DataLoader


def fit_batches(module: L.LightningModule, batches: Sequence[Any], **trainer_kwargs: Any) -> L.Trainer:
    """Train ``module`` on ``batches`` (one epoch = all of them, in order) and return the Trainer.

    ``trainer_kwargs`` (``max_epochs``, ``max_steps``, ``precision``, ``callbacks``, …) go to
    :class:`lightning.pytorch.Trainer` on top of the quiet single-CPU defaults.
    """
    trainer = L.Trainer(
        **{
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            **trainer_kwargs,
        }
    )
    trainer.fit(module, train_dataloaders=DataLoader(list(batches), batch_size=None))
    return trainer
