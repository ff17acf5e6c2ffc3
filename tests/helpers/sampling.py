"""One epoch of BPR triples from a :class:`lopt.data.sampling.NegativeSampler`."""

from __future__ import annotations

import numpy as np

from lopt.data.sampling import NegativeSampler


def make_triples(
    sampler: NegativeSampler,
    users: np.ndarray,
    items: np.ndarray,
    rng: np.random.Generator,
    *,
    shuffle: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(users, positives, negatives)``, each (n,) int64: one negative per (users[k], items[k]).

    With ``shuffle=True`` the triples come in a random order (the permutation is drawn from
    ``rng`` before the negatives). Determined by ``rng``'s state.
    """
    users = np.asarray(users).astype(np.int64, copy=False)
    items = np.asarray(items).astype(np.int64, copy=False)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError(f"users and items must be 1-D arrays of equal length, got {users.shape}, {items.shape}")
    if shuffle:
        perm = rng.permutation(users.size)
        users, items = users[perm], items[perm]
    return users, items, sampler.sample(users, rng)
