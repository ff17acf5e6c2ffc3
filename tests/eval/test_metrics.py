"""ranking_metrics against a plain-Python transcription of docs/protocol.md's Metrics definitions."""

from __future__ import annotations

import math

import pytest
import torch

from lopt.eval import metric_names, ranking_metrics


def brute_force(scores, positives, candidates, ks, ties="pessimistic") -> dict[str, list[float]]:
    """Literal per-user, per-pair evaluation of the protocol's formulas (``ties="paper"``: the
    paper's optimistic rank, a tied candidate does not count against the positive)."""
    out: dict[str, list[float]] = {name: [] for name in metric_names(ks)}
    for s, p, c in zip(scores.tolist(), positives.tolist(), candidates.tolist(), strict=True):
        P = [i for i, flag in enumerate(p) if flag]
        N = [j for j, flag in enumerate(c) if flag]
        if not P:
            for name in out:
                out[name].append(math.nan)
            continue
        if ties == "pessimistic":
            rank = {i: 1 + sum(1 for j in N if s[j] >= s[i]) for i in P}
        else:
            rank = {i: 1 + sum(1 for j in N if s[j] > s[i]) for i in P}
        won = sum(1 for i in P for j in N if s[i] > s[j])
        out["auc"].append(won / (len(P) * len(N)) if N else math.nan)
        for k in ks:
            out[f"hr@{k}"].append(sum(1 for i in P if rank[i] <= k) / len(P))
            out[f"ndcg@{k}"].append(sum(1 / math.log2(1 + rank[i]) for i in P if rank[i] <= k) / len(P))
    return out


def assert_matches(got: dict[str, torch.Tensor], want: dict[str, list[float]]) -> None:
    assert list(got) == list(want)
    for name, values in want.items():
        expected = torch.tensor(values, dtype=torch.float64)
        assert got[name].dtype == torch.float64
        torch.testing.assert_close(
            got[name].cpu(),
            expected,
            rtol=1e-12,
            atol=1e-12,
            equal_nan=True,
            msg=lambda m, name=name: f"{name}: {m}",
        )


def random_case(n_users, n_items, dtype, seed, score_range=None, p_pos=0.2, p_seen=0.15):
    g = torch.Generator().manual_seed(seed)
    if score_range is None:
        scores = torch.randn(n_users, n_items, generator=g, dtype=torch.float64).to(dtype)
    else:  # few distinct values: many ties among positives and with candidates
        shape = (n_users, n_items)
        scores = torch.randint(-score_range, score_range + 1, shape, generator=g).to(dtype)
    u = torch.rand(n_users, n_items, generator=g)
    positives = u < p_pos
    candidates = u >= p_pos + p_seen
    # Row variety: no positives, a single positive, all-but-one positive, no candidates.
    positives[0] = False
    positives[1] = False
    positives[1, 3] = True
    candidates[1, 3] = False
    positives[2] = True
    positives[2, 0] = False
    candidates[2] = False
    candidates[2, 0] = True
    candidates[3] = False
    return scores, positives, candidates


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("score_range", [None, 0, 1, 3])
def test_matches_brute_force(dtype, score_range):
    ks = (1, 3, 10, 50, 1000)  # 1000 > n_items
    seed = 7 + (score_range or 0)
    scores, pos, cand = random_case(24, 60, dtype, seed=seed, score_range=score_range)
    assert_matches(ranking_metrics(scores, pos, cand, ks), brute_force(scores, pos, cand, ks))
    assert_matches(
        ranking_metrics(scores, pos, cand, ks, ties="paper"),
        brute_force(scores, pos, cand, ks, ties="paper"),
    )


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_many_positives_ties(seed):
    ks = (2, 5, 40)
    scores, pos, cand = random_case(16, 40, torch.float32, seed, score_range=2, p_pos=0.5, p_seen=0.1)
    assert_matches(ranking_metrics(scores, pos, cand, ks), brute_force(scores, pos, cand, ks))


