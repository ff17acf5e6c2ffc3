"""Splits depend on the data only (row order never matters), and the standard protocol's split
kinds on hand-made examples."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from lopt.data.preprocess import prepare_split
from lopt.data.readers import read_movielens_tab
from lopt.data.split import item_order, split_interactions
from lopt.eval import RankingEvaluator
from tests.helpers.evaluation import evaluate

PAPER = {"min_users_per_item": 0, "min_items_per_user": 0, "iterative": False, "test_ratio": 0.2, "valid_ratio": 0.25}


def _pairs(split, part: str) -> set[tuple]:
    users = split.user_ids[getattr(split, f"{part}_users")]
    items = split.item_ids[getattr(split, f"{part}_items")]
    return set(zip(users.tolist(), items.tolist(), strict=True))


def _write_tab(path, frame: pl.DataFrame) -> None:
    frame.with_columns(pl.lit(4).alias("rating")).select("user", "item", "rating", "timestamp").write_csv(
        path, separator="\t", include_header=False
    )


def _scores(split) -> torch.Tensor:
    """A fixed scorer of raw (user, item) ids with many ties, independent of the indexing."""
    u = torch.from_numpy(split.user_ids.astype(np.int64)).unsqueeze(1)
    i = torch.from_numpy(split.item_ids.astype(np.int64)).unsqueeze(0)
    return ((u * 7 + i * 13) % 5).double()


@pytest.mark.parametrize("kind", ["temporal_user", "temporal_global", "random_user", "leave_one_out"])
def test_shuffled_file_gives_the_same_split_and_metrics(tmp_path, kind):
    rng = np.random.default_rng(0)
    n = 3000
    frame = pl.DataFrame(
        {
            "user": rng.integers(1, 60, n),
            "item": rng.integers(1, 200, n),
            "timestamp": rng.integers(0, 8, n) * 1000,  # 8 distinct times: ties everywhere
        }
    )
    _write_tab(tmp_path / "a.data", frame)
    _write_tab(tmp_path / "b.data", frame[rng.permutation(n)])
    a = prepare_split(read_movielens_tab(tmp_path / "a.data"), **PAPER, split_kind=kind)
    b = prepare_split(read_movielens_tab(tmp_path / "b.data"), **PAPER, split_kind=kind)
    for part in ("train", "valid", "test"):  # the same pairs in the same order (training draws follow it)
        listed = [split.user_ids[getattr(split, f"{part}_users")].tolist() for split in (a, b)]
        items = [split.item_ids[getattr(split, f"{part}_items")].tolist() for split in (a, b)]
        assert listed[0] == listed[1] and items[0] == items[1], part
    assert len(_pairs(a, "test")) > 0
    for which in ("valid", "test"):
        got = [evaluate(RankingEvaluator(s, which, ks=(5, 20)), lambda users, s=s: _scores(s)[users]) for s in (a, b)]
        assert got[0] == got[1]


def test_timestamp_ties_broken_by_item_id_numerically():
    # user 1: four items at one time; numeric order 2 < 10 < 30 < 100 (as strings: "10" < "100" < "2" < "30")
    rows = {"user": [1, 1, 1, 1], "item": [100, 2, 30, 10], "timestamp": [5, 5, 5, 5]}
    params = {**PAPER, "test_ratio": 0.25, "valid_ratio": 0.34}
    ints = prepare_split(pl.DataFrame(rows), **params)
    assert _pairs(ints, "test") == {(1, 100)} and _pairs(ints, "valid") == {(1, 30)}
    # the same ids as strings that are all numeric: still numeric order
    strings = prepare_split(pl.DataFrame({**rows, "item": [str(x) for x in rows["item"]]}), **params)
    assert _pairs(strings, "test") == {(1, "100")} and _pairs(strings, "valid") == {(1, "30")}
    # any non-numeric id: string order ("10" < "100" < "2" < "30" < "x")
    mixed = prepare_split(
        pl.DataFrame({"user": [1] * 5, "item": ["100", "2", "30", "10", "x"], "timestamp": [5] * 5}),
        **{**PAPER, "test_ratio": 0.2, "valid_ratio": 0.25},
    )
    assert _pairs(mixed, "test") == {(1, "x")} and _pairs(mixed, "valid") == {(1, "30")}


def test_item_order_ranks():
    assert item_order(np.array([3, 5, 9])).tolist() == [0, 1, 2]
    assert item_order(np.array(["10", "100", "2", "30"])).tolist() == [1, 3, 0, 2]
    assert item_order(np.array(["10", "100", "2", "b"])).tolist() == [0, 1, 2, 3]


def _hand() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # user 0: 5 items at times 1..5; user 1: 2 items; user 2: 1 item; rows interleaved
    rows = [(0, 10, 1), (1, 20, 3), (0, 11, 2), (2, 30, 9), (0, 12, 3), (1, 21, 4), (0, 13, 4), (0, 14, 5)]
    users, items, ts = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
    return users, items, ts


def _parts(kind, **kw) -> list[set]:
    users, items, ts = _hand()
    rows = split_interactions(users, items, ts, kind, kw.pop("test_ratio", 0.2), kw.pop("valid_ratio", 0.25), **kw)
    return [set(zip(users[r].tolist(), items[r].tolist(), strict=True)) for r in rows]


def test_temporal_user_split_hand_made():
    train, valid, test = _parts("temporal_user", test_ratio=0.2, valid_ratio=0.25)
    # user 0: ⌊5·0.2⌋ = 1 test (14), ⌊4·0.25⌋ = 1 valid (13); users 1, 2 keep everything in train
    assert test == {(0, 14)} and valid == {(0, 13)}
    assert train == {(0, 10), (0, 11), (0, 12), (1, 20), (1, 21), (2, 30)}


def test_leave_one_out_split_hand_made():
    train, valid, test = _parts("leave_one_out")
    assert test == {(0, 14), (1, 21)}  # users with ≥ 2 interactions give their latest
    assert valid == {(0, 13)}  # users with ≥ 3 give the one before
    assert train == {(0, 10), (0, 11), (0, 12), (1, 20), (2, 30)}


def test_temporal_global_split_hand_made():
    # 8 interactions by (time, user, item): 10@1 11@2 12@3 20@3 13@4 21@4 14@5 30@9
    train, valid, test = _parts("temporal_global", test_ratio=0.25, valid_ratio=0.34)
    assert test == {(0, 14), (2, 30)}  # ⌊8·0.25⌋ = 2 latest
    assert valid == {(0, 13), (1, 21)}  # ⌊6·0.34⌋ = 2 next latest (tie at time 4: user 0 before 1)
    assert train == {(0, 10), (0, 11), (0, 12), (1, 20)}


def test_random_user_split_counts_and_seed():
    users = np.repeat(np.arange(4), 10)
    items = np.tile(np.arange(10), 4)
    ts = np.tile(np.arange(10), 4)
    first = split_interactions(users, items, ts, "random_user", 0.2, 0.25, seed=1)
    again = split_interactions(users, items, ts, "random_user", 0.2, 0.25, seed=1)
    other = split_interactions(users, items, ts, "random_user", 0.2, 0.25, seed=2)
    assert all(np.array_equal(np.sort(a), np.sort(b)) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(np.sort(first.test), np.sort(other.test))
    for u in range(4):  # per user the temporal counts: 2 test, 2 valid, 6 train
        assert [int((users[r] == u).sum()) for r in first] == [6, 2, 2]
    temporal = split_interactions(users, items, ts, "temporal_user", 0.2, 0.25)
    assert not np.array_equal(np.sort(first.test), np.sort(temporal.test))  # not the latest ones


def test_unknown_split_kind():
    users, items, ts = _hand()
    with pytest.raises(ValueError, match="protocol.split.kind"):
        split_interactions(users, items, ts, "by_rating", 0.2, 0.25)


def test_ml100k_split_ignores_row_order(ml100k_path) -> None:
    """Real data: many same-second ratings per user; any row order gives the same split."""
    frame = read_movielens_tab(ml100k_path)
    a = prepare_split(frame, **PAPER)
    b = prepare_split(frame[np.random.default_rng(1).permutation(frame.height)], **PAPER)
    for part in ("train", "valid", "test"):
        assert np.array_equal(getattr(a, f"{part}_users"), getattr(b, f"{part}_users")), part
        assert np.array_equal(getattr(a, f"{part}_items"), getattr(b, f"{part}_items")), part


def test_drop_latest_cuts_the_history_at_a_point_in_time() -> None:
    """floor(n·drop) of the latest interactions go, exactly, except that a timestamp is never
    split: the interactions tied at the last kept time all stay."""
    from lopt.data.split import earliest_mask

    ts = np.array([5, 1, 9, 3, 7, 2, 8, 4, 6, 10], dtype=np.int64)
    assert earliest_mask(ts, 0.0) is None
    keep = earliest_mask(ts, 0.2)
    assert keep.sum() == 8 and set(ts[keep].tolist()) == set(range(1, 9))
    tied = np.array([1, 2, 3, 3, 3, 4], dtype=np.int64)
    assert earliest_mask(tied, 0.5).tolist() == [True, True, True, True, True, False]  # 3 dropped → cut at 3
    rng = np.random.default_rng(0)
    perm = rng.permutation(ts.size)
    assert np.array_equal(earliest_mask(ts[perm], 0.3), earliest_mask(ts, 0.3)[perm])
    with pytest.raises(ValueError, match="protocol.split.drop_latest"):
        earliest_mask(ts, 1.0)


def test_an_earlier_split_is_the_same_rule_on_a_shorter_history() -> None:
    """prepare_split with drop_latest equals prepare_split of the frame without its latest rows,
    and its test period ends before the full split's does."""
    rng = np.random.default_rng(3)
    n = 600
    frame = pl.DataFrame(
        {
            "user": rng.integers(0, 30, n),
            "item": rng.integers(0, 40, n),
            "timestamp": rng.permutation(n).astype(np.int64) * 10,
        }
    )
    cut = frame.filter(pl.col("timestamp") < 540 * 10)  # the latest 60 of 600 distinct times
    a = prepare_split(frame, **PAPER, drop_latest=0.1)
    b = prepare_split(cut, **PAPER)
    for part in ("train", "valid", "test"):
        assert _pairs(a, part) == _pairs(b, part)
    full = prepare_split(frame, **PAPER)
    assert _pairs(a, "test") != _pairs(full, "test")
