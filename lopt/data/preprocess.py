"""Preprocessing of the canonical interaction frame: dedupe → filter → re-index → split.

Implements the "lambdaopt" protocol (docs/protocol.md):

0. only with ``min_rating`` set (off by default: the paper keeps every rating): keep the
   interactions rated ≥ ``min_rating`` (the usual explicit → implicit conversion);
1. keep (user, item, timestamp); drop duplicate (user, item) pairs, keeping the earliest;
2. filter once: items with ≥ ``min_users_per_item`` distinct users, then users with
   ≥ ``min_items_per_user`` distinct items (``iterative=True``: repeat until stable, a k-core);
3. re-index users and items to ``0..n-1`` (sorted raw ids, so the mapping is deterministic);
4. per user, time-ordered leave-ratio-out: test = latest ⌊n_u·test_ratio⌋, of the remaining
   n'_u valid = latest ⌊n'_u·valid_ratio⌋, train = the rest. Timestamp ties are broken by item
   id (numerically when every raw id is numeric, else as strings), so the split depends on the
   data only, never on the row order of the file. The standard protocol's other splits
   (:data:`SPLIT_KINDS`) use the same canonical order.

Every stage is vectorized (polars expressions / numpy sorts); nothing loops over users.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import polars as pl

from lopt.types import CANONICAL_COLUMNS, PreparedSplit

log = logging.getLogger("lopt.data")

#: Config keys named in error messages (the dataset config group's preprocess block).
KEY_MIN_USERS_PER_ITEM = "dataset.preprocess.min_users_per_item"
KEY_MIN_ITEMS_PER_USER = "dataset.preprocess.min_items_per_user"
KEY_TEST_RATIO = "dataset.preprocess.test_ratio"
KEY_VALID_RATIO = "dataset.preprocess.valid_ratio"
KEY_MIN_RATING = "dataset.preprocess.min_rating"

KEY_SPLIT_KIND = "protocol.split.kind"

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


class _Stage:
    """Times one stage; logs ``stage: rows in → rows out (seconds)`` on ``lopt.data``.

    When stderr is a terminal, a one-line progress indication is shown while the stage runs.
    """

    def __init__(self, name: str, rows_in: int) -> None:
        self.name = name
        self.rows_in = rows_in
        self._tty = _stderr_is_tty()
        self._t0 = time.perf_counter()
        if self._tty:
            sys.stderr.write(f"\rpreprocess: {name} ({rows_in:,} rows) …\x1b[K")
            sys.stderr.flush()

    def done(self, rows_out: int, extra: str = "") -> None:
        seconds = time.perf_counter() - self._t0
        if self._tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        log.info(
            "preprocess %-7s %12s → %12s rows  %6.2f s%s",
            self.name,
            f"{self.rows_in:,}",
            f"{rows_out:,}",
            seconds,
            f"  ({extra})" if extra else "",
        )


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


# --------------------------------------------------------------------------- kernels
#
# :func:`prepare_split` runs these array kernels on dense codes (the re-index of the whole
# input): re-indexing preserves raw-id order, so deduping/filtering codes and then compacting
# them gives exactly the indices that re-indexing the filtered frame would give.


def _encode(column: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, ids): int32 codes in ``[0, len(ids))`` and the ascending raw ids they index.

    ids are int64 for integer columns, numpy unicode for string columns.
    """
    uniq = column.unique().sort()
    n = len(uniq)
    if column.dtype == pl.String:
        codes = column.cast(pl.Enum(uniq)).to_physical().to_numpy().astype(np.int32)
        ids = uniq.to_numpy().astype(str) if n else np.empty(0, dtype="<U1")
        return codes, ids
    ids = uniq.to_numpy().astype(np.int64, copy=False)
    values = column.to_numpy().astype(np.int64, copy=False)
    if n == 0:
        return np.empty(0, dtype=np.int32), ids
    lo, span = int(ids[0]), int(ids[-1]) - int(ids[0]) + 1
    if span <= max(4 * len(values), 1 << 24):  # dense enough for a lookup table
        table = np.full(span, -1, dtype=np.int32)
        table[ids - lo] = np.arange(n, dtype=np.int32)
        return table[values - lo], ids
    codes = column.replace_strict(uniq, pl.Series(np.arange(n, dtype=np.int32)))
    return codes.to_numpy().astype(np.int32, copy=False), ids


def _pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """int64 key ``user·n_items + item`` of each code pair (unique per pair)."""
    return users.astype(np.int64) * n_items + items


def _order_by(major: np.ndarray, minor: np.ndarray, third: np.ndarray | None = None) -> np.ndarray:
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


def _has_duplicates(keys: np.ndarray) -> bool:
    return bool(keys.size) and pl.Series(keys).n_unique() != keys.size


