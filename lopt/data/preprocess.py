"""Preprocessing of the canonical interaction frame: dedupe → filter → re-index → split
(the split itself: :mod:`lopt.data.split`).

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
   (:data:`lopt.data.split.SPLIT_KINDS`) use the same canonical order.

Every stage is vectorized (polars expressions / numpy sorts); nothing loops over users.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import numpy as np
import polars as pl

from lopt.data.split import (
    KEY_DROP_LATEST,
    KEY_SPLIT_KIND,
    KEY_TEST_RATIO,
    KEY_VALID_RATIO,
    SPLIT_KINDS,
    earliest_mask,
    item_order,
    order_by,
    ratio_fraction,
    split_interactions,
)
from lopt.types import CANONICAL_COLUMNS, PreparedSplit

log = logging.getLogger("lopt.data")

#: Config keys named in error messages (the dataset config group's preprocess block).
KEY_MIN_USERS_PER_ITEM = "dataset.preprocess.min_users_per_item"
KEY_MIN_ITEMS_PER_USER = "dataset.preprocess.min_items_per_user"
KEY_MIN_RATING = "dataset.preprocess.min_rating"


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


def _has_duplicates(keys: np.ndarray) -> bool:
    return bool(keys.size) and pl.Series(keys).n_unique() != keys.size


def _dedupe_mask(keys: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """bool mask: the earliest row of each pair key (ties: first in input order)."""
    keep = np.ones(keys.shape[0], dtype=bool)
    if not _has_duplicates(keys):
        return keep
    order = order_by(keys, timestamps)
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
    drop_latest: float = 0.0,
) -> PreparedSplit:
    """Run rating filter → dedupe → filter → reindex → split on a canonical frame and return the split.

    ``split_kind``/``split_seed``: see :func:`split_interactions` (the default is the paper's).
    ``min_rating``: keep only the interactions whose ``rating`` is ≥ it (None: keep all).
    ``drop_latest``: first cut off the latest fraction of all interactions (the history ends
    earlier; :func:`lopt.data.split.earliest_mask`), for a study's extra splits.

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
    ratio_fraction(drop_latest, KEY_DROP_LATEST)
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

    keep = earliest_mask(timestamps, drop_latest)
    if keep is not None:
        stage = _Stage("drop latest", len(users))
        users, items, timestamps = users[keep], items[keep], timestamps[keep]
        stage.done(len(users), f"{KEY_DROP_LATEST}={drop_latest}")

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
