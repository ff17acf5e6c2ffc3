"""The split of a preprocessed interaction set into train / valid / test (docs/protocol.md).

Every split orders each user's interactions canonically — by timestamp, ties by item id
(numerically when every raw id is numeric, else as strings) — so it depends on the data only,
never on the row order of the file. Kinds (:data:`SPLIT_KINDS`): per-user temporal
leave-ratio-out (the paper's), one global cut in time, a seeded random per-user ratio split, and
leave-one-out. Ratios are floored in exact rational arithmetic. Everything is vectorized (numpy
sorts, polars); nothing loops over users.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import polars as pl

KEY_TEST_RATIO = "dataset.preprocess.test_ratio"
KEY_VALID_RATIO = "dataset.preprocess.valid_ratio"

KEY_SPLIT_KIND = "protocol.split.kind"
KEY_DROP_LATEST = "protocol.split.drop_latest"

#: Split kinds: per-user temporal leave-ratio-out (the paper's), one global cut in time, a
#: seeded random per-user ratio split, and leave-one-out (latest item test, the one before valid).
SPLIT_KINDS: tuple[str, ...] = ("temporal_user", "temporal_global", "random_user", "leave_one_out")
#: Version of the rule that orders a user's interactions; part of the prepared split's cache key
#: (bumped when the rule changes so that a split made by another rule is never reused).
#: 2: timestamp ties broken by item id (1: by row position in the file).
SPLIT_RULE_VERSION = 2

#: Ratios are read as the nearest fraction with a denominator at most this (0.2 → 1/5), so the
#: per-user floors are computed in exact integer arithmetic and float error cannot flip them.
RATIO_MAX_DENOMINATOR = 10**6


def order_by(major: np.ndarray, minor: np.ndarray, third: np.ndarray | None = None) -> np.ndarray:
    """int64 permutation sorting by (major, minor[, third], position): deterministic, remaining
    ties in input order.

    ``major`` is a non-negative int64 array, ``minor`` an int64 array, ``third`` (optional) a
    non-negative int64 array.
    """
    n = major.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    minor_lo, minor_hi = int(minor.min()), int(minor.max())
    minor_span = minor_hi - minor_lo + 1
    if third is not None:
        third_span = int(third.max()) + 1
        if (int(major.max()) + 1) * minor_span * third_span < 2**63:
            key = (major * minor_span + (minor - minor_lo)) * third_span + third
            frame = pl.DataFrame({"k": key, "r": np.arange(n, dtype=np.int64)})
            return frame.sort("k", maintain_order=True)["r"].to_numpy()
        frame = pl.DataFrame({"a": major, "b": minor, "c": third, "r": np.arange(n, dtype=np.int64)})
        return frame.sort("a", "b", "c", "r")["r"].to_numpy()
    if (int(major.max()) + 1) * minor_span < 2**63:
        # One int64 key and a stable single-column sort (several times faster than 3 keys).
        key = major * minor_span + (minor - minor_lo)
        frame = pl.DataFrame({"k": key, "r": np.arange(n, dtype=np.int64)})
        return frame.sort("k", maintain_order=True)["r"].to_numpy()
    frame = pl.DataFrame({"a": major, "b": minor, "r": np.arange(n, dtype=np.int64)})
    return frame.sort("a", "b", "r")["r"].to_numpy()


def earliest_mask(timestamps: np.ndarray, drop_latest: float) -> np.ndarray | None:
    """(n,) bool: the interactions kept when the latest ``drop_latest`` of them (by time, over all
    users) are cut off before anything else is done — the same data history ending earlier, for the
    extra splits of a study (``protocol.split.drop_latest``; 0 = the whole history, None returned).

    ``floor(n·drop_latest)`` interactions are dropped, exactly (:func:`ratio_fraction`), except that
    every interaction at the last kept timestamp is kept: the cut is a point in time, so it
    depends on the data only, never on row order."""
    frac = ratio_fraction(drop_latest, KEY_DROP_LATEST)
    n = timestamps.shape[0]
    n_keep = n - int(floor_times(np.array([n]), frac)[0])
    if frac == 0 or n == 0:
        return None
    if n_keep == 0:
        raise ValueError(f"{KEY_DROP_LATEST}={drop_latest} leaves no interaction of {n}; lower it")
    last_kept = np.partition(timestamps, n_keep - 1)[n_keep - 1]
    return timestamps <= last_kept


def item_order(item_ids: np.ndarray) -> np.ndarray:
    """(n_items,) int64 rank of each item code in the tie-break order of the split.

    Integer raw ids, and string ids that are all integers, order numerically (equal values,
    e.g. "7" and "07", then as strings); any other string ids order as strings. The codes of
    :func:`_encode` already follow the raw ids' own order (numeric for integers, lexicographic
    for strings), so only all-numeric string ids need re-ranking.
    """
    n = len(item_ids)
    ranks = np.arange(n, dtype=np.int64)
    if n == 0 or item_ids.dtype.kind != "U":
        return ranks
    values = pl.Series(item_ids.astype(str)).str.strip_chars().cast(pl.Int64, strict=False)
    if values.null_count():
        return ranks
    order = np.lexsort((ranks, values.to_numpy()))  # codes ascend as strings: the second key
    out = np.empty(n, dtype=np.int64)
    out[order] = ranks
    return out


class SplitRows(NamedTuple):
    """Row indices (int64) into the arrays given to :func:`split_leave_ratio_out`.

    Each array is ordered by (user, timestamp, item) — ``random_user``: by (user, draw) — so
    its order depends on the data only; together they partition ``0..n-1``.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def ratio_fraction(ratio: float, key: str) -> Fraction:
    """Validate a split ratio in ``[0, 1)`` and return it as an exact fraction.

    The fraction is the nearest one with denominator ≤ :data:`RATIO_MAX_DENOMINATOR`
    (0.2 → 1/5, 0.25 → 1/4), so ``floor(n·ratio)`` is exact for the decimal the user wrote.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.integer, np.floating)):
        raise ValueError(f"{key} must be a number in [0, 1), got {ratio!r}")
    value = float(ratio)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{key} must be a number in [0, 1), got {ratio!r}")
    return Fraction(value).limit_denominator(RATIO_MAX_DENOMINATOR)


def floor_times(counts: np.ndarray, ratio: Fraction) -> np.ndarray:
    """Exact ``floor(counts · ratio)`` for non-negative int counts (int64 in, int64 out)."""
    counts = np.asarray(counts, dtype=np.int64)
    return (counts * ratio.numerator) // ratio.denominator


def _check_split_arrays(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> None:
    n = users.shape[0]
    if users.ndim != 1 or np.shape(items) != (n,) or timestamps.shape != (n,):
        raise ValueError(
            "users, items and timestamps must be 1-D arrays of equal length, got shapes "
            f"{users.shape}, {np.shape(items)}, {timestamps.shape}"
        )


def _item_key(items: np.ndarray, item_rank: np.ndarray | None) -> np.ndarray:
    """Non-negative int64 tie-break key of each row's item."""
    key = np.asarray(items).astype(np.int64)
    if item_rank is not None:
        return item_rank[key]
    return key - key.min() if key.size else key


