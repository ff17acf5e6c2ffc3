"""Summary statistics of Λ (per side: user / item), computed on the stored tensors.

A shared or per-side vector is stored once and broadcast (granularity.py); every stored value is
replicated equally often in the dense |U|×d (|I|×d) matrix, so mean, std, min, max and quantiles
of the storage equal those of the dense λ — without materializing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lopt.io import atomic_write
from lopt.models.granularity import LambdaGranularity

SIDES = ("user", "item")
#: The learned Λ of a finished run in its output directory (docs/results.md).
LAMBDA_FILE = "lambda.npz"


def write_lambda(
    path: Path,
    granularity: LambdaGranularity,
    compressed: bool = False,
    check: Callable[[Path], None] | None = None,
    **extra: Any,
) -> None:
    """Write λU (``user_lambda``, |U|×d), λI (``item_lambda``, |I|×d), the granularity's name and
    ``extra`` arrays to the .npz ``path``, atomically. ``check(tmp)`` sees the written temp file
    before it replaces ``path``; an exception from it leaves ``path`` as it was."""
    arrays = {
        "user_lambda": granularity.dense_user_lambda().detach().cpu().numpy(),
        "item_lambda": granularity.dense_item_lambda().detach().cpu().numpy(),
        **extra,
        "granularity": np.array(granularity.name),
    }
    save = np.savez_compressed if compressed else np.savez

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            save(handle, **arrays)
        if check is not None:
            check(tmp)

    atomic_write(path, write)


def side_storage(granularity: LambdaGranularity, side: str) -> torch.Tensor:
    """The stored Λ of ``side`` ("user" | "item"): (rows, k), detached."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    storage = granularity.user_storage if side == "user" else granularity.item_storage
    return storage.detach()


def quantile_key(q: float) -> str:
    """``0.05`` → ``"q05"``, ``0.5`` → ``"q50"``, ``0.999`` → ``"q99.9"``."""
    pct = round(100 * float(q), 6)
    return f"q{int(pct):02d}" if pct == int(pct) else f"q{pct:g}"


@torch.no_grad()
def lambda_statistics(
    storage: torch.Tensor,
    quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
    per_dim: bool = True,
    sample: torch.Tensor | None = None,
) -> dict[str, float]:
    """mean, std, min, max, quantiles (``q05``…) and per-dimension means (``dim_mean/007``) of a
    (rows, k) Λ storage. Quantiles use the flat positions ``sample`` when given (an index tensor
    into ``storage.flatten()``), else every value. One device→host transfer in all."""
    flat = storage.flatten().float()
    parts = [flat.mean(), flat.std(unbiased=False) if flat.numel() > 1 else flat.new_zeros(()), flat.min(), flat.max()]
    names = ["mean", "std", "min", "max"]
    if quantiles:
        values = flat if sample is None else flat[sample]
        q = torch.tensor(list(quantiles), dtype=values.dtype, device=values.device)
        parts.extend(torch.quantile(values, q).unbind())
        names.extend(quantile_key(x) for x in quantiles)
    if per_dim:
        width = storage.shape[1]
        parts.extend(storage.float().mean(0).unbind())
        names.extend(f"dim_mean/{k:03d}" for k in range(width))
    numbers = torch.stack(parts).cpu().tolist()
    return dict(zip(names, numbers, strict=True))


def quantile_sample(numel: int, max_values: int, seed: int, device: torch.device) -> torch.Tensor | None:
    """Fixed flat positions (at most ``max_values``) on which quantiles are computed; None = all.
    ``torch.quantile`` refuses inputs over 16M values, and sorting millions per log is waste."""
    if numel <= max_values:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(numel, generator=generator)[:max_values].sort().values.to(device)


@torch.no_grad()
def lambda_histogram(storage: torch.Tensor, bins: int) -> tuple[list[float], list[float]]:
    """(counts, edges) of all stored values: ``bins`` equal bins over [min, max] (a unit-width
    range around the value when Λ is constant)."""
    flat = storage.flatten().float()
    lo, hi = torch.aminmax(flat)
    lo_f, hi_f = float(lo), float(hi)
    if hi_f <= lo_f:
        lo_f, hi_f = lo_f - 0.5, hi_f + 0.5
    counts = torch.histc(flat, bins=bins, min=lo_f, max=hi_f)
    edges = torch.linspace(lo_f, hi_f, bins + 1)
    return counts.cpu().tolist(), edges.tolist()
