"""A sweep's summary: the tidy table (``rows.csv``), its comparisons over seeds (``comparisons.csv``,
``comparisons_per_seed.csv``), the plots against the budget, and ``summary.md`` with the plain answer first.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cca_tl._io import atomic_write_text
from cca_tl.sweep.answer import PLAIN_MARGIN, glance, interval_text, plain_answer, seed_reach
from cca_tl.sweep.compare import comparisons
from cca_tl.sweep.plots import differences_by_overlap, plot

COLUMNS = ["seed", "variant", "objective", "budget_share", "n_components", "n_params", "pct_params", "draw", "reading",
           "kl_target", "edit_scale", "lr", "best_step", "kl_to_base", "test_accuracy", "newfacts_accuracy",
           "pivot_accuracy", "test_reference_accuracy", "newfacts_reference_accuracy", "val_reference_accuracy",
           "general_nll", "n_test", "n_newfacts", "n_pivots_test", "seconds"]


def write_summary(sweep, out: Path) -> pd.DataFrame:
    """rows.csv, comparisons.csv, comparisons_per_seed.csv, plots and summary.md; returns the rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = sweep.rows()
    if rows.empty:
        return rows
    rows = rows.reindex(columns=[c for c in COLUMNS if c in rows.columns] +
                        [c for c in rows.columns if c not in COLUMNS])
    atomic_write_text(out / "rows.csv", rows.to_csv(index=False))
    table, per_seed = comparisons(sweep, rows)
    atomic_write_text(out / "comparisons.csv", table.to_csv(index=False))
    atomic_write_text(out / "comparisons_per_seed.csv", per_seed.to_csv(index=False))
    overlap = pd.read_csv(sweep.dir / "overlap.csv") if (sweep.dir / "overlap.csv").exists() else None
    pictures = plot(rows, table, per_seed, out, sweep.config.greedy_reading, PLAIN_MARGIN, overlap)
    atomic_write_text(out / "summary.md", summary_text(sweep, rows, table, per_seed, pictures, overlap))
    return rows


def gaps(rows: pd.DataFrame) -> pd.DataFrame:
    """Cells whose edit never reached a KL target (scaled up to ``readings.MAX_SCALE``): one row per cell
    and target, with the largest KL the cell's readings reached. Those cells are missing from every
    comparison at that reading, which then rests on fewer seeds or draws."""
    matched = rows[rows["kl_target"].notna()]
    missing = matched[matched["edit_scale"].isna()]
    if missing.empty:
        return pd.DataFrame(columns=["seed", "variant", "budget_share", "draw", "kl_target", "largest_kl_reached"])
    keys = ["seed", "variant", "budget_share", "draw"]
    reached = rows.groupby(keys)["kl_to_base"].max().rename("largest_kl_reached")
    return missing[keys + ["kl_target"]].join(reached, on=keys).reset_index(drop=True)


#: Bands of the share of the DCM set's parameters a random control keeps, for :func:`overlap_bands`.
OVERLAP_BANDS = (0.0, 5.0, 40.0, 100.0)


def overlap_bands(pairs: pd.DataFrame) -> pd.DataFrame:
    """:func:`~cca_tl.sweep.plots.differences_by_overlap`'s per-seed differences grouped by how much of the
    DCM set the control keeps: the count, mean, standard deviation and range of the differences per band."""
    bands = pd.cut(pairs["pct_params_shared"], OVERLAP_BANDS, right=False, include_lowest=True,
                   labels=[f"{lo:g}–{hi:g} %" for lo, hi in zip(OVERLAP_BANDS, OVERLAP_BANDS[1:])])
    grouped = pairs.groupby(bands, observed=True)["diff"]
    return pd.DataFrame({"seed × budget pairs": grouped.size(), "mean (points)": grouped.mean(),
                         "SD (points)": grouped.std(), "lowest": grouped.min(), "highest": grouped.max()}
                        ).rename_axis("control keeps").round(1)


