"""The look-ahead by replay: Θ̄_{t+1}(Λ) on rows, differentiable by autograd (docs/method.md, "Doing
it at the cost of one training step"), for every supported Θ optimizer, scope and clip.

Every supported Θ optimizer is row-separable, so the new value of ``param[rows]`` depends only on
those rows' parameter, gradient and optimizer state. :func:`simulate_step_rows` gathers exactly
those and replays the optimizer's update formula out of place (differentiable in the gradient),
reading the optimizer's real state and param_group (lr after any scheduler) through
:class:`lopt.lookahead.state.ParamState`. Invariant (tested): with Λ fixed, the simulated
rows equal what ``optimizer.step()`` then writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lopt.lookahead.clip import clip_is_inactive
from lopt.lookahead.state import ParamState, capability, unwrap
from lopt.models import regularizer
from lopt.models.granularity import LambdaGranularity
from lopt.models.mf import bpr_loss
from lopt.models.regularizer import FactorModel
from lopt.models.rows import TripleRows, grad_of, grad_rows, occurrences, rows_of, touched, unique_counts
from lopt.optim.lazy_adam import lazy_adam_constants
from lopt.optim.row_sparse import RowSparseAdagrad, RowSparseAdam, RowSparseSGD
from lopt.types import Triples


# ---------------------------------------------------------------------------- helpers
class _SqrtZeroGradAtZero(torch.autograd.Function):
    """sqrt with autograd's derivative grad / (2·sqrt(x)) where x > 0 and 0 (not inf → NaN) at x = 0."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.sqrt()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return (grad / (2 * y)).masked_fill_(y == 0, 0.0)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) for x ≥ 0 with the same forward values, but a zero (not inf → NaN) gradient at x = 0.

    At x = 0 the optimizer's update is not differentiable anyway (a row with zero gradient and zero
    second moment); 0 is the natural subgradient and keeps NaN out of the Λ gradient."""
    if not x.requires_grad:
        return x.sqrt()
    return _SqrtZeroGradAtZero.apply(x)


def _maybe_neg(grad: torch.Tensor, read: ParamState) -> torch.Tensor:
    return -grad if read.flag("maximize") else grad


def _adam_moments(
    read: ParamState, rows: torch.Tensor, grad: torch.Tensor, beta1: float, beta2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's first and second moments of ``rows`` after this step (torch's Adam:
    ``exp_avg.lerp_(grad, 1 - beta1)``, ``exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)``)."""
    m = read.rows("exp_avg", rows)
    v = read.rows("exp_avg_sq", rows)
    m = (1 - beta1) * grad if m is None else m.lerp(grad, 1 - beta1)
    v = (1 - beta2) * grad * grad if v is None else torch.addcmul(v * beta2, grad, grad, value=1 - beta2)
    return m, v


