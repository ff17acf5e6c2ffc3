"""The look-ahead's one reader of a Θ optimizer's hyper-parameters and state (read, never modified),
and its one capability check: which optimizers and parameters it can replay, and when the fused
Adam kernels apply."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lopt.models.rows import rows_of
from lopt.optim.lazy_adam import lazy_adam_constants
from lopt.optim.row_sparse import RowSparseAdagrad, RowSparseAdam, RowSparseSGD

SUPPORTED_OPTIMIZERS: tuple[str, ...] = ("SGD", "Adam", "AdamW", "Adagrad")
#: lopt's row-sparse Θ optimizers (lopt.optim.row_sparse), replayed exactly too.
SUPPORTED_ROW_SPARSE: tuple[str, ...] = ("RowSparseAdam", "RowSparseAdagrad", "RowSparseSGD")
#: The optimizer types the replay simulates (exact types: a subclass may change ``step``).
REPLAYED: tuple[type[torch.optim.Optimizer], ...] = (
    RowSparseAdam,
    RowSparseAdagrad,
    RowSparseSGD,
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adagrad,
)
#: The optimizer types the fused Adam kernels compute (weight_decay 0, dense state): dense Adam/AdamW
#: (dense gradients) and the lazy :class:`RowSparseAdam` (row-sparse or dense gradients).
FUSED_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.Adam, torch.optim.AdamW, RowSparseAdam)
#: Of those, the ones that take a row-sparse gradient and count steps per row.
PER_ROW_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (RowSparseAdam,)

#: The paths of :func:`capability`.
FUSED, REPLAY = "fused", "replay"


def unwrap(optimizer: Any) -> torch.optim.Optimizer:
    """Accept a Lightning ``LightningOptimizer`` wrapper as well as a bare optimizer."""
    inner = getattr(optimizer, "_optimizer", None)
    if isinstance(inner, torch.optim.Optimizer):
        return inner
    return optimizer


def group_of(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> dict[str, Any]:
    """The param_group holding ``param``; ValueError if the optimizer does not manage it."""
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise ValueError(f"the parameter of shape {tuple(param.shape)} is not managed by this {type(optimizer).__name__}")


def scalar(x: Any) -> float:
    """A hyper-parameter or state entry (a Python number or a 0-dim tensor) as a float."""
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


class ParamState:
    """What ``optimizer`` holds for ``param``: its param_group's hyper-parameters (lr as left by any
    scheduler) and its state (moments, accumulators, momentum buffers, global or per-row step
    counts), read without modifying or copying more than the requested rows."""

    def __init__(self, optimizer: torch.optim.Optimizer, param: nn.Parameter) -> None:
        self.optimizer = optimizer
        self.group = group_of(optimizer, param)
        self.state: dict[str, Any] = optimizer.state.get(param, {})

    def hyper(self, key: str, default: float | None = None) -> float:
        """A numeric hyper-parameter; ``default`` when the group lacks it (KeyError if None)."""
        return scalar(self.group[key] if default is None else self.group.get(key, default))

    def flag(self, key: str) -> bool:
        """A boolean hyper-parameter (False when absent)."""
        return bool(self.group.get(key, False))

    def betas(self) -> tuple[float, float]:
        beta1, beta2 = (scalar(b) for b in self.group["betas"])
        return beta1, beta2

    def next_step(self) -> float:
        """The global step count after this step (dense optimizers)."""
        return (scalar(self.state["step"]) if "step" in self.state else 0.0) + 1.0

    def next_row_steps(self, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The rows' step counts after this step's increment (row-sparse optimizers), (len(rows), 1)
        in ``like``'s dtype and device."""
        counts = self.state.get("step")
        before = (
            torch.zeros(rows.numel(), dtype=like.dtype, device=like.device)
            if counts is None
            else rows_of(counts.to(like.device), rows).to(like.dtype)
        )
        return (before + 1).unsqueeze(1)

    def adam_constants(
        self, rows: torch.Tensor, like: torch.Tensor
    ) -> tuple[float | torch.Tensor, float, float, float | torch.Tensor, float]:
        """(α = lr/(1−β1^s), β1, β2, sqrt(1−β2^s), eps) of this Adam step: s the global step count
        after it (Python floats) for dense Adam; for a per-row optimizer (:data:`PER_ROW_OPTIMIZERS`)
        each of ``rows``' own count after its increment, α and sqrt(1−β2^s) as (len(rows), 1)
        tensors in ``like``'s dtype and device (the ops of :class:`RowSparseAdam`)."""
        beta1, beta2 = self.betas()
        lr, eps = self.hyper("lr"), self.hyper("eps")
        if type(self.optimizer) in PER_ROW_OPTIMIZERS:
            step_size, bc2_sqrt = lazy_adam_constants(lr, beta1, beta2, self.next_row_steps(rows, like))
            return step_size, beta1, beta2, bc2_sqrt, eps
        step = self.next_step()
        return lr / (1 - beta1**step), beta1, beta2, (1 - beta2**step) ** 0.5, eps

    def tensor(self, key: str) -> torch.Tensor | None:
        """The whole state tensor ``key`` (None when absent)."""
        return self.state.get(key)

    def rows(self, key: str, rows: torch.Tensor) -> torch.Tensor | None:
        """``state[key][rows]`` detached (None when absent); NotImplementedError for sparse state."""
        t = self.state.get(key)
        if t is None:
            return None
        if t.is_sparse:
            raise NotImplementedError(f"optimizer state {key!r} is sparse; only dense state is supported")
        return rows_of(t.detach(), rows)