def overlap_section(overlap: pd.DataFrame | None, per_seed: pd.DataFrame | None = None, reading: str = "",
                    rows: pd.DataFrame | None = None) -> list[str]:
    """Percent of the DCM set's parameters each control shares with it (mean over draws), per budget and seed,
    how far each control strays from its layers, and CCA − control by that share (``overlap.png``), from
    ``overlap``, the rows of ``overlap.csv`` where one was written (``analyses/budget_overlap.py``); nothing for
    ``None``. With the sweep's ``rows``, CCA − control pairs with the overlap of the draws behind it."""
    if overlap is None:
        return []
    pairs = differences_by_overlap(per_seed, overlap, reading, rows=rows) if per_seed is not None else pd.DataFrame()
    by_band = [] if pairs.empty else [
        f"CCA − random control on test accuracy at `{reading}`, each seed and budget by the share the control "
        "keeps (`overlap.png`; a description after the fact, and the pairs share seeds, so no interval):", "",
        overlap_bands(pairs).to_markdown(), ""]
    table = overlap.pivot_table(index=["control", "budget_share"], columns="seed", values="pct_params_shared")
    table.columns = [f"seed {seed}" for seed in table.columns]
    strays = []
    if "components_off_layer" in overlap:
        most = overlap.groupby("control")["components_off_layer"].max()
        strays = ["Components a control places beyond the DCM set's count for their kind and layer, at most (any "
                  "seed, budget and draw; `components_off_layer`): "
                  + ", ".join(f"{control} {int(n)}" for control, n in most.items()) + ".", ""]
    return ["## What the random sets share with the DCM set", "",
            "Percent of the DCM set's parameters that are also in the control's (mean over the draws the grid declares, "
            "run or not; `overlap.csv`). "
            "A comparison with a control that shares most of them says little about the selection.", "",
            table.round(1).to_markdown(), "", *strays, *by_band]


def _glance_section(table: pd.DataFrame, reading: str) -> list[str]:
    """The at-a-glance grids: test accuracy, new-fact accuracy and held-out pivots at the greedy reading."""
    lines = []
    for metric, words in (("test", "test accuracy"), ("newfacts", "accuracy on the new-fact questions"),
                          ("pivot", "held-out pivot accuracy")):
        grid = glance(table, reading, metric)
        if not grid.empty:
            lines += [f"### At a glance: {words}, reading `{reading}`", "",
                      "Points: the difference pooled over questions [between-seed interval], the seeds behind it, "
                      "and the verdict.", "", grid.to_markdown(), ""]
    return lines


def reach_section(table: pd.DataFrame, reading: str) -> list[str]:
    """:func:`seed_reach` as a summary.md section, with how to read it."""
    from scipy.stats import chi2

    shown = seed_reach(table, reading)
    if shown.empty:
        return []
    most = int(shown["seeds"].max())
    low, high = (math.sqrt((most - 1) / chi2.ppf(q, most - 1)) for q in (0.975, 0.025))
    return [f"### What the seeds could see: test accuracy, reading `{reading}`", "",
            f"*Ruled out*: the between-seed interval ends below +{100 * PLAIN_MARGIN:g} points. *Open*: it neither "
            "shows nor rules out the win. Spread: the standard deviation of the per-seed differences, estimated "
            f"from these seeds (with {most} of them the true one lies within {low:.1f}x to {high:.1f}x of it at "
            "95 %, and the seeds needed grow as its square). Seen with 80 % power: the smallest true difference "
            "whose between-seed interval would exclude 0 four times in five at this spread and seed count. "
            "Planning figures, not results.", "", shown.to_markdown(index=False), ""]


