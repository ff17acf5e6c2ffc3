"""Plain types shared across layers: the data stages (reader → preprocess → cache → DataModule)
produce them, evaluation, models, optimizers and tracking consume them. Imports nothing of lopt."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: Columns of the canonical interaction frame every reader returns (polars DataFrame).
#: ``user`` and ``item`` are raw ids (Int64 or String), ``timestamp`` is Int64, or Float64 when
#: the file's timestamps have fractions (unix seconds or any monotone clock; only its order matters).
CANONICAL_COLUMNS = ("user", "item", "timestamp")

#: One batch of BPR triples: (users, positive items, negative items), int64 tensors of equal length.
Triples = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

#: What a torch optimizer's constructor takes as ``params``: tensors, or param-group dicts.
ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


@dataclass(frozen=True)
class PreparedSplit:
    """A preprocessed, re-indexed, split dataset.

    Every ``*_users``/``*_items`` array is int32 of equal length per split, ids in
    ``[0, n_users)`` / ``[0, n_items)``. Within a split the pairs are unique and the three
    splits are disjoint. ``user_ids[k]`` / ``item_ids[k]`` is the raw id of index ``k``
    (int64 or unicode numpy arrays). ``prepare_split`` stores each split's pairs grouped by
    ascending user, each user's pairs in time order (``lopt.data.controls.carve_latest`` relies on it).
    """

    train_users: np.ndarray
    train_items: np.ndarray
    valid_users: np.ndarray
    valid_items: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    n_users: int
    n_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray

    def user_train_frequency(self) -> np.ndarray:
        """(n_users,) int64: number of training interactions of each user."""
        return np.bincount(self.train_users, minlength=self.n_users)

    def item_train_frequency(self) -> np.ndarray:
        """(n_items,) int64: number of training interactions of each item."""
        return np.bincount(self.train_items, minlength=self.n_items)
