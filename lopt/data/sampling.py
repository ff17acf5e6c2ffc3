"""Uniform negative sampling for BPR triples (protocol: "Negative sampling").

A :class:`NegativeSampler` is built from the interactions to exclude: the train split for
training triples, train ∪ valid for validation triples. For each requested user it draws one
item uniformly from the items that user has not interacted with, by vectorized rejection
sampling: draw for all, find the rejects with a vectorized membership test, redraw only the
rejects, repeat. Users with very few allowed items (whose rejects would need many rounds) are
finished after ``max_rounds`` rounds by exact inverse-CDF sampling over their allowed items, so
the cost per call is bounded; both routes draw exactly uniformly, so their mixture does too.

Membership test: a packed bitset of ``n_users × n_items`` bits when it fits under
``max_bitset_bytes`` (ML-10M: ~93 MB), otherwise the sorted pair keys (a hash probe for large
batches, binary search for small ones).

All randomness comes from the ``np.random.Generator`` passed in (the training loop checkpoints
its state), so a given generator state always yields the same draws.
"""

from __future__ import annotations

import numpy as np
import polars as pl

#: Default memory cap for the bitset membership structure (bytes).
DEFAULT_MAX_BITSET_BYTES = 256 * 2**20
#: Default number of rejection rounds before the exact fallback finishes the remaining draws.
DEFAULT_MAX_ROUNDS = 12
#: Without a bitset, batches of more than keys/this queries use a hash probe, smaller ones a
#: binary search (each random binary search costs ~1-2 µs of cache misses).
_HASH_PROBE_RATIO = 16


