"""Negative sampling: exclusion, uniformity, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from lopt.data.sampling import NegativeSampler
from tests.helpers.sampling import make_triples

N_USERS, N_ITEMS = 40, 25


def _interactions(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Small dataset with varied densities: user 0 has 24/25 items, user 1 has 17/25."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(N_USERS):
        degree = {0: N_ITEMS - 1, 1: 17}.get(u, int(rng.integers(1, 12)))
        chosen = rng.choice(N_ITEMS, size=degree, replace=False)
        users += [u] * degree
        items += chosen.tolist()
    order = rng.permutation(len(users))
    return np.array(users, dtype=np.int32)[order], np.array(items, dtype=np.int32)[order]


def _samplers(users: np.ndarray, items: np.ndarray, **kw: int) -> list[NegativeSampler]:
    bitset = NegativeSampler(N_ITEMS, users, items, n_users=N_USERS, **kw)
    keys = NegativeSampler(N_ITEMS, users, items, n_users=N_USERS, max_bitset_bytes=0, **kw)
    assert bitset.uses_bitset and not keys.uses_bitset
    return [bitset, keys]


def _excluded_matrix(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    dense = np.zeros((N_USERS, N_ITEMS), dtype=bool)
    dense[users, items] = True
    return dense


@pytest.mark.parametrize("max_rounds", [1, 3, 12])
def test_negatives_never_interacted_over_many_epochs(max_rounds: int) -> None:
    users, items = _interactions()
    dense = _excluded_matrix(users, items)
    for sampler in _samplers(users, items, max_rounds=max_rounds):
        rng = np.random.default_rng(1)
        seen = np.zeros_like(dense)
        for _ in range(50):
            u, pos, neg = make_triples(sampler, users, items, rng, shuffle=True)
            assert neg.dtype == np.int64 and neg.shape == users.shape
            assert ((0 <= neg) & (neg < N_ITEMS)).all()
            assert not dense[u, neg].any()
            assert dense[u, pos].all()
            seen[u, neg] = True
        # The only allowed item of user 0 is found every time.
        assert seen[0].sum() == 1 and not dense[0][seen[0]].any()


def test_contains_matches_dense_truth_in_both_modes() -> None:
    users, items = _interactions()
    dense = _excluded_matrix(users, items)
    qu, qi = np.divmod(np.arange(N_USERS * N_ITEMS), N_ITEMS)
    for sampler in _samplers(users, items):
        assert np.array_equal(sampler.contains(qu, qi), dense[qu, qi])
        assert np.array_equal(sampler.contains(qu[:3], qi[:3]), dense[qu[:3], qi[:3]])  # small batch
    assert np.array_equal(_samplers(users, items)[0].n_allowed, N_ITEMS - dense.sum(axis=1))


@pytest.mark.parametrize("max_rounds", [1, 12])
@pytest.mark.parametrize("user", [1, 5])
def test_uniform_over_allowed_items(user: int, max_rounds: int) -> None:
    """Chi-square goodness of fit to the uniform law over the user's allowed items.

    ``max_rounds=1`` sends every rejected draw to the exact fallback; user 1 (8 allowed of 25)
    mixes both routes under the default rounds.
    """
    users, items = _interactions()
    allowed = np.flatnonzero(~_excluded_matrix(users, items)[user])
    for sampler in _samplers(users, items, max_rounds=max_rounds):
        draws = sampler.sample(np.full(40_000, user), np.random.default_rng(12345))
        counts = np.bincount(draws, minlength=N_ITEMS)
        assert counts.sum() == counts[allowed].sum()  # nothing outside the allowed set
        result = chisquare(counts[allowed])
        assert result.pvalue > 1e-3, (user, max_rounds, result)


def test_exact_fallback_hits_every_allowed_item() -> None:
    users, items = _interactions()
    dense = _excluded_matrix(users, items)
    sampler = NegativeSampler(N_ITEMS, users, items, n_users=N_USERS, max_rounds=1)
    rng = np.random.default_rng(3)
    query = np.repeat(np.arange(N_USERS), 400)
    draws = sampler._exact(query, rng)
    got = np.zeros_like(dense)
    got[query, draws] = True
    assert np.array_equal(got, ~dense)


def test_deterministic_given_generator_state() -> None:
    users, items = _interactions()
    for sampler in _samplers(users, items):
        a = make_triples(sampler, users, items, np.random.default_rng(7), shuffle=True)
        b = make_triples(sampler, users, items, np.random.default_rng(7), shuffle=True)
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x, y)
        rng = np.random.default_rng(8)
        state = rng.bit_generator.state
        first = sampler.sample(users, rng)
        rng.bit_generator.state = state  # what a checkpoint restore does
        assert np.array_equal(sampler.sample(users, rng), first)
        assert not np.array_equal(sampler.sample(users, rng), first)  # the state advanced


def test_user_with_every_item_raises_naming_the_user() -> None:
    users = np.array([0, 3, 3, 3, 1])
    items = np.array([0, 0, 1, 2, 2])
    sampler = NegativeSampler(3, users, items, n_users=5)
    sampler.sample(np.array([0, 1, 2, 4]), np.random.default_rng(0))  # fine without user 3
    with pytest.raises(ValueError, match="user 3 has interacted with all 3 items"):
        sampler.sample(np.array([0, 1, 3]), np.random.default_rng(0))


def test_user_without_interactions_and_range_errors() -> None:
    sampler = NegativeSampler(4, np.array([0]), np.array([1]), n_users=3)
    draws = sampler.sample(np.full(2000, 2), np.random.default_rng(0))
    assert set(draws.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="user index out of range"):
        sampler.sample(np.array([3]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="item ids"):
        NegativeSampler(4, np.array([0]), np.array([4]))
    assert sampler.sample(np.array([], dtype=np.int64), np.random.default_rng(0)).shape == (0,)


def test_duplicate_pairs_are_tolerated() -> None:
    users = np.array([0, 0, 0, 1])
    items = np.array([1, 1, 2, 0])
    sampler = NegativeSampler(3, users, items)
    assert sampler.n_allowed.tolist() == [1, 2]
    draws = sampler.sample(np.zeros(100, dtype=np.int64), np.random.default_rng(0))
    assert set(draws.tolist()) == {0}


def test_int64_keys_when_cells_exceed_int32() -> None:
    n_users, n_items = 9_000, 300_000  # 2.7e9 cells: keys need int64; bitset over the cap
    users = np.array([0, 0, 8_999, 8_999])
    items = np.array([5, 299_999, 0, 123_456])
    sampler = NegativeSampler(n_items, users, items, n_users=n_users, max_rounds=1)
    assert not sampler.uses_bitset
    assert sampler.contains(users, items).all()
    assert not sampler.contains(users, items + 1 - 2 * (items == 299_999)).any()
    draws = sampler.sample(np.repeat([0, 8_999], 5_000), np.random.default_rng(0))
    assert not sampler.contains(np.repeat([0, 8_999], 5_000), draws).any()
