"""Exact, differentiable, row-wise look-ahead Θ̄_{t+1}(Λ) (method.md, "Doing it at the cost of one
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

from lopt.models.granularity import LambdaGranularity
from lopt.models.mf import bpr_loss
from lopt.models.regularizer import (
    FactorModel,
    _occurrences,
    _unique_counts,
    _unique_inverse,
    check_scope,
    penalty_grad_rows,
)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

SUPPORTED_OPTIMIZERS: tuple[str, ...] = ("SGD", "Adam", "AdamW", "Adagrad")


# ---------------------------------------------------------------------------- helpers
def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    """Accept a Lightning ``LightningOptimizer`` wrapper as well as a bare optimizer."""
    inner = getattr(optimizer, "_optimizer", None)
    if isinstance(inner, torch.optim.Optimizer):
        return inner
    return optimizer


def _group_of(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> dict[str, Any]:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise ValueError(f"the parameter of shape {tuple(param.shape)} is not managed by this {type(optimizer).__name__}")


def _scalar(x: Any) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


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
def _sgd_rows(optimizer: torch.optim.Optimizer, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    group = _group_of(optimizer, param)
    state = optimizer.state.get(param, {})
    lr, wd = _scalar(group["lr"]), _scalar(group.get("weight_decay", 0.0))
    momentum, dampening = _scalar(group.get("momentum", 0.0)), _scalar(group.get("dampening", 0.0))
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


def _adam_rows(optimizer: torch.optim.Optimizer, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    group = _group_of(optimizer, param)
    state = optimizer.state.get(param, {})
    lr, wd, eps = _scalar(group["lr"]), _scalar(group.get("weight_decay", 0.0)), _scalar(group["eps"])
    beta1, beta2 = (_scalar(b) for b in group["betas"])
    amsgrad = bool(group.get("amsgrad", False))
    decoupled = bool(group.get("decoupled_weight_decay", False)) or isinstance(optimizer, torch.optim.AdamW)
    step = (_scalar(state["step"]) if "step" in state else 0.0) + 1.0
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


def _adagrad_rows(optimizer: torch.optim.Optimizer, param: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    group = _group_of(optimizer, param)
    state = optimizer.state.get(param, {})
    lr, wd, eps = _scalar(group["lr"]), _scalar(group.get("weight_decay", 0.0)), _scalar(group["eps"])
    lr_decay = _scalar(group.get("lr_decay", 0.0))
    step = (_scalar(state["step"]) if "step" in state else 0.0) + 1.0
    p = _rows_of(param.detach(), rows)
    grad = _maybe_neg(grad, group)
    if wd != 0:
        grad = grad + wd * p
    clr = lr / (1 + (step - 1) * lr_decay)
    acc = _state_rows(state, "sum", rows)
    if acc is None:  # torch creates it in __init__; be robust to a state that lost it
        acc = torch.full_like(p, _scalar(group.get("initial_accumulator_value", 0.0)))
    acc = acc + grad * grad
    return p - clr * (grad / (_safe_sqrt(acc) + eps))


_SIMULATORS: dict[type, Callable[..., torch.Tensor]] = {
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
    optimizer = _unwrap(optimizer)
    simulator = _SIMULATORS.get(type(optimizer))
    if simulator is None:
        raise NotImplementedError(
            f"look-ahead cannot simulate the Θ optimizer {type(optimizer).__module__}.{type(optimizer).__qualname__} "
            f"(config group `optimizer`); supported: torch.optim.{', torch.optim.'.join(SUPPORTED_OPTIMIZERS)}"
        )
    if param.is_complex():
        raise NotImplementedError("look-ahead supports real-valued parameters only (got a complex one)")
    if param.is_sparse:
        raise NotImplementedError("look-ahead supports dense parameters only")
    if grad_rows.shape != (rows.shape[0], *param.shape[1:]):
        raise ValueError(f"grad_rows has shape {tuple(grad_rows.shape)}, expected {(rows.shape[0], *param.shape[1:])}")
    group = _group_of(optimizer, param)
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
    if p.grad.is_sparse:
        raise NotImplementedError("look-ahead needs dense Θ gradients")
    return p.grad.detach()


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
        sq = (_rows_of(gP, urows) + pu).square().sum() + (_rows_of(gQ, irows) + pi).square().sum()
    norm = _safe_sqrt(sq)
    return (float(clip_norm) / (norm + 1e-6)).clamp(max=1.0)


def _train_rows(model: FactorModel, train_batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique users, unique items (positives and negatives)) of the train batch, ascending."""
    users, pos, neg = train_batch
    return (
        _unique_counts(users, model.user_factors.shape[0])[0],
        _unique_counts(torch.cat([pos, neg]), model.item_factors.shape[0])[0],
    )


