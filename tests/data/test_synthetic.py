"""Synthetic generator: determinism, exact sizes, no duplicates, long tails, planted structure."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from lopt.data.synthetic import generate_interactions
from lopt.types import CANONICAL_COLUMNS

DEFAULT = dict(
    n_users=2000, n_items=1000, n_interactions=60_000, rank=8, user_alpha=0.6, item_alpha=0.9, noise=0.3, seed=0
)  # = conf/dataset/synthetic.yaml


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return generate_interactions(**DEFAULT)


def test_schema_sizes_and_guarantees(frame: pl.DataFrame) -> None:
    assert tuple(frame.columns) == CANONICAL_COLUMNS
    assert all(dtype == pl.Int64 for dtype in frame.dtypes)
    assert frame.height == DEFAULT["n_interactions"]
    assert frame.select(pl.struct("user", "item").is_duplicated().any()).item() is False
    per_user = frame.group_by("user").len()
    assert per_user.height == DEFAULT["n_users"] and per_user["len"].min() >= 3
    assert frame["item"].min() >= 0 and frame["item"].max() < DEFAULT["n_items"]
    increasing = frame.select((pl.col("timestamp").diff().over("user").drop_nulls() > 0).all())
    assert increasing.item()


def test_deterministic_from_seed(frame: pl.DataFrame) -> None:
    assert frame.equals(generate_interactions(**DEFAULT))
    other = generate_interactions(**{**DEFAULT, "seed": 1})
    assert other.height == frame.height and not other.equals(frame)


def test_long_tails(frame: pl.DataFrame) -> None:
    items = np.sort(frame.group_by("item").len()["len"].to_numpy())[::-1]
    assert items[: len(items) // 10].sum() / items.sum() > 0.3  # uniform would be 0.1
    users = frame.group_by("user").len()["len"]
    assert users.max() > 5 * users.median()


def test_planted_low_rank_beats_popularity(frame: pl.DataFrame) -> None:
    """A rank-8 truncated SVD of each user's older 80% ranks the newest 20% far better than
    item popularity does (HR@50 over the items the user has not seen)."""
    n_users, n_items = DEFAULT["n_users"], DEFAULT["n_items"]
    ranked = frame.with_columns(pl.int_range(pl.len()).over("user").alias("pos"), pl.len().over("user").alias("n"))
    is_test = pl.col("pos") >= pl.col("n") - (pl.col("n") * 0.2).floor()
    train, test = ranked.filter(~is_test), ranked.filter(is_test)
    x = np.zeros((n_users, n_items), np.float32)
    x[train["user"].to_numpy(), train["item"].to_numpy()] = 1
    held = np.zeros_like(x)
    held[test["user"].to_numpy(), test["item"].to_numpy()] = 1
    top_right = np.linalg.eigh(x.T @ x)[1][:, -8:]  # top-8 right singular vectors of x
    svd = x @ top_right @ top_right.T  # = the rank-8 truncated SVD of x
    pop = np.broadcast_to(x.sum(0), x.shape)

    def hit_rate(scores: np.ndarray, k: int = 50) -> float:
        scores = np.where(x > 0, -np.inf, scores)
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        has = held.sum(1) > 0
        return float((np.take_along_axis(held, top, 1).sum(1)[has] / held.sum(1)[has]).mean())

    assert hit_rate(svd) > 1.5 * hit_rate(pop)


def test_edge_sizes() -> None:
    full = generate_interactions(5, 4, 20, rank=2, seed=3)  # every pair
    assert full.height == 20 and full.select(pl.struct("user", "item").n_unique()).item() == 20
    one_each = generate_interactions(7, 50, 7, seed=3)
    assert one_each.group_by("user").len()["len"].to_list() == [1] * 7


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"n_interactions": 10}, "n_interactions"),
        ({"n_interactions": 10**9}, "n_interactions"),
        ({"noise": 0.0}, "noise"),
        ({"rank": 0}, "rank"),
        ({"item_alpha": -1.0}, "item_alpha"),
    ],
)
def test_invalid_parameters_name_the_key(change: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        generate_interactions(**{**DEFAULT, "n_users": 100, "n_items": 50, "n_interactions": 500, **change})
