"""Uncertainty of a paired difference between two methods, from every source the records hold.

The data of one comparison (method A against baseline B on one dataset, one block) is, per split
``s``, an array ``D[m, k, u]``: metric ``m`` of user ``u`` under A's run of seed ``k`` minus the same
under B's run of that seed (NaN where either value is missing). Splits, seeds and users are the
three sources of variance: another split of the data, another training run, other test users.

* :func:`point_delta`: Δ = the mean over splits of the mean over seeds of the mean over users
  (each run's own mean over users is its ``metrics.json`` value, so Δ is the difference of the
  table's cells when both methods have the same runs).
* :func:`hierarchical_bootstrap`: replicates of Δ that resample splits, then seeds within each
  drawn split, then users within it (the users are crossed with the seeds: one draw of users
  serves every seed of the split). Vectorized: each level is a matrix of draw counts, so a
  replicate is two small matrix products; no Python loop over users or replicates.
* :func:`bootstrap_interval` and :func:`bootstrap_pvalue`: the percentile interval and the
  two-sided p-value of those replicates; the smallest p is 2 / (B + 1), so B must be at least
  2·m/α − 1 to reach a Holm threshold α/m (:func:`replicates_for`).
* :func:`paired_t`: the paired t-test over the seed × split means (two-sided), the alternative
  whose p is not floored by the number of seeds (an exact rank test over 5 seeds cannot go below
  0.0625).
* :func:`holm`: Holm's step-down adjustment across the comparisons of a table.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

#: Replicates drawn per chunk (bounds the memory of the count matrices).
_CHUNK = 1000


def unit_means(delta: np.ndarray) -> np.ndarray:
    """(M, K) per-seed means over users of ``delta`` (M, K, n), NaN-aware (NaN when a seed has no user)."""
    mask = np.isfinite(delta)
    count = mask.sum(axis=-1)
    total = np.where(mask, delta, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def point_delta(splits: Sequence[np.ndarray]) -> np.ndarray:
    """(M,) Δ: mean over splits of the mean over seeds of the mean over users (NaN-aware)."""
    with warnings.catch_warnings():  # a metric without any value stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        per_split = [np.nanmean(unit_means(d), axis=1) for d in splits]
        return np.nanmean(np.stack(per_split), axis=0) if per_split else np.array([])


def _counts(rng: np.random.Generator, rows: int, size: int) -> np.ndarray:
    """(rows, size) float64 draw counts: each row resamples ``size`` items with replacement."""
    flat = rng.integers(0, size, size=(rows, size)) + size * np.arange(rows)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * size).reshape(rows, size).astype(np.float64)


def _resampled_split(delta: np.ndarray, rng: np.random.Generator, rows: int) -> np.ndarray:
    """(rows, M) Δ of one split under ``rows`` independent resamplings of its seeds and users."""
    finite = np.isfinite(delta)
    values = np.where(finite, delta, 0.0)
    mask = finite.astype(np.float64)
    _, n_seeds, n_users = delta.shape
    seeds = _counts(rng, rows, n_seeds)  # (rows, K)
    users = _counts(rng, rows, n_users)  # (rows, n)
    n_metrics = delta.shape[0]
    # Σ_k c_k Σ_u w_u D[m,k,u] / Σ_k c_k Σ_u w_u 1[finite]: users first (one matrix product over
    # the n users), then the seeds' counts
    by_user = (users @ values.reshape(-1, n_users).T).reshape(rows, n_metrics, n_seeds)
    weight = (users @ mask.reshape(-1, n_users).T).reshape(rows, n_metrics, n_seeds)
    numerator = (by_user * seeds[:, None, :]).sum(axis=-1)
    denominator = (weight * seeds[:, None, :]).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1e-300), np.nan)


def hierarchical_bootstrap(splits: Sequence[np.ndarray], replicates: int, seed: int = 0) -> np.ndarray:
    """(replicates, M) bootstrap replicates of :func:`point_delta`.

    Each replicate draws len(splits) splits with replacement; each drawn split (every draw
    independently) resamples its seeds with replacement, then its users with replacement (one
    user draw for all of the split's seeds: users are crossed with seeds, the same test users
    under every run). The replicate is the mean over the drawn splits. Deterministic in ``seed``.
    """
    if not splits:
        raise ValueError("hierarchical_bootstrap needs at least one split")
    n_metrics = splits[0].shape[0]
    if any(d.ndim != 3 or d.shape[0] != n_metrics for d in splits):
        raise ValueError("every split must be an (M, K, n) array with the same metrics M")
    rng = np.random.default_rng(seed)
    n_splits = len(splits)
    out = np.empty((replicates, n_metrics))
    for start in range(0, replicates, _CHUNK):
        rows = min(_CHUNK, replicates - start)
        drawn = rng.integers(0, n_splits, size=(rows, n_splits))  # which split fills each slot
        slots = np.empty((rows, n_splits, n_metrics))
        for s, delta in enumerate(splits):  # a loop over the (few) splits, not over users or replicates
            where = np.nonzero(drawn == s)
            if len(where[0]):
                slots[where] = _resampled_split(delta, rng, len(where[0]))
        with warnings.catch_warnings():  # a replicate whose drawn splits have no value stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            out[start : start + rows] = np.nanmean(slots, axis=1)
    return out


def bootstrap_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) percentile interval of each column of ``replicates`` (B, M) at ``level``."""
    tail = 100.0 * (1.0 - level) / 2.0
    return np.nanpercentile(replicates, tail, axis=0), np.nanpercentile(replicates, 100.0 - tail, axis=0)


