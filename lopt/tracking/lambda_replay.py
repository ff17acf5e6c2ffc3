"""Λ per epoch, recorded in one fit and replayed in another: the refit control's
``control.lambda=trajectory`` (docs/protocol.md, "Fairness controls").

:class:`EpochLambdaSnapshots` writes the full λU, λI at the end of every training epoch of a run
with a learned Λ (``<output_dir>/lambda_epochs/epoch_XXX.npz``, epoch counted from 0 as
``best_epoch``), whatever the evaluation schedule and with no size cap: the replay needs every one.
:class:`LambdaReplay` sets a frozen Λ to snapshot ``e`` at the start of refit epoch ``e``, so the
refit trains its epoch ``e`` with the Λ the first fit had reached at the end of its epoch ``e``, and
ends with the selected checkpoint's Λ.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch

from lopt.models.granularity import LambdaGranularity
from lopt.tracking.lambda_stats import write_lambda

EPOCH_SNAPSHOT_DIR = "lambda_epochs"


def epoch_snapshot_path(output_dir: Path, epoch: int) -> Path:
    """The snapshot of Λ at the end of training epoch ``epoch`` of the run in ``output_dir``."""
    return Path(output_dir) / EPOCH_SNAPSHOT_DIR / f"epoch_{int(epoch):03d}.npz"


class EpochLambdaSnapshots(L.Callback):
    """Λ of the module's ``granularity`` at the end of every training epoch, to
    :func:`epoch_snapshot_path` (compressed .npz with ``epoch`` and ``step``)."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        granularity = getattr(pl_module, "granularity", None)
        if not isinstance(granularity, LambdaGranularity) or not trainer.is_global_zero:
            return
        write_lambda(
            epoch_snapshot_path(self.output_dir, trainer.current_epoch),
            granularity,
            compressed=True,
            epoch=np.int64(trainer.current_epoch),
            step=np.int64(trainer.global_step),
        )


@torch.no_grad()
def load_lambda_(granularity: LambdaGranularity, path: Path) -> None:
    """Set the stored Λ of ``granularity`` to the snapshot ``path`` (a :func:`write_lambda` file of
    the same granularity and sizes), in place. Raises when the snapshot does not fit it."""
    with np.load(path) as snapshot:
        name = str(snapshot["granularity"])
        dense = {"user": snapshot["user_lambda"], "item": snapshot["item_lambda"]}
    if name != granularity.name:
        raise ValueError(f"{path} holds Λ of granularity {name!r}, the run's is {granularity.name!r}")
    for side, rows in (("user", granularity.n_users), ("item", granularity.n_items)):
        if dense[side].shape != (rows, granularity.dim):
            raise ValueError(f"{path}: {side}_lambda is {dense[side].shape}, expected {(rows, granularity.dim)}")
    for side in ("user", "item"):
        storage = granularity.user_storage if side == "user" else granularity.item_storage
        stored_rows, width = storage.shape
        source = torch.from_numpy(dense[side][:stored_rows, :width]).to(storage.device, storage.dtype)
        storage.copy_(source)
        # a stored row/vector broadcasts to the dense λ: the snapshot must be that broadcast
        if not torch.equal(storage.expand(dense[side].shape), torch.from_numpy(dense[side]).to(storage)):
            raise ValueError(f"{path}: {side}_lambda is not a {granularity.name!r} Λ (its values do not broadcast)")


class LambdaReplay(L.Callback):
    """At the start of training epoch ``e``, set the module's (frozen) ``granularity`` to
    ``snapshots[e]``; ``loaded`` lists the snapshots in the order they were used. Training past the
    last snapshot is an error."""

    def __init__(self, snapshots: Sequence[Path]) -> None:
        self.snapshots = [Path(p) for p in snapshots]
        self.loaded: list[Path] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch >= len(self.snapshots):
            raise RuntimeError(
                f"Λ replay: refit epoch {epoch} has no snapshot (only {len(self.snapshots)} were recorded)"
            )
        load_lambda_(pl_module.granularity, self.snapshots[epoch])
        self.loaded.append(self.snapshots[epoch])