def test_hand_computed_example():
    # items:      0    1    2    3    4    5
    s = torch.tensor([[3.0, 1.0, 2.0, 2.0, 5.0, 0.0]])
    pos = torch.tensor([[True, False, True, False, False, False]])  # P = {0 (s=3), 2 (s=2)}
    cand = torch.tensor([[False, True, False, True, True, True]])  # N = {1, 3, 4, 5}; 0,2 excluded
    # item 0: greater = {4} -> rank 2; smaller = {1, 3, 5} -> 3
    # item 2: greater = {4}, tied = {3} (counts against it) -> rank 3; smaller = {1, 5} -> 2
    out = ranking_metrics(s, pos, cand, ks=(1, 2, 3))
    assert out["auc"].item() == pytest.approx(5 / 8)
    assert out["hr@1"].item() == 0.0 and out["ndcg@1"].item() == 0.0
    assert out["hr@2"].item() == 0.5 and out["hr@3"].item() == 1.0
    assert out["ndcg@2"].item() == pytest.approx(0.5 / math.log2(3))
    assert out["ndcg@3"].item() == pytest.approx(0.5 / math.log2(3) + 0.5 / math.log2(4))
    # the paper's optimistic rule ranks item 2 second (the tie with item 3 counts for it)
    paper = ranking_metrics(s, pos, cand, ks=(2,), ties="paper")
    assert paper["hr@2"].item() == 1.0 and paper["auc"].item() == pytest.approx(5 / 8)
    assert paper["ndcg@2"].item() == pytest.approx(1 / math.log2(3))


def test_constant_scorer_gets_zero():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(20, 300, generator=g)  # ~210 candidates per user, more than any K
    pos, cand = u < 0.2, u > 0.3
    scores = torch.full((20, 300), 0.25)
    out = ranking_metrics(scores, pos, cand, ks=(1, 50, 100))
    for name, values in out.items():
        assert torch.all(values == 0.0), name
    # the paper's rule puts every positive first: HR = NDCG = 1, AUC 0
    paper = ranking_metrics(scores, pos, cand, ks=(1, 50), ties="paper")
    assert torch.all(paper["hr@1"] == 1.0) and torch.all(paper["ndcg@50"] == 1.0)
    assert torch.all(paper["auc"] == 0.0)


def test_no_positives_and_no_candidates():
    s = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    pos = torch.tensor([[False, False, False], [True, False, True], [False, True, False]])
    cand = torch.tensor([[True, True, True], [False, False, False], [True, False, True]])
    out = ranking_metrics(s, pos, cand, ks=(1,))
    assert all(math.isnan(out[k][0].item()) for k in out)
    assert math.isnan(out["auc"][1].item())
    assert out["hr@1"][1].item() == 1.0 and out["ndcg@1"][1].item() == 1.0  # nothing outranks
    assert out["auc"][2].item() == 0.5 and out["hr@1"][2].item() == 0.0


def test_all_rows_without_positives_and_empty_block():
    s = torch.randn(3, 5)
    none = torch.zeros(3, 5, dtype=torch.bool)
    out = ranking_metrics(s, none, ~none)
    assert list(out) == ["auc", "hr@50", "ndcg@50", "hr@100", "ndcg@100"]
    assert all(torch.isnan(v).all() and v.shape == (3,) for v in out.values())
    empty = ranking_metrics(torch.empty(0, 5), none[:0], none[:0])
    assert all(v.shape == (0,) for v in empty.values())


