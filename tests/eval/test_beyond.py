"""Beyond-accuracy statistics of a test pass against a plain per-user transcription."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lopt.eval import RankingEvaluator
from lopt.eval.beyond import (
    flatten_beyond,
    gini,
    popularity_percentile,
    quantile_buckets,
    quintile_rows,
)
from tests.helpers.evaluation import evaluate, evaluate_per_user
from tests.helpers.splits import make_split


def test_helpers():
    assert gini(np.array([5, 5, 5, 5])) == 0.0
    assert gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)  # (n−1)/n for one item
    assert math.isnan(gini(np.zeros(3)))
    assert popularity_percentile(np.array([1, 2, 2, 9])).tolist() == [12.5, 50.0, 50.0, 87.5]
    assert quantile_buckets(np.array([9, 0, 0, 3, 3, 1, 7, 8, 2, 5])).tolist() == [4, 0, 0, 2, 2, 1, 3, 4, 1, 3]


@pytest.mark.parametrize("protocol", ["lambdaopt", "standard"])
def test_beyond_matches_brute_force(protocol):
    split = make_split(n_users=40, n_items=30, seed=7)
    ks = (3, 10)
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(split.n_users, split.n_items, generator=g, dtype=torch.float64)
    ev = RankingEvaluator(split, "test", ks=ks, protocol=protocol)
    ev.track_beyond()
    per_user = evaluate_per_user(ev, lambda users: scores[users], block_size=6)
    beyond = ev.beyond_summary({"user": ev.users, **per_user})

    item_freq = split.item_train_frequency()
    excluded = np.zeros((split.n_users, split.n_items), dtype=bool)
    for part in ("train", "valid"):
        excluded[getattr(split, f"{part}_users"), getattr(split, f"{part}_items")] = True
    test = np.zeros_like(excluded)
    test[split.test_users, split.test_items] = True
    pct = popularity_percentile(item_freq)
    item_q = quantile_buckets(item_freq)
    for k in ks:
        counts = np.zeros(split.n_items, dtype=np.int64)
        for u in ev.users.tolist():
            s = scores[u].numpy().copy()
            s[excluded[u]] = -np.inf
            counts[np.argsort(-s, kind="stable")[: min(k, int((~excluded[u]).sum()))]] += 1
        assert beyond[f"coverage@{k}"] == pytest.approx((counts > 0).mean())
        assert beyond[f"popularity_percentile@{k}"] == pytest.approx((counts * pct).sum() / counts.sum())
        assert beyond[f"gini@{k}"] == pytest.approx(gini(counts))
        # item quintiles: share of the quintile's test pairs ranked within K (the protocol's rank)
        for row in beyond["item_quintiles"]:
            hits = pairs = 0
            for u in ev.users.tolist():
                allowed = ~excluded[u]
                for i in np.flatnonzero(test[u]):
                    if item_q[i] != row["quintile"] - 1:
                        continue
                    pairs += 1
                    above_neg = int(((scores[u].numpy() >= scores[u, i].item()) & allowed & ~test[u]).sum())
                    if protocol == "lambdaopt":
                        rank = 1 + above_neg
                    else:  # positives above it in the list, ties among positives by any order
                        better_pos = int(((scores[u].numpy() > scores[u, i].item()) & test[u]).sum())
                        rank = 1 + better_pos + above_neg
                    hits += rank <= k
            assert row["test_pairs"] == pairs
            assert row[f"recall@{k}"] == pytest.approx(hits / pairs if pairs else math.nan, nan_ok=True)
    # user quintiles: means of the per-user metrics over equal-sized frequency groups
    user_q = quantile_buckets(split.user_train_frequency()[ev.users.numpy()])
    name = f"ndcg@{ks[0]}"
    for row in beyond["user_quintiles"]:
        members = per_user[name].numpy()[user_q == row["quintile"] - 1]
        assert row["users"] == len(members)
        assert row[name] == pytest.approx(np.nanmean(members))
    flat = flatten_beyond(beyond)
    assert flat["test_beyond/coverage@3"] == beyond["coverage@3"]
    assert flat[f"test_beyond/user_q1/{name}"] == beyond["user_quintiles"][0][name]


def test_no_tracking_without_track_beyond():
    split = make_split(seed=2)
    ev = RankingEvaluator(split, "test", ks=(5,))
    evaluate(ev, lambda users: torch.zeros(len(users), split.n_items))
    assert ev.beyond_summary({}) == {}


def test_quintile_rows_tabulate_both_sides() -> None:
    beyond = {
        "coverage@5": 0.5,
        "user_quintiles": [{"quintile": q, "users": 2, "auc": q / 10} for q in range(1, 6)],
        "item_quintiles": [{"quintile": q, "users": 3, "auc": q / 20} for q in range(1, 6)],
    }
    columns, rows = quintile_rows(beyond)
    assert columns == ["side", "quintile", "users", "auc"]
    assert rows[0] == ["user", 1, 2, 0.1] and rows[-1] == ["item", 5, 3, 0.25] and len(rows) == 10
    assert set(flatten_beyond(beyond, quintiles=False)) == {"test_beyond/coverage@5"}
