"""Exact per-user ranking metrics of the "lambdaopt" protocol (docs/protocol.md, Metrics).

For a user u with positives P_u and candidates N_u (disjoint item sets) and scores s:

- rank(i)   = 1 + |{j ∈ N_u : s_j > s_i}|                      for i ∈ P_u,
- AUC_u     = (1 / (|P_u|·|N_u|)) · Σ_{i∈P_u} |{j ∈ N_u : s_i > s_j}|,
- HR@K_u    = |{i ∈ P_u : rank(i) ≤ K}| / |P_u|,
- NDCG@K_u  = (1/|P_u|) · Σ_{i∈P_u, rank(i)≤K} 1 / log2(1 + rank(i)).

Inequalities are strict: a tie between a positive and a candidate never counts for the positive
(it neither lowers the positive's rank nor counts as a won pair in the AUC).

Algorithm (exact, vectorized over a block of users, no per-user Python loop). Instead of sorting
all item scores of a row (O(n log n) per user), the positives' scores of each row are gathered
into a short padded row and sorted (padding = +inf). Every item score is then located in its
row's sorted positives with one batched ``torch.searchsorted`` (``t_j`` = number of positives
strictly below ``s_j``), and a per-row histogram of ``t_j`` over the candidates gives, for the
k-th smallest positive, the number of candidates strictly above it as a suffix sum. Candidates
tied with a positive are detected by one gather (``sorted_pos[t_j] == s_j``) and counted per
run of equal positive values, which yields the strictly-smaller counts needed by the AUC as
``|N_u| - greater - tied``. Cost per block: one searchsorted over B·n scores into rows of length
max|P_u|+1, one gather, a few elementwise passes and one bincount.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["ranking_metrics", "metric_names"]


#: Bound below which the flat histogram keys row * (width + 2) + t fit in int32.
_INT32_KEYS = 2**31


def metric_names(ks: Sequence[int] = (50, 100)) -> list[str]:
    """Keys returned by :func:`ranking_metrics` for cut-offs ``ks``, in order."""
    names = ["auc"]
    for k in ks:
        names += [f"hr@{k}", f"ndcg@{k}"]
    return names


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(ks)
    for k in out:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"ks must be positive ints, got {ks!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"ks must be distinct, got {ks!r}")
    return out


def _output_dtype(device: torch.device) -> torch.dtype:
    # Counts are exact integers; the ratios are formed in float64 wherever the device has it.
    return torch.float32 if device.type == "mps" else torch.float64


def ranking_metrics(
    scores: torch.Tensor,
    positives: torch.Tensor,
    candidates: torch.Tensor,
    ks: Sequence[int] = (50, 100),
) -> dict[str, torch.Tensor]:
    """Exact per-user AUC, HR@K and NDCG@K of the lambdaopt protocol for a block of users.

    Args:
        scores: (B, n_items) floating tensor, NaN-free (±inf allowed). Row b holds user b's scores.
        positives: (B, n_items) bool mask of P_u (the held-out items of the user).
        candidates: (B, n_items) bool mask of N_u; must be disjoint from ``positives``.
        ks: distinct positive cut-offs (K may exceed n_items).

    Returns:
        ``{"auc", "hr@K", "ndcg@K" for K in ks}`` (key order of :func:`metric_names`), each a
        (B,) float64 tensor (float32 on MPS) on ``scores.device``. Rows with no positives are
        NaN in every metric; rows with positives but no candidates have NaN AUC (and every
        positive ranked 1).
    """
    ks = _check_ks(ks)
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (B, n_items), got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating tensor, got {scores.dtype}")
    for name, mask in (("positives", positives), ("candidates", candidates)):
        if mask.shape != scores.shape:
            raise ValueError(
                f"{name} has shape {tuple(mask.shape)} but scores has shape {tuple(scores.shape)}"
            )
        if mask.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool mask, got {mask.dtype}")
        if mask.device != scores.device:
            raise ValueError(f"{name} is on {mask.device} but scores is on {scores.device}")
    if scores.numel() and bool(torch.isnan(scores.amax())):  # amax propagates NaN, no temporary
        raise ValueError("scores contain NaN; ranks are undefined")
    if bool((positives & candidates).any()):
        raise ValueError("positives and candidates overlap; they must be disjoint")

    device = scores.device
    out_dtype = _output_dtype(device)
    n_rows, n_items = scores.shape
    # (B,) int64 counts; summing bool as int32 halves the temporary (n_items < 2**31).
    n_pos = positives.sum(dim=1, dtype=torch.int32).long()
    n_cand = candidates.sum(dim=1, dtype=torch.int32).long()
    width = int(n_pos.max()) if n_rows > 0 else 0

    nan = torch.full((n_rows,), math.nan, dtype=out_dtype, device=device)
    if width == 0:
        return {name: nan.clone() for name in metric_names(ks)}

    # Positives' scores per row, left-aligned, padded with +inf (at least one padding column so
    # that the searchsorted result t ∈ [0, width] is always a valid gather index), sorted.
    rows, cols = positives.nonzero(as_tuple=True)  # row-major: rows ascending
    row_start = torch.cumsum(n_pos, 0) - n_pos
    slot = torch.arange(rows.numel(), device=device) - row_start[rows]
    pos_sorted = torch.full((n_rows, width + 1), math.inf, dtype=scores.dtype, device=device)
    pos_sorted[rows, slot] = scores[rows, cols]
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
        tie_hist.index_put_(
            (tie_rows, t[tie_rows, tie_cols].long()), torch.ones_like(tie_rows), accumulate=True
        )

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
    ties = tie_hist.gather(1, run_start)
    smaller = n_cand.unsqueeze(1) - greater - ties  # candidates strictly below each positive

    real = torch.arange(width, device=device).unsqueeze(0) < n_pos.unsqueeze(1)  # (B, width)
    rank = (greater + 1).to(out_dtype)
    has_pos = n_pos > 0
    pos_f = n_pos.to(out_dtype)
    cand_f = n_cand.to(out_dtype)

    out: dict[str, torch.Tensor] = {}
    won = torch.where(real, smaller, 0).sum(dim=1).to(out_dtype)
    auc_ok = has_pos & (n_cand > 0)
    out["auc"] = torch.where(auc_ok, won / (pos_f * cand_f).clamp_min(1), nan)
    gain = torch.where(real, 1.0 / torch.log2(1.0 + rank), 0.0)
    for k in ks:
        in_top = real & (rank <= k)
        hits = in_top.sum(dim=1).to(out_dtype)
        dcg = torch.where(in_top, gain, 0.0).sum(dim=1)
        out[f"hr@{k}"] = torch.where(has_pos, hits / pos_f.clamp_min(1), nan)
        out[f"ndcg@{k}"] = torch.where(has_pos, dcg / pos_f.clamp_min(1), nan)
    return out