def summary_text(sweep, rows: pd.DataFrame, table: pd.DataFrame, per_seed: pd.DataFrame, pictures: list[str],
                 overlap: pd.DataFrame | None = None) -> str:
    """summary.md: the plain answer, the at-a-glance grids, what the seeds could see, the comparisons, what the
    controls share with the DCM set (``overlap``: the rows of ``overlap.csv``, if any) and the gaps."""
    c = sweep.config
    done = {s: len(sweep.done(s) - {"base"}) for s in c.seeds}
    total = {s: len(c.cells(s)) for s in c.seeds}
    lines = [f"# Sweep `{c.name}`", "",
             f"Config: `{sweep.dir / 'sweep.json'}` (preset `{c.preset}`, overrides {c.overrides or 'none'}). "
             f"Cells finished per seed: " + ", ".join(f"{s}: {done[s]}/{total[s]}" for s in c.seeds) + ".", "",
             "## The plain answer", "", plain_answer(table, c.greedy_reading), "", *_glance_section(table, c.greedy_reading),
             *reach_section(table, c.greedy_reading),
             f"## Mean over seeds (random draws averaged within a seed), reading `{c.greedy_reading}`", ""]
    chosen = rows[(rows["reading"] == c.greedy_reading) | (rows["variant"] == "base")]
    metrics = [m for m in ("test_accuracy", "newfacts_accuracy", "pivot_accuracy") if m in chosen]
    per_seed_means = chosen.groupby(["variant", "budget_share", "seed"])[metrics + ["kl_to_base"]].mean()
    means = per_seed_means.groupby(["variant", "budget_share"]).mean()
    seeds = per_seed_means[metrics[0]].notna().groupby(["variant", "budget_share"]).sum() if metrics else None
    lines += [(100 * means[metrics]).round(1).assign(kl_to_base=means["kl_to_base"].round(4), seeds=seeds)
              .to_markdown(), "", "Means over different numbers of seeds (`seeds`, those with a reading) are not "
              "comparable with each other; the paired comparisons below are.", ""]
    if not table.empty:
        shown = table.copy()
        if "control_budget" in shown:
            shown["comparison"] = [c if cb == b else f"{c} (at {100 * cb:g} %)" for c, b, cb in
                                   zip(shown["comparison"], shown["budget_share"], shown["control_budget"])]
        shown["per seed"] = [per_seed_text(per_seed[(per_seed["reading"] == x.reading)
                                                     & (per_seed["budget_share"] == x.budget_share)
                                                     & (per_seed["comparison"] == x.comparison)
                                                     & (per_seed["metric"] == x.metric)])
                             for x in table.itertuples()]
        shown["pooled"] = [interval_text(d, lo, hi) for d, lo, hi in zip(table["diff"], table["low"], table["high"])]
        shown["between seeds"] = ["—" if np.isnan(lo) else f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"
                                  for lo, hi in zip(table["between_low"], table["between_high"])]
        shown["I²"] = ["—" if np.isnan(v) else f"{100 * v:.0f} %" for v in table["i2"]]
        brief = shown[(shown["reading"] == c.greedy_reading)
                      | ((shown["comparison"] == "cca − random") & (shown["metric"] == "pivot"))]
        selected = ("learning rate and step chosen by validation" if c.validate else
                    "the one recipe's last step: the same learning rate and steps for every variant, no validation")
        lines += ["## Comparisons (points; per seed, pooled over questions, between seeds)", "",
                  "Per seed: paired bootstrap over that seed's items, the control the mean of its random draws "
                  "that reached the reading (\"on 1 draw\": fewer than another seed has). "
                  "Between seeds: Student t over the seed means. Verdict: *cannot tell (seeds disagree)* when seed "
                  "intervals exclude 0 in opposite directions, else from the between-seed interval. Readings: "
                  f"`selected` ({selected}), `kl=…` (that edit scaled along its own direction to the KL to the base "
                  f"model on general text). Greedy accuracy (`test`, `newfacts`) is read at `{c.greedy_reading}`; "
                  "held-out pivots (`pivot`) at every reading. Shown: every comparison at the greedy reading and "
                  "CCA − random on pivots at every reading; all of them are in `comparisons.csv`.", "",
                  brief[["reading", "budget_share", "comparison", "metric", "seeds", "per seed", "pooled",
                         "between seeds", "I²", "verdict"]].to_markdown(index=False), ""]
    lines += overlap_section(overlap, per_seed, c.greedy_reading, rows)
    missing = gaps(rows)
    if not missing.empty:
        from cca_tl.sweep.readings import KL_MAX_TRIES, MAX_SCALE

        lines += ["## Gaps", "", f"These edits did not reach a KL target scaled along their own direction (at most "
                  f"{MAX_SCALE:g}-fold, {KL_MAX_TRIES} tries), so they have no reading there and the comparisons at that reading leave them out (their seed "
                  "counts show it):", "",
                  missing.assign(largest_kl_reached=missing["largest_kl_reached"].map(lambda v: f"{v:.2g}"))
                  .to_markdown(index=False), ""]
    lines += [f"![{p}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def per_seed_text(seeds: pd.DataFrame) -> str:
    """"0: +1.5 [+0.2, +3.0]; 2: -1.7 [-6.7, +3.0] (on 1 draw); …": a seed whose control rests on fewer random
    draws than another seed's says on how many (draws not run yet, or that never reached the reading)."""
    most = seeds["draws"].max() if "draws" in seeds and not seeds.empty else None
    return "; ".join(f"{int(r.seed)}: {interval_text(r.diff, r.low, r.high)}"
                     + (f" (on {int(r.draws)} draw{'s' * (r.draws > 1)})" if most is not None and r.draws < most else "")
                     for r in seeds.itertuples())
