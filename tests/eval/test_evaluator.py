"""RankingEvaluator: masks from a PreparedSplit, blockwise == full-matrix, NaN-ignoring means."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lopt.eval import RankingEvaluator, mean_ignoring_nan, ranking_metrics
from lopt.types import PreparedSplit
from tests.helpers.evaluation import aggregate, evaluate, evaluate_per_user
from tests.helpers.splits import make_split


def dense_masks(split: PreparedSplit, which: str, valid_candidates: str = "clean") -> tuple[torch.Tensor, torch.Tensor]:
    pos = np.zeros((split.n_users, split.n_items), dtype=bool)
    pos[getattr(split, f"{which}_users"), getattr(split, f"{which}_items")] = True
    seen = np.zeros_like(pos)
    clean_valid = which == "valid" and valid_candidates == "clean"
    for name in ("train", "valid") if clean_valid else ("train", "valid", "test"):
        seen[getattr(split, f"{name}_users"), getattr(split, f"{name}_items")] = True
    return torch.from_numpy(pos), torch.from_numpy(~seen)


@pytest.mark.parametrize("which", ["valid", "test"])
def test_masks_and_users(which):
    split = make_split()
    ev = RankingEvaluator(split, which)
    pos, cand = dense_masks(split, which)
    expected_users = torch.nonzero(pos.any(1)).squeeze(1)
    assert torch.equal(ev.users, expected_users)
    assert 0 not in ev.users.tolist()
    assert (1 in ev.users.tolist()) == (which == "valid")
    assert (2 in ev.users.tolist()) == (which == "test")
    users = torch.tensor([5, 0, 3, 3, 29])  # any order, repeats, users without positives
    got_pos, got_cand = ev.masks(users)
    assert torch.equal(got_pos, pos[users])
    assert torch.equal(got_cand, cand[users])
    # candidates exclude train and valid items; test items only when the test split is ranked
    for name in ("train", "valid", "test"):
        u = torch.from_numpy(getattr(split, f"{name}_users").astype(np.int64))
        i = torch.from_numpy(getattr(split, f"{name}_items").astype(np.int64))
        if name == "test" and which == "valid":
            assert cand[u, i].all()  # unknown at selection time: test items are candidates
        else:
            assert not cand[u, i].any()


def test_valid_candidates_clean_and_paper():
    split = make_split(seed=5)
    clean = RankingEvaluator(split, "valid")
    paper = RankingEvaluator(split, "valid", valid_candidates="paper")
    users = torch.arange(split.n_users)
    _, cand_clean = clean.masks(users)
    _, cand_paper = paper.masks(users)
    test = torch.zeros(split.n_users, split.n_items, dtype=torch.bool)
    test[torch.from_numpy(split.test_users.astype(np.int64)), torch.from_numpy(split.test_items.astype(np.int64))] = (
        True
    )
    assert test.any()
    assert torch.equal(cand_clean, cand_paper | test)  # the only difference: test items
    assert not (cand_paper & test).any()
    # the test split's candidates never include test items, whatever the option
    _, cand_test = RankingEvaluator(split, "test", valid_candidates="clean").masks(users)
    assert not (cand_test & test).any()
    # a scorer ranking test items first, valid items next: perfect only if test items are removed
    valid_pos, _ = clean.masks(users)
    scores = 2.0 * test.double() + valid_pos.double()
    assert evaluate(paper, lambda u: scores[u])["auc"] == 1.0
    assert evaluate(clean, lambda u: scores[u])["auc"] < 1.0
    with pytest.raises(ValueError, match="eval.valid_candidates"):
        RankingEvaluator(split, "valid", valid_candidates="none")


@pytest.mark.parametrize("which", ["valid", "test"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocks_equal_full_matrix(which, dtype):
    split = make_split(seed=1)
    ev = RankingEvaluator(split, which, ks=(1, 5, 100))
    g = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 4, (split.n_users, split.n_items), generator=g).to(dtype)  # ties
    pos, cand = dense_masks(split, which)
    full = ranking_metrics(scores[ev.users], pos[ev.users], cand[ev.users], ks=(1, 5, 100))
    blocked = evaluate_per_user(ev, lambda users: scores[users], block_size=7)
    assert list(blocked) == ev.metric_names == list(full)
    for name in full:
        torch.testing.assert_close(blocked[name], full[name], rtol=0, atol=0, equal_nan=True)
    # a single block_metrics call over all users, including users without positives
    everyone = torch.arange(split.n_users)
    direct = ev.block_metrics(everyone, scores)
    assert math.isnan(direct["auc"][0].item())
    for name in full:
        torch.testing.assert_close(direct[name][ev.users], full[name], rtol=0, atol=0, equal_nan=True)
    assert evaluate(ev, lambda users: scores[users], block_size=4) == pytest.approx(aggregate(full))


def test_mean_ignoring_nan():
    assert mean_ignoring_nan(torch.tensor([0.5, math.nan, 1.0])) == pytest.approx(0.75)
    assert math.isnan(mean_ignoring_nan(torch.tensor([math.nan, math.nan], dtype=torch.float64)))
    assert math.isnan(mean_ignoring_nan(torch.empty(0)))
    assert mean_ignoring_nan(torch.tensor([[0.25]])) == 0.25
    # float32 entries are averaged in float64: the mean of 0.1f and 0.2f, not a float32 rounding
    values = torch.tensor([0.1, 0.2], dtype=torch.float32)
    assert mean_ignoring_nan(values) == (float(values[0]) + float(values[1])) / 2
    assert isinstance(mean_ignoring_nan(torch.tensor([1, 2])), float)


def test_perfect_and_worst_scores():
    split = make_split(seed=3)
    ev = RankingEvaluator(split, "test", ks=(1000,))
    pos, _ = dense_masks(split, "test")
    best = evaluate(ev, lambda users: pos[users].double())
    worst = evaluate(ev, lambda users: -pos[users].double())
    assert best["auc"] == 1.0 and best["hr@1000"] == 1.0 and best["ndcg@1000"] == 1.0
    assert worst["auc"] == 0.0 and worst["hr@1000"] == 1.0  # K ≥ n_items: every rank counts


def test_errors():
    split = make_split()
    with pytest.raises(ValueError, match="which"):
        RankingEvaluator(split, "train")  # type: ignore[arg-type]
    ev = RankingEvaluator(split, "test")
    with pytest.raises(ValueError, match=r"\(3, 24\).*\(3, 25\)"):
        ev.block_metrics(torch.tensor([3, 4, 5]), torch.zeros(3, 24))
    with pytest.raises(ValueError, match="out of range"):
        ev.block_metrics(torch.tensor([30]), torch.zeros(1, 25))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_block_metrics():
    split = make_split(seed=4)
    ev = RankingEvaluator(split, "test", ks=(1, 5))
    scores = torch.randint(0, 3, (split.n_users, split.n_items)).float()
    cpu = ev.block_metrics(ev.users, scores[ev.users])
    gpu = ev.block_metrics(ev.users, scores[ev.users].cuda())
    for name in cpu:
        assert gpu[name].device.type == "cuda"
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], equal_nan=True)


def test_block_metrics_with_the_csr_positive_index_match_the_mask_path():
    """block_metrics hands positive_ranks the positives' (rows, items) from its CSR instead of
    the mask's nonzero: they must be the same pairs in the same order."""
    from lopt.eval.metrics import positive_ranks

    split = make_split(n_users=40, n_items=60, seed=4)
    evaluator = RankingEvaluator(split, "test")
    users = torch.arange(split.n_users)[torch.randperm(split.n_users, generator=torch.Generator().manual_seed(1))]
    positives, candidates, index = evaluator._masks(users, torch.device("cpu"))
    expected = positives.nonzero(as_tuple=True)
    assert all(torch.equal(a, b) for a, b in zip(index, expected, strict=True))
    scores = torch.randn(users.numel(), split.n_items, generator=torch.Generator().manual_seed(0))
    fast = positive_ranks(scores, positives, candidates, with_items=True, positive_index=index)
    slow = positive_ranks(scores, positives, candidates, with_items=True)
    for field in ("real", "above", "smaller", "n_pos", "n_cand", "items"):
        assert torch.equal(getattr(fast, field), getattr(slow, field)), field
