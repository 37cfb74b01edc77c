"""Confidence intervals for the numbers a run reports: bootstrap over questions (or pivot records), and
the between-seed reading of an experiment repeated over seeds.

Accuracy differences between two variants are *paired* (both variants answer the same questions), so their
interval resamples questions once and takes the difference on each resample — far narrower than two
independent intervals when the variants mostly agree.

Over several seeds (each its own split, mask, random draw and trained models) a question-level interval
carries only test-question noise *given* each seed's trained models. The power experiment showed why that
is not enough: CCA − random mask at the held-out pivots was −18, +13 and +10 points on three seeds, each
interval excluding 0, while the pooled interval read "no effect". So a comparison over seeds reports each
seed's interval, a between-seed interval (Student t over the seed means: the run-to-run variation), a
heterogeneity figure (Cochran's Q, I²), and a verdict that says "cannot tell" when seeds disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float


def bootstrap_ci(values: Float[np.ndarray, "n"], *, n_resamples: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"Need a non-empty 1-d array of values, got shape {values.shape}.")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_bootstrap_ci(a: Float[np.ndarray, "n"], b: Float[np.ndarray, "n"], *, n_resamples: int = 10_000,
                        level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its percentile bootstrap interval, resampling the paired items together."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"Paired values need the same shape, got {a.shape} and {b.shape}.")
    low, high = bootstrap_ci(a - b, n_resamples=n_resamples, level=level, seed=seed)
    return float((a - b).mean()), low, high


def stratified_paired_bootstrap_ci(groups: "list[tuple[np.ndarray, np.ndarray]]", *, n_resamples: int = 10_000,
                                   level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over several paired samples (e.g. one per seed, each with its own questions) and its
    interval, resampling items within each group (so every resample keeps each seed's size)."""
    if not groups:
        raise ValueError("Need at least one group of paired values.")
    diffs = []
    for a, b in groups:
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
            raise ValueError(f"Paired values need the same non-empty 1-d shape, got {a.shape} and {b.shape}.")
        diffs.append(a - b)
    rng = np.random.default_rng(seed)
    total = sum(len(d) for d in diffs)
    sums = np.zeros(n_resamples)
    for d in diffs:
        sums += d[rng.integers(0, len(d), size=(n_resamples, len(d)))].sum(axis=1)
    means = sums / total
    tail = (1 - level) / 2
    mean = float(np.concatenate(diffs).mean())
    return mean, float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


#: Differences smaller than these (fractions; test accuracy, held-out pivot accuracy) are too small to matter
#: to a user choosing an update method: a CI inside them reads "no effect" rather than "cannot tell".
MARGINS = {"accuracy": 0.03, "pivot_accuracy": 0.05}


def verdict(low: float, high: float, margin: float) -> str:
    """Three answers for an interval of a difference: an effect (the interval excludes 0), no effect (the
    whole interval lies within ``±margin``, a difference too small to matter), or cannot tell (neither)."""
    if low > 0:
        return "effect (better)"
    if high < 0:
        return "effect (worse)"
    if -margin <= low and high <= margin:
        return f"no effect (within ±{100 * margin:g} points)"
    return "cannot tell"


def verdict_over_seeds(seed_intervals: "list[tuple[float, float]]", between: tuple[float, float] | None,
                       margin: float) -> str:
    """The verdict of a comparison repeated over seeds. Seeds whose own intervals exclude 0 in opposite
    directions → "cannot tell (seeds disagree)", whatever the pooled number says. Otherwise the verdict of
    the between-seed interval (``between``; with a single seed, that seed's own interval)."""
    if not seed_intervals:
        raise ValueError("Need at least one seed's interval.")
    if any(low > 0 for low, _ in seed_intervals) and any(high < 0 for _, high in seed_intervals):
        return "cannot tell (seeds disagree)"
    if len(seed_intervals) > 1 and between is None:
        raise ValueError("Several seeds need a between-seed interval.")
    low, high = between if between is not None else seed_intervals[0]
    return verdict(low, high, margin)


