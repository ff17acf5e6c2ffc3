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

Algorithm (exact, vectorized over a block of users, no per-user Python loop). Instead of sorting
all item scores of a row (O(n log n) per user), the positives' scores of each row are gathered
into a short padded row and sorted (padding = +inf). Every item score is then located in its
row's sorted positives with one batched ``torch.searchsorted`` (``t_j`` = number of positives
strictly below ``s_j``), and a per-row histogram of ``t_j`` over the candidates gives, for the
k-th smallest positive, the number of candidates strictly above it as a suffix sum. Candidates
tied with a positive are detected by one gather (``sorted_pos[t_j] == s_j``) and counted per
run of equal positive values, which yields the tied counts (added to the rank by the pessimistic
rule) and the strictly-smaller counts needed by the AUC as ``|N_u| - greater - tied``. Cost per
block: one searchsorted over B·n scores into rows of length max|P_u|+1, one gather, a few
elementwise passes and one bincount.
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

#: Bound below which the flat histogram keys row * (width + 2) + t fit in int32.
_INT32_KEYS = 2**31

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
) -> PositiveRanks | None:
    """The exact per-positive counts of a block (see the module docstring); None when no row
    has a positive. Inputs as in :func:`ranking_metrics`; ``with_items`` also returns the item
    index of each sorted positive."""
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

    # Positives' scores per row, left-aligned, padded with +inf (at least one padding column so
    # that the searchsorted result t ∈ [0, width] is always a valid gather index), sorted.
    rows, cols = positives.nonzero(as_tuple=True)  # row-major: rows ascending
    row_start = torch.cumsum(n_pos, 0) - n_pos
    slot = torch.arange(rows.numel(), device=device) - row_start[rows]
    pos_sorted = torch.full((n_rows, width + 1), math.inf, dtype=scores.dtype, device=device)
    pos_sorted[rows, slot] = scores[rows, cols]
    items = None
    if with_items:
        # A stable sort keeps the +inf padding (appended last) behind real +inf positives.
        pos_sorted, perm = torch.sort(pos_sorted, dim=1, stable=True)
        padded = torch.full((n_rows, width + 1), -1, dtype=torch.int64, device=device)
        padded[rows, slot] = cols
        items = padded.gather(1, perm)[:, :width]
    else:
        pos_sorted = torch.sort(pos_sorted, dim=1).values

    # t[b, j] = #{sorted positives (incl. +inf padding) strictly below s_j} ∈ [0, width]:
    # candidate j is strictly above the q-th smallest positive (0-based) iff t[b, j] ≥ q + 1.
    contig = scores.contiguous()
    t = torch.searchsorted(pos_sorted, contig, out_int32=True)  # (B, n_items)

    # Ties: candidate j ties with a positive iff pos_sorted[t_j] == s_j; then every positive of
    # that value shares the run starting at index t_j. Count tied candidates per run start.
    # CPU gather takes the int32 index directly; elsewhere use the universally supported int64.
    tied = pos_sorted.gather(1, t if t.device.type == "cpu" else t.long()) == contig
    tied &= candidates
    tie_rows, tie_cols = tied.nonzero(as_tuple=True)
    del tied
    tie_hist = torch.zeros((n_rows, width + 1), dtype=torch.int64, device=device)
    if tie_rows.numel() > 0:
        tie_hist.index_put_((tie_rows, t[tie_rows, tie_cols].long()), torch.ones_like(tie_rows), accumulate=True)

    # Histogram of t over the candidates (non-candidates go to the extra bucket width + 1), as
    # one flat bincount over row-offset keys. t is reused in place to bound the memory.
    n_buckets = width + 2
    key = t if n_rows * n_buckets < _INT32_KEYS else t.long()
    key.masked_fill_(~candidates, width + 1)
    key += torch.arange(n_rows, device=device, dtype=key.dtype).unsqueeze(1) * n_buckets
    hist = torch.bincount(key.view(-1), minlength=n_rows * n_buckets).view(n_rows, n_buckets)
    del t, key
    # at_least[b, v] = #{candidates with t ≥ v}, v ∈ [0, width]
    at_least = hist[:, : width + 1].flip(1).cumsum(1).flip(1)
    greater = at_least[:, 1:]  # (B, width): candidates strictly above the q-th smallest positive

    run_start = torch.searchsorted(pos_sorted, pos_sorted[:, :width].contiguous())  # (B, width)
    tied_counts = tie_hist.gather(1, run_start)
    smaller = n_cand.unsqueeze(1) - greater - tied_counts  # candidates strictly below each positive
    above = greater + tied_counts if ties == "pessimistic" else greater

    real = torch.arange(width, device=device).unsqueeze(0) < n_pos.unsqueeze(1)  # (B, width)
    return PositiveRanks(real, above, smaller, n_pos, n_cand, items)


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
