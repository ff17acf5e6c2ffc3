"""Preprocessing: dedupe, frequency filter, re-index, time-ordered leave-ratio-out split."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lopt.data.preprocess import prepare_split
from lopt.data.split import floor_times, order_by, ratio_fraction, split_leave_ratio_out
from lopt.types import PreparedSplit
from tests.helpers.preprocess import dedupe, filter_frequency, reindex

PAPER = dict(min_users_per_item=0, min_items_per_user=0, iterative=False, test_ratio=0.2, valid_ratio=0.25)


def _frame(rows: list[tuple], extra: list | None = None) -> pl.DataFrame:
    users, items, ts = zip(*rows, strict=True)
    data = {"user": list(users), "item": list(items), "timestamp": list(ts)}
    if extra is not None:
        data["tag"] = extra
    return pl.DataFrame(data, schema_overrides={"timestamp": pl.Int64})


def _read_ml100k(path: Path) -> pl.DataFrame:
    frame = pl.read_csv(path, separator="\t", has_header=False, new_columns=["user", "item", "rating", "timestamp"])
    return frame.select("user", "item", "timestamp")


# --------------------------------------------------------------------------- dedupe


def test_dedupe_keeps_earliest_and_first_of_ties_in_file_order() -> None:
    rows = [(1, 10, 50), (2, 10, 7), (1, 10, 30), (1, 11, 5), (1, 10, 30), (2, 10, 9), (3, 12, 1)]
    out = dedupe(_frame(rows, extra=["a", "b", "c", "d", "e", "f", "g"]))
    # (1,10): earliest ts 30 appears at rows c and e → c; (2,10): ts 7 → b. File order kept.
    assert out.rows() == [(2, 10, 7, "b"), (1, 10, 30, "c"), (1, 11, 5, "d"), (3, 12, 1, "g")]


def test_dedupe_string_ids_and_no_duplicates_is_identity() -> None:
    frame = _frame([("u1", "i1", 3), ("u1", "i1", 2), ("u2", "i1", 1)])
    assert dedupe(frame).rows() == [("u1", "i1", 2), ("u2", "i1", 1)]
    unique = _frame([(1, 1, 1), (1, 2, 1), (2, 1, 0)])
    assert dedupe(unique).equals(unique)


# --------------------------------------------------------------------------- filter


def _reference_filter(rows: list[tuple], mu: int, mi: int, iterative: bool) -> list[tuple]:
    """Set-based reference of the protocol's filter (items first, then users)."""
    while True:
        before = len(rows)
        users_of: dict = {}
        for u, i, _ in rows:
            users_of.setdefault(i, set()).add(u)
        rows = [r for r in rows if len(users_of[r[1]]) >= mu]
        items_of: dict = {}
        for u, i, _ in rows:
            items_of.setdefault(u, set()).add(i)
        rows = [r for r in rows if len(items_of[r[0]]) >= mi]
        if not iterative or len(rows) == before:
            return rows


def test_filter_one_pass_differs_from_iterative_kcore() -> None:
    rows = [
        (1, "a", 1),
        (1, "b", 2),
        (2, "a", 3),
        (2, "b", 4),
        (3, "b", 5),
        (3, "c", 6),
        (4, "c", 7),
    ]
    frame = _frame(rows)
    one = filter_frequency(frame, 2, 2)
    # Items all have ≥ 2 users; user 4 (one item) goes. Nothing more in one pass.
    assert one.rows() == rows[:6]
    core = filter_frequency(frame, 2, 2, iterative=True)
    # Then item c has one user → goes, then user 3 has one item → goes.
    assert core.rows() == rows[:4]


