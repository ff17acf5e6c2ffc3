"""What every lopt optimizer's ``step(closure)`` shares: evaluating the closure."""

from __future__ import annotations

from collections.abc import Callable

import torch


def run_closure(closure: Callable[[], float] | None) -> float | None:
    """What an optimizer's ``step(closure)`` returns: the closure's loss, evaluated with gradients
    enabled (None without a closure)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