def _user_order(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, item_rank: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, starts, sizes): rows sorted by (user, timestamp, item), each user's run."""
    n = users.shape[0]
    major = users.astype(np.int64)
    major -= major.min()
    order = order_by(major, timestamps.astype(np.int64, copy=False), _item_key(items, item_rank))
    sorted_users = users[order]
    boundary = np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1
    starts = np.concatenate(([0], boundary)).astype(np.int64)
    sizes = np.diff(np.append(starts, n))
    return order, starts, sizes


def _cut_per_user(
    order: np.ndarray, starts: np.ndarray, sizes: np.ndarray, n_test: np.ndarray, n_valid: np.ndarray
) -> SplitRows:
    """Per user (rows ``order`` grouped by user): the last ``n_test`` are test, the ``n_valid``
    before them valid, the rest train."""
    n = order.shape[0]
    n_rest = sizes - n_test
    position = np.arange(n, dtype=np.int64) - np.repeat(starts, sizes)
    is_test = position >= np.repeat(n_rest, sizes)
    is_valid = (position >= np.repeat(n_rest - n_valid, sizes)) & ~is_test
    is_train = ~(is_test | is_valid)
    return SplitRows(order[is_train], order[is_valid], order[is_test])


def _empty_rows() -> SplitRows:
    empty = np.empty(0, dtype=np.int64)
    return SplitRows(empty, empty.copy(), empty.copy())


