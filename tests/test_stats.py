"""Bootstrap intervals and the words a report uses for them."""

from __future__ import annotations

import numpy as np
import pytest

from cca_tl.stats import (bootstrap_ci, compare_over_seeds, detectable_effect, heterogeneity, paired_bootstrap_ci,
                          seeds_needed, stratified_paired_bootstrap_ci, t_interval, t_power, verdict,
                          verdict_over_seeds)


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.random(30) < 0.5, rng.random(3000) < 0.5
    lo_s, hi_s = bootstrap_ci(small.astype(float))
    lo_l, hi_l = bootstrap_ci(large.astype(float))
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5  # ~1/sqrt(100) as wide
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci(np.array([]))


def test_paired_interval_sees_a_shift_that_independent_ones_would_miss():
    rng = np.random.default_rng(1)
    base = rng.random(200) < 0.4
    better = base.copy()
    better[np.flatnonzero(~base)[:20]] = True  # 20 of 200 questions fixed, none broken: +10 points
    mean, low, high = paired_bootstrap_ci(better.astype(float), base.astype(float))
    assert mean == pytest.approx(0.10) and 0.05 < low < 0.10 < high
    assert verdict(low, high, 0.03) == "effect (better)"
    assert verdict(-high, -low, 0.03) == "effect (worse)"
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap_ci(np.zeros(3), np.zeros(4))


def test_three_verdicts_tell_no_effect_from_cannot_tell():
    assert verdict(-0.01, 0.02, 0.03) == "no effect (within ±3 points)"
    assert verdict(-0.08, 0.09, 0.03) == "cannot tell"
    assert verdict(-0.02, 0.04, 0.03) == "cannot tell"