def _adagrad_sum(read: ParamState, rows: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Adagrad's accumulator of ``rows`` before this step (torch creates it in ``__init__``; a state
    that lost it starts at ``initial_accumulator_value``)."""
    acc = read.rows("sum", rows)
    return torch.full_like(p, read.hyper("initial_accumulator_value", 0.0)) if acc is None else acc


# ---------------------------------------------------------------------------- per-optimizer math
def _sgd_rows(read: ParamState, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    lr, wd = read.hyper("lr"), read.hyper("weight_decay", 0.0)
    momentum, dampening = read.hyper("momentum", 0.0), read.hyper("dampening", 0.0)
    nesterov = read.flag("nesterov")
    p = rows_of(param.detach(), rows)
    grad = _maybe_neg(grad, read)
    if wd != 0:
        grad = grad + wd * p
    if momentum != 0:
        buf = read.rows("momentum_buffer", rows)
        buf = grad if buf is None else buf * momentum + (1 - dampening) * grad
        grad = grad + momentum * buf if nesterov else buf
    return p - lr * grad


def _adam_rows(read: ParamState, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """torch's Adam and AdamW (``decoupled``: AdamW's decay of the parameter)."""
    lr, wd, eps = read.hyper("lr"), read.hyper("weight_decay", 0.0), read.hyper("eps")
    beta1, beta2 = read.betas()
    amsgrad = read.flag("amsgrad")
    decoupled = read.flag("decoupled_weight_decay") or isinstance(read.optimizer, torch.optim.AdamW)
    step = read.next_step()
    p = rows_of(param.detach(), rows)
    grad = _maybe_neg(grad, read)
    if wd != 0:
        if decoupled:  # AdamW: decay the parameter, not the gradient
            p = p * (1 - lr * wd)
        else:  # L2: on the gradient, before the moments
            grad = grad + wd * p
    m, v = _adam_moments(read, rows, grad, beta1, beta2)
    if amsgrad:
        vmax = read.rows("max_exp_avg_sq", rows)
        v = v if vmax is None else torch.maximum(vmax, v)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    step_size = lr / bias_correction1
    denom = safe_sqrt(v) / bias_correction2_sqrt + eps
    # torch's Adam: param.addcdiv_(exp_avg, denom, value=-step_size)
    return torch.addcdiv(p, m, denom, value=-step_size)


def _adagrad_rows(read: ParamState, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    lr, wd, eps = read.hyper("lr"), read.hyper("weight_decay", 0.0), read.hyper("eps")
    lr_decay = read.hyper("lr_decay", 0.0)
    step = read.next_step()
    p = rows_of(param.detach(), rows)
    grad = _maybe_neg(grad, read)
    if wd != 0:
        grad = grad + wd * p
    clr = lr / (1 + (step - 1) * lr_decay)
    acc = _adagrad_sum(read, rows, p) + grad * grad
    return p - clr * (grad / (safe_sqrt(acc) + eps))


def _row_sparse_adam_rows(
    read: ParamState, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """:class:`RowSparseAdam`: the lazy update on touched rows, the row unchanged elsewhere."""
    lr, eps = read.hyper("lr"), read.hyper("eps")
    beta1, beta2 = read.betas()
    p = rows_of(param.detach(), rows)
    s = read.next_row_steps(rows, p)
    m, v = _adam_moments(read, rows, grad, beta1, beta2)
    step_size, bc2_sqrt = lazy_adam_constants(lr, beta1, beta2, s)
    denom = safe_sqrt(v) / bc2_sqrt + eps
    return torch.where(touched(param, rows), p - (m / denom) * step_size, p)


def _row_sparse_adagrad_rows(
    read: ParamState, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """:class:`RowSparseAdagrad`: Adagrad on touched rows (per-row lr decay), unchanged elsewhere."""
    lr, lr_decay, eps = read.hyper("lr"), read.hyper("lr_decay"), read.hyper("eps")
    p = rows_of(param.detach(), rows)
    s = read.next_row_steps(rows, p)
    acc = torch.addcmul(_adagrad_sum(read, rows, p), grad, grad)
    clr = lr / (1 + (s - 1) * lr_decay)
    return torch.where(touched(param, rows), p - (grad / (safe_sqrt(acc) + eps)) * clr, p)


def _row_sparse_sgd_rows(read: ParamState, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """:class:`RowSparseSGD`: θ − lr·g on touched rows (an untouched row has g = 0 anyway)."""
    p = rows_of(param.detach(), rows)
    return torch.where(touched(param, rows), p - read.hyper("lr") * grad, p)


_SIMULATORS: dict[type, Callable[..., torch.Tensor]] = {
    RowSparseAdam: _row_sparse_adam_rows,
    RowSparseAdagrad: _row_sparse_adagrad_rows,
    RowSparseSGD: _row_sparse_sgd_rows,
    torch.optim.SGD: _sgd_rows,
    torch.optim.Adam: _adam_rows,
    torch.optim.AdamW: _adam_rows,
    torch.optim.Adagrad: _adagrad_rows,
}


def simulate_step_rows(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, rows: torch.Tensor, grad_rows: torch.Tensor
) -> torch.Tensor:
    """New values of ``param[rows]`` ((len(rows), *param.shape[1:])) that ``optimizer.step()`` would
    write if ``param.grad[rows] == grad_rows``; differentiable w.r.t. ``grad_rows``, constant in the
    parameter and optimizer state (both read, never modified or copied beyond the gathered rows).

    Reads the optimizer's real state (step, exp_avg, exp_avg_sq, max_exp_avg_sq, momentum_buffer,
    sum) and param_group (lr — as left by any scheduler —, betas, eps, weight_decay, amsgrad,
    maximize, momentum, dampening, nesterov, lr_decay). ``foreach``, ``fused``, ``capturable`` and
    ``differentiable`` do not change the update and are accepted. Supported: torch.optim.SGD, Adam,
    AdamW, Adagrad (exact types) and lopt's row-sparse optimizers; anything else raises
    NotImplementedError (:func:`lopt.lookahead.state.capability`).
    """
    optimizer = unwrap(optimizer)
    capability(optimizer, (param,))
    if grad_rows.shape != (rows.shape[0], *param.shape[1:]):
        raise ValueError(f"grad_rows has shape {tuple(grad_rows.shape)}, expected {(rows.shape[0], *param.shape[1:])}")
    return _SIMULATORS[type(optimizer)](ParamState(optimizer, param), param, rows, grad_rows)


# ---------------------------------------------------------------------------- the look-ahead
def _clip_coefficient(
    model: FactorModel,
    granularity: LambdaGranularity,
    train_batch: Triples,
    scope: str,
    scale: float,
    clip_norm: float,
) -> torch.Tensor:
    """min(clip_norm / (‖g + ∇_ΘΩ(Λ)‖ + 1e-6), 1), differentiable in Λ (a 0-dim tensor).

    Scope "batch": the nonzero gradient rows are exactly the train batch's rows (g_t is the BPR
    gradient of that batch), so the norm costs O(|B|·d). Scope "all": every row, O((|U|+|I|)·d)."""
    P, Q = model.user_factors, model.item_factors
    gP, gQ = grad_of(P), grad_of(Q)
    if scope == "all":
        GP = gP + (2.0 * scale) * granularity.user_lambda(None) * P.detach()
        GQ = gQ + (2.0 * scale) * granularity.item_lambda(None) * Q.detach()
        sq = GP.square().sum() + GQ.square().sum()
    else:
        users, pos, neg = train_batch
        urows = unique_counts(users, P.shape[0])[0]
        irows = unique_counts(torch.cat([pos, neg]), Q.shape[0])[0]
        pu, pi = regularizer.penalty_grad_rows(model, granularity, train_batch, scope, scale, urows, irows)
        sq = (grad_rows(P, urows) + pu).square().sum() + (grad_rows(Q, irows) + pi).square().sum()
    norm = safe_sqrt(sq)
    return (float(clip_norm) / (norm + 1e-6)).clamp(max=1.0)


def _batch_side_rows(
    optimizer: torch.optim.Optimizer,
    param: nn.Parameter,
    lam_fn: Callable[[torch.Tensor | None], torch.Tensor],
    rows: torch.Tensor,
    batch_rows: torch.Tensor,
    n_batch: int,
) -> torch.Tensor:
    """Θ̄_{t+1}[rows] of one side for scope "batch" and an unclipped (or surely not clipping) step.

    Rows absent from the batch have g = 0 and no penalty: their simulated step does not depend on
    Λ and is computed without a graph; only the rows the batch penalizes carry one. The values
    equal :func:`simulate_step_rows` of g[rows] + ∂Ω/∂Θ[rows] (``regularizer.penalty_grad_rows``)."""
    counts = occurrences(batch_rows, rows, param.shape[0])
    hit_mask = counts > 0
    hit = torch.nonzero(hit_mask, as_tuple=True)[0]
    hit_rows = rows_of(rows, hit)
    penalty_rows = regularizer.batch_penalty_rows(param, lam_fn, hit_rows, rows_of(counts, hit), n_batch)
    new_hit = simulate_step_rows(optimizer, param, hit_rows, grad_rows(param, hit_rows) + penalty_rows)
    if hit.numel() == rows.numel():
        return new_hit
    miss = torch.nonzero(~hit_mask, as_tuple=True)[0]
    miss_rows = rows_of(rows, miss)
    with torch.no_grad():
        new_miss = simulate_step_rows(optimizer, param, miss_rows, grad_rows(param, miss_rows))
    out = new_miss.new_empty((rows.numel(), *new_miss.shape[1:])).index_copy_(0, miss, new_miss)
    return out.index_copy(0, hit, new_hit)


def lookahead_rows(
    model: FactorModel,
    theta_optimizer: torch.optim.Optimizer,
    granularity: LambdaGranularity,
    train_batch: Triples,
    user_rows: torch.Tensor,
    item_rows: torch.Tensor,
    *,
    scope: str,
    scale: float,
    clip_norm: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Θ̄_{t+1}(Λ) on ``user_rows`` of P and ``item_rows`` of Q: ((n_u, d), (n_i, d)), differentiable in Λ.

    Assumes ``user_factors.grad`` / ``item_factors.grad`` hold g_t, the NON-regularized BPR gradient
    of ``train_batch`` (one backward); reads them, does not modify them. Replays the real Θ-step
    (g_t + ∇_ΘΩ(B_t; Θ_t, Λ), clipped to ``clip_norm`` like :func:`regularizer.clip_grad_norm_`,
    then ``theta_optimizer.step()``) on those rows only.
    """
    regularizer.check_scope(scope)
    P, Q = model.user_factors, model.item_factors
    users, pos, neg = train_batch
    gP, gQ = grad_of(P), grad_of(Q)
    if scope == "all" and (gP.is_sparse or gQ.is_sparse):
        raise ValueError(regularizer.ROW_SPARSE_NEEDS_BATCH)
    if (
        scope == "batch"
        and users.numel() > 0
        and (clip_norm is None or clip_is_inactive(model, granularity, train_batch, clip_norm))
    ):
        # The clip coefficient is 1 (none, or surely inactive), so only the rows the batch
        # penalizes depend on Λ.
        n = users.numel()
        new_p = _batch_side_rows(theta_optimizer, P, granularity.user_lambda, user_rows, users, n)
        new_q = _batch_side_rows(theta_optimizer, Q, granularity.item_lambda, item_rows, torch.cat([pos, neg]), n)
        return new_p, new_q
    pu, pi = regularizer.penalty_grad_rows(model, granularity, train_batch, scope, scale, user_rows, item_rows)
    grad_u = grad_rows(P, user_rows) + pu
    grad_i = grad_rows(Q, item_rows) + pi
    if clip_norm is not None:
        coef = _clip_coefficient(model, granularity, train_batch, scope, scale, clip_norm)
        grad_u, grad_i = grad_u * coef, grad_i * coef
    return (
        simulate_step_rows(theta_optimizer, P, user_rows, grad_u),
        simulate_step_rows(theta_optimizer, Q, item_rows, grad_i),
    )