@pytest.mark.parametrize("iterative", [False, True])
def test_filter_matches_reference_on_random_frames(iterative: bool) -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 120))
        rows = [
            (int(u), int(i), int(t))
            for u, i, t in zip(rng.integers(0, 15, n), rng.integers(0, 12, n), rng.integers(0, 50, n), strict=True)
        ]  # contains duplicate pairs: counts must be of distinct users/items
        mu, mi = int(rng.integers(0, 5)), int(rng.integers(0, 5))
        got = filter_frequency(_frame(rows), mu, mi, iterative=iterative).rows()
        assert got == _reference_filter(rows, mu, mi, iterative), (trial, mu, mi)


def test_filter_rejects_negative_threshold() -> None:
    with pytest.raises(ValueError, match="dataset.preprocess.min_users_per_item"):
        filter_frequency(_frame([(1, 1, 1)]), -1, 0)


# --------------------------------------------------------------------------- reindex


def test_reindex_sorts_raw_ids() -> None:
    frame = _frame([(30, 7, 1), (10, 5, 2), (20, 7, 3), (10, 9, 4)])
    out = reindex(frame)
    assert out.user_ids.tolist() == [10, 20, 30] and out.user_ids.dtype == np.int64
    assert out.item_ids.tolist() == [5, 7, 9]
    assert out.frame.schema["user"] == pl.Int32 and out.frame.schema["item"] == pl.Int32
    assert out.frame["user"].to_list() == [2, 0, 1, 0]
    assert out.frame["item"].to_list() == [1, 0, 1, 2]
    strings = reindex(_frame([("b", "y", 1), ("a", "x", 2), ("c", "x", 3)]))
    assert strings.user_ids.dtype.kind == "U" and strings.user_ids.tolist() == ["a", "b", "c"]
    assert strings.frame["user"].to_list() == [1, 0, 2]
    # Far-apart integer ids take the non-table path.
    wide = reindex(_frame([(10**15, 1, 0), (-5, 2**40, 0), (3, 1, 0)]))
    assert wide.user_ids.tolist() == [-5, 3, 10**15]
    assert wide.frame["user"].to_list() == [2, 0, 1]
    assert wide.frame["item"].to_list() == [0, 1, 0]


# --------------------------------------------------------------------------- split


def _hand_rows() -> tuple[list[tuple], dict[int, tuple[list, list, list]]]:
    """Interleaved users with 1, 2, 4, 5, 10 interactions and the expected (train, valid, test)."""
    per_user = {
        1: [(100, 5)],
        2: [(200, 4), (201, 4)],
        4: [(400, 8), (401, 2), (402, 6), (403, 4)],
        5: [(500, 9), (501, 3), (502, 9), (503, 3), (504, 1)],
        10: [(1000 + k, 7) for k in range(10)],  # all tied: input order decides
    }
    expected = {
        1: ([100], [], []),
        2: ([200, 201], [], []),  # ⌊2·0.2⌋ = 0 test, ⌊2·0.25⌋ = 0 valid
        4: ([401, 403, 402], [400], []),  # ⌊0.8⌋ = 0 test, ⌊4·0.25⌋ = 1 valid
        5: ([504, 501, 503], [500], [502]),  # ties at 9: 502 comes later in input → test
        10: ([1000, 1001, 1002, 1003, 1004, 1005], [1006, 1007], [1008, 1009]),
    }
    queues = {u: list(r) for u, r in per_user.items()}
    rows: list[tuple] = []
    while any(queues.values()):  # round-robin interleaving of users in the input
        for u, queue in queues.items():
            if queue:
                item, ts = queue.pop(0)
                rows.append((u, item, ts))
    return rows, expected


def test_split_hand_made_example() -> None:
    rows, expected = _hand_rows()
    users = np.array([r[0] for r in rows])
    items = np.array([r[1] for r in rows])
    ts = np.array([r[2] for r in rows], dtype=np.int64)
    split = split_leave_ratio_out(users, items, ts, 0.2, 0.25)
    for u, (train, valid, test) in expected.items():
        for rows_idx, want in zip(split, (train, valid, test), strict=True):
            got = items[rows_idx][users[rows_idx] == u].tolist()
            assert got == want, (u, got, want)
    assert sorted(np.concatenate(split).tolist()) == list(range(len(rows)))


