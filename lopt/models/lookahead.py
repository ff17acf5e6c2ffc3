"""Exact, differentiable, row-wise look-ahead Θ̄_{t+1}(Λ) (docs/method.md, "Doing it at the cost of one
training step").

Every supported Θ optimizer is row-separable, so the new value of ``param[rows]`` depends only on
those rows' parameter, gradient and optimizer state. :func:`simulate_step_rows` gathers exactly
those and replays the optimizer's update formula out of place (differentiable in the gradient),
reading the optimizer's real state and param_group (lr after any scheduler). Invariant (tested):
with Λ fixed, the simulated rows equal what ``optimizer.step()`` then writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lopt.models import lookahead_fast
from lopt.models.granularity import LambdaGranularity
from lopt.models.mf import bpr_loss
from lopt.models.optim_state import group_of, scalar, unwrap
from lopt.models.regularizer import (
    FactorModel,
    _occurrences,
    _unique_counts,
    _unique_inverse,
    check_scope,
    penalty_grad_rows,
)
from lopt.models.sparse_optim import RowSparseAdagrad, RowSparseAdam, RowSparseSGD, row_grad

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

SUPPORTED_OPTIMIZERS: tuple[str, ...] = ("SGD", "Adam", "AdamW", "Adagrad")
#: lopt's row-sparse Θ optimizers (lopt.models.sparse_optim), replayed exactly too.
SUPPORTED_ROW_SPARSE: tuple[str, ...] = ("RowSparseAdam", "RowSparseAdagrad", "RowSparseSGD")


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


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) for x ≥ 0 with the same forward values, but a zero (not inf → NaN) gradient at x = 0.

    At x = 0 the optimizer's update is not differentiable anyway (a row with zero gradient and zero
    second moment); 0 is the natural subgradient and keeps NaN out of the Λ gradient."""
    if not x.requires_grad:
        return x.sqrt()
    return _SqrtZeroGradAtZero.apply(x)