def validation_loss(
    model: FactorModel,
    theta_optimizer: torch.optim.Optimizer,
    granularity: LambdaGranularity,
    train_batch: Triples,
    valid: TripleRows,
    *,
    scope: str,
    scale: float,
    clip_norm: float | None,
    dropout: float,
) -> torch.Tensor:
    """l(V; Θ̄_{t+1}(Λ)) through :func:`lookahead_rows` on the validation batch's rows ``valid``.
    ``dropout`` > 0 applies ``F.dropout`` (training mode) to the looked-ahead embeddings of each
    validation triple."""
    user_rows, item_rows, user_idx, item_idx = valid
    options = {"scope": scope, "scale": scale, "clip_norm": clip_norm}
    new_p, new_q = lookahead_rows(model, theta_optimizer, granularity, train_batch, user_rows, item_rows, **options)
    n = user_idx.numel()
    pos_idx, neg_idx = item_idx[:n], item_idx[n:]
    pu, qi, qj = rows_of(new_p, user_idx), rows_of(new_q, pos_idx), rows_of(new_q, neg_idx)
    if dropout > 0:
        pu = F.dropout(pu, dropout, training=True)
        qi = F.dropout(qi, dropout, training=True)
        qj = F.dropout(qj, dropout, training=True)
    return bpr_loss((pu * qi).sum(-1), (pu * qj).sum(-1))


__all__ = ["lookahead_rows", "safe_sqrt", "simulate_step_rows", "validation_loss"]
