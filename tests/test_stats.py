"""Bootstrap intervals and the words a report uses for them."""

from __future__ import annotations

import numpy as np
import pytest

from cca_tl.stats import bootstrap_ci, paired_bootstrap_ci, stratified_paired_bootstrap_ci, verdict


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
