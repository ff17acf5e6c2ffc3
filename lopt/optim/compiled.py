"""Pure tensor kernels run eagerly or through ``torch.compile``, with a logged fallback.

A kernel compiled with ``dynamic=True`` serves every batch size with one compilation (built on
first use, cached on disk by inductor). If compiling or running the compiled kernel fails (no C++
compiler, an inductor bug), the reason is logged once and the eager function is used from then
on: the math is the same, only slower.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("lopt")


class Kernel:
    """``fn`` run eagerly, or through ``torch.compile`` when called with ``compiled=True``.

    ``what`` names the kernel's family and ``switch`` the config setting that turns compiling off
    (both for the fallback's message)."""

    def __init__(self, fn: Callable[..., Any], what: str, switch: str) -> None:
        self.fn = fn
        self.what = what
        self.switch = switch
        self._compiled: Callable[..., Any] | None = None
        self._failed = False

    def __call__(self, compiled: bool, *args: Any) -> Any:
        if compiled and not self._failed:
            if self._compiled is None:
                self._compiled = torch.compile(self.fn, dynamic=True)
            try:
                return self._compiled(*args)
            except Exception as error:  # a missing C++ compiler, an inductor bug: the math is the same eagerly
                self._failed = True
                log.warning(
                    "torch.compile of the %s kernel %s failed (%s: %s); using the eager kernel "
                    "(same results, slower). Set %s to skip compiling.",
                    self.what,
                    self.fn.__name__,
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
                    self.switch,
                )
        return self.fn(*args)


__all__ = ["Kernel"]