@pytest.mark.parametrize("ties", ["pessimistic", "paper"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_infinite_scores_equal_to_padding_and_sentinels(dtype, ties):
    inf = math.inf
    s = torch.tensor(
        [
            [inf, inf, 0.0, inf, -inf, 1.0],  # positives at +inf tie with a +inf candidate
            [-inf, -inf, 0.0, -inf, 2.0, -inf],  # positives at -inf tie with -inf candidates
            [inf, -inf, inf, -inf, 0.0, 0.0],
            [torch.finfo(dtype).max, torch.finfo(dtype).min, 0.0, inf, -inf, 0.0],
        ],
        dtype=dtype,
    )
    pos = torch.tensor(
        [
            [True, True, False, False, False, True],
            [True, False, True, False, False, False],
            [True, True, False, False, True, False],
            [True, True, True, False, False, False],
        ]
    )
    cand = torch.tensor(
        [
            [False, False, True, True, True, False],
            [False, True, False, True, True, True],
            [False, False, True, True, False, True],
            [False, False, False, True, True, True],
        ]
    )
    ks = (1, 2, 3)
    assert_matches(ranking_metrics(s, pos, cand, ks, ties), brute_force(s, pos, cand, ks, ties))


def test_large_positive_count_row_mixed_with_small_rows():
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 6, (6, 300), generator=g).float()
    pos = torch.zeros(6, 300, dtype=torch.bool)
    pos[0, :250] = True  # wide padded row
    pos[1, 5] = True
    pos[2, 100:103] = True
    cand = ~pos
    cand[:, 290:] = False  # seen but not positive
    ks = (1, 10, 100, 500)
    assert_matches(ranking_metrics(scores, pos, cand, ks), brute_force(scores, pos, cand, ks))


def test_errors():
    s = torch.zeros(2, 3)
    m = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 3\)"):
        ranking_metrics(s, torch.zeros(2, 4, dtype=torch.bool), m)
    with pytest.raises(ValueError, match="2-D"):
        ranking_metrics(torch.zeros(3), m[0], m[0])
    with pytest.raises(TypeError, match="bool"):
        ranking_metrics(s, m.int(), m)
    with pytest.raises(TypeError, match="floating"):
        ranking_metrics(s.long(), m, m)
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(torch.full((2, 3), math.nan), m, m)
    with pytest.raises(ValueError, match="disjoint"):
        ranking_metrics(s, ~m, ~m)
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(s, m, m, ks=(0,))
    with pytest.raises(ValueError, match="eval.ties"):
        ranking_metrics(s, m, m, ties="optimistic")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    ks = (1, 5, 50)
    scores, pos, cand = random_case(64, 200, torch.float32, seed=11, score_range=3)
    cpu = ranking_metrics(scores, pos, cand, ks)
    gpu = ranking_metrics(scores.cuda(), pos.cuda(), cand.cuda(), ks)
    for name in cpu:
        assert gpu[name].device.type == "cuda"
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_sort_path_matches_numpy_sort_path(monkeypatch, dtype):
    """The candidate rows are sorted by numpy on the CPU and by torch.sort elsewhere (and for
    other dtypes): both must give the same counts, ties and infinities included."""
    import lopt.eval.metrics as metrics_module

    ks = (1, 4, 30)
    scores, pos, cand = random_case(12, 30, dtype, seed=5, score_range=2)
    scores[0, :3] = math.inf
    scores[1, :3] = -math.inf
    numpy_path = metrics_module.positive_ranks(scores, pos, cand, with_items=True)
    monkeypatch.setattr(metrics_module, "_NUMPY_SORTED_DTYPES", ())
    torch_path = metrics_module.positive_ranks(scores, pos, cand, with_items=True)
    for field in ("real", "above", "smaller", "n_pos", "n_cand", "items"):
        assert torch.equal(getattr(numpy_path, field), getattr(torch_path, field)), field
    assert_matches(ranking_metrics(scores, pos, cand, ks), brute_force(scores, pos, cand, ks))


def test_scores_that_require_grad_and_are_not_contiguous():
    ks = (1, 5)
    scores, pos, cand = random_case(8, 40, torch.float32, seed=2, score_range=4)
    wide = torch.zeros(8, 80)
    wide[:, ::2] = scores
    leaf = wide.requires_grad_()
    strided = leaf[:, ::2]
    assert not strided.is_contiguous()
    assert_matches(ranking_metrics(strided, pos, cand, ks), brute_force(scores, pos, cand, ks))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 64, 100])
@pytest.mark.parametrize("right", [False, True])
def test_row_binary_search_matches_torch_searchsorted(n, right):
    """The per-needle binary search over sorted rows equals torch.searchsorted row by row, for
    needles below, between, equal to and above the entries (ties and ±inf included)."""
    from lopt.eval.metrics import _searchsorted_rows

    g = torch.Generator().manual_seed(n)
    rows_sorted = torch.randint(-3, 4, (5, n), generator=g).float().sort(dim=1).values
    rows_sorted[0, -1] = math.inf
    rows_sorted[1, 0] = -math.inf
    needle_rows = torch.randint(0, 5, (200,), generator=g)
    needles = torch.randint(-5, 6, (200,), generator=g).float()
    needles[:4] = torch.tensor([math.inf, -math.inf, math.inf, -math.inf])
    needle_rows[:4] = torch.tensor([0, 0, 1, 1])
    got = _searchsorted_rows(rows_sorted, needle_rows, needles, right=right)
    want = torch.searchsorted(rows_sorted[needle_rows], needles.unsqueeze(1), right=right).squeeze(1)
    assert torch.equal(got, want)