def test_stratified_interval_pools_seeds_and_keeps_each_seeds_size():
    rng = np.random.default_rng(2)
    groups = []
    for n in (300, 320, 310):
        base = rng.random(n) < 0.35
        better = base.copy()
        better[np.flatnonzero(~base)[: n // 20]] = True  # +5 points in every seed
        groups.append((better.astype(float), base.astype(float)))
    mean, low, high = stratified_paired_bootstrap_ci(groups)
    assert mean == pytest.approx(sum(n // 20 for n in (300, 320, 310)) / 930)
    assert 0.03 < low < mean < high < 0.07
    one = paired_bootstrap_ci(*groups[0])
    assert high - low < one[2] - one[1]  # three seeds: a narrower interval than one
    with pytest.raises(ValueError, match="at least one group"):
        stratified_paired_bootstrap_ci([])
    with pytest.raises(ValueError, match="same non-empty"):
        stratified_paired_bootstrap_ci([(np.zeros(3), np.zeros(4))])


def _shifted(rng, n: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired 0/1 outcomes where ``b`` is ``a`` with ``|shift|`` items flipped: a − b = shift / n."""
    a = (rng.random(n) < 0.5).astype(float)
    b = a.copy()
    flip = np.flatnonzero(a == (1.0 if shift > 0 else 0.0))[: abs(shift)]
    b[flip] = 1 - b[flip]
    return a, b


def test_seeds_that_disagree_are_cannot_tell_even_when_the_pooled_interval_says_no_effect():
    """The power experiment's case: −18, +13, +10 points on three seeds, each interval excluding 0."""
    rng = np.random.default_rng(3)
    groups = [_shifted(rng, 210, -38), _shifted(rng, 210, 27), _shifted(rng, 210, 20)]
    result = compare_over_seeds(groups, 0.05, n_resamples=2000)
    assert [round(d, 3) for d, _, _ in result.per_seed] == [round(-38 / 210, 3), round(27 / 210, 3), round(20 / 210, 3)]
    assert result.per_seed[0][2] < 0 < result.per_seed[1][1]  # opposite directions, each excluding 0
    assert abs(result.pooled[0]) < 0.05
    assert result.verdict == "cannot tell (seeds disagree)"
    assert result.heterogeneity.p < 1e-6 and result.heterogeneity.i2 > 0.9
    assert result.between[1] < result.pooled[1] and result.between[2] > result.pooled[2]  # wider than pooled


def test_seeds_that_agree_get_the_between_seed_verdict():
    rng = np.random.default_rng(4)
    groups = [_shifted(rng, 300, 40), _shifted(rng, 300, 45), _shifted(rng, 300, 42)]
    result = compare_over_seeds(groups, 0.03, n_resamples=2000)
    assert result.verdict == "effect (better)" and result.between[1] > 0
    assert result.heterogeneity.i2 == 0.0 and result.heterogeneity.p > 0.5
    # all three seeds point the same way but one is tiny: the between-seed interval decides (here: too wide)
    groups = [_shifted(rng, 300, 60), _shifted(rng, 300, 3), _shifted(rng, 300, 30)]
    assert compare_over_seeds(groups, 0.03, n_resamples=2000).verdict == "cannot tell"


def test_between_seed_interval_is_the_t_interval_over_seed_means():
    mean, low, high = t_interval(np.array([0.0875, 0.1906, 0.1875]))
    assert mean == pytest.approx(0.15520, abs=1e-4)
    assert (low, high) == pytest.approx((0.0093, 0.3011), abs=1e-3)  # t(2) = 4.303
    with pytest.raises(ValueError, match="at least 2 seeds"):
        t_interval(np.array([0.1]))


def test_verdict_over_seeds_with_one_seed_reads_its_own_interval():
    assert verdict_over_seeds([(0.02, 0.09)], None, 0.03) == "effect (better)"
    assert verdict_over_seeds([(-0.02, 0.01)], None, 0.03) == "no effect (within ±3 points)"
    with pytest.raises(ValueError, match="between-seed"):
        verdict_over_seeds([(0.0, 0.1), (0.0, 0.1)], None, 0.03)
    with pytest.raises(ValueError, match="at least one"):
        verdict_over_seeds([], None, 0.03)
    with pytest.raises(ValueError, match="at least 2"):
        heterogeneity([(np.ones(3), np.zeros(3))])


def test_t_power_is_how_often_the_between_seed_interval_excludes_0():
    """The noncentral-t power against simulated seeds: per-seed differences drawn around a true effect, the
    between-seed interval of each draw of seeds, and the share that excludes 0."""
    from scipy.stats import t

    rng = np.random.default_rng(0)
    for effect, spread, seeds in ((0.05, 0.1, 7), (0.05, 0.03, 4), (0.0, 0.1, 5)):
        diffs = rng.normal(effect, spread, (100_000, seeds))  # 100,000 experiments of `seeds` seeds each
        half = t.ppf(0.975, seeds - 1) * diffs.std(axis=1, ddof=1) / np.sqrt(seeds)  # as t_interval
        hits = np.mean(np.abs(diffs.mean(axis=1)) > half)
        assert abs(hits - t_power(effect, spread, seeds)) < 0.006, (effect, spread, seeds, hits)  # ~4 SE
    assert t_power(0.05, 1e-4, 5) == 1.0  # far in the tail scipy gives NaN for the other side: it is 0
    with pytest.raises(ValueError, match="at least 2 seeds"):
        t_power(0.05, 0.1, 1)


def test_seeds_needed_is_the_fewest_seeds_with_the_power_asked():
    """The seeds needed for a 5-point difference at a 10-point spread (d = 0.5): 34 by the noncentral t,
    a little above the normal approximation's (1.96 + 0.84)² / 0.25 + 1 ≈ 32; and the detectable effect
    inverts the power at a given number of seeds."""
    n = seeds_needed(0.05, 0.1)
    assert n == 34 and t_power(0.05, 0.1, n) >= 0.8 > t_power(0.05, 0.1, n - 1)
    assert seeds_needed(0.05, 0.01) == 3 and seeds_needed(0.0, 0.1) is None
    assert seeds_needed(0.05, 100.0, most=1000) is None
    effect = detectable_effect(0.1, 5)
    assert t_power(effect, 0.1, 5) == pytest.approx(0.8, abs=1e-6) and 0.1 < effect < 0.2
    assert detectable_effect(0.0, 5) == 0.0