class NegativeSampler:
    """Draws, per user, one item uniformly among the items the user has NOT interacted with.

    Parameters
    ----------
    n_items:
        Number of items; candidate negatives are ``0..n_items-1``.
    users, items:
        1-D integer arrays of equal length: the (user, item) pairs to exclude (duplicates are
        fine). Ids in ``[0, n_users)`` / ``[0, n_items)``.
    n_users:
        Number of users (default: ``max(users) + 1``). Users in ``[0, n_users)`` without any
        pair may be sampled for (every item is allowed for them).
    max_bitset_bytes:
        Use a packed bitset for membership when ``n_users · ceil(n_items / 8)`` bytes fit under
        this cap, else sorted keys + binary search.
    max_rounds:
        Rejection rounds before the exact fallback handles the still-rejected draws.
    """

    def __init__(
        self,
        n_items: int,
        users: np.ndarray,
        items: np.ndarray,
        *,
        n_users: int | None = None,
        max_bitset_bytes: int = DEFAULT_MAX_BITSET_BYTES,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
    ) -> None:
        users = np.asarray(users)
        items = np.asarray(items)
        if users.ndim != 1 or users.shape != items.shape:
            raise ValueError(
                f"users and items must be 1-D arrays of equal length, got shapes {users.shape} and {items.shape}"
            )
        if users.size and (users.dtype.kind not in "iu" or items.dtype.kind not in "iu"):
            raise ValueError(f"users/items must be integer arrays, got {users.dtype}/{items.dtype}")
        if int(n_items) <= 0:
            raise ValueError(f"n_items must be positive, got {n_items}")
        self.n_items = int(n_items)
        max_user = int(users.max()) + 1 if users.size else 0
        self.n_users = max_user if n_users is None else int(n_users)
        if users.size:
            if int(users.min()) < 0 or max_user > self.n_users:
                raise ValueError(f"user ids must lie in [0, {self.n_users}), got [{users.min()}, {users.max()}]")
            if int(items.min()) < 0 or int(items.max()) >= self.n_items:
                raise ValueError(f"item ids must lie in [0, {self.n_items}), got [{items.min()}, {items.max()}]")
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be ≥ 1, got {max_rounds}")
        self.max_rounds = int(max_rounds)

        # Sorted distinct keys user·n_items + item.
        keys = np.sort(users.astype(np.int64) * self.n_items + items)
        if keys.size > 1:
            distinct = np.empty(keys.size, dtype=bool)
            distinct[0] = True
            np.not_equal(keys[1:], keys[:-1], out=distinct[1:])
            if not distinct.all():
                keys = keys[distinct]
        key_users = keys // self.n_items
        degree = np.bincount(key_users, minlength=self.n_users)
        #: (n_users,) int64: number of distinct excluded items per user.
        self.degree = degree
        #: (n_users,) int64: number of allowed (never interacted) items per user.
        self.n_allowed = self.n_items - degree
        self._saturated = np.flatnonzero(self.n_allowed == 0)
        self._indptr = np.concatenate(([0], np.cumsum(degree)))

        # Inverse-CDF structure: for user u with sorted excluded items s_0 < s_1 < …, the r-th
        # allowed item is r + #{m : s_m − m ≤ r}. Storing u·n_items + (s_m − m) keeps the array
        # globally sorted, so one searchsorted answers a batch of (user, r) queries.
        # Keys fit int32 up to 2^31 user·item cells (ML-10M: 7.5e8), halving their memory.
        self._key_dtype = np.int32 if self.n_users * self.n_items < 2**31 else np.int64
        within = np.arange(keys.size, dtype=np.int64) - self._indptr[key_users]
        self._shifted = (keys - within).astype(self._key_dtype)

        self._row_bytes = (self.n_items + 7) // 8
        if self.n_users * self._row_bytes <= max_bitset_bytes:
            self._bits: np.ndarray | None = _packed_bitset(keys, self.n_users, self.n_items)
            self._keys: np.ndarray | None = None
        else:
            self._bits = None
            self._keys = keys.astype(self._key_dtype)

    @property
    def uses_bitset(self) -> bool:
        """Whether membership is tested with the packed bitset (else with the sorted keys)."""
        return self._bits is not None

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """bool array: whether each (user, item) pair is among the excluded interactions."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if self._bits is not None:
            byte = self._bits[users * self._row_bytes + (items >> 3)]
            return ((byte >> (items & 7).astype(np.uint8)) & 1).astype(bool)
        assert self._keys is not None
        query = (users * self.n_items + items).astype(self._key_dtype, copy=False)
        if query.size * _HASH_PROBE_RATIO > self._keys.size:
            # Many random queries: one hash-set probe beats cache-missing binary searches.
            hashed = pl.Series(query.ravel()).is_in(pl.Series(self._keys).implode())
            return hashed.to_numpy().reshape(query.shape)
        pos = np.searchsorted(self._keys, query)
        found = np.zeros(query.shape, dtype=bool)
        inside = pos < self._keys.size
        found[inside] = self._keys[pos[inside]] == query[inside]
        return found

    def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n,) int64: for each entry of ``users`` one item drawn uniformly from its allowed items.

        Draws are independent across entries (a user listed twice gets two independent draws)
        and fully determined by ``rng``'s state. Raises ``ValueError`` naming a user index that
        has interacted with every item.
        """
        users = np.asarray(users)
        if users.ndim != 1:
            raise ValueError(f"users must be a 1-D array, got shape {users.shape}")
        if users.size == 0:
            return np.empty(0, dtype=np.int64)
        if users.dtype.kind not in "iu":
            raise ValueError(f"users must be an integer array, got {users.dtype}")
        users = users.astype(np.int64, copy=False)
        lo, hi = int(users.min()), int(users.max())
        if lo < 0 or hi >= self.n_users:
            raise ValueError(
                f"user index out of range: got [{lo}, {hi}], the sampler knows n_users="
                f"{self.n_users} (pass n_users= when building it)"
            )
        if self._saturated.size:
            bad = np.isin(users, self._saturated)
            if bad.any():
                u = int(users[np.argmax(bad)])
                raise ValueError(
                    f"user {u} has interacted with all {self.n_items} items, so no negative "
                    "item can be drawn for it; drop such users or raise the item count"
                )

        neg = rng.integers(0, self.n_items, size=users.size, dtype=np.int64)
        pending = np.flatnonzero(self.contains(users, neg))
        rounds = 1
        while pending.size and rounds < self.max_rounds:
            redraw = rng.integers(0, self.n_items, size=pending.size, dtype=np.int64)
            neg[pending] = redraw
            pending = pending[self.contains(users[pending], redraw)]
            rounds += 1
        if pending.size:
            neg[pending] = self._exact(users[pending], rng)
        return neg

    def _exact(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Exactly uniform allowed items by inverse CDF (int64 users in, int64 items out)."""
        r = rng.integers(0, self.n_allowed[users], dtype=np.int64)
        query = (users * self.n_items + r).astype(self._key_dtype, copy=False)
        below = np.searchsorted(self._shifted, query, side="right") - self._indptr[users]
        return r + below


def _packed_bitset(keys: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    """1-D uint8 array of ``n_users · ceil(n_items/8)`` bytes; bit (u, i) set for each key.

    ``keys``: sorted distinct int64 ``u·n_items + i``.
    """
    row_bytes = (n_items + 7) // 8
    bits = np.zeros(n_users * row_bytes, dtype=np.uint8)
    if keys.size == 0:
        return bits
    users = keys // n_items
    items = keys - users * n_items
    byte_index = users * row_bytes + (items >> 3)
    values = np.left_shift(1, (items & 7)).astype(np.uint8)
    # keys are sorted, so byte_index is non-decreasing; the bits within a byte are distinct,
    # so their sum is their OR.
    starts = np.flatnonzero(np.concatenate(([True], byte_index[1:] != byte_index[:-1])))
    bits[byte_index[starts]] = np.add.reduceat(values, starts, dtype=np.uint8)
    return bits
