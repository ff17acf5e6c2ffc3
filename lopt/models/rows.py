"""Row helpers of the look-ahead and the regularizer: a batch's unique rows and their counts or
inverse (by a bincount when the table is small enough, else by a sort), row gathers, the rows
of a dense or row-sparse gradient (coalesced; gathered, or located for a kernel to gather). All are
vectorized; none modifies its inputs."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from lopt.types import Triples


def coalesced(grad: torch.Tensor) -> torch.Tensor:
    """``grad.coalesce()`` for a sparse COO tensor; without the sort and copy when its row indices
    are already strictly increasing (as the look-ahead's fast path produces them — autograd's
    accumulation drops the coalesced flag)."""
    if grad.is_coalesced():
        return grad
    if grad.sparse_dim() == 1:
        rows = grad._indices()[0]
        if rows.numel() < 2 or bool((rows[1:] > rows[:-1]).all()):
            return torch.sparse_coo_tensor(
                grad._indices(), grad._values(), grad.shape, is_coalesced=True, check_invariants=False
            )
    return grad.coalesce()


def row_grad(grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(ascending unique row indices, or None for "every row"; their (rows, *shape[1:]) values)
    of a Θ gradient. Sparse gradients must have one index dimension (rows); they are coalesced
    (without a sort when already ascending)."""
    if not grad.is_sparse:
        return None, grad
    if grad.sparse_dim() != 1:
        raise ValueError(
            f"a row-sparse optimizer needs row gradients (sparse_dim 1), got sparse_dim {grad.sparse_dim()}"
        )
    g = coalesced(grad)
    return g.indices()[0], g.values()


def _use_bincount(n_total: int | None, n_batch: int) -> bool:
    """Count with a dense bincount over all ``n_total`` rows (O(n_total + |B|), no sort) when that
    is not much larger than the batch; else sort (O(|B|·log|B|))."""
    return n_total is not None and 0 < n_batch and n_total <= 16 * n_batch + (1 << 17)


def occurrences(batch_rows: torch.Tensor, rows: torch.Tensor, n_total: int | None = None) -> torch.Tensor:
    """How often each entry of ``rows`` occurs in ``batch_rows``: (len(rows),) int64.

    ``n_total`` (the number of rows of the table, ids in ``[0, n_total)``) allows a bincount."""
    if _use_bincount(n_total, batch_rows.numel()):
        return torch.bincount(batch_rows, minlength=n_total).index_select(0, rows)
    sorted_rows = torch.sort(batch_rows).values
    left = torch.searchsorted(sorted_rows, rows, right=False)
    right = torch.searchsorted(sorted_rows, rows, right=True)
    return right - left