#: The clip is known to be inactive when clip_norm / (norm + 1e-6) exceeds 1 by this margin.
_CLIP_MARGIN = 1e-4


def _clip_is_inactive(
    model: FactorModel,
    granularity: LambdaGranularity,
    train_batch: Batch,
    scale: float,
    clip_norm: float,
) -> bool:
    """Scope "batch", CPU only (a host sync elsewhere): True when the clip coefficient is surely 1.

    Then min(·, 1) is constant (1) with a zero derivative, so the look-ahead needs no graph through
    it. Computed without autograd in O(|B|·d); the margin keeps rounding from flipping the call."""
    P = model.user_factors
    if P.device.type != "cpu":
        return False
    users, pos, neg = train_batch
    n = users.numel()
    sq = 0.0
    with torch.no_grad():
        # Σ over the batch's unique rows of ‖g[r] + 2·c_r/|B|·λ[r]⊙Θ[r]‖² (penalty_grad_rows' values),
        # in place on the gathered rows (allocations dominate at this size on CPU).
        for theta, lam_fn, batch_rows in (
            (P, granularity.user_lambda, users),
            (model.item_factors, granularity.item_lambda, torch.cat([pos, neg])),
        ):
            rows, counts = _unique_counts(batch_rows, theta.shape[0])
            coef = counts.to(theta.dtype).unsqueeze(1) * (2.0 / n)
            g = _rows_of(_grad_of(theta), rows).add_(coef * lam_fn(rows) * _rows_of(theta.detach(), rows))
            sq += float(g.square_().sum())
        norm = math.sqrt(sq)
    return math.isfinite(norm) and float(clip_norm) / (norm + 1e-6) > 1.0 + _CLIP_MARGIN


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
    grad = _grad_of(param)
    counts = _occurrences(batch_rows, rows, param.shape[0])
    hit_mask = counts > 0
    hit = torch.nonzero(hit_mask, as_tuple=True)[0]
    hit_rows = _rows_of(rows, hit)
    # ∂Ω/∂Θ on the hit rows: 2·c_r/|B| · λ[r] ⊙ Θ[r] (regularizer._side_grad_rows' expression).
    coef = _rows_of(counts, hit).to(param.dtype).unsqueeze(1) * (2.0 / n_batch)
    penalty_rows = coef * lam_fn(hit_rows) * _rows_of(param.detach(), hit_rows)
    new_hit = simulate_step_rows(optimizer, param, hit_rows, _rows_of(grad, hit_rows) + penalty_rows)
    if hit.numel() == rows.numel():
        return new_hit
    miss = torch.nonzero(~hit_mask, as_tuple=True)[0]
    miss_rows = _rows_of(rows, miss)
    with torch.no_grad():
        new_miss = simulate_step_rows(optimizer, param, miss_rows, _rows_of(grad, miss_rows))
    out = new_miss.new_empty((rows.numel(), *new_miss.shape[1:])).index_copy_(0, miss, new_miss)
    return out.index_copy(0, hit, new_hit)


def _zero_dependence(granularity: LambdaGranularity, urows: torch.Tensor, irows: torch.Tensor) -> torch.Tensor:
    """0 · Σ λ over the train rows: a 0-dim zero whose Λ-gradient has the same (zero-valued)
    entries as the graph through an inactive clip coefficient had, so a row-sparse Λ optimizer sees
    exactly the rows it saw before this shortcut."""
    return 0.0 * (granularity.user_lambda(urows).sum() + granularity.item_lambda(irows).sum())


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
    if scope == "batch" and users.numel() > 0 and (
        clip_norm is None or _clip_is_inactive(model, granularity, train_batch, scale, clip_norm)
    ):
        # Fast path: the clip coefficient is 1 (none, or surely inactive), so only the rows the batch
        # penalizes depend on Λ.
        n = users.numel()
        new_p = _batch_side_rows(theta_optimizer, P, granularity.user_lambda, user_rows, users, n)
        new_q = _batch_side_rows(theta_optimizer, Q, granularity.item_lambda, item_rows, torch.cat([pos, neg]), n)
        if clip_norm is not None and torch.is_grad_enabled():
            new_p = new_p + _zero_dependence(granularity, *_train_rows(model, train_batch))
        return new_p, new_q
    pu, pi = penalty_grad_rows(model, granularity, users, pos, neg, scope, scale, user_rows, item_rows)
    grad_u = _rows_of(gP, user_rows) + pu
    grad_i = _rows_of(gQ, item_rows) + pi
    if clip_norm is not None:
        coef = _clip_coefficient(model, granularity, train_batch, scope, scale, clip_norm)
        grad_u, grad_i = grad_u * coef, grad_i * coef
    return (
        simulate_step_rows(theta_optimizer, P, user_rows, grad_u),
        simulate_step_rows(theta_optimizer, Q, item_rows, grad_i),
    )