def _rows_of(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``t[rows]`` by ``index_select`` (same values; on CPU several times faster than advanced indexing)."""
    return t.index_select(0, rows)


def _state_rows(state: dict[str, Any], key: str, rows: torch.Tensor) -> torch.Tensor | None:
    t = state.get(key)
    if t is None:
        return None
    if t.is_sparse:
        raise NotImplementedError(f"optimizer state {key!r} is sparse; only dense state is supported")
    return _rows_of(t.detach(), rows)


def _maybe_neg(grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
    return -grad if group.get("maximize", False) else grad


# ---------------------------------------------------------------------------- per-optimizer math
def _sgd_rows(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    group = group_of(optimizer, param)
    state = optimizer.state.get(param, {})
    lr, wd = scalar(group["lr"]), scalar(group.get("weight_decay", 0.0))
    momentum, dampening = scalar(group.get("momentum", 0.0)), scalar(group.get("dampening", 0.0))
    nesterov = bool(group.get("nesterov", False))
    p = _rows_of(param.detach(), rows)
    grad = _maybe_neg(grad, group)
    if wd != 0:
        grad = grad + wd * p
    if momentum != 0:
        buf = _state_rows(state, "momentum_buffer", rows)
        buf = grad if buf is None else buf * momentum + (1 - dampening) * grad
        grad = grad + momentum * buf if nesterov else buf
    return p - lr * grad


def _adam_rows(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    group = group_of(optimizer, param)
    state = optimizer.state.get(param, {})
    lr, wd, eps = scalar(group["lr"]), scalar(group.get("weight_decay", 0.0)), scalar(group["eps"])
    beta1, beta2 = (scalar(b) for b in group["betas"])
    amsgrad = bool(group.get("amsgrad", False))
    decoupled = bool(group.get("decoupled_weight_decay", False)) or isinstance(optimizer, torch.optim.AdamW)
    step = (scalar(state["step"]) if "step" in state else 0.0) + 1.0
    p = _rows_of(param.detach(), rows)
    grad = _maybe_neg(grad, group)
    if wd != 0:
        if decoupled:  # AdamW: decay the parameter, not the gradient
            p = p * (1 - lr * wd)
        else:  # L2: on the gradient, before the moments
            grad = grad + wd * p
    m = _state_rows(state, "exp_avg", rows)
    v = _state_rows(state, "exp_avg_sq", rows)
    m = (1 - beta1) * grad if m is None else m.lerp(grad, 1 - beta1)
    # torch's Adam: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    v = (1 - beta2) * grad * grad if v is None else torch.addcmul(v * beta2, grad, grad, value=1 - beta2)
    if amsgrad:
        vmax = _state_rows(state, "max_exp_avg_sq", rows)
        v = v if vmax is None else torch.maximum(vmax, v)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    step_size = lr / bias_correction1
    denom = _safe_sqrt(v) / bias_correction2_sqrt + eps
    # torch's Adam: param.addcdiv_(exp_avg, denom, value=-step_size)
    return torch.addcdiv(p, m, denom, value=-step_size)


def _adagrad_rows(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    group = group_of(optimizer, param)
    state = optimizer.state.get(param, {})
    lr, wd, eps = scalar(group["lr"]), scalar(group.get("weight_decay", 0.0)), scalar(group["eps"])
    lr_decay = scalar(group.get("lr_decay", 0.0))
    step = (scalar(state["step"]) if "step" in state else 0.0) + 1.0
    p = _rows_of(param.detach(), rows)
    grad = _maybe_neg(grad, group)
    if wd != 0:
        grad = grad + wd * p
    clr = lr / (1 + (step - 1) * lr_decay)
    acc = _state_rows(state, "sum", rows)
    if acc is None:  # torch creates it in __init__; be robust to a state that lost it
        acc = torch.full_like(p, scalar(group.get("initial_accumulator_value", 0.0)))
    acc = acc + grad * grad
    return p - clr * (grad / (_safe_sqrt(acc) + eps))


def _touched(param: nn.Parameter, rows: torch.Tensor) -> torch.Tensor:
    """(len(rows), 1) bool: which ``rows`` the row-sparse optimizer's step will touch — those held by
    ``param.grad`` (all rows for a dense gradient)."""
    grad_rows, _ = row_grad(_grad_of(param))
    if grad_rows is None:
        return torch.ones(rows.numel(), 1, dtype=torch.bool, device=rows.device)
    if grad_rows.numel() == 0:
        return torch.zeros(rows.numel(), 1, dtype=torch.bool, device=rows.device)
    found = torch.searchsorted(grad_rows, rows).clamp_(max=grad_rows.numel() - 1)
    return (grad_rows.index_select(0, found) == rows).unsqueeze(1)


def _row_step_counts(state: dict[str, Any], rows: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The rows' step counts after this step's increment, (len(rows), 1) in p's dtype."""
    counts = state.get("step")
    before = (
        torch.zeros(rows.numel(), dtype=p.dtype, device=p.device)
        if counts is None
        else _rows_of(counts.to(p.device), rows).to(p.dtype)
    )
    return (before + 1).unsqueeze(1)


def _row_sparse_adam_rows(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """:class:`RowSparseAdam`: the lazy update on touched rows, the row unchanged elsewhere."""
    group = group_of(optimizer, param)
    state = optimizer.state.get(param, {})
    lr, eps = scalar(group["lr"]), scalar(group["eps"])
    beta1, beta2 = (scalar(b) for b in group["betas"])
    p = _rows_of(param.detach(), rows)
    s = _row_step_counts(state, rows, p)
    m = _state_rows(state, "exp_avg", rows)
    v = _state_rows(state, "exp_avg_sq", rows)
    m = (1 - beta1) * grad if m is None else m.lerp(grad, 1 - beta1)
    v = (1 - beta2) * grad * grad if v is None else torch.addcmul(v * beta2, grad, grad, value=1 - beta2)
    step_size = lr / (1 - torch.pow(beta1, s))
    denom = _safe_sqrt(v) / (1 - torch.pow(beta2, s)).sqrt() + eps
    return torch.where(_touched(param, rows), p - (m / denom) * step_size, p)


def _row_sparse_adagrad_rows(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """:class:`RowSparseAdagrad`: Adagrad on touched rows (per-row lr decay), unchanged elsewhere."""
    group = group_of(optimizer, param)
    state = optimizer.state.get(param, {})
    lr, lr_decay, eps = scalar(group["lr"]), scalar(group["lr_decay"]), scalar(group["eps"])
    p = _rows_of(param.detach(), rows)
    s = _row_step_counts(state, rows, p)
    acc = _state_rows(state, "sum", rows)
    if acc is None:
        acc = torch.full_like(p, scalar(group["initial_accumulator_value"]))
    acc = torch.addcmul(acc, grad, grad)
    clr = lr / (1 + (s - 1) * lr_decay)
    return torch.where(_touched(param, rows), p - (grad / (_safe_sqrt(acc) + eps)) * clr, p)


def _row_sparse_sgd_rows(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """:class:`RowSparseSGD`: θ − lr·g on touched rows (an untouched row has g = 0 anyway)."""
    p = _rows_of(param.detach(), rows)
    return torch.where(_touched(param, rows), p - scalar(group_of(optimizer, param)["lr"]) * grad, p)


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
    AdamW, Adagrad (exact types); anything else raises NotImplementedError.
    """
    optimizer = unwrap(optimizer)
    simulator = _SIMULATORS.get(type(optimizer))
    if simulator is None:
        raise NotImplementedError(
            f"look-ahead cannot simulate the Θ optimizer {type(optimizer).__module__}.{type(optimizer).__qualname__} "
            f"(config group `optimizer`); supported: torch.optim.{', torch.optim.'.join(SUPPORTED_OPTIMIZERS)}, "
            f"lopt.models.sparse_optim.{', lopt.models.sparse_optim.'.join(SUPPORTED_ROW_SPARSE)}"
        )
    if param.is_complex():
        raise NotImplementedError("look-ahead supports real-valued parameters only (got a complex one)")
    if param.is_sparse:
        raise NotImplementedError("look-ahead supports dense parameters only")
    if grad_rows.shape != (rows.shape[0], *param.shape[1:]):
        raise ValueError(f"grad_rows has shape {tuple(grad_rows.shape)}, expected {(rows.shape[0], *param.shape[1:])}")
    group = group_of(optimizer, param)
    lr = group.get("lr")
    if isinstance(lr, torch.Tensor) and lr.requires_grad:
        raise NotImplementedError("a learnable (requires_grad) Θ learning rate is not supported by the look-ahead")
    return simulator(optimizer, param, rows, grad_rows)


# ---------------------------------------------------------------------------- the look-ahead
def _grad_of(p: nn.Parameter) -> torch.Tensor:
    if p.grad is None:
        raise RuntimeError(
            "look-ahead needs the non-regularized BPR gradient g_t in user_factors.grad / item_factors.grad "
            "(run one backward of the training loss first)"
        )
    return p.grad.detach()


def _grad_rows(p: nn.Parameter, rows: torch.Tensor) -> torch.Tensor:
    """g_t[rows] ((len(rows), d)) of a dense or row-sparse Θ gradient (rows it lacks are zero)."""
    grad = _grad_of(p)
    if not grad.is_sparse:
        return _rows_of(grad, rows)
    grad_rows, values = row_grad(grad)
    if grad_rows is not None and grad_rows.numel() == rows.numel() and torch.equal(grad_rows, rows):
        return values.clone()
    out = values.new_zeros((rows.numel(), *values.shape[1:]))
    if grad_rows is None or grad_rows.numel() == 0:
        return out
    found = torch.searchsorted(grad_rows, rows).clamp_(max=grad_rows.numel() - 1)
    hit = torch.nonzero(grad_rows.index_select(0, found) == rows, as_tuple=True)[0]
    return out.index_copy_(0, hit, _rows_of(values, _rows_of(found, hit)))


def _clip_coefficient(
    model: FactorModel,
    granularity: LambdaGranularity,
    train_batch: Batch,
    scope: str,
    scale: float,
    clip_norm: float,
) -> torch.Tensor:
    """min(clip_norm / (‖g + ∇_ΘΩ(Λ)‖ + 1e-6), 1), differentiable in Λ (a 0-dim tensor).

    Scope "batch": the nonzero gradient rows are exactly the train batch's rows (g_t is the BPR
    gradient of that batch), so the norm costs O(|B|·d). Scope "all": every row, O((|U|+|I|)·d)."""
    P, Q = model.user_factors, model.item_factors
    gP, gQ = _grad_of(P), _grad_of(Q)
    if scope == "all":
        GP = gP + (2.0 * scale) * granularity.user_lambda(None) * P.detach()
        GQ = gQ + (2.0 * scale) * granularity.item_lambda(None) * Q.detach()
        sq = GP.square().sum() + GQ.square().sum()
    else:
        users, pos, neg = train_batch
        urows, irows = _train_rows(model, train_batch)
        pu, pi = penalty_grad_rows(model, granularity, users, pos, neg, scope, scale, urows, irows)
        sq = (_grad_rows(P, urows) + pu).square().sum() + (_grad_rows(Q, irows) + pi).square().sum()
    norm = _safe_sqrt(sq)
    return (float(clip_norm) / (norm + 1e-6)).clamp(max=1.0)


def _train_rows(model: FactorModel, train_batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique users, unique items (positives and negatives)) of the train batch, ascending."""
    users, pos, neg = train_batch
    return (
        _unique_counts(users, model.user_factors.shape[0])[0],
        _unique_counts(torch.cat([pos, neg]), model.item_factors.shape[0])[0],
    )


def _clip_is_inactive(model: FactorModel, granularity: LambdaGranularity, train_batch: Batch, clip_norm: float) -> bool:
    """Scope "batch", CPU only (a host sync elsewhere): True when the clip coefficient is surely 1.

    Then min(·, 1) is constant (1) with a zero derivative, so the look-ahead needs no graph through
    it. Computed without autograd in O(|B|·d) (:func:`lookahead_fast.clip_is_inactive`)."""
    P, Q = model.user_factors, model.item_factors
    if P.device.type != "cpu":
        return False
    users, pos, neg = train_batch
    if _grad_of(P).is_sparse or _grad_of(Q).is_sparse:
        return _sparse_clip_is_inactive(model, granularity, train_batch, clip_norm)
    sides = tuple(
        (theta, storage, rowwise, *_unique_counts(batch_rows, theta.shape[0]))
        for theta, storage, rowwise, batch_rows in (
            (P, granularity.user_storage, granularity.user_rowwise, users),
            (Q, granularity.item_storage, granularity.item_rowwise, torch.cat([pos, neg])),
        )
    )
    return lookahead_fast.clip_is_inactive(sides, users.numel(), clip_norm)


@torch.no_grad()
def _sparse_clip_is_inactive(
    model: FactorModel, granularity: LambdaGranularity, train_batch: Batch, clip_norm: float
) -> bool:
    """:func:`_clip_is_inactive` for row-sparse Θ gradients (the same sum over the train rows and
    the same margin as :func:`lookahead_fast.clip_is_inactive`)."""
    users, pos, neg = train_batch
    n, sq = users.numel(), 0.0
    for theta, lam_fn, batch_rows in (
        (model.user_factors, granularity.user_lambda, users),
        (model.item_factors, granularity.item_lambda, torch.cat([pos, neg])),
    ):
        rows, counts = _unique_counts(batch_rows, theta.shape[0])
        coef = counts.to(theta.dtype).unsqueeze(1) * (2.0 / n)
        g = _grad_rows(theta, rows).add_(coef * lam_fn(rows).detach() * _rows_of(theta.detach(), rows))
        sq += float((g * g).sum())
    norm = math.sqrt(sq)
    return math.isfinite(norm) and float(clip_norm) / (norm + 1e-6) > 1.0 + lookahead_fast.CLIP_MARGIN


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
    equal :func:`simulate_step_rows` of g[rows] + ∂Ω/∂Θ[rows] (:func:`penalty_grad_rows`)."""
    counts = _occurrences(batch_rows, rows, param.shape[0])
    hit_mask = counts > 0
    hit = torch.nonzero(hit_mask, as_tuple=True)[0]
    hit_rows = _rows_of(rows, hit)
    # ∂Ω/∂Θ on the hit rows: 2·c_r/|B| · λ[r] ⊙ Θ[r] (regularizer._side_grad_rows' expression).
    coef = _rows_of(counts, hit).to(param.dtype).unsqueeze(1) * (2.0 / n_batch)
    penalty_rows = coef * lam_fn(hit_rows) * _rows_of(param.detach(), hit_rows)
    new_hit = simulate_step_rows(optimizer, param, hit_rows, _grad_rows(param, hit_rows) + penalty_rows)
    if hit.numel() == rows.numel():
        return new_hit
    miss = torch.nonzero(~hit_mask, as_tuple=True)[0]
    miss_rows = _rows_of(rows, miss)
    with torch.no_grad():
        new_miss = simulate_step_rows(optimizer, param, miss_rows, _grad_rows(param, miss_rows))
    out = new_miss.new_empty((rows.numel(), *new_miss.shape[1:])).index_copy_(0, miss, new_miss)
    return out.index_copy(0, hit, new_hit)


def lookahead_rows(
    model: FactorModel,
    theta_optimizer: torch.optim.Optimizer,
    granularity: LambdaGranularity,
    train_batch: Batch,
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
    check_scope(scope)
    P, Q = model.user_factors, model.item_factors
    users, pos, neg = train_batch
    gP, gQ = _grad_of(P), _grad_of(Q)
    if scope == "all" and (gP.is_sparse or gQ.is_sparse):
        raise ValueError(
            "a row-sparse Θ optimizer (optimizer=sparse_*) needs model.penalty_scope=batch: "
            "scope 'all' penalizes every row every step"
        )
    if (
        scope == "batch"
        and users.numel() > 0
        and (clip_norm is None or _clip_is_inactive(model, granularity, train_batch, clip_norm))
    ):
        # Fast path: the clip coefficient is 1 (none, or surely inactive), so only the rows the batch
        # penalizes depend on Λ.
        n = users.numel()
        new_p = _batch_side_rows(theta_optimizer, P, granularity.user_lambda, user_rows, users, n)
        new_q = _batch_side_rows(theta_optimizer, Q, granularity.item_lambda, item_rows, torch.cat([pos, neg]), n)
        return new_p, new_q
    pu, pi = penalty_grad_rows(model, granularity, users, pos, neg, scope, scale, user_rows, item_rows)
    grad_u = _grad_rows(P, user_rows) + pu
    grad_i = _grad_rows(Q, item_rows) + pi
    if clip_norm is not None:
        coef = _clip_coefficient(model, granularity, train_batch, scope, scale, clip_norm)
        grad_u, grad_i = grad_u * coef, grad_i * coef
    return (
        simulate_step_rows(theta_optimizer, P, user_rows, grad_u),
        simulate_step_rows(theta_optimizer, Q, item_rows, grad_i),
    )


def lookahead_validation_loss(
    model: FactorModel,
    theta_optimizer: torch.optim.Optimizer,
    granularity: LambdaGranularity,
    train_batch: Batch,
    valid_batch: Batch,
    *,
    scope: str,
    scale: float,
    clip_norm: float | None,
    dropout: float = 0.0,
    compiled: bool = False,
) -> torch.Tensor:
    """l(V_t; Θ̄_{t+1}(Λ)): the BPR loss of ``valid_batch`` after the simulated Θ-step (a scalar whose
    graph reaches Λ only; Θ, g_t and the optimizer state are constants).

    Preconditions as :func:`lookahead_rows`. Only the rows ``valid_batch`` touches are simulated:
    cost O((|B|+|V|)·d) for scope "batch" (plus O((|U|+|I|)·d) for the clip norm under scope "all").
    ``dropout`` > 0 applies ``F.dropout`` (training mode) to the looked-ahead embeddings of each
    validation triple. The common case (Adam, scope "batch", clip none or inactive, no dropout) is
    computed by :mod:`lopt.models.lookahead_fast` (fused kernels through ``torch.compile`` if
    ``compiled``); everything else by autograd through :func:`lookahead_rows`.
    """
    v_users, v_pos, v_neg = valid_batch
    user_rows, user_idx = _unique_inverse(v_users, model.user_factors.shape[0])
    item_rows, item_idx = _unique_inverse(torch.cat([v_pos, v_neg]), model.item_factors.shape[0])
    check_scope(scope)
    optimizer = unwrap(theta_optimizer)
    if (
        dropout <= 0
        and scope == "batch"
        and v_users.numel() > 0
        and train_batch[0].numel() > 0
        and lookahead_fast.applies(optimizer, (model.user_factors, model.item_factors))
    ):
        loss = lookahead_fast.validation_loss(
            model, optimizer, granularity, train_batch, user_rows, item_rows, user_idx, item_idx, clip_norm, compiled
        )
        if loss is not None:
            return loss
    new_p, new_q = lookahead_rows(
        model,
        theta_optimizer,
        granularity,
        train_batch,
        user_rows,
        item_rows,
        scope=scope,
        scale=scale,
        clip_norm=clip_norm,
    )
    n = v_users.numel()
    pos_idx, neg_idx = item_idx[:n], item_idx[n:]
    pu, qi, qj = _rows_of(new_p, user_idx), _rows_of(new_q, pos_idx), _rows_of(new_q, neg_idx)
    if dropout > 0:
        pu = F.dropout(pu, dropout, training=True)
        qi = F.dropout(qi, dropout, training=True)
        qj = F.dropout(qj, dropout, training=True)
    return bpr_loss((pu * qi).sum(-1), (pu * qj).sum(-1))


__all__ = [
    "SUPPORTED_OPTIMIZERS",
    "lookahead_rows",
    "lookahead_validation_loss",
    "simulate_step_rows",
]
