"""Reading a torch optimizer's hyper-parameters and state for one parameter (what the look-ahead
replays), never modifying them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


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
