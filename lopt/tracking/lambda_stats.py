"""Summary statistics of Λ (per side: user / item), computed on the stored tensors.

A shared or per-side vector is stored once and broadcast (granularity.py); every stored value is
replicated equally often in the dense |U|×d (|I|×d) matrix, so mean, std, min, max and quantiles
of the storage equal those of the dense λ — without materializing it.
"""

from __future__ import annotations

import zipfile
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
    ``extra`` arrays to the .npz ``path``, atomically (``compressed``: deflated at
    :data:`FAST_DEFLATE`). ``check(tmp)`` sees the written temp file
    before it replaces ``path``; an exception from it leaves ``path`` as it was."""
    arrays = {
        "user_lambda": granularity.dense_user_lambda().detach().cpu().numpy(),
        "item_lambda": granularity.dense_item_lambda().detach().cpu().numpy(),
        **extra,
        "granularity": np.array(granularity.name),
    }

    def write(tmp: Path) -> None:
        save_npz(tmp, arrays, compresslevel=FAST_DEFLATE if compressed else None)
        if check is not None:
            check(tmp)

    atomic_write(path, write)


#: zlib level of compressed Λ files: float32 Λ deflates to ~71 % at level 1 and ~68 % at numpy's
#: default level 6, which takes ~4× as long (a per-epoch cost of the snapshot callbacks).
FAST_DEFLATE = 1


def save_npz(path: Path, arrays: dict[str, Any], compresslevel: int | None = None) -> None:
    """``arrays`` as an .npz at ``path`` (what ``np.load`` reads): stored, or deflated at zlib level
    ``compresslevel`` (``np.savez_compressed`` fixes the level at 6)."""
    compression = zipfile.ZIP_STORED if compresslevel is None else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", compression=compression, compresslevel=compresslevel) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


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
        parts.extend(linear_quantiles(values, q).unbind())
        names.extend(quantile_key(x) for x in quantiles)
    if per_dim:
        width = storage.shape[1]
        parts.extend(storage.float().mean(0).unbind())
        names.extend(f"dim_mean/{k:03d}" for k in range(width))
    numbers = torch.stack(parts).cpu().tolist()
    return dict(zip(names, numbers, strict=True))


def linear_quantiles(values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``torch.quantile(values, q)`` (1-D ``values``, linear interpolation), bit for bit, without
    sorting on the CPU: the order statistics the interpolation reads come from one
    ``np.partition`` (linear time), then the same ``lerp`` as torch's."""
    n = values.numel()
    if values.device.type != "cpu" or n == 0 or bool(torch.isnan(values).any()):
        return torch.quantile(values, q)
    ranks = q * (n - 1)
    below, above = ranks.long(), ranks.ceil().long()
    kth = np.unique(torch.cat([below, above]).numpy())
    ordered = torch.from_numpy(np.partition(values.detach().numpy(), kth))
    return torch.lerp(ordered[below], ordered[above], ranks - below)


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