def test_prepare_split_hand_made_example() -> None:
    rows, expected = _hand_rows()
    split = prepare_split(_frame(rows), **PAPER)
    assert isinstance(split, PreparedSplit)
    assert split.user_ids.tolist() == [1, 2, 4, 5, 10]
    for part, k in (("train", 0), ("valid", 1), ("test", 2)):
        users = getattr(split, f"{part}_users")
        items = getattr(split, f"{part}_items")
        assert users.dtype == np.int32 and items.dtype == np.int32
        for index, raw_user in enumerate(split.user_ids.tolist()):
            got = split.item_ids[items[users == index]].tolist()
            assert got == expected[raw_user][k], (part, raw_user)


def test_floor_is_exact_and_matches_python_int_for_paper_ratios() -> None:
    n = np.arange(0, 200_000)
    for ratio in (0.2, 0.25):
        reference = np.array([int(k * ratio) for k in n.tolist()])
        assert np.array_equal(floor_times(n, ratio_fraction(ratio, "k")), reference)
    # Where float error flips Python's floor (100 · 0.29 = 28.999…), the exact floor holds.
    assert int(100 * 0.29) == 28
    assert ratio_fraction(0.29, "k") == Fraction(29, 100)
    assert floor_times(np.array([100]), ratio_fraction(0.29, "k")).tolist() == [29]


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), "0.2", None, True])
def test_invalid_ratio_names_the_key(bad: object) -> None:
    frame = _frame([(1, 1, 1)])
    with pytest.raises(ValueError, match=r"dataset\.preprocess\.test_ratio"):
        prepare_split(frame, **{**PAPER, "test_ratio": bad})
    with pytest.raises(ValueError, match=r"dataset\.preprocess\.valid_ratio"):
        prepare_split(frame, **{**PAPER, "valid_ratio": bad})


def test_empty_after_filter_names_the_config_keys() -> None:
    frame = _frame([(1, 1, 1), (1, 2, 2), (2, 1, 3)])
    params = {**PAPER, "min_users_per_item": 5, "min_items_per_user": 3}
    with pytest.raises(ValueError, match="dataset.preprocess.min_users_per_item=5") as info:
        prepare_split(frame, **params)
    assert "dataset.preprocess.min_items_per_user=3" in str(info.value)


def test_prepare_split_rejects_missing_columns_and_nulls() -> None:
    with pytest.raises(ValueError, match="timestamp"):
        prepare_split(pl.DataFrame({"user": [1], "item": [1]}), **PAPER)
    frame = pl.DataFrame({"user": [1, None], "item": [1, 2], "timestamp": [1, 2]})
    with pytest.raises(ValueError, match="null"):
        prepare_split(frame, **PAPER)


def test_prepare_split_logs_one_line_per_stage(caplog: pytest.LogCaptureFixture) -> None:
    rows, _ = _hand_rows()
    with caplog.at_level(logging.INFO, logger="lopt.data"):
        prepare_split(_frame(rows), **PAPER)
    messages = [r.getMessage() for r in caplog.records if r.name == "lopt.data"]
    for stage in ("dedupe", "filter", "reindex", "split"):
        assert sum(f"preprocess {stage}" in m for m in messages) == 1, messages


def test_prepare_split_string_ids_with_duplicates_and_filter() -> None:
    rows = [
        ("u2", "b", 5),
        ("u1", "a", 1),
        ("u1", "b", 2),
        ("u2", "a", 3),
        ("u1", "a", 0),
        ("u3", "c", 4),
    ]
    split = prepare_split(_frame(rows), **{**PAPER, "min_users_per_item": 2, "min_items_per_user": 2})
    assert split.user_ids.tolist() == ["u1", "u2"] and split.item_ids.tolist() == ["a", "b"]
    assert split.n_users == 2 and split.n_items == 2
    assert len(split.train_users) == 4  # 2 interactions per user: all train


