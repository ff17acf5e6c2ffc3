"""The regularizer Ω(B; Θ, Λ) of docs/method.md, its Θ-gradient, and the Θ grad-norm clip.

Scopes (config key ``model.penalty_scope``):

* ``"batch"``: Ω = (1/|B|) Σ_{(u,i,j)∈B} Σ_k [λU[u,k]P[u,k]² + λI[i,k]Q[i,k]² + λI[j,k]Q[j,k]²]
  (once per occurrence). ∂Ω/∂P[r] = 2·c_r/|B| · λU[r] ⊙ P[r] with c_r the number of occurrences of
  user r in the batch (items: occurrences as positive plus as negative).
* ``"all"``: Ω = scale · (Σ λU ⊙ P² + Σ λI ⊙ Q²); ∂Ω/∂P[r] = 2·scale · λU[r] ⊙ P[r].

``model`` is anything with ``user_factors`` (|U|, d) and ``item_factors`` (|I|, d) Parameters
(:class:`lopt.models.mf.MatrixFactorization`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from lopt.models.granularity import LambdaGranularity
from lopt.models.rows import BatchRows, coalesced, occurrences, unique_counts
from lopt.types import Triples

SCOPES: tuple[str, ...] = ("batch", "all")
ROW_SPARSE_NEEDS_BATCH = (
    "a row-sparse Θ optimizer (optimizer=sparse_*) needs model.penalty_scope=batch: "
    "scope 'all' penalizes every row every step"
)


class FactorModel(Protocol):
    """What the regularizer and look-ahead need of a model (MatrixFactorization satisfies it)."""

    user_factors: nn.Parameter
    item_factors: nn.Parameter


class GradRecord(Protocol):
    """Where a dense factor gradient is known to be zero (:class:`lopt.models.mf.DenseGradFromRows`)."""

    def known_rows(self, grad: torch.Tensor) -> torch.Tensor | None: ...

    def wrote_within_rows(self, grad: torch.Tensor) -> None: ...


def grad_record(model: FactorModel, param: torch.Tensor) -> GradRecord | None:
    """The record of ``param``'s dense gradient buffer, if ``model`` keeps one
    (:meth:`lopt.models.mf.MatrixFactorization.dense_grad_record`)."""
    record = getattr(model, "dense_grad_record", None)
    return record(param) if record is not None else None


def check_scope(scope: str) -> str:
    """Return ``scope`` if valid, else raise ValueError naming config key ``model.penalty_scope``."""
    if scope not in SCOPES:
        raise ValueError(
            f"unknown regularizer scope {scope!r} (config key `model.penalty_scope`); valid: {', '.join(SCOPES)}"
        )
    return scope


def penalty(
    model: FactorModel, granularity: LambdaGranularity, batch: Triples, scope: str, scale: float = 1.0
) -> torch.Tensor:
    """Ω of ``batch`` (users, positives, negatives) as a scalar, differentiable in Θ and Λ. ``scale``
    is used by scope "all" only."""
    users, pos_items, neg_items = batch
    P, Q = model.user_factors, model.item_factors
    if check_scope(scope) == "all":
        return scale * (
            (granularity.user_lambda(None) * P.square()).sum() + (granularity.item_lambda(None) * Q.square()).sum()
        )
    n = users.numel()
    if n == 0:
        return P.new_zeros(())
    pu, qi, qj = P[users], Q[pos_items], Q[neg_items]
    total = (
        (granularity.user_lambda(users) * pu.square()).sum()
        + (granularity.item_lambda(pos_items) * qi.square()).sum()
        + (granularity.item_lambda(neg_items) * qj.square()).sum()
    )
    return total / n


def batch_penalty_rows(
    theta: torch.Tensor,
    lam_fn: Callable[[torch.Tensor | None], torch.Tensor],
    rows: torch.Tensor,
    counts: torch.Tensor,
    n_batch: int,
) -> torch.Tensor:
    """Scope "batch": ∂Ω/∂Θ[rows] = 2·c_r/|B| · λ[r] ⊙ Θ[r] ((len(rows), d)) for ``rows`` occurring
    ``counts`` times in the batch; differentiable in Λ, Θ detached."""
    coef = counts.to(theta.dtype).unsqueeze(1) * (2.0 / n_batch)
    return coef * lam_fn(rows) * theta.detach().index_select(0, rows)


def _side_grad_rows(
    theta: torch.Tensor,
    lam_fn: Callable[[torch.Tensor | None], torch.Tensor],
    rows: torch.Tensor,
    batch_rows: torch.Tensor | None,
    n_batch: int,
    scale: float,
) -> torch.Tensor:
    """∂Ω/∂Θ[rows] for one side ((len(rows), d)); batch_rows None ⇒ scope "all"."""
    theta = theta.detach()
    if batch_rows is None:
        return (2.0 * scale) * lam_fn(rows) * theta.index_select(0, rows)
    counts = occurrences(batch_rows, rows, theta.shape[0])
    hit = torch.nonzero(counts, as_tuple=True)[0]
    # Only rows that occur in the batch depend on Λ: gather λ for those alone, so rows without a
    # penalty get no (zero-valued) entry in a sparse Λ gradient. (index_select: ``t[idx]``, faster.)
    contrib = batch_penalty_rows(theta, lam_fn, rows.index_select(0, hit), counts.index_select(0, hit), n_batch)
    return theta.new_zeros((rows.numel(), *theta.shape[1:])).index_copy(0, hit, contrib)


def penalty_grad_rows(
    model: FactorModel,
    granularity: LambdaGranularity,
    batch: Triples,
    scope: str,
    scale: float,
    user_rows: torch.Tensor,
    item_rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂Ω/∂P[user_rows], ∂Ω/∂Q[item_rows]) of ``batch``, shapes (len(user_rows), d), (len(item_rows), d).

    Analytic, differentiable w.r.t. Λ (Θ is detached), O(rows·d + |B|·log|B|). For scope "batch" a
    row absent from the batch gets an exact zero that does not depend on Λ.
    """
    users, pos_items, neg_items = batch
    P, Q = model.user_factors, model.item_factors
    if check_scope(scope) == "all":
        return (
            _side_grad_rows(P, granularity.user_lambda, user_rows, None, 0, scale),
            _side_grad_rows(Q, granularity.item_lambda, item_rows, None, 0, scale),
        )
    n = users.numel()
    if n == 0:
        return P.new_zeros(len(user_rows), P.shape[1]), Q.new_zeros(len(item_rows), Q.shape[1])
    return (
        _side_grad_rows(P, granularity.user_lambda, user_rows, users, n, scale),
        _side_grad_rows(Q, granularity.item_lambda, item_rows, torch.cat([pos_items, neg_items]), n, scale),
    )