def bootstrap_pvalue(replicates: np.ndarray, alternative: str = "two-sided") -> np.ndarray:
    """(M,) p-values of H0: Δ = 0 from the replicates (B, M): the share of replicates on the far
    side of 0, with the +1 correction (never 0). ``two-sided`` doubles the smaller tail;
    ``greater`` / ``less`` test Δ > 0 / Δ < 0 alone. The smallest two-sided p is 2 / (B + 1)."""
    finite = np.isfinite(replicates)
    n = finite.sum(axis=0)
    low = ((replicates <= 0) & finite).sum(axis=0)
    high = ((replicates >= 0) & finite).sum(axis=0)
    p_low, p_high = (low + 1) / (n + 1), (high + 1) / (n + 1)
    if alternative == "two-sided":
        p = np.minimum(1.0, 2.0 * np.minimum(p_low, p_high))
    elif alternative == "greater":
        p = p_low
    elif alternative == "less":
        p = p_high
    else:
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    return np.where(n > 0, p, np.nan)


def replicates_for(n_tests: int, alpha: float, minimum: int) -> int:
    """Bootstrap replicates enough for the smallest two-sided p (2 / (B + 1)) to fall below the
    strictest Holm threshold α / n_tests, and at least ``minimum``."""
    needed = math.ceil(2.0 * max(n_tests, 1) / alpha)  # 2/(B+1) < α/m  ⇔  B + 1 > 2m/α
    return max(minimum, needed)


def paired_t(splits: Sequence[np.ndarray]) -> np.ndarray:
    """(M,) two-sided p of a paired t-test over the seed × split means (each unit: one split and one
    seed, A's run against B's); NaN with fewer than two units or no spread."""
    from scipy.stats import ttest_1samp

    units = np.concatenate([unit_means(d) for d in splits], axis=1) if splits else np.empty((0, 0))
    p = np.full(units.shape[0], np.nan)
    for m, row in enumerate(units):  # a loop over metrics
        row = row[np.isfinite(row)]
        if len(row) >= 2 and np.ptp(row) > 0:
            p[m] = float(ttest_1samp(row, 0.0, alternative="two-sided").pvalue)
        elif len(row) >= 2 and row[0] != 0:  # every unit the same non-zero difference
            p[m] = 0.0
    return p


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (same order; NaN stays NaN and is not counted in the family):
    sort the m finite p ascending, p_(i) ↦ max_{j ≤ i} min(1, (m − j + 1)·p_(j))."""
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if len(finite) == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted
