"""A small prepared split and a cache key for the prepared-split cache tests."""

from __future__ import annotations

import numpy as np

from lopt.types import PreparedSplit

KEY = {
    "source": "sha256:abc123",
    "min_users_per_item": 0,
    "min_items_per_user": 0,
    "ratios": [0.2, 0.25],
}


def small_split(string_ids: bool = False, seed: int = 0) -> PreparedSplit:
    rng = np.random.default_rng(seed)
    n_users, n_items = 7, 11

    def part(n: int) -> tuple[np.ndarray, np.ndarray]:
        return (
            rng.integers(0, n_users, n).astype(np.int32),
            rng.integers(0, n_items, n).astype(np.int32),
        )

    (tu, ti), (vu, vi), (su, si) = part(30), part(6), part(0)
    if string_ids:
        user_ids = np.array([f"user-{k}é" for k in range(n_users)])
        item_ids = np.array([f"B00{k}" for k in range(n_items)], dtype=object)  # object → stored as unicode
    else:
        user_ids = np.arange(n_users, dtype=np.int64) * 10
        item_ids = np.arange(n_items, dtype=np.int64) + 1000
    return PreparedSplit(tu, ti, vu, vi, su, si, n_users, n_items, user_ids, item_ids)