def capability(optimizer: torch.optim.Optimizer, params: tuple[nn.Parameter, ...]) -> str:
    """:data:`FUSED` when the fused Adam kernels compute exactly what the replay would for
    ``optimizer`` and ``params`` (Adam/AdamW with weight_decay 0 and dense gradients, or
    :class:`RowSparseAdam` with row-sparse (sparse_dim 1) or dense gradients; dense state), else
    :data:`REPLAY`. Raises NotImplementedError (naming the config group) for an optimizer or a
    parameter the look-ahead cannot simulate, ValueError for a parameter the optimizer does not
    manage."""
    if type(optimizer) not in REPLAYED:
        raise NotImplementedError(
            f"look-ahead cannot simulate the Θ optimizer {type(optimizer).__module__}.{type(optimizer).__qualname__} "
            f"(config group `optimizer`); supported: torch.optim.{', torch.optim.'.join(SUPPORTED_OPTIMIZERS)}, "
            f"lopt.optim.row_sparse.{', lopt.optim.row_sparse.'.join(SUPPORTED_ROW_SPARSE)}"
        )
    fused = type(optimizer) in FUSED_OPTIMIZERS
    for p in params:
        if p.is_complex():
            raise NotImplementedError("look-ahead supports real-valued parameters only (got a complex one)")
        if p.is_sparse:
            raise NotImplementedError("look-ahead supports dense parameters only")
        read = ParamState(optimizer, p)
        lr = read.group.get("lr")
        if isinstance(lr, torch.Tensor) and lr.requires_grad:
            raise NotImplementedError("a learnable (requires_grad) Θ learning rate is not supported by the look-ahead")
        fused = (
            fused
            and p.grad is not None
            and (not p.grad.is_sparse or (type(optimizer) in PER_ROW_OPTIMIZERS and p.grad.sparse_dim() == 1))
            and read.hyper("weight_decay", 0.0) == 0
            and not any(isinstance(t, torch.Tensor) and t.is_sparse for t in read.state.values())
        )
    return FUSED if fused else REPLAY


__all__ = [
    "FUSED",
    "PER_ROW_OPTIMIZERS",
    "REPLAY",
    "SUPPORTED_OPTIMIZERS",
    "SUPPORTED_ROW_SPARSE",
    "ParamState",
    "capability",
    "group_of",
    "scalar",
    "unwrap",
]
