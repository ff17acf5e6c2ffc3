"""The standard protocol's metrics against torchmetrics' retrieval metrics, per user, on random
cases with ties; hand-made cases document where the definitions differ."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.retrieval import (
    retrieval_average_precision,
    retrieval_hit_rate,
    retrieval_normalized_dcg,
    retrieval_precision,
    retrieval_recall,
    retrieval_reciprocal_rank,
)

from lopt.eval import full_ranking_metrics, metric_names, ranking_metrics


def random_case(n_users: int, n_items: int, seed: int, levels: int):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (n_users, n_items), generator=g).double()  # many ties
    u = torch.rand(n_users, n_items, generator=g)
    positives = u < 0.15
    candidates = u >= 0.25  # the rest (0.15 ≤ u < 0.25) is "seen": in no list
    positives[:, 0] = True  # every user has a positive
    candidates[:, 0] = False
    return scores, positives, candidates


def torchmetrics_per_user(scores, positives, candidates, ks, ties):
    """torchmetrics on each user's list P_u ∪ N_u. The tie rule is applied by shifting the
    integer scores: 2s − target (a tied negative ranks first) or 2s + target (the paper's rule);
    what remains tied has equal targets, so the list order inside it changes no metric. Scores
    are made positive: retrieval_average_precision drops targets whose pred is ≤ 0."""
    out = {name: [] for name in metric_names(ks, "standard") if name != "auc"}
    sign = -1.0 if ties == "pessimistic" else 1.0
    for s, p, c in zip(scores, positives, candidates, strict=True):
        listed = p | c
        target = p[listed]
        preds = 2.0 * s[listed] + sign * target.double() + 10.0
        out["mrr"].append(float(retrieval_reciprocal_rank(preds, target)))
        n_pos = int(target.sum())
        for k in ks:
            hits = int(target[preds.argsort(descending=True, stable=True)][:k].sum())
            out[f"recall@{k}"].append(float(retrieval_recall(preds, target, top_k=k)))
            out[f"precision@{k}"].append(float(retrieval_precision(preds, target, top_k=k)))
            out[f"ndcg@{k}"].append(float(retrieval_normalized_dcg(preds, target, top_k=k)))
            out[f"hr@{k}"].append(float(retrieval_hit_rate(preds, target, top_k=k)))
            # torchmetrics averages the precisions over the hits in the top K; lopt over
            # min(|P_u|, K) (as RecBole does): rescale to compare the same sum.
            ap = float(retrieval_average_precision(preds, target, top_k=k))
            out[f"map@{k}"].append(ap * hits / min(n_pos, k))
    return out


@pytest.mark.parametrize("ties", ["pessimistic", "paper"])
@pytest.mark.parametrize("seed,levels", [(0, 3), (1, 6), (2, 50)])
def test_matches_torchmetrics_per_user(ties, seed, levels):
    ks = (1, 3, 10, 40)
    scores, pos, cand = random_case(12, 60, seed, levels)
    ours = full_ranking_metrics(scores, pos, cand, ks, ties=ties)
    want = torchmetrics_per_user(scores, pos, cand, ks, ties)
    assert list(ours) == metric_names(ks, "standard")
    for name, values in want.items():
        torch.testing.assert_close(
            ours[name],
            torch.tensor(values, dtype=torch.float64),
            rtol=1e-6,
            atol=1e-6,
            msg=lambda m, name=name: f"{name}: {m}",
        )
    # AUC is the lambdaopt protocol's (positives against the candidates only)
    torch.testing.assert_close(ours["auc"], ranking_metrics(scores, pos, cand, ks, ties=ties)["auc"])


def _one_user(list_positions_of_positives: list[int], n_list: int):
    """One user whose list (no seen items) has positives at the given 1-based positions."""
    scores = torch.arange(n_list, 0, -1, dtype=torch.float64).unsqueeze(0)  # position r has score n−r+1
    pos = torch.zeros(1, n_list, dtype=torch.bool)
    pos[0, [r - 1 for r in list_positions_of_positives]] = True
    return scores, pos, ~pos


def test_ideal_dcg_normalization_and_the_lambdaopt_difference():
    # Held-out items at full-list positions 3 and 4, K = 3.
    scores, pos, cand = _one_user([3, 4], 10)
    std = full_ranking_metrics(scores, pos, cand, ks=(3,))
    assert std["recall@3"].item() == 0.5 and std["hr@3"].item() == 1.0
    assert std["precision@3"].item() == pytest.approx(1 / 3)
    ideal = 1 + 1 / math.log2(3)  # two positives: ideal DCG over min(|P|, K) = 2 positions
    assert std["ndcg@3"].item() == pytest.approx((1 / math.log2(4)) / ideal)  # ≈ 0.307
    assert std["mrr"].item() == pytest.approx(1 / 3)
    # The lambdaopt protocol ranks each positive against the candidates only: both are 3rd.
    paper = ranking_metrics(scores, pos, cand, ks=(3,))
    assert paper["hr@3"].item() == 1.0 and paper["ndcg@3"].item() == pytest.approx(0.5)
    # torchmetrics' NDCG normalizes the same way as lopt's standard protocol
    target = pos[0]
    assert float(retrieval_normalized_dcg(scores[0], target, top_k=3)) == pytest.approx(std["ndcg@3"].item())


def test_map_normalization_differs_from_torchmetrics():
    # Three positives at positions 1, 3 and 10; K = 5: precisions at the hits are 1/1 and 2/3.
    scores, pos, cand = _one_user([1, 3, 10], 12)
    ours = full_ranking_metrics(scores, pos, cand, ks=(5,))
    assert ours["map@5"].item() == pytest.approx((1 + 2 / 3) / 3)  # / min(|P|, K) (RecBole)
    tm = float(retrieval_average_precision(scores[0], pos[0], top_k=5))
    assert tm == pytest.approx((1 + 2 / 3) / 2)  # torchmetrics: / hits in the top K
    # with K past the list, every positive is a hit and the two agree
    assert full_ranking_metrics(scores, pos, cand, ks=(12,))["map@12"].item() == pytest.approx(
        float(retrieval_average_precision(scores[0], pos[0]))
    )


def test_leave_one_out_single_positive():
    scores, pos, cand = _one_user([4], 20)
    out = full_ranking_metrics(scores, pos, cand, ks=(3, 5))
    assert out["recall@3"].item() == 0.0 and out["hr@3"].item() == 0.0 and out["map@3"].item() == 0.0
    assert out["recall@5"].item() == 1.0 and out["hr@5"].item() == 1.0
    assert out["ndcg@5"].item() == pytest.approx(1 / math.log2(5))  # ideal DCG = 1
    assert out["map@5"].item() == pytest.approx(1 / 4) and out["mrr"].item() == pytest.approx(1 / 4)
    assert out["precision@5"].item() == pytest.approx(1 / 5)


def test_constant_scorer_gets_zero_and_rows_without_positives_are_nan():
    pos = torch.zeros(3, 200, dtype=torch.bool)
    pos[0, :5] = True
    pos[1, 7] = True
    out = full_ranking_metrics(torch.zeros(3, 200), pos, ~pos, ks=(10, 50))
    for name, values in out.items():
        assert math.isnan(values[2].item()), name
        if name != "mrr":
            assert torch.all(values[:2] == 0.0), name
    # MRR has no cut-off: the best positive comes after every tied candidate
    assert out["mrr"][:2].tolist() == pytest.approx([1 / 196, 1 / 200])
