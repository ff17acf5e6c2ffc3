"""Frame-level preprocessing stages, one at a time, built on the kernels of
:func:`lopt.data.preprocess.prepare_split` (which runs them all on arrays).

The kernels work on dense codes: re-indexing preserves raw-id order, so deduping/filtering codes
gives the same rows as deduping/filtering the raw ids.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import polars as pl

from lopt.data.preprocess import (
    KEY_MIN_ITEMS_PER_USER,
    KEY_MIN_USERS_PER_ITEM,
    _check_threshold,
    _dedupe_mask,
    _encode,
    _filter_mask,
    _has_duplicates,
    _pair_keys,
    _require_columns,
)


def dedupe(frame: pl.DataFrame) -> pl.DataFrame:
    """Drop duplicate (user, item) pairs, keeping each pair's earliest-timestamp row.

    Among rows of one pair with the same earliest timestamp, the first in frame order is kept.
    The kept rows stay in their original relative order; all columns are kept. A frame without
    duplicate pairs is returned unchanged.
    """
    _require_columns(frame)
    users, _ = _encode(frame["user"])
    items, item_ids = _encode(frame["item"])
    keys = _pair_keys(users, items, len(item_ids))
    mask = _dedupe_mask(keys, frame["timestamp"].to_numpy().astype(np.int64, copy=False))
    return frame if mask.all() else frame.filter(pl.Series(mask))


def _first_occurrence_mask(keys: np.ndarray) -> np.ndarray:
    """bool mask: one row per distinct key (all True when keys are unique)."""
    if not _has_duplicates(keys):
        return np.ones(keys.shape[0], dtype=bool)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    first = np.ones(keys.shape[0], dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    mask = np.zeros(keys.shape[0], dtype=bool)
    mask[order[first]] = True
    return mask


def filter_frequency(
    frame: pl.DataFrame,
    min_users_per_item: int,
    min_items_per_user: int,
    iterative: bool = False,
) -> pl.DataFrame:
    """Keep items with ≥ ``min_users_per_item`` users, then users with ≥ ``min_items_per_user``.

    One pass in that order (the paper's code), or with ``iterative=True`` repeated until no row
    is removed (a k-core). Counts are of distinct pairs, so duplicates do not inflate them.
    Thresholds ≤ 1 remove nothing. Row order is preserved.
    """
    _require_columns(frame)
    min_users_per_item = _check_threshold(min_users_per_item, KEY_MIN_USERS_PER_ITEM)
    min_items_per_user = _check_threshold(min_items_per_user, KEY_MIN_ITEMS_PER_USER)
    if max(min_users_per_item, min_items_per_user) <= 1 or frame.height == 0:
        return frame
    users, user_ids = _encode(frame["user"])
    items, item_ids = _encode(frame["item"])
    distinct = _first_occurrence_mask(_pair_keys(users, items, len(item_ids)))
    mask = _filter_mask(
        users,
        items,
        len(user_ids),
        len(item_ids),
        min_users_per_item,
        min_items_per_user,
        iterative,
        None if distinct.all() else distinct,
    )
    return frame if mask.all() else frame.filter(pl.Series(mask))


class Reindexed(NamedTuple):
    """Result of :func:`reindex`.

    ``frame``: same rows and order, ``user``/``item`` replaced by Int32 indices.
    ``user_ids[k]``/``item_ids[k]``: raw id of index ``k`` (sorted ascending; int64 for integer
    ids, numpy unicode for string ids).
    """

    frame: pl.DataFrame
    user_ids: np.ndarray
    item_ids: np.ndarray


def reindex(frame: pl.DataFrame) -> Reindexed:
    """Map raw user/item ids to dense int32 indices ``0..n-1`` in ascending raw-id order."""
    _require_columns(frame)
    users, user_ids = _encode(frame["user"])
    items, item_ids = _encode(frame["item"])
    out = frame.with_columns(pl.Series("user", users), pl.Series("item", items))
    return Reindexed(out, user_ids, item_ids)