def _dedupe_mask(keys: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """bool mask: the earliest row of each pair key (ties: first in input order)."""
    keep = np.ones(keys.shape[0], dtype=bool)
    if not _has_duplicates(keys):
        return keep
    order = _order_by(keys, timestamps)
    sorted_keys = keys[order]
    first = np.ones(keys.shape[0], dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    keep[:] = False
    keep[order[first]] = True
    return keep


def _filter_mask(
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    n_items: int,
    min_users_per_item: int,
    min_items_per_user: int,
    iterative: bool,
    distinct: np.ndarray | None,
) -> np.ndarray:
    """bool mask of rows kept by the frequency filter on codes.

    ``distinct``: mask selecting one row per (user, item) pair, or None when pairs are unique.
    """
    alive = np.ones(users.shape[0], dtype=bool)
    while True:
        before = int(alive.sum())
        counted = alive if distinct is None else alive & distinct
        if min_users_per_item > 1:
            per_item = np.bincount(items[counted], minlength=n_items)
            alive &= per_item[items] >= min_users_per_item
            counted = alive if distinct is None else alive & distinct
        if min_items_per_user > 1:
            per_user = np.bincount(users[counted], minlength=n_users)
            alive &= per_user[users] >= min_items_per_user
        after = int(alive.sum())
        if not iterative or after == before or after == 0:
            return alive


def _compact(codes: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the codes present in ``codes`` to ``0..m-1`` (order kept); ids of the survivors."""
    present = np.bincount(codes, minlength=len(ids)) > 0
    if present.all():
        return codes, ids
    new_code = np.cumsum(present, dtype=np.int64) - 1
    return new_code[codes].astype(np.int32), ids[present]


def _check_threshold(value: int, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- split


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
    order = _order_by(major, timestamps.astype(np.int64, copy=False), _item_key(items, item_rank))
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
    global_order = _order_by(major, user_key, _item_key(items, item_rank))
    n_test = int(floor_times(np.array([n]), test_frac)[0])
    n_valid = int(floor_times(np.array([n - n_test]), valid_frac)[0])
    part = np.zeros(n, dtype=np.int8)  # 0 train, 1 valid, 2 test, by row
    part[global_order[n - n_test - n_valid : n - n_test]] = 1
    part[global_order[n - n_test :]] = 2
    in_order = part[order]  # each part listed in canonical (user, timestamp, item) order
    return SplitRows(order[in_order == 0], order[in_order == 1], order[in_order == 2])


# --------------------------------------------------------------------------- pipeline


def prepare_split(
    frame: pl.DataFrame,
    *,
    min_users_per_item: int,
    min_items_per_user: int,
    iterative: bool,
    test_ratio: float,
    valid_ratio: float,
    split_kind: str = "temporal_user",
    split_seed: int = 0,
    min_rating: float | None = None,
) -> PreparedSplit:
    """Run rating filter → dedupe → filter → reindex → split on a canonical frame and return the split.

    ``split_kind``/``split_seed``: see :func:`split_interactions` (the default is the paper's).
    ``min_rating``: keep only the interactions whose ``rating`` is ≥ it (None: keep all).

    ``frame`` has columns ``user``, ``item`` (Int64 or String raw ids), ``timestamp`` (integer
    or float: only its order is used) and, with ``min_rating``, ``rating``; other columns are
    ignored. Raises ``ValueError`` on invalid parameters, on null values, and when filtering
    leaves no interaction (naming the config keys to lower).
    """
    # Validate every parameter before spending time on the data.
    ratio_fraction(test_ratio, KEY_TEST_RATIO)
    ratio_fraction(valid_ratio, KEY_VALID_RATIO)
    if split_kind not in SPLIT_KINDS:
        raise ValueError(f"{KEY_SPLIT_KIND} must be one of {SPLIT_KINDS}, got {split_kind!r}")
    _check_threshold(min_users_per_item, KEY_MIN_USERS_PER_ITEM)
    _check_threshold(min_items_per_user, KEY_MIN_ITEMS_PER_USER)
    _check_min_rating(min_rating)
    t_start = time.perf_counter()
    if min_rating is not None:
        frame = _keep_rated(frame, float(min_rating))
    frame = _canonical(frame)
    if frame.height == 0:
        raise ValueError("the interaction frame is empty: the reader returned no rows")

    stage = _Stage("encode", frame.height)
    users, user_ids = _encode(frame["user"])
    items, item_ids = _encode(frame["item"])
    timestamps = frame["timestamp"].to_numpy().astype(np.int64, copy=False)
    del frame
    stage.done(len(users), f"{len(user_ids):,} users, {len(item_ids):,} items")

    stage = _Stage("dedupe", len(users))
    keys = _pair_keys(users, items, len(item_ids))
    keep = _dedupe_mask(keys, timestamps)
    del keys
    if not keep.all():
        users, items, timestamps = users[keep], items[keep], timestamps[keep]
    stage.done(len(users))

    stage = _Stage("filter", len(users))
    if max(min_users_per_item, min_items_per_user) > 1:
        keep = _filter_mask(
            users,
            items,
            len(user_ids),
            len(item_ids),
            min_users_per_item,
            min_items_per_user,
            iterative,
            None,  # pairs are unique after dedupe
        )
        if not keep.all():
            users, items, timestamps = users[keep], items[keep], timestamps[keep]
    stage.done(
        len(users),
        f"min_users_per_item={min_users_per_item}, min_items_per_user={min_items_per_user}, iterative={iterative}",
    )
    if len(users) == 0:
        raise ValueError(
            "no interaction is left after frequency filtering with "
            f"{KEY_MIN_USERS_PER_ITEM}={min_users_per_item}, "
            f"{KEY_MIN_ITEMS_PER_USER}={min_items_per_user} (iterative={iterative}); "
            "lower these thresholds"
        )

    stage = _Stage("reindex", len(users))
    users, user_ids = _compact(users, user_ids)
    items, item_ids = _compact(items, item_ids)
    stage.done(len(users), f"{len(user_ids):,} users, {len(item_ids):,} items")

    stage = _Stage("split", len(users))
    rows = split_interactions(
        users, items, timestamps, split_kind, test_ratio, valid_ratio, split_seed, item_order(item_ids)
    )
    stage.done(
        len(users),
        f"train {len(rows.train):,} / valid {len(rows.valid):,} / test {len(rows.test):,}",
    )
    log.info("preprocess total %.2f s", time.perf_counter() - t_start)

    parts: dict[str, np.ndarray] = {}
    for part, idx in rows._asdict().items():  # train, valid, test
        parts[f"{part}_users"] = np.ascontiguousarray(users[idx], dtype=np.int32)
        parts[f"{part}_items"] = np.ascontiguousarray(items[idx], dtype=np.int32)
    return PreparedSplit(**parts, n_users=len(user_ids), n_items=len(item_ids), user_ids=user_ids, item_ids=item_ids)


def _check_min_rating(value: float | None) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not math.isfinite(value)
    ):
        raise ValueError(f"{KEY_MIN_RATING} must be a number (e.g. 4) or null (keep every rating), got {value!r}")


def _keep_rated(frame: pl.DataFrame, min_rating: float) -> pl.DataFrame:
    """The rows of ``frame`` whose ``rating`` is ≥ ``min_rating`` (a logged stage); a clear
    error when the frame has no rating column or keeps nothing."""
    if "rating" not in frame.columns:
        raise ValueError(
            f"{KEY_MIN_RATING}={min_rating:g} keeps interactions by rating, but the interaction frame has no "
            "'rating' column (this source has no ratings): set dataset.preprocess.min_rating=null, or, with "
            "dataset=custom, name the column with dataset.source.rating_col"
        )
    ratings = frame["rating"]
    if ratings.null_count():
        raise ValueError(f"the 'rating' column has {ratings.null_count()} null values; {KEY_MIN_RATING} needs them all")
    stage = _Stage("rating", frame.height)
    kept = frame.filter(pl.col("rating") >= min_rating)
    stage.done(kept.height, f"{KEY_MIN_RATING}={min_rating:g}")
    if kept.height == 0:
        raise ValueError(
            f"no interaction is rated ≥ {KEY_MIN_RATING}={min_rating:g} (the ratings range from "
            f"{ratings.min()} to {ratings.max()}); lower it, or set it to null to keep every rating"
        )
    return kept


def _require_columns(frame: pl.DataFrame) -> None:
    """ValueError unless the canonical columns are present and free of nulls."""
    missing = [c for c in CANONICAL_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"interaction frame lacks column(s) {missing}; expected {list(CANONICAL_COLUMNS)}, got {frame.columns}"
        )
    counts = frame.select(CANONICAL_COLUMNS).null_count().row(0, named=True)
    nulls = {column: count for column, count in counts.items() if count}
    if nulls:
        raise ValueError(f"interaction frame has null values (column: count) {nulls}")


def _canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """Select the canonical columns and check their dtypes; timestamp cast to Int64 (a float
    timestamp becomes its dense rank: the same order and the same ties, as integers)."""
    _require_columns(frame)
    frame = frame.select(CANONICAL_COLUMNS)
    for name in ("user", "item"):
        dtype = frame.schema[name]
        if not (dtype.is_integer() or dtype == pl.String):
            raise ValueError(f"column {name!r} must hold integer or string ids, got {dtype}")
    dtype = frame.schema["timestamp"]
    if dtype.is_float():
        finite = frame["timestamp"].is_finite()
        if not finite.all():
            row = int(finite.not_().arg_true()[0])
            raise ValueError(f"column 'timestamp' must hold finite numbers, got {frame['timestamp'][row]} in row {row}")
        return frame.with_columns(pl.col("timestamp").rank("dense").cast(pl.Int64))
    if not dtype.is_integer():
        raise ValueError(f"column 'timestamp' must be a number (integer or float), got {dtype}")
    return frame.with_columns(pl.col("timestamp").cast(pl.Int64))
