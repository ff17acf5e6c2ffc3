"""λ-trajectories of a few tracked users and items (the paper's Figure 8).

Entities are chosen per frequency stratum (a quantile range of the training-frequency rank,
ties broken at random), ``n_per_stratum`` each, deterministically from the seed. Their λ rows are
recorded on the device without host syncs (a clone per record) and turned into rows of the
``lambda_trajectories.parquet`` frame only when flushed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from lopt.models.granularity import LambdaGranularity
from lopt.tracking.lambda_stats import SIDES, side_storage

TRAJECTORY_FILE = "lambda_trajectories.parquet"
#: Columns of the trajectory parquet; ``dim == -1`` holds the mean over the d dimensions.
TRAJECTORY_SCHEMA: dict[str, pl.DataType] = {
    "step": pl.Int64,
    "epoch": pl.Int64,
    "side": pl.String,
    "entity_id": pl.Int64,
    "raw_id": pl.String,
    "frequency": pl.Int64,
    "stratum": pl.String,
    "dim": pl.Int64,
    "value": pl.Float64,
}
MEAN_DIM = -1


@dataclass(frozen=True)
class TrackedSide:
    """The tracked entities of one side: parallel arrays, ordered by stratum then frequency."""

    side: str
    index: np.ndarray  # int64 re-indexed ids
    raw_id: np.ndarray  # str raw ids
    frequency: np.ndarray  # int64 training frequency
    stratum: np.ndarray  # str stratum names

    def __len__(self) -> int:
        return len(self.index)


def choose_by_strata(
    frequency: np.ndarray,
    strata: Mapping[str, Sequence[float]],
    n_per_stratum: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, stratum names): up to ``n_per_stratum`` entities per stratum, drawn without
    replacement among those whose frequency rank (as a fraction in [0, 1], ties in random order)
    lies in the stratum's ``[lo, hi]``; no entity is in two strata."""
    n = len(frequency)
    order = np.lexsort((rng.random(n), frequency))
    position = np.empty(n, dtype=np.float64)
    position[order] = np.arange(n) / max(n - 1, 1)
    taken = np.zeros(n, dtype=bool)
    indices: list[np.ndarray] = []
    names: list[np.ndarray] = []
    for name, bounds in strata.items():
        lo, hi = (float(b) for b in bounds)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(
                f"tracking.trajectories.strata.{name} must be [lo, hi] with 0 ≤ lo ≤ hi ≤ 1, got {list(bounds)}"
            )
        candidates = np.flatnonzero((position >= lo) & (position <= hi) & ~taken)
        chosen = rng.choice(candidates, size=min(n_per_stratum, len(candidates)), replace=False)
        chosen = chosen[np.lexsort((chosen, frequency[chosen]))]
        taken[chosen] = True
        indices.append(chosen.astype(np.int64))
        names.append(np.full(len(chosen), name, dtype=object))
    return np.concatenate(indices), np.concatenate(names)


def choose_tracked(
    side: str,
    frequency: np.ndarray,
    raw_ids: np.ndarray,
    strata: Mapping[str, Sequence[float]],
    n_per_stratum: int,
    seed: int,
) -> TrackedSide:
    """The tracked entities of ``side``; the same (seed, frequencies) give the same choice."""
    rng = np.random.default_rng([int(seed), SIDES.index(side)])
    index, stratum = choose_by_strata(np.asarray(frequency), strata, n_per_stratum, rng)
    return TrackedSide(
        side=side,
        index=index,
        raw_id=np.asarray(raw_ids)[index].astype(str),
        frequency=np.asarray(frequency)[index].astype(np.int64),
        stratum=stratum.astype(str),
    )


class TrajectoryRecorder:
    """Buffers λ rows of tracked entities; :meth:`drain` turns the buffer into parquet rows."""

    def __init__(self, tracked: Sequence[TrackedSide], full_vector: bool) -> None:
        self.tracked = {t.side: t for t in tracked}
        self.full_vector = full_vector
        self._rows: dict[str, torch.Tensor] = {}
        self._buffer: list[tuple[int, int, dict[str, torch.Tensor]]] = []

    @property
    def pending(self) -> int:
        """Records not yet drained."""
        return len(self._buffer)

    @torch.no_grad()
    def record(self, granularity: LambdaGranularity, step: int, epoch: int) -> None:
        """Snapshot the tracked λ rows (n, d) of every side; no device→host transfer."""
        values: dict[str, torch.Tensor] = {}
        for side, tracked in self.tracked.items():
            storage = side_storage(granularity, side)
            rowwise = granularity.user_rowwise if side == "user" else granularity.item_rowwise
            if rowwise:
                rows = self._rows.get(side)
                if rows is None or rows.device != storage.device:
                    rows = self._rows[side] = torch.as_tensor(tracked.index, device=storage.device)
                picked = storage.index_select(0, rows)
            else:
                picked = storage.expand(len(tracked), storage.shape[1])
            values[side] = picked.expand(len(tracked), granularity.dim).clone()
        self._buffer.append((int(step), int(epoch), values))

    def drain(self) -> pl.DataFrame:
        """Rows (TRAJECTORY_SCHEMA) of every buffered record, emptying the buffer."""
        buffer, self._buffer = self._buffer, []
        if not buffer:
            return pl.DataFrame(schema=TRAJECTORY_SCHEMA)
        steps = np.array([s for s, _, _ in buffer], dtype=np.int64)
        epochs = np.array([e for _, e, _ in buffer], dtype=np.int64)
        frames = []
        for side, tracked in self.tracked.items():
            if len(tracked) == 0:
                continue
            values = torch.stack([v[side] for _, _, v in buffer]).double().cpu().numpy()  # (R, n, d)
            n_rec, n_ent, dim = values.shape
            blocks = [(np.full((n_rec, n_ent, 1), MEAN_DIM), values.mean(axis=2, keepdims=True))]
            if self.full_vector:
                blocks.append((np.broadcast_to(np.arange(dim), values.shape), values))
            dims = np.concatenate([b[0] for b in blocks], axis=2)
            vals = np.concatenate([b[1] for b in blocks], axis=2)
            width = dims.shape[2]
            per_record = n_ent * width
            entity_pos = np.tile(np.repeat(np.arange(n_ent), width), n_rec)
            frames.append(
                pl.DataFrame(
                    {
                        "step": np.repeat(steps, per_record),
                        "epoch": np.repeat(epochs, per_record),
                        "side": np.full(n_rec * per_record, side),
                        "entity_id": tracked.index[entity_pos],
                        "raw_id": tracked.raw_id[entity_pos],
                        "frequency": tracked.frequency[entity_pos],
                        "stratum": tracked.stratum[entity_pos],
                        "dim": dims.reshape(-1),
                        "value": vals.reshape(-1),
                    },
                    schema=TRAJECTORY_SCHEMA,
                )
            )
        return pl.concat(frames) if frames else pl.DataFrame(schema=TRAJECTORY_SCHEMA)


def cut_at_step(frame: pl.DataFrame, step: int) -> pl.DataFrame:
    """The rows of a trajectory frame recorded before ``step`` (a resume from a checkpoint at
    ``step`` records that step and the later ones again)."""
    return frame.filter(pl.col("step") < int(step))


def thin_steps(steps: np.ndarray, max_points: int) -> np.ndarray:
    """At most ``max_points`` of the sorted unique ``steps``, evenly spaced, first and last kept."""
    unique = np.unique(steps)
    if len(unique) <= max_points:
        return unique
    picks = np.unique(np.round(np.linspace(0, len(unique) - 1, max_points)).astype(np.int64))
    return unique[picks]
