"""Exact per-user ranking metrics of both evaluation protocols (docs/protocol.md, Metrics).

For a user u with positives P_u and candidates N_u (disjoint item sets) and scores s:

"lambdaopt" protocol (:func:`ranking_metrics`; each positive ranked against the candidates only):

- rank(i)   = 1 + |{j ∈ N_u : s_j ≥ s_i}|                      for i ∈ P_u (``ties="pessimistic"``),
- AUC_u     = (1 / (|P_u|·|N_u|)) · Σ_{i∈P_u} |{j ∈ N_u : s_i > s_j}|,
- HR@K_u    = |{i ∈ P_u : rank(i) ≤ K}| / |P_u|,
- NDCG@K_u  = (1/|P_u|) · Σ_{i∈P_u, rank(i)≤K} 1 / log2(1 + rank(i)).

A tie between a positive and a candidate never counts for the positive, in the rank and in the
AUC alike, so a constant scorer gets 0 on every metric. ``ties="paper"`` keeps the optimistic rank
of the paper's released code, ``1 + |{j ∈ N_u : s_j > s_i}|`` (ties count FOR the positive in the
rank, against it in the AUC); use it only to reproduce the paper's numbers.

"standard" protocol (:func:`full_ranking_metrics`; the whole list P_u ∪ N_u is ranked, as
RecBole/Elliot/Cornac do): the positives get distinct list positions. The q-th best positive
(q = 0, 1, …; ties among positives in any order — no metric below depends on it) has

- rank_q = 1 + q + |{j ∈ N_u : s_j ≥ s_(q)}|   (``ties="paper"``: ``s_j > s_(q)``),

and with hits@K = |{q : rank_q ≤ K}|:
Recall@K = hits@K / |P_u|, Precision@K = hits@K / K, HR@K = [hits@K > 0],
NDCG@K = Σ_{rank_q≤K} 1/log2(1+rank_q) / Σ_{r=1}^{min(|P_u|,K)} 1/log2(1+r),
MRR = 1 / rank_0 (no cut-off), MAP@K = (1/min(|P_u|,K)) · Σ_{rank_q≤K} (q+1)/rank_q,
AUC as above.

Algorithm (exact, vectorized over a block of users, no per-user Python loop). The positives' scores
of each row are gathered into a short padded row and sorted (padding = +inf): that order is the
one every metric reads. The candidates' scores are copied with every non-candidate set to +inf
and each row is sorted once (numpy's vectorized sort on the CPU, ``torch.sort`` elsewhere). Two
vectorized binary searches of every positive's score in its row (:func:`_searchsorted_rows`)
then give the candidates strictly below s (left side) and at or below s (right side, capped at
|N_u| because the +inf fill sits after every candidate). Strictly above = |N_u| − at-or-below,
tied = at-or-below − strictly-below. Cost per block: one elementwise fill and one row sort of the
(B, n_items) scores, and log2(n_items) gathers per real positive, none per item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "PROTOCOLS",
    "TIES",
    "PositiveRanks",
    "full_ranking_metrics",
    "mean_ignoring_nan",
    "metric_names",
    "positive_ranks",
    "ranking_metrics",
]

#: Score dtypes whose rows the CPU path sorts with numpy (its SIMD sort is several times faster
#: than torch.sort on the CPU; both sort values exactly, so the counts are identical).
_NUMPY_SORTED_DTYPES = (torch.float32, torch.float64)

Ties = Literal["pessimistic", "paper"]
Protocol = Literal["lambdaopt", "standard"]
TIES: tuple[str, ...] = ("pessimistic", "paper")
PROTOCOLS: tuple[str, ...] = ("lambdaopt", "standard")


def metric_names(ks: Sequence[int] = (50, 100), protocol: Protocol = "lambdaopt") -> list[str]:
    """Keys returned by :func:`ranking_metrics` (``"lambdaopt"``) or
    :func:`full_ranking_metrics` (``"standard"``) for cut-offs ``ks``, in order."""
    if protocol == "lambdaopt":
        names = ["auc"]
        for k in ks:
            names += [f"hr@{k}", f"ndcg@{k}"]
        return names
    if protocol == "standard":
        names = ["auc", "mrr"]
        for k in ks:
            names += [f"recall@{k}", f"precision@{k}", f"ndcg@{k}", f"hr@{k}", f"map@{k}"]
        return names
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r} (config key protocol.name)")


def mean_ignoring_nan(values: torch.Tensor) -> float:
    """Mean of ``values`` (any shape) over the non-NaN entries, in float64 on the CPU.

    This is how per-user metrics become the logged mean (a user without positives or candidates
    has NaN and is left out). NaN when every entry is NaN or there is none.
    """
    values = values.detach().to("cpu", torch.float64).reshape(-1)
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(ks)
    for k in out:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"ks must be positive ints, got {ks!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"ks must be distinct, got {ks!r}")
    return out


def _check_ties(ties: str) -> str:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r} (config key eval.ties)")
    return ties


def _output_dtype(device: torch.device) -> torch.dtype:
    # Counts are exact integers; the ratios are formed in float64 wherever the device has it.
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass(frozen=True)
class PositiveRanks:
    """Per-positive counts of a block, positives of each row sorted by ascending score.

    ``real`` (B, W) bool marks real positives (column q < n_pos[b]); ``above`` (B, W) int64 is
    the number of candidates ranked above each positive under the tie rule (``> s`` or ``≥ s``);
    ``smaller`` (B, W) the candidates strictly below it (AUC); ``n_pos``/``n_cand`` (B,) int64;
    ``items`` (B, W) int64 item index of each sorted positive (-1 in padding), or None.
    """

    real: torch.Tensor
    above: torch.Tensor
    smaller: torch.Tensor
    n_pos: torch.Tensor
    n_cand: torch.Tensor
    items: torch.Tensor | None

    @property
    def list_rank(self) -> torch.Tensor:
        """(B, W) int64: position in the full list P_u ∪ N_u (standard protocol), 1-based."""
        q_desc = self.n_pos.unsqueeze(1) - 1 - torch.arange(self.real.shape[1], device=self.real.device)
        return 1 + q_desc.clamp_min(0) + self.above


def _check_inputs(scores: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (B, n_items), got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating tensor, got {scores.dtype}")
    for name, mask in (("positives", positives), ("candidates", candidates)):
        if mask.shape != scores.shape:
            raise ValueError(f"{name} has shape {tuple(mask.shape)} but scores has shape {tuple(scores.shape)}")
        if mask.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool mask, got {mask.dtype}")
        if mask.device != scores.device:
            raise ValueError(f"{name} is on {mask.device} but scores is on {scores.device}")
    if scores.numel() and bool(torch.isnan(scores.amax())):  # amax propagates NaN, no temporary
        raise ValueError("scores contain NaN; ranks are undefined")
    if bool((positives & candidates).any()):
        raise ValueError("positives and candidates overlap; they must be disjoint")


def positive_ranks(
    scores: torch.Tensor,
    positives: torch.Tensor,
    candidates: torch.Tensor,
    ties: Ties = "pessimistic",
    with_items: bool = False,
    positive_index: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PositiveRanks | None:
    """The exact per-positive counts of a block (see the module docstring); None when no row
    has a positive. Inputs as in :func:`ranking_metrics`; ``with_items`` also returns the item
    index of each sorted positive. ``positive_index``: ``positives.nonzero(as_tuple=True)``
    (rows ascending, then items), when the caller built the mask from it and has it at hand;
    it must describe ``positives`` exactly."""
    _check_ties(ties)
    _check_inputs(scores, positives, candidates)
    device = scores.device
    n_rows = scores.shape[0]
    # (B,) int64 counts; summing bool as int32 halves the temporary (n_items < 2**31).
    n_pos = positives.sum(dim=1, dtype=torch.int32).long()
    n_cand = candidates.sum(dim=1, dtype=torch.int32).long()
    width = int(n_pos.max()) if n_rows > 0 else 0
    if width == 0:
        return None

    # Positives' scores per row, left-aligned, padded with +inf, sorted.
    rows, cols = positives.nonzero(as_tuple=True) if positive_index is None else positive_index
    row_start = torch.cumsum(n_pos, 0) - n_pos
    slot = torch.arange(rows.numel(), device=device) - row_start[rows]
    pos_sorted = torch.full((n_rows, width), math.inf, dtype=scores.dtype, device=device)
    pos_sorted[rows, slot] = scores[rows, cols]
    items = None
    if with_items:
        # A stable sort keeps the +inf padding (appended last) behind real +inf positives.
        pos_sorted, perm = torch.sort(pos_sorted, dim=1, stable=True)
        padded = torch.full((n_rows, width), -1, dtype=torch.int64, device=device)
        padded[rows, slot] = cols
        items = padded.gather(1, perm)
    else:
        pos_sorted = torch.sort(pos_sorted, dim=1).values

    # Each row's candidate scores, ascending, non-candidates moved past them as +inf.
    cand_sorted = _sort_rows(torch.where(candidates, scores, math.inf))
    real = torch.arange(width, device=device).unsqueeze(0) < n_pos.unsqueeze(1)  # (B, width)
    # Sorting moved the +inf padding behind the real positives, so these are still in the
    # cells (rows, slot).
    values = pos_sorted[rows, slot]
    smaller = torch.zeros((n_rows, width), dtype=torch.int64, device=device)
    at_most = torch.zeros_like(smaller)
    smaller[rows, slot] = _searchsorted_rows(cand_sorted, rows, values, right=False)  # candidates < s
    # candidates ≤ s; a +inf positive also counts every +inf fill, hence the cap at |N_u|
    at_most[rows, slot] = _searchsorted_rows(cand_sorted, rows, values, right=True)
    at_most = torch.minimum(at_most, n_cand.unsqueeze(1))
    del cand_sorted
    greater = n_cand.unsqueeze(1) - at_most  # candidates strictly above each positive
    above = n_cand.unsqueeze(1) - smaller if ties == "pessimistic" else greater

    return PositiveRanks(real, above, smaller, n_pos, n_cand, items)


def _searchsorted_rows(
    sorted_rows: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, right: bool
) -> torch.Tensor:
    """(N,) int64: for each ``values[k]``, the number of entries of ``sorted_rows[rows[k]]`` below
    it (``right``: at or below), i.e. ``torch.searchsorted`` row by row, for N needles with their
    own rows. A vectorized binary search over the N needles only (``torch.searchsorted`` needs the
    same number of needles in every row, and padding them to the widest row searches mostly
    padding); ``sorted_rows`` (B, n) ascending, compared in its own dtype, so exact."""
    n = sorted_rows.shape[1]
    count = torch.zeros_like(rows)
    if n == 0 or rows.numel() == 0:
        return count
    flat = sorted_rows.reshape(-1)
    last_before = rows * n - 1  # flat index of entry j of the row is last_before + (j + 1)
    # Grow the count by descending powers of two (they sum past n): try count + step entries,
    # capped at n, and keep it when the last of them is still below the value.
    step = 1 << (n.bit_length() - 1)
    while step:
        tried = (count + step).clamp_max_(n)
        probe = flat.index_select(0, last_before + tried)
        count = torch.where(probe <= values if right else probe < values, tried, count)
        step >>= 1
    return count


def _sort_rows(values: torch.Tensor) -> torch.Tensor:
    """``values`` (B, n) sorted ascending along each row; sorts in place where it can, so pass a
    tensor the caller no longer needs."""
    if values.device.type == "cpu" and values.dtype in _NUMPY_SORTED_DTYPES:
        values.detach().numpy().sort(axis=1)  # in place, through the shared buffer
        return values
    return torch.sort(values, dim=1).values


def _auc(r: PositiveRanks, out_dtype: torch.dtype, nan: torch.Tensor) -> torch.Tensor:
    won = torch.where(r.real, r.smaller, 0).sum(dim=1).to(out_dtype)
    ok = (r.n_pos > 0) & (r.n_cand > 0)
    return torch.where(ok, won / (r.n_pos * r.n_cand).clamp_min(1).to(out_dtype), nan)


def lambdaopt_from_ranks(r: PositiveRanks, ks: Sequence[int], out_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """AUC, HR@K, NDCG@K of the lambdaopt protocol from :func:`positive_ranks`."""
    device = r.real.device
    nan = torch.full(r.n_pos.shape, math.nan, dtype=out_dtype, device=device)
    has_pos = r.n_pos > 0
    pos_f = r.n_pos.to(out_dtype).clamp_min(1)
    rank = (r.above + 1).to(out_dtype)
    out: dict[str, torch.Tensor] = {"auc": _auc(r, out_dtype, nan)}
    gain = torch.where(r.real, 1.0 / torch.log2(1.0 + rank), 0.0)
    for k in ks:
        in_top = r.real & (rank <= k)
        hits = in_top.sum(dim=1).to(out_dtype)
        dcg = torch.where(in_top, gain, 0.0).sum(dim=1)
        out[f"hr@{k}"] = torch.where(has_pos, hits / pos_f, nan)
        out[f"ndcg@{k}"] = torch.where(has_pos, dcg / pos_f, nan)
    return out


def standard_from_ranks(r: PositiveRanks, ks: Sequence[int], out_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """AUC, MRR, Recall/Precision/NDCG/HR/MAP@K of the standard protocol from
    :func:`positive_ranks`."""
    device = r.real.device
    nan = torch.full(r.n_pos.shape, math.nan, dtype=out_dtype, device=device)
    has_pos = r.n_pos > 0
    pos_f = r.n_pos.to(out_dtype).clamp_min(1)
    rank = r.list_rank.to(out_dtype)  # (B, W) distinct list positions of the real positives
    width = r.real.shape[1]
    # (q+1) per column: the number of positives at or above this one in the list.
    n_at_or_above = (r.n_pos.unsqueeze(1) - torch.arange(width, device=device)).to(out_dtype)
    out: dict[str, torch.Tensor] = {"auc": _auc(r, out_dtype, nan)}
    best = torch.where(r.real, rank, math.inf).amin(dim=1)
    out["mrr"] = torch.where(has_pos, 1.0 / best, nan)
    gain = torch.where(r.real, 1.0 / torch.log2(1.0 + rank), 0.0)
    prec_at_rank = torch.where(r.real, n_at_or_above / rank, 0.0)
    # ideal DCG over the first m positions: prefix sums of 1/log2(1+r), r = 1..max(min(|P|,K))
    max_k = max(ks) if ks else 1
    discounts = 1.0 / torch.log2(torch.arange(2, min(width, max_k) + 2, device=device, dtype=out_dtype))
    ideal_prefix = torch.cat([torch.zeros(1, dtype=out_dtype, device=device), discounts.cumsum(0)])
    for k in ks:
        in_top = r.real & (rank <= k)
        hits = in_top.sum(dim=1).to(out_dtype)
        m = r.n_pos.clamp(max=min(k, ideal_prefix.numel() - 1))
        ideal = ideal_prefix[m]
        denom = r.n_pos.clamp(max=k).to(out_dtype).clamp_min(1)
        out[f"recall@{k}"] = torch.where(has_pos, hits / pos_f, nan)
        out[f"precision@{k}"] = torch.where(has_pos, hits / k, nan)
        out[f"ndcg@{k}"] = torch.where(
            has_pos, torch.where(in_top, gain, 0.0).sum(dim=1) / ideal.clamp_min(1e-300), nan
        )
        out[f"hr@{k}"] = torch.where(has_pos, (hits > 0).to(out_dtype), nan)
        out[f"map@{k}"] = torch.where(has_pos, torch.where(in_top, prec_at_rank, 0.0).sum(dim=1) / denom, nan)
    return out


def _metrics(
    scores: torch.Tensor,
    positives: torch.Tensor,
    candidates: torch.Tensor,
    ks: Sequence[int],
    ties: Ties,
    protocol: Protocol,
) -> dict[str, torch.Tensor]:
    ks = _check_ks(ks)
    names = metric_names(ks, protocol)
    out_dtype = _output_dtype(scores.device)
    r = positive_ranks(scores, positives, candidates, ties)
    if r is None:
        nan = torch.full((scores.shape[0],), math.nan, dtype=out_dtype, device=scores.device)
        return {name: nan.clone() for name in names}
    make = lambdaopt_from_ranks if protocol == "lambdaopt" else standard_from_ranks
    return make(r, ks, out_dtype)


def ranking_metrics(
    scores: torch.Tensor,
    positives: torch.Tensor,
    candidates: torch.Tensor,
    ks: Sequence[int] = (50, 100),
    ties: Ties = "pessimistic",
) -> dict[str, torch.Tensor]:
    """Exact per-user AUC, HR@K and NDCG@K of the lambdaopt protocol for a block of users.

    Args:
        scores: (B, n_items) floating tensor, NaN-free (±inf allowed). Row b holds user b's scores.
        positives: (B, n_items) bool mask of P_u (the held-out items of the user).
        candidates: (B, n_items) bool mask of N_u; must be disjoint from ``positives``.
        ks: distinct positive cut-offs (K may exceed n_items).
        ties: ``"pessimistic"`` (a tied candidate ranks above the positive) or ``"paper"`` (the
            paper's code: it ranks below; optimistic).

    Returns:
        ``{"auc", "hr@K", "ndcg@K" for K in ks}`` (key order of :func:`metric_names`), each a
        (B,) float64 tensor (float32 on MPS) on ``scores.device``. Rows with no positives are
        NaN in every metric; rows with positives but no candidates have NaN AUC (and every
        positive ranked 1).
    """
    return _metrics(scores, positives, candidates, ks, ties, "lambdaopt")


def full_ranking_metrics(
    scores: torch.Tensor,
    positives: torch.Tensor,
    candidates: torch.Tensor,
    ks: Sequence[int] = (10, 20, 50),
    ties: Ties = "pessimistic",
) -> dict[str, torch.Tensor]:
    """Exact per-user metrics of the standard protocol (P_u ∪ N_u ranked as one list).

    Arguments as :func:`ranking_metrics`. Returns ``{"auc", "mrr", and "recall@K",
    "precision@K", "ndcg@K", "hr@K", "map@K" for K in ks}`` (order of
    ``metric_names(ks, "standard")``), (B,) each; NaN for rows without positives.
    """
    return _metrics(scores, positives, candidates, ks, ties, "standard")