# --------------------------------------------------------------------------- ml-100k


@pytest.mark.slow
def test_ml100k_split_invariants(ml100k_path: Path) -> None:
    raw = _read_ml100k(ml100k_path)
    split = prepare_split(raw, **PAPER)
    assert (split.n_users, split.n_items) == (943, 1682)

    # Per user, sizes follow the floors exactly.
    n_u = np.bincount(
        np.concatenate([split.train_users, split.valid_users, split.test_users]),
        minlength=split.n_users,
    )
    n_test = n_u // 5  # ⌊n·0.2⌋ exactly
    n_valid = (n_u - n_test) // 4  # ⌊n'·0.25⌋ exactly
    assert np.array_equal(np.bincount(split.test_users, minlength=split.n_users), n_test)
    assert np.array_equal(np.bincount(split.valid_users, minlength=split.n_users), n_valid)
    assert np.array_equal(np.bincount(split.train_users, minlength=split.n_users), n_u - n_test - n_valid)

    # Disjoint and covering: the raw pairs of the three splits are exactly the file's pairs.
    parts = []
    for k, part in enumerate(("train", "valid", "test")):
        users, items = getattr(split, f"{part}_users"), getattr(split, f"{part}_items")
        parts.append(
            pl.DataFrame(
                {
                    "user": split.user_ids[users],
                    "item": split.item_ids[items],
                    "part": np.full(len(users), k),
                }
            )
        )
    labelled = pl.concat(parts)
    assert labelled.height == raw.height == labelled.select("user", "item").unique().height
    joined = raw.join(labelled, on=["user", "item"], how="inner")
    assert joined.height == raw.height

    # Time order per user: every test ts ≥ every valid ts ≥ every train ts.
    bounds = joined.group_by("user", "part").agg(
        pl.col("timestamp").min().alias("lo"), pl.col("timestamp").max().alias("hi")
    )
    wide = bounds.pivot(on="part", index="user", values=["lo", "hi"])
    for earlier, later in ((0, 1), (1, 2), (0, 2)):
        hi, lo = f"hi_{earlier}", f"lo_{later}"
        check = wide.filter(pl.col(hi).is_not_null() & pl.col(lo).is_not_null())
        assert check.height > 900  # ml-100k users all have ≥ 20 ratings, so every part exists
        assert (check[hi] <= check[lo]).all(), (earlier, later)


@pytest.mark.slow
@pytest.mark.parametrize("iterative", [False, True])
def test_ml100k_filter_matches_reference(ml100k_path: Path, iterative: bool) -> None:
    raw = _read_ml100k(ml100k_path)
    got = filter_frequency(raw, 50, 60, iterative=iterative)
    assert got.rows() == _reference_filter(raw.rows(), 50, 60, iterative)


def test_prepare_split_rejects_empty_input() -> None:
    empty = pl.DataFrame(schema={"user": pl.Int64, "item": pl.Int64, "timestamp": pl.Int64})
    with pytest.raises(ValueError, match="empty"):
        prepare_split(empty, **PAPER)


