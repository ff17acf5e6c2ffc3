"""lopt.analysis.stats: Holm, the two-sided tests, and the hierarchical bootstrap's coverage on
synthetic differences with a known Δ (seeds, users and splits as variance sources)."""

from __future__ import annotations

import numpy as np
import pytest

from lopt.analysis import stats


def test_holm_matches_a_hand_computed_example() -> None:
    # m = 4 finite p: sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04,
    # then the running maximum: 0.02, 0.03, 0.06, 0.06. NaN is outside the family.
    adjusted = stats.holm([0.01, 0.04, 0.03, np.nan, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, np.nan, 0.02])
    np.testing.assert_allclose(stats.holm([0.01, 0.9]), [0.02, 0.9])
    np.testing.assert_allclose(stats.holm([0.6, 0.7]), [1.0, 1.0])  # capped at 1, never decreasing
    assert np.isnan(stats.holm([np.nan])).all()


def _synthetic(rng: np.random.Generator, delta: float, seeds: int, users: int, seed_sd: float, user_sd: float):
    """(1, K, n) per-user differences: Δ + seed effect + user effect + noise."""
    return (
        delta
        + rng.normal(0, seed_sd, (1, seeds, 1))
        + rng.normal(0, user_sd, (1, 1, users))
        + rng.normal(0, user_sd, (1, seeds, users))
    )


def test_two_sided_tests_detect_a_difference_of_either_sign() -> None:
    """A one-sided test (Δ > 0 only) would miss a method that is clearly worse."""
    rng = np.random.default_rng(0)
    for sign in (1.0, -1.0):
        data = [_synthetic(rng, sign * 0.05, 5, 300, 0.005, 0.05)]
        draws = stats.hierarchical_bootstrap(data, 2000, seed=1)
        assert stats.bootstrap_pvalue(draws)[0] < 0.01
        assert stats.paired_t(data)[0] < 0.01
        one_sided = stats.bootstrap_pvalue(draws, "greater" if sign < 0 else "less")[0]
        assert one_sided > 0.9  # the wrong one-sided test sees nothing: the choice is detectable
    null = [_synthetic(rng, 0.0, 5, 300, 0.005, 0.05)]
    assert stats.bootstrap_pvalue(stats.hierarchical_bootstrap(null, 2000, seed=1))[0] > 0.01


def test_bootstrap_p_can_reach_the_strictest_holm_threshold() -> None:
    m, alpha = 40, 0.05
    replicates = stats.replicates_for(m, alpha, minimum=100)
    assert 2 / (replicates + 1) < alpha / m
    far = [np.full((1, 5, 50), 0.3)]
    assert stats.bootstrap_pvalue(stats.hierarchical_bootstrap(far, replicates))[0] * m < alpha


def _coverage(rng: np.random.Generator, flatten_seeds: bool, seed_sd: float, trials: int = 150) -> float:
    hits = 0
    for trial in range(trials):
        data = _synthetic(rng, 0.02, 8, 200, seed_sd, 0.05)
        if flatten_seeds:  # user-level only: each user's difference averaged over the seeds first
            data = data.mean(axis=1, keepdims=True)
        low, high = stats.bootstrap_interval(stats.hierarchical_bootstrap([data], 400, seed=trial))
        hits += low[0] <= 0.02 <= high[0]
    return hits / trials


def test_interval_covers_a_known_delta() -> None:
    rng = np.random.default_rng(1)
    assert 0.85 <= _coverage(rng, flatten_seeds=False, seed_sd=0.002) <= 1.0


def test_seed_variance_needs_the_hierarchical_resampling() -> None:
    """With a large run-to-run (seed) variance, resampling users alone is overconfident; resampling
    the seeds first keeps the interval near its level."""
    rng = np.random.default_rng(2)
    hierarchical = _coverage(rng, flatten_seeds=False, seed_sd=0.05)
    user_level = _coverage(rng, flatten_seeds=True, seed_sd=0.05)
    assert user_level < 0.5 and hierarchical > 0.8, (user_level, hierarchical)


def test_split_variance_widens_the_interval() -> None:
    """Three splits with different effects: resampling splits gives a wider interval than pooling
    their runs as if they came from one split."""
    rng = np.random.default_rng(3)
    splits = [_synthetic(rng, 0.02 + shift, 5, 200, 0.002, 0.05) for shift in (-0.02, 0.0, 0.02)]
    low, high = stats.bootstrap_interval(stats.hierarchical_bootstrap(splits, 2000))
    pooled_low, pooled_high = stats.bootstrap_interval(
        stats.hierarchical_bootstrap([np.concatenate(splits, axis=1)], 2000)
    )
    assert (high - low)[0] > 1.5 * (pooled_high - pooled_low)[0]
    assert stats.point_delta(splits)[0] == pytest.approx(np.mean([s.mean() for s in splits]))


def test_missing_values_are_left_out_not_counted_as_zero() -> None:
    data = np.full((2, 3, 4), 0.1)
    data[0, :, 0] = np.nan
    data[1, 1, :] = np.nan  # a whole seed without values for metric 1
    np.testing.assert_allclose(stats.point_delta([data]), [0.1, 0.1])
    draws = stats.hierarchical_bootstrap([data], 200)
    np.testing.assert_allclose(draws[np.isfinite(draws[:, 1]), 1], 0.1)
    np.testing.assert_allclose(draws[:, 0], 0.1)
