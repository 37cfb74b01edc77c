"""Comparisons over seeds: a DCM cell against a control, paired per item within each seed.

Within a seed, a DCM cell's outcome on each question (or pivot) stands against the mean outcome of the control's
random draws of the same seed and budget on the same item, so draws count as what they are (several samples of
the control), not as extra seeds. Over seeds, :func:`cca_tl.stats.compare_over_seeds`: per-seed intervals, the
between-seed interval and spread, heterogeneity, and "cannot tell" when seeds disagree.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from cca_tl.stats import MARGINS, compare_over_seeds

#: (DCM variant, control variant) pairs compared wherever both have cells.
PAIRS = (("cca", "random"), ("cca", "uniform"), ("cca", "disjoint"), ("masked-ft", "random-ft"), ("cca", "lofit"),
         ("cca", "base"), ("cca", "all"), ("cca", "pivot-lora"), ("cca", "masked-ft"), ("pivot-lora", "lora"),
         ("masked-ft", "lora"), ("lora", "cca"))
#: Item sets a reading may hold: greedy accuracy (where the reading generated), reference-path accuracy (where
#: the config asks for it) and held-out pivots (always); a comparison is made where both cells have the set.
SETS = ("test", "newfacts", "pivot", "test_ref", "newfacts_ref")

#: Anchors whose largest edit is smaller than the larger budgets: LoFiT's offsets on every head are all the
#: parameters it has (72 heads x 256 = 18,432 on Gemma-3-270M; the DCM set at 0.1 % holds 23.7k-350k by seed), so the sweep
#: caps it (``variant_budgets``) and CCA at each larger budget is compared with the anchor at its cap — does a
#: larger circuit catch up with the anchor?
ANCHORS = {"lofit": "LoFiT"}


def control_budget(config, control: str, budget: float) -> float:
    """The budget whose cells of ``control`` stand against ``budget``: the same, except for an anchor capped
    below it, which stands at its largest budget at or below ``budget``."""
    capped = config.variant_budgets.get(control)
    if control not in ANCHORS or not capped or budget in capped:
        return budget
    below = [b for b in capped if b <= budget]
    return max(below) if below else budget


class SeedPair(NamedTuple):
    """One seed's paired outcomes per item (1.0 right, 0.0 wrong): a's cell and the mean of b's draws."""

    seed: int
    a: np.ndarray  # [items]
    b: np.ndarray  # [items], the mean over ``draws`` draws
    draws: int


def paired_groups(sweep, a: str, b: str, budget: float, reading: str, item_set: str,
                  budget_b: float | None = None) -> list[SeedPair]:
    """Per seed where both exist, a's outcomes on ``item_set`` beside the mean of b's draws' outcomes; b's
    cells at ``budget_b`` (default: the same budget).

    A draw that never reached ``reading`` (its edit, scaled as far as the search goes, stays below the KL
    target) has no edit of the matched size, so the seed's control is the mean of the draws that reached it;
    the seed is left out only when none did. (Seed 2 of the budget sweep: the first layer-matched draw at 0.1 %
    topped out at KL 4.8e-4, the second reached 1e-3; leaving the seed out dropped a measured control.)"""
    suffix = "" if reading == "selected" else f"@{reading}"
    budget_b = budget if budget_b is None else budget_b
    out = []
    for seed in sweep.config.seeds:
        done = sweep.done(seed)
        keys_a = sorted(k for k in done if k.startswith(f"{a}_b{budget:g}_d"))
        keys_b = (["base"] if b == "base" and "base" in done
                  else sorted(k for k in done if k.startswith(f"{b}_b{budget_b:g}_d")))
        if not keys_a or not keys_b:
            continue
        name_b = item_set if b == "base" else item_set + suffix  # the base is unedited at every reading
        x = _outcomes(sweep, seed, keys_a[0], item_set + suffix, reading)
        ys = [y for y in (_outcomes(sweep, seed, k, name_b, reading) for k in keys_b) if y is not None]
        if x is None or not ys or any(len(y) != len(x) for y in ys):
            continue
        out.append(SeedPair(seed, x, np.mean(ys, axis=0), len(ys)))
    return out


def _outcomes(sweep, seed: int, key: str, item_set: str, reading: str) -> np.ndarray | None:
    items = sweep.items(seed, key)
    part = items[items["set"] == item_set]
    if part.empty and reading != "selected" and "@" in item_set:  # a cell that kept the unedited model
        return None
    return part.sort_values("item")["correct"].to_numpy(float) if not part.empty else None


def comparisons(sweep, rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per (reading, budget, comparison, metric) with the verdict over seeds; one row per seed."""
    table, per_seed = [], []
    readings = ["selected", *sorted({r for r in rows["reading"].dropna() if r != "selected"})]
    for reading in readings:
        for budget in sorted(sweep.config.budgets):
            for a, b in PAIRS:
                against = control_budget(sweep.config, b, budget)
                for item_set in SETS:
                    found = paired_groups(sweep, a, b, budget, reading, item_set, against)
                    if not found:
                        continue
                    groups = [(pair.a, pair.b) for pair in found]
                    margin = MARGINS["pivot_accuracy" if item_set == "pivot" else "accuracy"]
                    result = compare_over_seeds(groups, margin)
                    between = result.between or (np.nan, np.nan, np.nan)
                    seed_diffs = np.array([d for d, _, _ in result.per_seed])
                    spread = result.heterogeneity
                    table.append(dict(reading=reading, budget_share=budget, comparison=f"{a} − {b}", metric=item_set,
                                      control_budget=against, seeds=len(groups), diff=result.pooled[0], low=result.pooled[1],
                                      high=result.pooled[2], between_low=between[1], between_high=between[2],
                                      between_sd=seed_diffs.std(ddof=1) if len(groups) > 1 else np.nan,
                                      q=spread.q if spread else np.nan, i2=spread.i2 if spread else np.nan,
                                      verdict=result.verdict))
                    for pair, (d, lo, hi) in zip(found, result.per_seed):
                        per_seed.append(dict(reading=reading, budget_share=budget, comparison=f"{a} − {b}",
                                             metric=item_set, seed=pair.seed, n=len(pair.a), draws=pair.draws,
                                             diff=d, low=lo, high=hi))
    return pd.DataFrame(table), pd.DataFrame(per_seed)
