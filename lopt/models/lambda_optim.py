"""Optimizers for Λ (docs/method.md, step 2: "clip, step the Λ optimizer (SGD or Adam), clamp Λ ≥ 0").

All three keep Λ ≥ 0 after every step (projection onto [0, ∞) of every entry they touch) and save
their state through ``state_dict`` like any ``torch.optim.Optimizer``. Row-stored Λ
(:class:`lopt.models.granularity.LambdaGranularity`) receives sparse COO gradients holding only
the rows a Λ-step used; shared Λ receives dense ones.

* :class:`LambdaSGD` — plain projected SGD; a sparse gradient touches only its rows, with results
  identical to dense SGD.
* :class:`LambdaAdam` — DENSE projected Adam (= ``torch.optim.Adam`` + clamp): every entry's
  moments decay every step, so a row keeps moving after its gradient stops. The paper's setting.
* :class:`RowSparseAdam` — a DIFFERENT algorithm (like ``torch.optim.SparseAdam``): only rows that
  received a gradient update their moments and values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


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


def run_closure(closure: Callable[[], float] | None) -> float | None:
    """What an optimizer's ``step(closure)`` returns: the closure's loss, evaluated with gradients
    enabled (None without a closure)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _as_rows(grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(row indices or None for "all rows", row values) of a gradient; sparse grads are coalesced."""
    if grad.is_sparse:
        g = coalesced(grad)
        if g.sparse_dim() == 1:
            return g.indices()[0], g.values()
        return None, g.to_dense()
    return None, grad


class LambdaSGD(torch.optim.Optimizer):
    """Projected SGD: Λ ← max(Λ − lr·∇Λ, 0).

    With a sparse row gradient (sparse_dim 1, as from ``F.embedding(sparse=True)``) only those rows
    are read and written, O(rows·d); the result equals dense SGD on the densified gradient.
    """

    def __init__(self, params: ParamsT, lr: float) -> None:
        if lr < 0:
            raise ValueError(f"invalid Λ learning rate {lr} (config key `lambda_optimizer.lr`)")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = run_closure(closure)
        for group in self.param_groups:
            lr = float(group["lr"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows, vals = _as_rows(p.grad)
                if rows is None:
                    p.add_(vals, alpha=-lr).clamp_(min=0.0)
                else:
                    p.index_copy_(0, rows, p.index_select(0, rows).add_(vals, alpha=-lr).clamp_(min=0.0))
        return loss


class LambdaAdam(torch.optim.Adam):
    """DENSE projected Adam: exactly ``torch.optim.Adam`` (L2 ``weight_decay``, ``amsgrad``) followed by
    Λ ← max(Λ, 0). Sparse gradients are densified first, so every entry's moments update every step
    (as in the paper's code). One fused (default) or foreach update covers all Λ tensors; equal to
    the single-tensor ``torch.optim.Adam`` up to float rounding of the kernel's operation order.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        amsgrad: bool = False,
        weight_decay: float = 0.0,
        *,
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        if fused is None and foreach is None:
            fused = True
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, fused=fused, foreach=foreach)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    p.grad = self._densify(p, p.grad)
        loss = super().step(closure)
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if params:
            torch._foreach_clamp_min_(params, 0.0)
        return loss

    def _densify(self, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The dense value of a sparse gradient, written into a buffer kept across steps (a fresh
        |rows|×d allocation per step costs page faults on every step at ML-10M size)."""
        buffers: dict[int, torch.Tensor] = self.__dict__.setdefault("_dense_grad_buffers", {})
        buf = buffers.get(id(p))
        if buf is None or buf.shape != p.shape or buf.dtype != grad.dtype or buf.device != grad.device:
            buf = buffers[id(p)] = torch.zeros(p.shape, dtype=grad.dtype, device=grad.device)
        else:
            buf.zero_()
        g = coalesced(grad)
        if g.sparse_dim() == 1:
            buf.index_add_(0, g.indices()[0], g.values())
        else:
            buf.copy_(g.to_dense())
        return buf


class RowSparseAdam(torch.optim.Optimizer):
    """Row-sparse projected Adam — a DIFFERENT algorithm from (dense) Adam / :class:`LambdaAdam`.

    Like ``torch.optim.SparseAdam``: only rows present in the gradient (the coalesced rows of a
    sparse row gradient; every row of a dense one) update their moments and values; bias
    correction uses a per-row step count (state ``step``, int64 of shape (rows,)). Rows absent
    from the gradient keep value and state bit for bit. Cost O(rows·d) per step. Optional
    ``amsgrad`` as in Adam. Each updated row is clamped to Λ ≥ 0.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        amsgrad: bool = False,
    ) -> None:
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(
                f"invalid RowSparseAdam hyper-parameters {lr=}, {betas=}, {eps=} (config group `lambda_optimizer`)"
            )
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "amsgrad": amsgrad})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = run_closure(closure)
        for group in self.param_groups:
            lr, eps, amsgrad = float(group["lr"]), float(group["eps"]), bool(group["amsgrad"])
            beta1, beta2 = (float(b) for b in group["betas"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dim() == 0:
                    raise ValueError("RowSparseAdam needs parameters with a row dimension (got a 0-dim tensor)")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    if amsgrad:
                        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                rows, g = _as_rows(p.grad)
                if rows is None:
                    rows = torch.arange(p.shape[0], device=p.device)
                step = state["step"].index_add_(0, rows, torch.ones_like(rows))[rows]
                bshape = (-1,) + (1,) * (p.dim() - 1)
                s = step.to(p.dtype).view(bshape)
                m = state["exp_avg"][rows].lerp_(g, 1 - beta1)
                v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                if amsgrad:
                    v = torch.maximum(state["max_exp_avg_sq"][rows], v)
                    state["max_exp_avg_sq"].index_copy_(0, rows, v)
                bias_correction1 = 1 - torch.pow(beta1, s)
                bias_correction2_sqrt = (1 - torch.pow(beta2, s)).sqrt()
                denom = v.sqrt().div_(bias_correction2_sqrt).add_(eps)
                step_size = lr / bias_correction1
                new = (p[rows] - step_size * (m / denom)).clamp_(min=0.0)
                p.index_copy_(0, rows, new)
        return loss


@torch.no_grad()
def clip_grads_(params: list[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Clip the total L2 norm of the gradients of ``params`` (each holding a dense or sparse
    ``.grad``) to ``max_norm`` in place, with ``torch.nn.utils.clip_grad_norm_`` semantics (grads *=
    min(max_norm / (norm + 1e-6), 1)). ``max_norm=None``: no clipping. Returns the total norm before
    clipping (a 0-dim tensor).

    A sparse grad's norm is the norm of its coalesced values (duplicates summed first); sparse grads
    are replaced by their coalesced version and scaled on their values."""
    norms = []
    for p in params:
        if p.grad.is_sparse:
            p.grad = coalesced(p.grad)
            norms.append(torch.linalg.vector_norm(p.grad.values()))
        else:
            norms.append(torch.linalg.vector_norm(p.grad))
    total = torch.linalg.vector_norm(torch.stack(norms))
    if max_norm is not None:
        coef = (float(max_norm) / (total + 1e-6)).clamp(max=1.0)
        # On the CPU reading coef is free: skip scaling by exactly 1 (a pass over every gradient).
        if coef.device.type == "cpu" and not bool(coef < 1.0):
            return total
        for p in params:
            g = p.grad
            if g.is_sparse:
                p.grad = torch.sparse_coo_tensor(
                    g.indices(), g.values() * coef, g.shape, is_coalesced=True, check_invariants=False
                )
            else:
                g.mul_(coef)
    return total


def clip_lambda_grad_(params: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """:func:`clip_grads_` of the Λ tensors that have a gradient (norm 0 when none has)."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    return clip_grads_(params, max_norm)


__all__ = [
    "LambdaAdam",
    "LambdaSGD",
    "RowSparseAdam",
    "clip_grads_",
    "clip_lambda_grad_",
    "coalesced",
    "run_closure",
]
