"""A sweep's pictures: accuracy against the budget (``budget.png``), CCA minus each control against the
budget (``differences.png``, the plain answer drawn) and against the share of the DCM set the control keeps
(``overlap.png``, where ``overlap.csv`` was written). They read the tables :mod:`cca_tl.sweep.summary` derives
(``rows.csv``, ``comparisons.csv``, ``comparisons_per_seed.csv``) and draw nothing they lack.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: The per-question metrics plotted against the budget, per reading (missing ones are skipped).
METRICS = ("test_accuracy", "newfacts_accuracy", "pivot_accuracy", "test_reference_accuracy",
           "newfacts_reference_accuracy")
#: The comparisons drawn in ``differences.png``: CCA against each control and the localized anchor.
DRAWN = ("cca − random", "cca − uniform", "cca − disjoint", "cca − lofit")
#: Comparisons with a random control, by the control's name in ``overlap.csv``.
RANDOM_CONTROLS = {"cca − random": "layer-matched", "cca − uniform": "uniform", "cca − disjoint": "disjoint"}


def plot(rows: pd.DataFrame, table: pd.DataFrame, per_seed: pd.DataFrame, out: Path, greedy_reading: str,
         margin: float = 0.05, overlap: pd.DataFrame | None = None) -> list[str]:
    """The sweep's pictures: ``budget.png`` (accuracy against the budget), ``differences.png`` (CCA minus
    each control against the budget, ``±margin`` shaded on test accuracy) and, given ``overlap``,
    ``overlap.png`` (:func:`plot_overlap`); the names of those written."""
    pictures = []
    if plot_accuracy(rows, out / "budget.png", greedy_reading):
        pictures.append("budget.png")
    if plot_differences(table, per_seed, out / "differences.png", greedy_reading, margin):
        pictures.append("differences.png")
    if overlap is not None and plot_overlap(per_seed, overlap, out / "overlap.png", greedy_reading, margin, rows):
        pictures.append("overlap.png")
    return pictures


def differences_by_overlap(per_seed: pd.DataFrame, overlap: pd.DataFrame, reading: str,
                           metric: str = "test", rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each seed's CCA − random control at ``reading`` beside the percent of the DCM set's parameters the
    control shares with it (``overlap.csv``'s ``pct_params_shared``, mean over the seed's draws): one row per
    control, budget and seed (``diff`` in points).

    With the sweep's ``rows``, the mean is over the draws behind the difference, those with a ``metric``
    reading at ``reading`` (:func:`draws_read`): ``overlap.csv`` lists every draw the grid declares, run or
    not, and a draw that never reached the KL target is not in the seed's control."""
    columns = ["control", "budget_share", "seed", "pct_params_shared", "diff"]
    part = per_seed[(per_seed["reading"] == reading) & (per_seed["metric"] == metric)
                    & per_seed["comparison"].isin(RANDOM_CONTROLS)] if not per_seed.empty else per_seed
    if rows is not None:
        overlap = draws_read(overlap, rows, reading, metric)
    if part.empty or overlap.empty:
        return pd.DataFrame(columns=columns)
    shared = overlap.groupby(["control", "budget_share", "seed"], as_index=False)["pct_params_shared"].mean()
    pairs = part.assign(control=part["comparison"].map(RANDOM_CONTROLS), diff=100 * part["diff"])
    return pairs.merge(shared, on=["control", "budget_share", "seed"])[columns].reset_index(drop=True)


def draws_read(overlap: pd.DataFrame, rows: pd.DataFrame, reading: str, metric: str = "test") -> pd.DataFrame:
    """The rows of ``overlap`` whose draw has a ``metric`` reading at ``reading`` in the sweep's ``rows``."""
    read = rows[(rows["reading"] == reading) & rows[f"{metric}_accuracy"].notna()]
    control_of = {comparison.split(" − ")[1]: name for comparison, name in RANDOM_CONTROLS.items()}
    keys = pd.DataFrame({"control": read["variant"].map(control_of), "budget_share": read["budget_share"],
                         "seed": read["seed"], "draw": read["draw"]}).dropna().drop_duplicates()
    return overlap.merge(keys.astype(overlap[["control", "budget_share", "seed", "draw"]].dtypes.to_dict()),
                         on=["control", "budget_share", "seed", "draw"])


