"""Confidence intervals for the numbers a run reports: bootstrap over questions (or pivot records).

Accuracy differences between two variants are *paired* (both variants answer the same questions), so their
interval resamples questions once and takes the difference on each resample — far narrower than two
independent intervals when the variants mostly agree.
"""

from __future__ import annotations

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
