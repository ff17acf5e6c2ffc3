"""Row-sparse Θ optimizers: a step reads and writes only the rows its gradient holds.

They take the row-sparse gradients that :class:`lopt.models.mf.MatrixFactorization` produces with
``sparse_grad=True`` (a sparse COO tensor with one index dimension: the batch's unique rows and
their (rows, d) values, the penalty's row gradients included), so a step costs O(rows·d) instead
of O((|U|+|I|)·d), and no dense gradient of the tables is ever allocated. A dense gradient is
accepted too and counts as "every row touched".

* :class:`RowSparseAdam` (``optimizer=sparse_adam``): LAZY Adam — a DIFFERENT algorithm from
  dense Adam. Only touched rows update their moments and values; a row's bias correction uses
  its own step count (the number of steps that touched it, state ``step``: int64 of shape
  (rows,)). Dense Adam instead decays every row's moments every step, so a row keeps moving on
  its momentum after its gradient stops. With every row touched every step they coincide.
* :class:`RowSparseAdagrad` (``optimizer=sparse_adagrad``): Adagrad on the touched rows. A row
  with a zero gradient does not change under dense Adagrad either, so with ``lr_decay = 0`` this
  IS dense Adagrad (same values); ``lr_decay`` uses each row's own step count.
* :class:`RowSparseSGD` (``optimizer=sparse_sgd``): plain SGD (no momentum): the same values as
  dense SGD, without the dense gradient.

``zero_grad`` always drops the gradients (``set_to_none``): a zeroed sparse gradient would be
carried into the next backward as an empty operand. State round-trips through ``state_dict``
(per-row step counts included); the look-ahead replays these steps exactly
(:func:`lopt.lookahead.replay.simulate_step_rows`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lopt.models.rows import row_grad
from lopt.optim.closure import run_closure
from lopt.optim.lazy_adam import LAZY_ADAM, adam_rows_, check_hyperparameters, lazy_adam_constants
from lopt.types import ParamsT


def is_row_sparse(factory: Any) -> bool:
    """True when ``factory`` (an optimizer class or a ``functools.partial`` of one, as Hydra's
    ``_partial_`` builds it) makes a :class:`RowSparseOptimizer`."""
    func = getattr(factory, "func", factory)
    return isinstance(func, type) and issubclass(func, RowSparseOptimizer)


class RowSparseOptimizer(torch.optim.Optimizer):
    """Base class of the row-sparse Θ optimizers (see the module docstring)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every gradient (always ``set_to_none``; see the module docstring)."""
        super().zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = run_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    rows, g = self._rows(p)
                    self._update_rows(p, rows, g, group)
        return loss

    def _update_rows(self, p: torch.Tensor, rows: torch.Tensor, g: torch.Tensor, group: dict[str, Any]) -> None:
        """Update the rows ``rows`` of ``p`` (ascending, unique) with their gradient ``g`` and
        ``group``'s hyper-parameters; every other row and its state stay untouched."""
        raise NotImplementedError

    def _rows(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if p.dim() < 1:
            raise ValueError(f"{type(self).__name__} needs parameters with a row dimension (got a 0-dim tensor)")
        rows, g = row_grad(p.grad)
        if rows is None:
            rows = torch.arange(p.shape[0], device=p.device)
        return rows, g

    def _row_steps(self, p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Increment the touched rows' step counts; returns them as (rows, 1, …) in p's dtype."""
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
        elif state["step"].device != p.device:  # a checkpoint loaded onto another device
            state["step"] = state["step"].to(p.device)
        counts = state["step"]
        step = counts.index_select(0, rows).add_(1)
        counts.index_copy_(0, rows, step)
        return step.to(p.dtype).view((-1,) + (1,) * (p.dim() - 1))


class RowSparseAdam(RowSparseOptimizer):
    """Lazy Adam with per-row bias correction (module docstring). For touched rows R, with
    s = the rows' step counts after the increment:

        m[R] ← m[R].lerp(g, 1 − β1);  v[R] ← β2·v[R] + (1 − β2)·g²
        θ[R] ← θ[R] − lr/(1 − β1^s) · m[R] / (√v[R] / √(1 − β2^s) + eps)

    ``fused=True`` runs the whole row update (gathers, moments, update, scatters) as one kernel
    compiled by ``torch.compile`` (:mod:`lopt.optim.lazy_adam`; eager if compiling fails): one
    pass over the touched rows instead of about twenty. ``fused=False`` runs the same formula as
    separate tensor operations (the reference). They agree to float rounding.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool = False,
    ) -> None:
        check_hyperparameters(lr, betas, eps, "sparse_adam (config group `optimizer`)")
        # stored as "compiled": torch's load_state_dict casts the step counts of a "fused" group to float32
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "compiled": bool(fused)})

    def _update_rows(self, p: torch.Tensor, rows: torch.Tensor, g: torch.Tensor, group: dict[str, Any]) -> None:
        lr, eps = float(group["lr"]), float(group["eps"])
        beta1, beta2 = (float(b) for b in group["betas"])
        state = self.state[p]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        s = self._row_steps(p, rows)
        # per-row constants on (rows, 1): the powers are not recomputed for each of the d columns
        step_size, bc2_sqrt = lazy_adam_constants(lr, beta1, beta2, s)
        if group.get("compiled", False):
            # rows and g are views into the sparse gradient, on which dynamo's dynamic-shape tracing
            # fails; detach() gives the same storage without the view link
            moments = (state["exp_avg"], state["exp_avg_sq"])
            LAZY_ADAM(True, p.data, *moments, rows.detach(), g.detach(), step_size, bc2_sqrt, beta1, beta2, eps)
            return
        adam_rows_(p, state["exp_avg"], state["exp_avg_sq"], rows, g, step_size, bc2_sqrt, beta1, beta2, eps)


