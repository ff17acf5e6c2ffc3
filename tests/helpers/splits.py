"""Small random splits for evaluation tests."""

from __future__ import annotations

import numpy as np

from lopt.types import PreparedSplit


def make_split(n_users: int = 30, n_items: int = 25, seed: int = 0) -> PreparedSplit:
    """Random disjoint train/valid/test pairs; users 0 and 1 get no valid/test positives."""
    rng = np.random.default_rng(seed)
    pairs = rng.random((n_users, n_items))
    which = np.full((n_users, n_items), -1)
    which[pairs < 0.3] = 0  # train
    which[(pairs >= 0.3) & (pairs < 0.4)] = 1  # valid
    which[(pairs >= 0.4) & (pairs < 0.5)] = 2  # test
    which[0][which[0] > 0] = 0
    which[1][which[1] == 2] = 0
    which[2][which[2] == 1] = 0
    parts = []
    for code in (0, 1, 2):
        u, i = np.nonzero(which == code)
        perm = rng.permutation(u.size)  # the evaluator must not rely on any order
        parts += [u[perm].astype(np.int32), i[perm].astype(np.int32)]
    return PreparedSplit(
        *parts,
        n_users=n_users,
        n_items=n_items,
        user_ids=np.arange(n_users, dtype=np.int64),
        item_ids=np.arange(n_items, dtype=np.int64),
    )