def split_leave_ratio_out(
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray,
    test_ratio: float,
    valid_ratio: float,
    item_rank: np.ndarray | None = None,
) -> SplitRows:
    """Per-user time-ordered leave-ratio-out split.

    For each user with ``n`` interactions, ordered by timestamp (ties: by item, see below):
    test = the latest ``⌊n·test_ratio⌋``; of the remaining ``n'``, valid = the latest
    ``⌊n'·valid_ratio⌋``; train = the rest (never empty, since the ratios are < 1).
    Floors use exact rational arithmetic (see :func:`ratio_fraction`): they equal Python's
    ``int(n * ratio)`` wherever float rounding does not flip it (always for 0.2 and 0.25).

    ``users`` (any integer ids), ``items`` (integer codes) and ``timestamps`` are 1-D arrays of
    equal length. Timestamp ties order by ``item_rank[items]`` (:func:`item_order`), or by the
    item values themselves when ``item_rank`` is None; the split never depends on row order.
    """
    test_frac = ratio_fraction(test_ratio, KEY_TEST_RATIO)
    valid_frac = ratio_fraction(valid_ratio, KEY_VALID_RATIO)
    users = np.asarray(users)
    timestamps = np.asarray(timestamps)
    _check_split_arrays(users, items, timestamps)
    if users.shape[0] == 0:
        return _empty_rows()
    order, starts, sizes = _user_order(users, items, timestamps, item_rank)
    n_test = floor_times(sizes, test_frac)
    n_valid = floor_times(sizes - n_test, valid_frac)
    return _cut_per_user(order, starts, sizes, n_test, n_valid)


def split_interactions(
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray,
    kind: str,
    test_ratio: float,
    valid_ratio: float,
    seed: int = 0,
    item_rank: np.ndarray | None = None,
) -> SplitRows:
    """Split by ``kind`` (:data:`SPLIT_KINDS`); arguments as :func:`split_leave_ratio_out`.

    - ``temporal_user``: :func:`split_leave_ratio_out`;
    - ``temporal_global``: all interactions in (timestamp, user, item) order; test = the latest
      ``⌊N·test_ratio⌋`` of the N, valid = the latest ``⌊N'·valid_ratio⌋`` of the remaining N'
      (one cut time each; a user may have no train interaction);
    - ``random_user``: per user, the same counts as ``temporal_user`` drawn at random
      (``numpy.random.default_rng(seed)`` over the rows in canonical order, so the draw does not
      depend on row order);
    - ``leave_one_out``: per user, test = the latest interaction (users with ≥ 2), valid = the
      one before it (users with ≥ 3).
    """
    if kind not in SPLIT_KINDS:
        raise ValueError(f"{KEY_SPLIT_KIND} must be one of {SPLIT_KINDS}, got {kind!r}")
    if kind == "temporal_user":
        return split_leave_ratio_out(users, items, timestamps, test_ratio, valid_ratio, item_rank)
    test_frac = ratio_fraction(test_ratio, KEY_TEST_RATIO)
    valid_frac = ratio_fraction(valid_ratio, KEY_VALID_RATIO)
    users = np.asarray(users)
    timestamps = np.asarray(timestamps)
    _check_split_arrays(users, items, timestamps)
    n = users.shape[0]
    if n == 0:
        return _empty_rows()
    order, starts, sizes = _user_order(users, items, timestamps, item_rank)
    if kind == "leave_one_out":
        n_test = (sizes >= 2).astype(np.int64)
        n_valid = (sizes - n_test >= 2).astype(np.int64)
        return _cut_per_user(order, starts, sizes, n_test, n_valid)
    if kind == "random_user":
        draw = np.random.default_rng(seed).random(n)  # one value per row in canonical order
        user_of = users.astype(np.int64)[order]
        shuffled = order[np.lexsort((draw, user_of))]
        n_test = floor_times(sizes, test_frac)
        n_valid = floor_times(sizes - n_test, valid_frac)
        return _cut_per_user(shuffled, starts, sizes, n_test, n_valid)
    # temporal_global
    major = timestamps.astype(np.int64)
    major = major - major.min()
    user_key = users.astype(np.int64)
    global_order = order_by(major, user_key, _item_key(items, item_rank))
    n_test = int(floor_times(np.array([n]), test_frac)[0])
    n_valid = int(floor_times(np.array([n - n_test]), valid_frac)[0])
    part = np.zeros(n, dtype=np.int8)  # 0 train, 1 valid, 2 test, by row
    part[global_order[n - n_test - n_valid : n - n_test]] = 1
    part[global_order[n - n_test :]] = 2
    in_order = part[order]  # each part listed in canonical (user, timestamp, item) order
    return SplitRows(order[in_order == 0], order[in_order == 1], order[in_order == 2])
