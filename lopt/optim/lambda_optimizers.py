"""Optimizers for Λ (docs/method.md, step 2: "clip, step the Λ optimizer (SGD or Adam), clamp Λ ≥ 0").

All three keep Λ ≥ 0 after every step (projection onto [0, ∞) of every entry they touch) and save
their state through ``state_dict`` like any ``torch.optim.Optimizer``. Row-stored Λ
(:class:`lopt.models.granularity.LambdaGranularity`) receives sparse COO gradients holding only
the rows a Λ-step used; shared Λ receives dense ones.

* :class:`LambdaSGD` — plain projected SGD; a sparse gradient touches only its rows, with results
  identical to dense SGD.
* :class:`LambdaAdam` — DENSE projected Adam (= ``torch.optim.Adam`` + clamp): every entry's
  moments decay every step, so a row keeps moving after its gradient stops. The paper's setting.
* :class:`LambdaRowSparseAdam` — a DIFFERENT algorithm (like ``torch.optim.SparseAdam``): only rows that
  received a gradient update their moments and values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from lopt.models.regularizer import clip_grads_
from lopt.models.rows import coalesced, reused_zeros, row_grad
from lopt.optim.closure import run_closure
from lopt.optim.lazy_adam import adam_rows_, check_hyperparameters, lazy_adam_constants
from lopt.optim.row_sparse import RowSparseOptimizer
from lopt.types import ParamsT


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
                rows, vals = row_grad(p.grad)
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
        |rows|×d allocation per step costs page faults on every step at ML-10M size). Only the
        rows written last step are re-zeroed (the buffer is zero elsewhere) unless the buffer was
        changed in place since (its version counter moved): then all of it."""
        buffers: dict[int, tuple[torch.Tensor, torch.Tensor | None, int]] = self.__dict__.setdefault(
            "_dense_grad_buffers", {}
        )
        buf, rows, version = buffers.get(id(p), (None, None, -1))
        buf = reused_zeros(buf, p.shape, grad.dtype, grad.device, rows, version)
        g = coalesced(grad)
        if g.sparse_dim() == 1:
            rows = g.indices()[0]
            buf.index_add_(0, rows, g.values())
        else:
            rows = None
            buf.copy_(g.to_dense())
        buffers[id(p)] = (buf, rows, buf._version)
        return buf


class LambdaRowSparseAdam(RowSparseOptimizer):
    """Row-sparse projected Adam (``lambda_optimizer=row_sparse_adam``) — a DIFFERENT algorithm from
    (dense) Adam / :class:`LambdaAdam`.

    Like ``torch.optim.SparseAdam``: only rows present in the gradient (the coalesced rows of a
    sparse row gradient; every row of a dense one) update their moments and values; bias
    correction uses a per-row step count (state ``step``, int64 of shape (rows,)). Rows absent
    from the gradient keep value and state bit for bit. Cost O(rows·d) per step. The update is
    lazy Adam's (:func:`lopt.optim.lazy_adam.adam_rows_`, the one Θ's ``sparse_adam`` runs), with
    optional ``amsgrad`` as in Adam, and each updated row clamped to Λ ≥ 0.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        amsgrad: bool = False,
    ) -> None:
        check_hyperparameters(lr, betas, eps, "row_sparse_adam (config group `lambda_optimizer`)")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "amsgrad": amsgrad})

    def _update_rows(self, p: torch.Tensor, rows: torch.Tensor, g: torch.Tensor, group: dict[str, Any]) -> None:
        lr, eps, amsgrad = float(group["lr"]), float(group["eps"]), bool(group["amsgrad"])
        beta1, beta2 = (float(b) for b in group["betas"])
        state = self.state[p]
        s = self._row_steps(p, rows)
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            if amsgrad:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        step_size, bc2_sqrt = lazy_adam_constants(lr, beta1, beta2, s)
        moments = (state["exp_avg"], state["exp_avg_sq"])
        max_v = state["max_exp_avg_sq"] if amsgrad else None
        adam_rows_(p, *moments, rows, g, step_size, bc2_sqrt, beta1, beta2, eps, max_exp_avg_sq=max_v, min_value=0.0)


def set_grads_clip_and_step(
    optimizer: torch.optim.Optimizer, grads: list[tuple[torch.Tensor, torch.Tensor]], max_norm: float | None
) -> torch.Tensor:
    """Each param's ``.grad`` set to its gradient in ``grads`` ((param, gradient) pairs, each param
    once), :func:`clip_lambda_grad_` of them, then ``optimizer.step()``: what a backward writing
    these gradients followed by the clip and the step does. Returns the norm before clipping."""
    for p, grad in grads:
        p.grad = grad
    norm = clip_lambda_grad_([p for p, _ in grads], max_norm)
    optimizer.step()
    return norm


def clip_lambda_grad_(params: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """:func:`clip_grads_` of the Λ tensors that have a gradient (norm 0 when none has)."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    return clip_grads_(params, max_norm)


__all__ = [
    "LambdaAdam",
    "LambdaRowSparseAdam",
    "LambdaSGD",
    "clip_lambda_grad_",
    "set_grads_clip_and_step",
]