def plot_overlap(per_seed: pd.DataFrame, overlap: pd.DataFrame, path: Path, reading: str,
                 margin: float = 0.05, rows: pd.DataFrame | None = None) -> bool:
    """CCA minus each random control on test accuracy against how much of the DCM set the control keeps: a
    dot per seed and budget (larger dots: larger budgets), ``±margin`` shaded. A control that keeps most of
    the DCM set can only land near 0, so a null there says little about the selection."""
    from matplotlib.figure import Figure

    pairs = differences_by_overlap(per_seed, overlap, reading, rows=rows)
    if pairs.empty:
        return False
    budgets = sorted(pairs["budget_share"].unique())
    fig = Figure(figsize=(6.2, 4.0))
    ax = fig.subplots()
    ax.axhspan(-100 * margin, 100 * margin, color="0.92", lw=0)
    ax.axhline(0, color="grey", lw=1)
    variant_of = {name: comparison.split(" − ")[1] for comparison, name in RANDOM_CONTROLS.items()}
    for control, mine in pairs.groupby("control", sort=False):
        sizes = 12 + 14 * np.array([budgets.index(b) for b in mine["budget_share"]])
        ax.scatter(mine["pct_params_shared"], mine["diff"], s=sizes, alpha=0.7, lw=0,
                   color=_colour(variant_of[control]), label=control)
    ax.set_xlabel("share of the DCM set's parameters the control keeps (%)")
    ax.set_ylabel(f"CCA − control, test accuracy at {reading} (points)")
    ax.legend(fontsize=7, title="random control (dot size: budget, "
              + f"{100 * budgets[0]:g}–{100 * budgets[-1]:g} %)", title_fontsize=7)
    fig.suptitle("Each seed's difference against what the control shares with the DCM set", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def plot_panels(part: pd.DataFrame, greedy_reading: str) -> list[tuple[str, str]]:
    """(reading, metric) pairs that hold data: every metric at the greedy reading first, then held-out pivots
    at the other readings (greedy accuracy is only read at one; empty panels are left out)."""
    metrics = [m for m in METRICS if m in part.columns and part[m].notna().any()]
    readings = ["selected", *sorted({r for r in part["reading"].dropna() if r != "selected"})]
    ordered = [greedy_reading, *[r for r in readings if r != greedy_reading]]
    pairs = [(r, m) for r in ordered for m in metrics if r == greedy_reading or m == "pivot_accuracy"]
    return [(r, m) for r, m in pairs if part.loc[part["reading"] == r, m].notna().any()]


def _colour(variant: str) -> str:
    """One colour per variant, the same in every panel and picture (the order of the variant table)."""
    from cca_tl.sweep.grid import VARIANTS

    order = list(VARIANTS)
    return f"C{order.index(variant) % 10}" if variant in order else "black"


def _budget_axis(ax, budgets: list[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks([100 * b for b in budgets], [f"{100 * b:g}" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("budget (% of components)")


def _between_seeds(values: np.ndarray) -> tuple[float, float, float]:
    """Mean of the seed values and its between-seed t interval (:func:`cca_tl.stats.t_interval`); one seed
    gives no interval, drawn as none."""
    from cca_tl.stats import t_interval

    return t_interval(values) if len(values) > 1 else (float(values[0]),) * 3


def _jitter(x: np.ndarray, i: int, n: int) -> np.ndarray:
    """Spread the variants drawn at one budget a little apart (a log axis: a factor, not an offset)."""
    return x * 1.05 ** (i - (n - 1) / 2)


def plot_accuracy(rows: pd.DataFrame, path: Path, greedy_reading: str) -> bool:
    """Each metric against the budget: the mean over seeds of every variant (random draws averaged within a
    seed) with between-seed t intervals, the base model dashed. Greedy accuracy at ``greedy_reading``;
    held-out pivots also at the other readings."""
    from matplotlib.figure import Figure

    part = rows[rows["variant"] != "base"]
    panels = plot_panels(part, greedy_reading) if not part.empty else []
    if not panels:
        return False
    budgets = sorted(part["budget_share"].dropna().unique())
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.5 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (reading, metric) in zip(axes, panels):
        mine = part[part["reading"] == reading]
        variants = sorted(mine["variant"].unique())
        for i, variant in enumerate(variants):
            frame = mine[mine["variant"] == variant]
            per_seed = frame.groupby(["budget_share", "seed"])[metric].mean().dropna()  # draws averaged
            if per_seed.empty:
                continue
            stats = np.array([_between_seeds(v.to_numpy()) for _, v in per_seed.groupby("budget_share")])
            x = _jitter(100 * per_seed.index.unique("budget_share").to_numpy(float), i, len(variants))
            ax.errorbar(x, 100 * stats[:, 0], yerr=100 * np.abs(stats[:, 1:].T - stats[:, 0]), marker="o", ms=4,
                        capsize=3, color=_colour(variant), label=variant)
        base = rows[rows["variant"] == "base"][metric].dropna()
        if not base.empty:
            ax.axhline(100 * base.mean(), color="grey", ls="--", lw=1, label="base")
        _budget_axis(ax, budgets)
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.set_title(f"{metric.replace('_', ' ')} at {reading}", fontsize=9)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle("Accuracy against the budget (mean over seeds, between-seed 95 % intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def difference_bars(table: pd.DataFrame, per_seed: pd.DataFrame, reading: str) -> pd.DataFrame:
    """What ``differences.png`` draws as bars, one row per (metric, comparison, budget) of :data:`DRAWN` at
    ``reading``: the mean of the seed differences (where the between-seed interval is centred), the interval
    (collapsed onto the mean where one seed gives none), the seed count and the legend label (an anchor
    standing at its cap says so: "cca − lofit (at 0.1 %)")."""
    columns = ["metric", "comparison", "budget_share", "seeds", "mean", "low", "high", "label"]
    part = table[(table["reading"] == reading) & table["comparison"].isin(DRAWN)] if not table.empty else table
    if part.empty:
        return pd.DataFrame(columns=columns)
    seeds = per_seed[(per_seed["reading"] == reading) & per_seed["comparison"].isin(DRAWN)]
    means = seeds.groupby(["metric", "comparison", "budget_share"])["diff"].mean()
    rows = []
    for r in part.itertuples():
        mean = means.get((r.metric, r.comparison, r.budget_share), np.nan)
        capped = getattr(r, "control_budget", r.budget_share)
        rows.append(dict(metric=r.metric, comparison=r.comparison, budget_share=r.budget_share, seeds=r.seeds,
                         mean=mean, low=mean if np.isnan(r.between_low) else r.between_low,
                         high=mean if np.isnan(r.between_high) else r.between_high, capped=capped))
    bars = pd.DataFrame(rows)
    caps = bars[bars["capped"] != bars["budget_share"]].groupby("comparison")["capped"].unique()
    bars["label"] = [c + "".join(f" (at {100 * b:g} %)" for b in sorted(caps.get(c, []))) for c in bars["comparison"]]
    return bars[columns].sort_values(["metric", "comparison", "budget_share"]).reset_index(drop=True)


def plot_differences(table: pd.DataFrame, per_seed: pd.DataFrame, path: Path, greedy_reading: str,
                     margin: float = 0.05) -> bool:
    """CCA minus each control at ``greedy_reading`` against the budget, one panel per metric: each seed's
    difference as a dot, :func:`difference_bars` as bars, the plain answer's ±``margin`` shaded on test
    accuracy. A bar that crosses 0 is a "cannot tell"; one above 0 that does not clear the band is an effect
    under the plain answer's margin, not a win."""
    from matplotlib.figure import Figure

    bars = difference_bars(table, per_seed, greedy_reading)
    if bars.empty:
        return False
    metrics = [m for m in ("test", "newfacts", "pivot") if (bars["metric"] == m).any()]
    seeds = per_seed[(per_seed["reading"] == greedy_reading) & per_seed["comparison"].isin(DRAWN)]
    budgets = sorted(bars["budget_share"].unique())
    comparisons = [c for c in DRAWN if (bars["comparison"] == c).any()]
    fig = Figure(figsize=(4.6 * len(metrics), 3.8))
    axes = fig.subplots(1, len(metrics), squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        if metric == "test":
            ax.axhspan(-100 * margin, 100 * margin, color="0.92", lw=0)
        ax.axhline(0, color="grey", lw=1)
        for i, comparison in enumerate(comparisons):
            colour = _colour(comparison.split(" − ")[1])
            mine = bars[(bars["comparison"] == comparison) & (bars["metric"] == metric)]
            if mine.empty:
                continue
            x = _jitter(100 * mine["budget_share"].to_numpy(float), i, len(comparisons))
            mean, low, high = (mine[c].to_numpy(float) for c in ("mean", "low", "high"))
            ax.errorbar(x, 100 * mean, yerr=100 * np.vstack([mean - low, high - mean]), marker="o", ms=5,
                        capsize=3, color=colour, label=mine["label"].iloc[0])
            dots = seeds[(seeds["comparison"] == comparison) & (seeds["metric"] == metric)]
            dot_x = _jitter(100 * dots["budget_share"].to_numpy(float), i, len(comparisons))
            ax.scatter(dot_x, 100 * dots["diff"], s=10, color=colour, alpha=0.4, lw=0)
        _budget_axis(ax, budgets)
        ax.set_ylabel(f"difference, {metric} accuracy (points)")
        ax.set_title(f"{metric} at {greedy_reading}", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("CCA minus each control: dots per seed, bars between-seed 95 % intervals "
                 f"(shaded: within ±{100 * margin:g} points)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True