@pytest.mark.parametrize("ts_span", [50, 2**62])  # one-key fast path / three-key fallback
def test_time_order_is_stable_on_many_ties(ts_span: int) -> None:
    rng = np.random.default_rng(5)
    n = 200_000
    users = rng.integers(0, 300, n)
    ts = rng.integers(0, 50, n) * (ts_span // 50)  # few distinct timestamps: many ties
    order = order_by(users.astype(np.int64), ts)
    assert np.array_equal(order, np.lexsort((np.arange(n), ts, users)))


# --------------------------------------------------------------------------- min_rating, float timestamps


def _split_items(split: PreparedSplit, part: str) -> dict[int, list]:
    users, items = getattr(split, f"{part}_users"), getattr(split, f"{part}_items")
    return {int(split.user_ids[u]): split.item_ids[items[users == u]].tolist() for u in np.unique(users)}


def test_min_rating_keeps_interactions_rated_at_least_it(caplog: pytest.LogCaptureFixture) -> None:
    """Only ratings ≥ min_rating survive (before dedupe: a low re-rating of a pair is dropped, so
    the pair's time is that of its high rating); the stage is logged; None keeps everything."""
    frame = pl.DataFrame(
        {
            "user": [1, 1, 1, 1, 1, 2, 2],
            "item": [10, 11, 12, 13, 10, 10, 11],
            "timestamp": [5, 1, 2, 3, 0, 1, 2],
            "rating": [4.0, 5.0, 3.5, 4.5, 1.0, 4.0, 2.0],
        }
    )
    params = {**PAPER, "test_ratio": 0.34, "valid_ratio": 0.0}
    with caplog.at_level(logging.INFO, logger="lopt.data"):
        split = prepare_split(frame, **params, min_rating=4)
    assert split.item_ids.tolist() == [10, 11, 13] and split.user_ids.tolist() == [1, 2]
    # user 1 keeps 11 (t=1), 13 (t=3), 10 (t=5, its rating-1 copy at t=0 dropped): test = 10
    assert _split_items(split, "test") == {1: [10]} and _split_items(split, "train") == {1: [11, 13], 2: [10]}
    assert any("preprocess rating" in r.getMessage() and "min_rating=4" in r.getMessage() for r in caplog.records)
    everything = prepare_split(frame, **params, min_rating=None)
    assert everything.item_ids.tolist() == [10, 11, 12, 13]
    assert _split_items(everything, "test") == {1: [13]}  # (1, 10) now dates from its rating-1 copy at t=0
    assert prepare_split(frame.drop("rating"), **params).n_users == 2  # no rating needed when off


def test_min_rating_errors_name_the_key() -> None:
    frame = _frame([(1, 1, 1), (1, 2, 2)])
    with pytest.raises(ValueError, match=r"dataset\.preprocess\.min_rating=4 .* no 'rating' column"):
        prepare_split(frame, **PAPER, min_rating=4)
    rated = frame.with_columns(pl.Series("rating", [1.0, 2.0]))
    with pytest.raises(ValueError, match=r"no interaction is rated ≥ dataset\.preprocess\.min_rating=4.*1\.0 to 2\.0"):
        prepare_split(rated, **PAPER, min_rating=4)
    for bad in ("4", True, float("nan")):
        with pytest.raises(ValueError, match=r"dataset\.preprocess\.min_rating must be a number"):
            prepare_split(rated, **PAPER, min_rating=bad)


def test_float_timestamps_order_the_split() -> None:
    """Float timestamps (fractions of a second apart, and a float beside an integer-valued one)
    order the split as their values do, ties included; the result equals that of integer
    timestamps in the same order."""
    ts = [978300760.5, 978300760.25, 978300760.75, 978300761.0, 1.2e9, 978300760.25]
    frame = pl.DataFrame({"user": [1] * 5 + [2], "item": [1, 2, 3, 4, 5, 1], "timestamp": ts})
    params = {**PAPER, "test_ratio": 0.4, "valid_ratio": 0.34}
    split = prepare_split(frame, **params)
    assert _split_items(split, "test") == {1: [4, 5]}  # the two latest: 978300761.0 < 1.2e9
    assert _split_items(split, "valid") == {1: [3]}
    assert _split_items(split, "train") == {1: [2, 1], 2: [1]}  # 0.25 before 0.5
    ranks = frame.with_columns(pl.Series("timestamp", [2, 1, 3, 4, 5, 1]))
    same = prepare_split(ranks, **params)
    for part in ("train", "valid", "test"):
        assert _split_items(same, part) == _split_items(split, part)
    with pytest.raises(ValueError, match="finite"):
        prepare_split(frame.with_columns(pl.Series("timestamp", [float("nan")] * 6)), **params)