class RowSparseAdagrad(RowSparseOptimizer):
    """Adagrad on the touched rows (module docstring): sum[R] ← sum[R] + g²;
    θ[R] ← θ[R] − lr/(1 + (s − 1)·lr_decay) · g / (√sum[R] + eps), s the rows' step counts."""

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
    ) -> None:
        if not (lr >= 0 and lr_decay >= 0 and initial_accumulator_value >= 0 and eps >= 0):
            raise ValueError(
                f"invalid sparse_adagrad hyper-parameters {lr=}, {lr_decay=}, {initial_accumulator_value=}, {eps=} "
                "(config group `optimizer`)"
            )
        super().__init__(
            params, {"lr": lr, "lr_decay": lr_decay, "initial_accumulator_value": initial_accumulator_value, "eps": eps}
        )

    def _update_rows(self, p: torch.Tensor, rows: torch.Tensor, g: torch.Tensor, group: dict[str, Any]) -> None:
        lr, lr_decay, eps = float(group["lr"]), float(group["lr_decay"]), float(group["eps"])
        s = self._row_steps(p, rows)
        state = self.state[p]
        if "sum" not in state:
            state["sum"] = torch.full_like(
                p, float(group["initial_accumulator_value"]), memory_format=torch.contiguous_format
            )
        acc = state["sum"].index_select(0, rows).addcmul_(g, g)
        state["sum"].index_copy_(0, rows, acc)
        clr = lr / (1 + (s - 1) * lr_decay)
        p.index_copy_(0, rows, p.index_select(0, rows).sub_(g.div(acc.sqrt().add_(eps)).mul_(clr)))


class RowSparseSGD(RowSparseOptimizer):
    """Plain SGD on the touched rows: θ[R] ← θ[R] − lr·g (the values of dense SGD without momentum)."""

    def __init__(self, params: ParamsT, lr: float = 1e-2) -> None:
        if not lr >= 0:
            raise ValueError(f"invalid sparse_sgd learning rate {lr} (config key `optimizer.lr`)")
        super().__init__(params, {"lr": lr})

    def _update_rows(self, p: torch.Tensor, rows: torch.Tensor, g: torch.Tensor, group: dict[str, Any]) -> None:
        p.index_add_(0, rows, g, alpha=-float(group["lr"]))


__all__ = [
    "RowSparseAdagrad",
    "RowSparseAdam",
    "RowSparseOptimizer",
    "RowSparseSGD",
    "is_row_sparse",
]