def unique_counts(batch_rows: torch.Tensor, n_total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(batch_rows, return_counts=True)`` (ascending rows, int64 counts), by a
    bincount when ``n_total`` allows it."""
    if _use_bincount(n_total, batch_rows.numel()):
        counts = torch.bincount(batch_rows, minlength=n_total)
        rows = torch.nonzero(counts, as_tuple=True)[0]
        return rows, counts.index_select(0, rows)
    return torch.unique(batch_rows, return_counts=True)


def _inverse(batch_rows: torch.Tensor, rows: torch.Tensor, n_total: int) -> torch.Tensor:
    """Each entry's position in ``rows`` (the ascending unique ``batch_rows``, ids < ``n_total``):
    int64, by a position table over all ``n_total`` rows."""
    position = torch.empty(n_total, dtype=torch.int64, device=batch_rows.device)
    position[rows] = torch.arange(rows.numel(), device=batch_rows.device)
    return position.index_select(0, batch_rows)


def unique_inverse(batch_rows: torch.Tensor, n_total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(batch_rows, return_inverse=True)`` (ascending rows, int64 inverse), by a
    bincount when ``n_total`` allows it."""
    if _use_bincount(n_total, batch_rows.numel()):
        assert n_total is not None
        rows = torch.nonzero(torch.bincount(batch_rows, minlength=n_total), as_tuple=True)[0]
        return rows, _inverse(batch_rows, rows, n_total)
    return torch.unique(batch_rows, return_inverse=True)


def unique_inverse_counts(
    batch_rows: torch.Tensor, n_total: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.unique(batch_rows, return_inverse=True, return_counts=True)`` (ascending rows, int64
    inverse and counts: :func:`unique_inverse` and :func:`unique_counts` in one pass), by one
    bincount when ``n_total`` allows it."""
    if _use_bincount(n_total, batch_rows.numel()):
        assert n_total is not None
        counts = torch.bincount(batch_rows, minlength=n_total)
        rows = torch.nonzero(counts, as_tuple=True)[0]
        return rows, _inverse(batch_rows, rows, n_total), counts.index_select(0, rows)
    return torch.unique(batch_rows, return_inverse=True, return_counts=True)


#: :func:`reused_zeros` re-zeroes a buffer's recorded rows one by one while they are at most this
#: fraction of its rows, else fills all of it: a scattered row costs several times its share of
#: one contiguous fill.
ROW_ZEROING_MAX_FRACTION = 0.25


def reused_zeros(
    buffer: torch.Tensor | None,
    shape: torch.Size,
    dtype: torch.dtype,
    device: torch.device,
    rows: torch.Tensor | None,
    version: int,
) -> torch.Tensor:
    """Zeros of ``shape``, ``dtype``, ``device``: ``buffer`` when it matches them, re-zeroed on
    ``rows`` only when its version counter is still ``version`` (noted when it was last known to be
    zero outside ``rows``), else all of it; a new tensor when there is no matching buffer. Keeping
    a table-sized buffer across steps avoids allocating (and page-faulting in) a fresh one. Rows
    are re-zeroed one by one only while they are at most :data:`ROW_ZEROING_MAX_FRACTION` of the
    buffer: past that, one contiguous fill of all of it is cheaper than the scattered rows."""
    if buffer is None or buffer.shape != shape or buffer.dtype != dtype or buffer.device != device:
        return torch.zeros(shape, dtype=dtype, device=device)
    if rows is not None and buffer._version == version and rows.numel() <= ROW_ZEROING_MAX_FRACTION * shape[0]:
        return buffer.index_fill_(0, rows, 0.0)
    return buffer.zero_()


class TripleRows(NamedTuple):
    """A triple batch's unique user and item rows (ascending; items: positives and negatives) and
    each triple's position in them (``item_idx``: the positives' positions, then the negatives')."""

    user_rows: torch.Tensor
    item_rows: torch.Tensor
    user_idx: torch.Tensor
    item_idx: torch.Tensor


def triple_rows(batch: Triples, n_users: int, n_items: int) -> TripleRows:
    """:class:`TripleRows` of ``batch`` (users, positives, negatives) over tables of ``n_users`` and
    ``n_items`` rows."""
    users, pos, neg = batch
    user_rows, user_idx = unique_inverse(users, n_users)
    item_rows, item_idx = unique_inverse(torch.cat([pos, neg]), n_items)
    return TripleRows(user_rows, item_rows, user_idx, item_idx)


class BatchRows(NamedTuple):
    """A training batch's rows, computed once per iteration and shared by its forward, the
    look-ahead, the penalty and the clip: :class:`TripleRows`, and each unique row's number of
    occurrences (``item_counts``: as positive plus as negative)."""

    triples: TripleRows
    user_counts: torch.Tensor
    item_counts: torch.Tensor


def batch_rows(batch: Triples, n_users: int, n_items: int) -> BatchRows:
    """:class:`BatchRows` of ``batch`` (users, positives, negatives): one bincount (or sort) per
    side, the values of :func:`triple_rows` and :func:`unique_counts`."""
    users, pos, neg = batch
    user_rows, user_idx, user_counts = unique_inverse_counts(users, n_users)
    item_rows, item_idx, item_counts = unique_inverse_counts(torch.cat([pos, neg]), n_items)
    return BatchRows(TripleRows(user_rows, item_rows, user_idx, item_idx), user_counts, item_counts)


def rows_of(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``t[rows]`` by ``index_select`` (same values; on CPU several times faster than advanced indexing)."""
    return t.index_select(0, rows)


def grad_of(p: nn.Parameter) -> torch.Tensor:
    """``p.grad`` detached: g_t, the non-regularized BPR gradient; RuntimeError when absent."""
    if p.grad is None:
        raise RuntimeError(
            "look-ahead needs the non-regularized BPR gradient g_t in user_factors.grad / item_factors.grad "
            "(run one backward of the training loss first)"
        )
    return p.grad.detach()


def _found(grad_rows: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(position in ``grad_rows`` (ascending, non-empty) of each of ``rows`` where present, clamped
    elsewhere; whether it is present): both (len(rows),)."""
    found = torch.searchsorted(grad_rows, rows).clamp_(max=grad_rows.numel() - 1)
    return found, grad_rows.index_select(0, found) == rows


def grad_rows(p: nn.Parameter, rows: torch.Tensor) -> torch.Tensor:
    """g_t[rows] ((len(rows), d)) of a dense or row-sparse Θ gradient (rows it lacks are zero)."""
    grad = grad_of(p)
    if not grad.is_sparse:
        return rows_of(grad, rows)
    held, values = row_grad(grad)
    if held is not None and held.numel() == rows.numel() and torch.equal(held, rows):
        return values.clone()
    out = values.new_zeros((rows.numel(), *values.shape[1:]))
    if held is None or held.numel() == 0:
        return out
    found, present = _found(held, rows)
    hit = torch.nonzero(present, as_tuple=True)[0]
    return out.index_copy_(0, hit, rows_of(values, rows_of(found, hit)))


class GradRows(NamedTuple):
    """Where a Θ gradient keeps g_t[rows], read without densifying a row-sparse gradient:
    ``source.index_select(0, index)`` is g_t[rows] on the rows ``held`` marks ((len(rows), 1) bool;
    None: on every row); elsewhere g_t[rows] is 0 (a row the sparse gradient lacks)."""

    source: torch.Tensor
    index: torch.Tensor
    held: torch.Tensor | None


def grad_source(p: nn.Parameter, rows: torch.Tensor) -> GradRows:
    """:class:`GradRows` of ``p.grad`` for ``rows``: the dense gradient indexed by ``rows``, or the
    sparse gradient's values indexed by each row's position among the held rows (clamped where
    absent; an empty gradient reads one zero row)."""
    held, values = row_grad(grad_of(p))
    if held is None:
        return GradRows(values, rows, None)
    if held.numel() == 0:
        zero = values.new_zeros((1, *values.shape[1:]))
        index = torch.zeros_like(rows)
        return GradRows(zero, index, torch.zeros(rows.numel(), 1, dtype=torch.bool, device=rows.device))
    found, present = _found(held, rows)
    # detach: values() is a view whose base is the sparse tensor, which torch.compile cannot trace
    return GradRows(values.detach(), found, present.unsqueeze(1))


def touched(p: nn.Parameter, rows: torch.Tensor) -> torch.Tensor:
    """(len(rows), 1) bool: which ``rows`` a row-sparse optimizer's step will touch — those held by
    ``p.grad`` (all rows for a dense gradient)."""
    held, _ = row_grad(grad_of(p))
    if held is None:
        return torch.ones(rows.numel(), 1, dtype=torch.bool, device=rows.device)
    if held.numel() == 0:
        return torch.zeros(rows.numel(), 1, dtype=torch.bool, device=rows.device)
    return _found(held, rows)[1].unsqueeze(1)


__all__ = [
    "BatchRows",
    "GradRows",
    "coalesced",
    "row_grad",
    "TripleRows",
    "grad_of",
    "grad_source",
    "grad_rows",
    "occurrences",
    "ROW_ZEROING_MAX_FRACTION",
    "reused_zeros",
    "rows_of",
    "touched",
    "batch_rows",
    "triple_rows",
    "unique_counts",
    "unique_inverse",
    "unique_inverse_counts",
]