def _ensure_grad(p: nn.Parameter) -> torch.Tensor:
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


def _sparse_rows_add(grad: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A row-sparse gradient plus ``values`` on ``rows`` (ascending, unique): a coalesced sparse COO
    tensor. When the gradient holds exactly those rows (the batch's, as the sparse forward gives
    them) the values are added row by row; otherwise indices are merged by a coalesce."""
    g = coalesced(grad)
    g_rows = g.indices()[0]
    if g_rows.numel() == rows.numel() and torch.equal(g_rows, rows):
        return torch.sparse_coo_tensor(
            g.indices(), g.values() + values, g.shape, is_coalesced=True, check_invariants=False
        )
    merged = torch.sparse_coo_tensor(
        torch.cat([g.indices(), rows.unsqueeze(0)], 1), torch.cat([g.values(), values]), g.shape
    )
    return merged.coalesce()


@torch.no_grad()
def add_penalty_grad_(
    model: FactorModel,
    granularity: LambdaGranularity,
    batch: Triples,
    scope: str,
    scale: float = 1.0,
    rows: BatchRows | None = None,
) -> None:
    """Add ∂Ω/∂Θ (at the current Λ, no autograd graph) to ``user_factors.grad`` / ``item_factors.grad``
    in place (a missing grad starts at zero). Scope "batch": index_add_ on the batch's unique rows
    (``rows``: :func:`lopt.models.rows.batch_rows` of ``batch``, when already computed),
    O(|B|·d); scope "all": dense, O((|U|+|I|)·d). This is the regularization part of the real Θ-step.

    Row-sparse gradients (``MatrixFactorization(sparse_grad=True)``) stay row-sparse: the penalty's
    rows join the same sparse gradient (scope "batch" only: scope "all" touches every row)."""
    users, pos_items, neg_items = batch
    P, Q = model.user_factors, model.item_factors
    gP, gQ = _ensure_grad(P), _ensure_grad(Q)
    if (gP.is_sparse or gQ.is_sparse) and check_scope(scope) == "all":
        raise ValueError(ROW_SPARSE_NEEDS_BATCH)
    if check_scope(scope) == "all":
        gP.add_((2.0 * scale) * granularity.user_lambda(None).detach() * P.detach())
        gQ.add_((2.0 * scale) * granularity.item_lambda(None).detach() * Q.detach())
        return
    n = users.numel()
    if n == 0:
        return
    if rows is None:
        u_rows, u_counts = unique_counts(users, P.shape[0])
        i_rows, i_counts = unique_counts(torch.cat([pos_items, neg_items]), Q.shape[0])
    else:
        u_rows, u_counts = rows.triples.user_rows, rows.user_counts
        i_rows, i_counts = rows.triples.item_rows, rows.item_counts
    for theta, grad, lam_fn, side_rows, counts in (
        (P, gP, granularity.user_lambda, u_rows, u_counts),
        (Q, gQ, granularity.item_lambda, i_rows, i_counts),
    ):
        rows_grad = batch_penalty_rows(theta, lam_fn, side_rows, counts, n)
        if grad.is_sparse:
            theta.grad = _sparse_rows_add(grad, side_rows, rows_grad)
            continue
        record = grad_record(model, theta)
        known = record.known_rows(grad) if record is not None else None
        grad.index_add_(0, side_rows, rows_grad)
        if record is not None and known is not None and torch.equal(known, side_rows):
            record.wrote_within_rows(grad)  # the batch's rows are the gradient's own


def _clip_coef(total: torch.Tensor, max_norm: float | None) -> torch.Tensor | None:
    """The clip's scale min(max_norm / (total + 1e-6), 1) (``torch.nn.utils.clip_grad_norm_``'s),
    or None when there is nothing to scale: no clip, or on the CPU a scale of exactly 1 (reading
    it there is free, and skipping saves a pass over every gradient)."""
    if max_norm is None:
        return None
    coef = (float(max_norm) / (total + 1e-6)).clamp(max=1.0)
    if coef.device.type == "cpu" and not bool(coef < 1.0):
        return None
    return coef


@torch.no_grad()
def add_penalty_grad_and_clip_rows_(
    model: FactorModel, granularity: LambdaGranularity, rows: BatchRows, n_batch: int, max_norm: float | None
) -> torch.Tensor | None:
    """:func:`add_penalty_grad_` (scope "batch") then :func:`clip_grad_norm_`, in one pass over the
    batch's rows, when both tables' dense gradients are recorded as zero outside those rows
    (:func:`grad_record`; ``rows``: :func:`lopt.models.rows.batch_rows` of a batch of ``n_batch``
    triples). Each side's g[rows] + ∂Ω/∂Θ[rows] is gathered once: its norm is the clip's, and it is
    written back, scaled where the clip binds. The values are those of the two calls, bit for bit.
    Returns the norm before clipping, or None (nothing done) where a gradient is not so recorded."""
    if n_batch == 0:
        return None
    sides = []
    for theta, lam_fn, side_rows, counts in (
        (model.user_factors, granularity.user_lambda, rows.triples.user_rows, rows.user_counts),
        (model.item_factors, granularity.item_lambda, rows.triples.item_rows, rows.item_counts),
    ):
        grad = theta.grad
        record = grad_record(model, theta) if grad is not None and not grad.is_sparse else None
        known = record.known_rows(grad) if record is not None else None
        if known is None or not torch.equal(known, side_rows):
            return None
        regularized = grad.index_select(0, side_rows).add_(
            batch_penalty_rows(theta, lam_fn, side_rows, counts, n_batch)
        )
        sides.append((grad, record, side_rows, regularized))
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(side[3]) for side in sides]))
    coef = _clip_coef(total, max_norm)
    if coef is not None:
        for side in sides:
            side[3].mul_(coef)
    for grad, record, side_rows, regularized in sides:
        grad.index_copy_(0, side_rows, regularized)
        record.wrote_within_rows(grad)
    return total


@torch.no_grad()
def clip_grad_norm_(model: FactorModel, max_norm: float | None) -> torch.Tensor:
    """Clip the Θ gradient (``user_factors.grad``, ``item_factors.grad``) to total L2 norm
    ``max_norm`` in place, exactly as ``torch.nn.utils.clip_grad_norm_``: grads *= min(max_norm /
    (norm + 1e-6), 1). ``max_norm=None``: no clipping. Returns the total norm before clipping.
    Row-sparse gradients are coalesced (rows summed first) and scaled on their values. A dense
    gradient known to be zero outside some rows (:func:`grad_record`: the batch's rows under
    penalty scope "batch") has its norm taken over those rows only: the same norm, up to the
    order of the float sum."""
    params = [p for p in (model.user_factors, model.item_factors) if p.grad is not None]
    if not params:
        return torch.zeros((), dtype=model.user_factors.dtype, device=model.user_factors.device)
    records = [grad_record(model, p) for p in params]
    return clip_grads_(params, max_norm, records)


__all__ = [
    "ROW_SPARSE_NEEDS_BATCH",
    "SCOPES",
    "FactorModel",
    "add_penalty_grad_",
    "add_penalty_grad_and_clip_rows_",
    "batch_penalty_rows",
    "check_scope",
    "clip_grad_norm_",
    "clip_grads_",
    "grad_record",
    "penalty",
    "penalty_grad_rows",
]


@torch.no_grad()
def clip_grads_(
    params: list[torch.Tensor], max_norm: float | None, records: list[GradRecord | None] | None = None
) -> torch.Tensor:
    """Clip the total L2 norm of the gradients of ``params`` (each holding a dense or sparse
    ``.grad``) to ``max_norm`` in place, with ``torch.nn.utils.clip_grad_norm_`` semantics (grads *=
    min(max_norm / (norm + 1e-6), 1)). ``max_norm=None``: no clipping. Returns the total norm before
    clipping (a 0-dim tensor).

    A sparse grad's norm is the norm of its coalesced values (duplicates summed first); sparse grads
    are replaced by their coalesced version and scaled on their values. ``records`` (one per
    param, or None): where a dense grad is known to be zero outside some rows, its norm is taken
    over those rows only."""
    norms = []
    known: list[torch.Tensor | None] = []
    for i, p in enumerate(params):
        record = records[i] if records is not None else None
        rows = record.known_rows(p.grad) if record is not None and not p.grad.is_sparse else None
        known.append(rows)
        if p.grad.is_sparse:
            p.grad = coalesced(p.grad)
            norms.append(torch.linalg.vector_norm(p.grad.values()))
        elif rows is not None:
            norms.append(torch.linalg.vector_norm(p.grad.index_select(0, rows)))
        else:
            norms.append(torch.linalg.vector_norm(p.grad))
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = _clip_coef(total, max_norm)
    if coef is not None:
        for i, p in enumerate(params):
            g = p.grad
            if g.is_sparse:
                p.grad = torch.sparse_coo_tensor(
                    g.indices(), g.values() * coef, g.shape, is_coalesced=True, check_invariants=False
                )
            elif known[i] is not None and coef.device.type == "cpu" and bool(coef.isfinite()):
                g.mul_(coef)  # a finite scale keeps the zero rows zero: the record stays valid
                records[i].wrote_within_rows(g)  # type: ignore[index,union-attr]
            else:
                g.mul_(coef)
    return total