def t_interval(values: Float[np.ndarray, "k"], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` (one per seed) and its Student t interval: the between-seed interval. With 3 seeds
    the t quantile is 4.30 — wide on purpose: three trained models say little about a fourth."""
    from scipy.stats import t

    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"A between-seed interval needs at least 2 seeds, got {values.shape}.")
    mean, se = float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
    half = float(t.ppf(0.5 + level / 2, df=len(values) - 1)) * se
    return mean, mean - half, mean + half


def t_power(effect: float, spread: float, seeds: int, level: float = 0.95) -> float:
    """Probability that the between-seed interval (:func:`t_interval` at ``level`` over ``seeds`` seed means)
    excludes 0 when the true mean difference is ``effect`` and seed means scatter with standard deviation
    ``spread``: the power of the two-sided one-sample t test, from the noncentral t distribution."""
    from scipy.stats import nct, t

    if seeds < 2:
        raise ValueError(f"A between-seed interval needs at least 2 seeds, got {seeds}.")
    if spread <= 0:
        return 1.0 if effect != 0 else 1.0 - level
    df, shift = seeds - 1, abs(effect) * math.sqrt(seeds) / spread
    critical = float(t.ppf(0.5 + level / 2, df))
    upper, lower = float(nct.sf(critical, df, shift)), float(nct.cdf(-critical, df, shift))
    # scipy's noncentral t returns NaN far in a tail (the lower one at shifts of ~30 and more): there it is 0
    return (upper if math.isfinite(upper) else 1.0) + (lower if math.isfinite(lower) else 0.0)


def seeds_needed(effect: float, spread: float, *, power: float = 0.8, level: float = 0.95,
                 most: int = 100_000) -> int | None:
    """The fewest seeds whose between-seed interval excludes 0 with probability ``power`` when the true mean
    difference is ``effect`` and seeds scatter with standard deviation ``spread`` (:func:`t_power`); None
    beyond ``most``. A planning figure: ``spread`` measured on 5 seeds is itself uncertain (its 95 % interval
    runs from about 0.6x to 2.9x the value), and the seeds needed grow as its square."""
    if effect == 0:
        return None
    low, high = 2, 2
    while t_power(effect, spread, high, level) < power:  # doubling, then bisection: power rises with seeds
        if high >= most:
            return None
        low, high = high, min(2 * high, most)
    while low < high:
        middle = (low + high) // 2
        if t_power(effect, spread, middle, level) >= power:
            high = middle
        else:
            low = middle + 1
    return high


def detectable_effect(spread: float, seeds: int, *, power: float = 0.8, level: float = 0.95) -> float:
    """The smallest true mean difference that ``seeds`` seeds, scattering with standard deviation ``spread``,
    find (between-seed interval excluding 0) with probability ``power``: what a "cannot tell" could have
    missed. Same units as ``spread``."""
    from scipy.optimize import brentq

    if spread <= 0:
        return 0.0
    high = spread
    while t_power(high, spread, seeds, level) < power:
        high *= 2
    return float(brentq(lambda e: t_power(e, spread, seeds, level) - power, 0.0, high, xtol=1e-9 * spread))


@dataclass(frozen=True)
class Heterogeneity:
    """How much seeds disagree beyond what their question noise explains (fixed-effect meta-analysis):
    Cochran's Q on ``df`` = seeds − 1 degrees of freedom, its p-value, and I² (the share of the spread
    between seeds that is not sampling noise; 0 when Q ≤ df)."""

    q: float
    df: int
    p: float
    i2: float


def heterogeneity(groups: "list[tuple[np.ndarray, np.ndarray]]") -> Heterogeneity:
    """Cochran's Q of per-seed paired differences, each weighted by the inverse of its squared standard error
    (``std(a − b) / sqrt(n)``; a seed with no spread at all gets the smallest non-zero variance of a
    0/1 item, 1/n², so it cannot take infinite weight)."""
    from scipy.stats import chi2

    if len(groups) < 2:
        raise ValueError("Heterogeneity needs at least 2 seeds.")
    means, weights = [], []
    for a, b in groups:
        d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
        variance = max(float(d.var(ddof=1)) / len(d) if len(d) > 1 else 0.0, 1.0 / len(d) ** 2)
        means.append(float(d.mean()))
        weights.append(1.0 / variance)
    means_, weights_ = np.array(means), np.array(weights)
    pooled = float((weights_ * means_).sum() / weights_.sum())
    q = float((weights_ * (means_ - pooled) ** 2).sum())
    df = len(groups) - 1
    return Heterogeneity(q=q, df=df, p=float(chi2.sf(q, df)), i2=max(0.0, (q - df) / q) if q > 0 else 0.0)


@dataclass(frozen=True)
class SeedComparison:
    """One difference ``a − b`` measured on several seeds: each seed's paired interval, the pooled one
    (question noise only), the between-seed interval, heterogeneity and the verdict."""

    per_seed: "list[tuple[float, float, float]]"  # (diff, low, high) per seed
    pooled: tuple[float, float, float]
    between: tuple[float, float, float] | None   # None with one seed
    heterogeneity: Heterogeneity | None
    verdict: str


def compare_over_seeds(groups: "list[tuple[np.ndarray, np.ndarray]]", margin: float, *, n_resamples: int = 10_000,
                       seed: int = 0) -> SeedComparison:
    """Everything a reader needs to judge ``a − b`` over seeds (one ``(a, b)`` pair of per-item outcomes per
    seed), with :func:`verdict_over_seeds` as the verdict."""
    per_seed = [paired_bootstrap_ci(a, b, n_resamples=n_resamples, seed=seed) for a, b in groups]
    pooled = stratified_paired_bootstrap_ci(groups, n_resamples=n_resamples, seed=seed)
    between = t_interval(np.array([d for d, _, _ in per_seed])) if len(groups) > 1 else None
    spread = heterogeneity(groups) if len(groups) > 1 else None
    answer = verdict_over_seeds([(low, high) for _, low, high in per_seed],
                                between[1:] if between is not None else None, margin)
    return SeedComparison(per_seed=per_seed, pooled=pooled, between=between, heterogeneity=spread, verdict=answer)
