"""Synthetic implicit-feedback data with a known structure: long tails and planted low-rank taste.

The generative story (all of it deterministic given ``seed``):

1. **User activity** ``n_u`` follows a power law: user at (random) rank r gets weight
   ``r^-user_alpha``; counts are the integer allocation of ``n_interactions`` proportional to the
   weights, with every user getting at least 3 (fewer only when ``n_interactions < 3·n_users``)
   and at most half the catalogue (all of it only when the total does not fit otherwise).
2. **Item popularity** ``p_i ∝ r^-item_alpha`` over a random ranking of the items.
3. **Planted preferences**: user and item factors ``U (n_users×rank)``, ``V (n_items×rank)`` with
   i.i.d. ``N(0, 1/√rank)`` entries, so the affinity ``a_ui = U_u·V_i`` has unit variance.
4. **Choices**: user u picks ``n_u`` distinct items, sampled without replacement with probability
   ∝ ``p_i · exp(a_ui / noise)`` (Plackett-Luce, drawn by Gumbel-top-k over blocks of users).
   ``noise`` is the temperature of the taste term: small → choices follow taste, large → they
   follow popularity only.
5. **Time**: every item has a release date; a user consumes items roughly in release order
   during the user's own active period. Timestamps (unix seconds from 2000-01-01) strictly
   increase within a user, so a time-ordered split holds out each user's most recent items.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch

__all__ = ["GENERATOR_VERSION", "generate_interactions", "validate_parameters"]

#: Bump when the generator's output for given parameters changes (it invalidates caches).
GENERATOR_VERSION = 1

_EPOCH = 946_684_800  # 2000-01-01T00:00:00Z
_SPAN = 10 * 365 * 86_400  # ten years, in seconds
_MIN_PER_USER = 3
_BLOCK_CELLS = 1 << 23  # users × items scored at once (32 MiB of float32 per array)


def validate_parameters(
    n_users: int,
    n_items: int,
    n_interactions: int,
    rank: int,
    user_alpha: float,
    item_alpha: float,
    noise: float,
    key_prefix: str = "",
) -> None:
    """Raise ValueError naming the offending parameter (as ``key_prefix + name``) when the
    parameters cannot generate a dataset: every user needs ≥ 1 interaction and no (user, item)
    pair may repeat, so ``n_users ≤ n_interactions ≤ n_users · n_items``."""

    def bad(name: str, why: str) -> None:
        raise ValueError(f"{key_prefix}{name} {why}")

    for name, value in (("n_users", n_users), ("n_items", n_items), ("n_interactions", n_interactions), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            bad(name, f"must be a positive integer, got {value!r}")
    for name, value in (("user_alpha", user_alpha), ("item_alpha", item_alpha)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            bad(name, f"must be a finite number ≥ 0 (0 = uniform), got {value!r}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise > 0):
        bad("noise", f"must be a finite number > 0, got {noise!r}")
    if n_interactions < n_users:
        bad(
            "n_interactions",
            f"= {n_interactions} is below n_users = {n_users}: every user "
            "needs at least one interaction; raise it or lower n_users",
        )
    if n_interactions > n_users * n_items:
        bad(
            "n_interactions",
            f"= {n_interactions} exceeds n_users × n_items = "
            f"{n_users * n_items} distinct pairs; lower it or raise n_users/n_items",
        )


def generate_interactions(
    n_users: int,
    n_items: int,
    n_interactions: int,
    rank: int = 8,
    user_alpha: float = 0.6,
    item_alpha: float = 0.9,
    noise: float = 0.3,
    seed: int = 0,
) -> pl.DataFrame:
    """Generate the canonical interaction frame (``user``, ``item``, ``timestamp``; all Int64).

    Guarantees: exactly ``n_interactions`` rows; ids ``0..n_users-1`` / ``0..n_items-1``; every
    user has ≥ min(3, n_interactions // n_users) rows; no duplicate (user, item) pair;
    timestamps strictly increasing within each user; rows sorted by (user, timestamp); the same
    arguments give the identical frame. Memory and time are linear in
    ``n_users · n_items`` (blocks of users are scored at once).
    """
    validate_parameters(n_users, n_items, n_interactions, rank, user_alpha, item_alpha, noise)
    rng_counts, rng_pop, rng_factors, rng_choice, rng_time = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )

    counts = _user_counts(n_users, n_items, n_interactions, user_alpha, rng_counts)
    log_pop = (-item_alpha * np.log1p(rng_pop.permutation(n_items))).astype(np.float32)
    scale = np.float32(rank**-0.25)  # entries N(0, rank^-1/2) → a_ui has unit variance
    user_f = rng_factors.standard_normal((n_users, rank), dtype=np.float32) * scale
    user_f /= np.float32(noise)  # folds the temperature into the user factors
    item_f = rng_factors.standard_normal((n_items, rank), dtype=np.float32) * scale

    users, items = _choose_items(counts, log_pop, user_f, item_f, rng_choice)
    timestamps = _timestamps(users, items, counts, n_items, rng_time)
    return pl.DataFrame(
        {"user": users, "item": items, "timestamp": timestamps},
        schema={"user": pl.Int64, "item": pl.Int64, "timestamp": pl.Int64},
    )


def _user_counts(n_users: int, n_items: int, total: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """(n_users,) int64 counts summing to ``total``, within [low, cap], ∝ power-law weights."""
    low = min(_MIN_PER_USER, n_items, total // n_users)
    cap = n_items // 2 if (n_items // 2) * n_users >= total and n_items // 2 >= low else n_items
    weights = np.power(1.0 + rng.permutation(n_users), -alpha)
    return low + _capped_allocation(weights, total - low * n_users, cap - low)


def _capped_allocation(weights: np.ndarray, total: int, room: int) -> np.ndarray:
    """Integers in [0, room] summing to ``total`` (≤ n·room), proportional to ``weights`` where
    the cap allows (water-filling), rounded by largest remainder."""
    n = weights.size
    if total == 0:
        return np.zeros(n, dtype=np.int64)
    w_sorted = np.sort(weights)[::-1]
    suffix = np.cumsum(w_sorted[::-1])[::-1]  # sum of the weights from position k on
    k = np.arange(n)
    scale = (total - k * room) / suffix  # the scale if the k heaviest users are capped
    uncapped = scale * w_sorted <= room * (1 + 1e-12)
    first = int(np.argmax(uncapped)) if uncapped.any() else n - 1
    expected = np.minimum(room, scale[first] * weights)
    base = np.floor(expected).astype(np.int64)
    remainder = total - int(base.sum())
    if remainder > 0:
        frac = np.where(base < room, expected - base, -1.0)
        base[np.argsort(-frac, kind="stable")[:remainder]] += 1
    assert int(base.sum()) == total and base.max() <= room
    return base


def _choose_items(
    counts: np.ndarray, log_pop: np.ndarray, user_f: np.ndarray, item_f: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel-top-k per user over blocks of users with similar counts. Returns (users, items)
    int64 arrays of length counts.sum(), grouped by user in increasing user id."""
    n_users, n_items = counts.size, log_pop.size
    order = np.argsort(counts, kind="stable")  # similar counts share a block → tight top-k
    block = max(1, _BLOCK_CELLS // n_items)
    out_users, out_items = [], []
    for start in range(0, n_users, block):
        rows = order[start : start + block]
        k = counts[rows]
        k_max = int(k.max())
        # key = -(log p + a/noise + Gumbel) with Gumbel = -log(-log U); the k smallest keys
        # are a Plackett-Luce sample. U = 0 gives key = +inf: never chosen, harmless.
        key = rng.random((rows.size, n_items), dtype=np.float32)
        with np.errstate(divide="ignore"):
            np.log(key, out=key)
            np.negative(key, out=key)
            np.log(key, out=key)
        key -= user_f[rows] @ item_f.T
        key -= log_pop
        # torch's top-k is ~8x faster than np.argpartition here; rows are independent, so the
        # result does not depend on the thread count.
        ranked = torch.topk(torch.from_numpy(key), k_max, dim=1, largest=False, sorted=True).indices.numpy()
        keep = np.arange(k_max) < k[:, None]
        out_items.append(ranked[keep])
        out_users.append(np.repeat(rows, k))
    users = np.concatenate(out_users)
    items = np.concatenate(out_items).astype(np.int64)
    by_user = np.argsort(users, kind="stable")
    return users[by_user].astype(np.int64), items[by_user]


def _timestamps(
    users: np.ndarray, items: np.ndarray, counts: np.ndarray, n_items: int, rng: np.random.Generator
) -> np.ndarray:
    """Int64 unix seconds, strictly increasing within a user and following item release order
    (with jitter); reorders ``items`` in place (``users`` is grouped and stays as it is) so that
    rows are sorted by time within each user."""
    release = rng.random(n_items)
    jitter = rng.normal(0.0, 0.3, size=items.size)
    # One float sort orders by user, then by jittered release (squashed into (0, 1)).
    within = 1.0 / (1.0 + np.exp(-4.0 * (release[items] + jitter - 0.5)))
    items[:] = items[np.argsort(users + within * 0.999, kind="stable")]
    # Sorted uniforms per user without a sort: normalized cumulative sums of exponential gaps.
    starts = np.cumsum(counts) - counts
    gaps = rng.standard_exponential(items.size + counts.size)
    group = np.repeat(np.arange(counts.size), counts + 1)
    csum = np.cumsum(gaps)
    first = starts + np.arange(counts.size)  # index of each user's first gap in ``gaps``
    before = np.concatenate(([0.0], csum))[first]
    total = csum[first + counts] - before
    take = np.delete(np.arange(gaps.size), first + counts)  # drop each user's closing gap
    u = (csum[take] - before[group[take]]) / total[group[take]]
    start = rng.random(counts.size) * 0.5
    length = 0.05 + rng.random(counts.size) * 0.45
    position = np.arange(items.size) - np.repeat(starts, counts)
    when = start[users] + length[users] * u
    return _EPOCH + np.floor(when * _SPAN).astype(np.int64) + position