# ---------------------------------------------------------------------------- Adam fast path
# The common case (Θ optimizer Adam, scope "batch", clip inactive, no dropout) as one autograd
# Function with a hand-written backward: the values are computed by the same tensor ops as
# simulate_step_rows + bpr_loss (so the forward is bit-identical), the Λ-gradient analytically.
#
# For a row r of one side, with c_r = 2·count_r/|B| (0 for rows absent from the batch) and s = ±1
# (maximize), g = s·(g_bpr + c_r·λ_r⊙θ_r), m' = lerp(m, g, 1−β1), v' = β2·v + (1−β2)·g²,
# ṽ = max(v_max, v') (amsgrad; else v'), D = sqrt(ṽ)/sqrt(1−β2^t) + eps, θ̄ = θ − α·m'/D with
# α = lr/(1−β1^t). Elementwise:
#   ∂θ̄/∂g = −α(1−β1)/D + α·m'/D² · 1/(2·sqrt(ṽ)·sqrt(1−β2^t)) · w · 2(1−β2)·g
# with w = ∂ṽ/∂v' (1 if v' > v_max, ½ at a tie — torch.maximum's convention —, 0 below) and the
# sqrt term 0 where ṽ = 0 (the _safe_sqrt convention). ∂L/∂λ_r = s·(∂L/∂g_r)·c_r·θ_r, summed to
# λ's stored shape; ∂L/∂θ̄ comes from the validation BPR (softplus' = sigmoid, scattered over the
# occurrences with index_add_).
def _adam_fast_path_applies(optimizer: torch.optim.Optimizer, params: tuple[nn.Parameter, ...]) -> bool:
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    for p in params:
        if p.is_complex() or p.is_sparse or p.grad is None or p.grad.is_sparse:
            return False
        try:
            group = _group_of(optimizer, p)
        except ValueError:
            return False
        lr = group.get("lr")
        if isinstance(lr, torch.Tensor) and lr.requires_grad:
            return False
        if _scalar(group.get("weight_decay", 0.0)) != 0:
            return False
        if any(isinstance(t, torch.Tensor) and t.is_sparse for t in optimizer.state.get(p, {}).values()):
            return False
    return True


class _AdamSide:
    """One side (P or Q) of the fast path: its rows, the batch hits among them, the Adam constants."""

    def __init__(self, optimizer: torch.optim.Optimizer, param: nn.Parameter, rows: torch.Tensor,
                 batch_rows: torch.Tensor, n_batch: int) -> None:
        self.param, self.rows = param, rows
        group = _group_of(optimizer, param)
        self.state = optimizer.state.get(param, {})
        self.lr, self.eps = _scalar(group["lr"]), _scalar(group["eps"])
        self.beta1, self.beta2 = (_scalar(b) for b in group["betas"])
        self.amsgrad = bool(group.get("amsgrad", False))
        self.sign = -1.0 if group.get("maximize", False) else 1.0
        self.step = (_scalar(self.state["step"]) if "step" in self.state else 0.0) + 1.0
        counts = _occurrences(batch_rows, rows, param.shape[0])
        hit_mask = counts > 0
        self.hit = torch.nonzero(hit_mask, as_tuple=True)[0]
        self.all_hit = self.hit.numel() == rows.numel()
        self.miss = None if self.all_hit else torch.nonzero(~hit_mask, as_tuple=True)[0]
        self.hit_rows = rows if self.all_hit else _rows_of(rows, self.hit)
        # ∂Ω/∂Θ on the hit rows: coef · λ[r] ⊙ Θ[r], coef = 2·c_r/|B| (as _batch_side_rows).
        self.coef = _rows_of(counts, self.hit).to(param.dtype).unsqueeze(1) * (2.0 / n_batch)

    def _adam(self, rows: torch.Tensor, p: torch.Tensor, grad: torch.Tensor, keep: bool) -> tuple[Any, ...]:
        """_adam_rows' ops (weight_decay 0), in place on the freshly gathered ``p`` and ``grad`` and
        state rows (same kernels, so the same values; fewer allocations, which dominate on CPU).
        ``keep``: ``p`` is left intact and (new rows, g, m', v', v_max or None, sqrt(ṽ), D) returned."""
        if self.sign < 0:
            grad.neg_()
        m = _state_rows(self.state, "exp_avg", rows)
        v = _state_rows(self.state, "exp_avg_sq", rows)
        b1, b2 = self.beta1, self.beta2
        m = (1 - b1) * grad if m is None else m.lerp_(grad, 1 - b1)
        v = torch.mul(grad, 1 - b2).mul_(grad) if v is None else v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        vmax = _state_rows(self.state, "max_exp_avg_sq", rows) if self.amsgrad else None
        bc2s = (1 - b2**self.step) ** 0.5
        step_size = self.lr / (1 - b1**self.step)
        if not keep:
            vt = v if vmax is None else torch.maximum(vmax, v, out=vmax)
            denom = vt.sqrt_().div_(bc2s).add_(self.eps)
            return (p.addcdiv_(m, denom, value=-step_size),)
        vt = v if vmax is None else torch.maximum(vmax, v)
        sq = vt.sqrt()
        denom = sq.div(bc2s).add_(self.eps)
        return torch.addcdiv(p, m, denom, value=-step_size), grad, m, v, vmax, sq, denom

    def forward(self, lam: torch.Tensor) -> torch.Tensor:
        """Θ̄_{t+1}[rows]; keeps what backward needs (hit rows only)."""
        theta, grad = self.param.detach(), _grad_of(self.param)
        p_hit = _rows_of(theta, self.hit_rows)
        g_hit = _rows_of(grad, self.hit_rows).add_(self.coef * lam * p_hit)
        new_hit, self.g, self.m, self.v, self.vmax, self.sq, self.denom = self._adam(self.hit_rows, p_hit, g_hit, True)
        self.p_hit = p_hit
        if self.all_hit:
            return new_hit
        miss_rows = _rows_of(self.rows, self.miss)
        new_miss = self._adam(miss_rows, _rows_of(theta, miss_rows), _rows_of(grad, miss_rows), False)[0]
        out = new_miss.new_empty((self.rows.numel(), *new_miss.shape[1:])).index_copy_(0, self.miss, new_miss)
        return out.index_copy_(0, self.hit, new_hit)

    def lambda_grad(self, grad_rows: torch.Tensor, lam_shape: torch.Size) -> torch.Tensor:
        """∂L/∂λ (λ as passed to forward) from ∂L/∂Θ̄[rows]."""
        G = grad_rows if self.all_hit else _rows_of(grad_rows, self.hit)
        b1, b2 = self.beta1, self.beta2
        step_size = self.lr / (1 - b1**self.step)
        bc2s = (1 - b2**self.step) ** 0.5
        inv = self.denom.reciprocal()
        Ginv = G.mul_(inv)  # G is owned here (a fresh gather or the backward's own buffer)
        # through ṽ: α·m'/D² · 1/(2·sqrt(ṽ)·bc2s), zero where sqrt(ṽ) = 0
        dv = (Ginv * inv * self.m).div_(self.sq * (2.0 * bc2s)).mul_(step_size)
        dv.masked_fill_(self.sq == 0, 0.0)
        if self.vmax is not None:  # amsgrad: ∂max(v_max, v')/∂v' as torch.maximum (½ at a tie)
            w = (self.v > self.vmax).to(dv.dtype).add_((self.v == self.vmax).to(dv.dtype), alpha=0.5)
            dv.mul_(w)
        # ∂L/∂g = ∂L/∂m'·(1−β1) + ∂L/∂v'·2(1−β2)·g ; ∂L/∂m' = −α·G/D
        dg = dv.mul_(self.g).mul_(2.0 * (1 - b2)).add_(Ginv, alpha=-step_size * (1 - b1))
        dlam = dg.mul_(self.p_hit).mul_(self.coef)
        if self.sign < 0:
            dlam.neg_()
        return dlam.sum_to_size(lam_shape)


class _AdamLookaheadBPR(torch.autograd.Function):
    """l(V; Θ̄_{t+1}(Λ)) for the Adam fast path; inputs λ of the users' and items' hit rows."""

    @staticmethod
    def forward(ctx: Any, lam_u: torch.Tensor, lam_i: torch.Tensor, side_u: _AdamSide, side_i: _AdamSide,  # type: ignore[override]
                user_idx: torch.Tensor, pos_idx: torch.Tensor, neg_idx: torch.Tensor) -> torch.Tensor:
        new_p, new_q = side_u.forward(lam_u), side_i.forward(lam_i)
        pu, qi, qj = _rows_of(new_p, user_idx), _rows_of(new_q, pos_idx), _rows_of(new_q, neg_idx)
        prod = pu * qi
        pos = prod.sum(-1)
        neg = torch.mul(pu, qj, out=prod).sum(-1)
        ctx.sides = (side_u, side_i)
        ctx.lam_shapes = (lam_u.shape, lam_i.shape)
        ctx.n_rows = (new_p.shape[0], new_q.shape[0])
        ctx.save_for_backward(pu, qi, qj, neg - pos, user_idx, pos_idx, neg_idx)
        return bpr_loss(pos, neg)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        pu, qi, qj, x, user_idx, pos_idx, neg_idx = ctx.saved_tensors
        side_u, side_i = ctx.sides
        need_u, need_i = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # d softplus(x)/dx as torch's softplus backward (threshold 20: exactly 1 above it)
        dx = torch.where(x > 20.0, 1.0, torch.sigmoid(x)).mul_(grad_out / x.numel()).unsqueeze(1)
        grad_u = grad_i = None
        if need_u:
            G_p = pu.new_zeros((ctx.n_rows[0], pu.shape[1])).index_add_(0, user_idx, torch.sub(qj, qi).mul_(dx))
            grad_u = side_u.lambda_grad(G_p, ctx.lam_shapes[0])
        if need_i:
            dq = dx * pu
            G_q = pu.new_zeros((ctx.n_rows[1], pu.shape[1])).index_add_(0, neg_idx, dq).index_add_(0, pos_idx, dq, alpha=-1)
            grad_i = side_i.lambda_grad(G_q, ctx.lam_shapes[1])
        return grad_u, grad_i, None, None, None, None, None


def _adam_lookahead_validation_loss(
    model: FactorModel,
    theta_optimizer: torch.optim.Optimizer,
    granularity: LambdaGranularity,
    train_batch: Batch,
    user_rows: torch.Tensor,
    item_rows: torch.Tensor,
    user_idx: torch.Tensor,
    item_idx: torch.Tensor,
    clip_norm: float | None,
) -> torch.Tensor:
    users, pos, neg = train_batch
    n = users.numel()
    side_u = _AdamSide(theta_optimizer, model.user_factors, user_rows, users, n)
    side_i = _AdamSide(theta_optimizer, model.item_factors, item_rows, torch.cat([pos, neg]), n)
    n_v = user_idx.numel()
    loss = _AdamLookaheadBPR.apply(
        granularity.user_lambda(side_u.hit_rows), granularity.item_lambda(side_i.hit_rows),
        side_u, side_i, user_idx, item_idx[:n_v], item_idx[n_v:],
    )
    if clip_norm is not None and torch.is_grad_enabled():
        loss = loss + _zero_dependence(granularity, *_train_rows(model, train_batch))
    return loss


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
) -> torch.Tensor:
    """l(V_t; Θ̄_{t+1}(Λ)): the BPR loss of ``valid_batch`` after the simulated Θ-step (a scalar whose
    graph reaches Λ only; Θ, g_t and the optimizer state are constants).

    Preconditions as :func:`lookahead_rows`. Only the rows ``valid_batch`` touches are simulated:
    cost O((|B|+|V|)·d) for scope "batch" (plus O((|U|+|I|)·d) for the clip norm under scope "all").
    ``dropout`` > 0 applies ``F.dropout`` (training mode) to the looked-ahead embeddings of each
    validation triple.
    """
    v_users, v_pos, v_neg = valid_batch
    user_rows, user_idx = _unique_inverse(v_users, model.user_factors.shape[0])
    item_rows, item_idx = _unique_inverse(torch.cat([v_pos, v_neg]), model.item_factors.shape[0])
    check_scope(scope)
    if (
        dropout <= 0
        and scope == "batch"
        and v_users.numel() > 0
        and train_batch[0].numel() > 0
        and _adam_fast_path_applies(_unwrap(theta_optimizer), (model.user_factors, model.item_factors))
        and (clip_norm is None or _clip_is_inactive(model, granularity, train_batch, scale, clip_norm))
    ):
        # Fast path: Adam, clip coefficient 1, no dropout: hand-written backward (see _AdamLookaheadBPR).
        return _adam_lookahead_validation_loss(
            model, _unwrap(theta_optimizer), granularity, train_batch, user_rows, item_rows, user_idx, item_idx, clip_norm
        )
    new_p, new_q = lookahead_rows(
        model, theta_optimizer, granularity, train_batch, user_rows, item_rows, scope=scope, scale=scale, clip_norm=clip_norm
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
