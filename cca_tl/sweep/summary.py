"""A sweep's tidy table, its comparisons over seeds, plots against the budget, and the plain answer.

Comparisons are paired per item within a seed: a DCM cell's outcome on each question (or pivot) against the
mean outcome of the random draws of the same seed and budget on the same item, so draws count as what they
are (several samples of the control), not as extra seeds. Over seeds, :func:`cca_tl.stats.compare_over_seeds`:
per-seed intervals, the between-seed interval, heterogeneity, and "cannot tell" when seeds disagree.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cca_tl._io import atomic_write_text
from cca_tl.stats import MARGINS, compare_over_seeds, detectable_effect, seeds_needed
from cca_tl.sweep.plots import plot

#: (DCM variant, control variant) pairs the summary compares.
PAIRS = (("cca", "random"), ("cca", "uniform"), ("cca", "disjoint"), ("masked-ft", "random-ft"), ("cca", "lofit"),
         ("cca", "base"), ("cca", "all"), ("cca", "pivot-lora"), ("cca", "masked-ft"), ("pivot-lora", "lora"),
         ("masked-ft", "lora"), ("lora", "cca"))
#: Item sets a reading may hold: greedy accuracy (where the reading generated), reference-path accuracy (where
#: the config asks for it) and held-out pivots (always); a comparison is made where both cells have the set.
SETS = ("test", "newfacts", "pivot", "test_ref", "newfacts_ref")
#: What "beats" means in the plain answer: at least this many points, and a between-seed interval above 0.
PLAIN_MARGIN = 0.05
COLUMNS = ["seed", "variant", "objective", "budget_share", "n_components", "n_params", "pct_params", "draw", "reading",
           "kl_target", "edit_scale", "lr", "best_step", "kl_to_base", "test_accuracy", "newfacts_accuracy",
           "pivot_accuracy", "test_reference_accuracy", "newfacts_reference_accuracy", "val_reference_accuracy",
           "general_nll", "n_test", "n_newfacts", "n_pivots_test", "seconds"]


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


def paired_groups(sweep, a: str, b: str, budget: float, reading: str, item_set: str,
                  budget_b: float | None = None) -> list[tuple[int, tuple]]:
    """Per seed where both exist: (seed, (a's outcomes, mean of b's draws' outcomes)) on ``item_set``; b's
    cells at ``budget_b`` (default: the same budget)."""
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
        ys = [_outcomes(sweep, seed, k, name_b, reading) for k in keys_b]
        if x is None or any(y is None or len(y) != len(x) for y in ys):
            continue
        out.append((seed, (x, np.mean(ys, axis=0))))
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
                    groups = [g for _, g in found]
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
                    for (seed, (x, _)), (d, lo, hi) in zip(found, result.per_seed):
                        per_seed.append(dict(reading=reading, budget_share=budget, comparison=f"{a} − {b}",
                                             metric=item_set, seed=seed, n=len(x), diff=d, low=lo, high=hi))
    return pd.DataFrame(table), pd.DataFrame(per_seed)


#: The controls the plain answer speaks to: the layer-matched draws (the same count per kind and layer), the
#: uniform draw, which shares almost none of the DCM set's weights where a layer-matched draw shares most of
#: them (Gemma-3-270M up to 1 %: one kv head per layer; ``analyses/budget_overlap.py``), and the disjoint draw
#: (the kinds and layers without the DCM set's own components).
CONTROLS = (("random", "layer-matched random sets"), ("uniform", "uniform random sets"),
            ("disjoint", "disjoint random sets of the same kinds and layers"))


def plain_answer(table: pd.DataFrame, reading: str = "selected") -> str:
    """At which budgets the DCM set beats each control by ≥ 5 test points (greedy, at ``reading``) with a
    between-seed interval above 0 — or that it does not at any budget measured on two or more seeds; then
    how CCA fares against each anchor at its cap."""
    if table.empty:
        return "No comparison is finished yet."
    sentences = [text for control, words in CONTROLS if (text := _answer_against(table, control, words, reading))]
    sentences += [text for anchor, name in ANCHORS.items() if (text := _answer_to_anchor(table, anchor, name, reading))]
    return " ".join(sentences) or "No CCA − random comparison on the test questions is finished yet."


def _answer_to_anchor(table: pd.DataFrame, anchor: str, name: str, reading: str) -> str | None:
    """CCA at each budget against the anchor at its cap, in the verdicts' words, budget by budget."""
    part = table[(table["comparison"] == f"cca − {anchor}") & (table["reading"] == reading)
                 & (table["metric"] == "test") & (table["seeds"] >= 2)].sort_values("budget_share")
    if part.empty:
        return None
    caps = sorted(part["control_budget"].unique()) if "control_budget" in part else []
    at = f" (its cells at {', '.join(f'{100 * b:g} %' for b in caps)})" if caps else ""
    said = "; ".join(f"{100 * r.budget_share:g} % {_interval_text(r.diff, r.between_low, r.between_high)}, "
                     f"{r.verdict}" for r in part.itertuples())
    return (f"Against the {name} anchor{at}, CCA − {name} in test points with between-seed intervals, by "
            f"CCA's budget: {said} (reading `{reading}`).")


def _answer_against(table: pd.DataFrame, control: str, words: str, reading: str) -> str | None:
    part = table[(table["comparison"] == f"cca − {control}") & (table["reading"] == reading)
                 & (table["metric"] == "test")].sort_values("budget_share")
    if part.empty:
        return None
    where = (f"reading `{reading}`; seeds per budget: "
             + ", ".join(f"{100 * b:g} %: {n}" for b, n in zip(part["budget_share"], part["seeds"])))
    enough = part[part["seeds"] >= 2]
    if enough.empty:
        return f"Cannot tell yet against {words}: a between-seed interval needs at least two seeds ({where})."
    wins = enough[_reach(enough) == "shown"]
    if wins.empty:
        return (f"Against {words}, the DCM-selected components do not win by ≥ {100 * PLAIN_MARGIN:g} test points "
                f"with a between-seed interval above 0 at any budget measured on two or more seeds ({where})."
                + _reach_clause(enough))
    return (f"Against {words}, the DCM-selected components win by ≥ {100 * PLAIN_MARGIN:g} test points, with a "
            f"between-seed interval above 0, at {_budget_list(wins['budget_share'])} of the "
            f"components ({where}).")


def _reach(part: pd.DataFrame) -> pd.Series:
    """Per comparison row, what its seeds say of a win by :data:`PLAIN_MARGIN`: ``shown`` (the difference
    reaches it and the between-seed interval is above 0, seeds not disagreeing), ``ruled out`` (the
    between-seed interval ends below it) or ``open`` (neither: more seeds could still find one)."""
    shown = (part["diff"] >= PLAIN_MARGIN) & (part["between_low"] > 0) & ~part["verdict"].str.contains("disagree")
    return pd.Series(np.where(shown, "shown", np.where(part["between_high"] < PLAIN_MARGIN, "ruled out", "open")),
                     index=part.index)


def _reach_clause(part: pd.DataFrame) -> str:
    """" A win of that size is ruled out at …; open at …, where … would take … seeds." for the plain answer."""
    reach = _reach(part)
    out = []
    if (reach == "ruled out").any():
        out.append(f"ruled out at {_budget_list(part[reach == 'ruled out']['budget_share'])} (between-seed interval "
                   f"below +{100 * PLAIN_MARGIN:g})")
    opened = part[reach == "open"]
    if not opened.empty:
        needs = ", ".join(_seeds_text(seeds_needed(PLAIN_MARGIN, sd)) for sd in opened["between_sd"])
        out.append(f"open at {_budget_list(opened['budget_share'])}, where showing a true {100 * PLAIN_MARGIN:g}-point "
                   f"difference (80 % power) at the spread seen between seeds would take {needs} seeds respectively")
    return f" A win of that size is {'; '.join(out)}." if out else ""


def _budget_list(shares) -> str:
    return ", ".join(f"{100 * b:g} %" for b in shares)


def _seeds_text(n: int | None) -> str:
    return "more than 100,000" if n is None else f"{n:,}"


def seed_reach(table: pd.DataFrame, reading: str) -> pd.DataFrame:
    """What the seeds could see, per random control and budget (test accuracy at ``reading``, two seeds or
    more): whether a win by :data:`PLAIN_MARGIN` is shown, ruled out or open; the standard deviation of the
    per-seed differences; the smallest true difference these seeds find with 80 % power; and the seeds a true
    difference of :data:`PLAIN_MARGIN` would need at that spread. "Cannot tell" is a statement about the data;
    this says whether more seeds could change it. Points, one row per control and budget."""
    controls = [f"cca − {control}" for control, _ in CONTROLS]
    part = table[(table["reading"] == reading) & (table["metric"] == "test") & table["comparison"].isin(controls)
                 & (table["seeds"] >= 2)]
    if part.empty or "between_sd" not in part:
        return pd.DataFrame()
    part = part.iloc[np.lexsort((part["budget_share"].to_numpy(), part["comparison"].map(controls.index).to_numpy()))]
    return pd.DataFrame({
        "control": part["comparison"].map(GLANCE).to_numpy(),
        "budget": [f"{100 * b:g} %" for b in part["budget_share"]],
        "seeds": part["seeds"].to_numpy(),
        "between seeds": [_interval_text(d, lo, hi) for d, lo, hi in
                          zip(part["diff"], part["between_low"], part["between_high"])],
        f"a {100 * PLAIN_MARGIN:g}-point win": _reach(part).to_numpy(),
        "spread (SD, points)": (100 * part["between_sd"]).round(1).to_numpy(),
        "seen with 80 % power (points)": [round(100 * detectable_effect(sd, n), 1)
                                          for sd, n in zip(part["between_sd"], part["seeds"])],
        f"seeds a {100 * PLAIN_MARGIN:g}-point difference needs": [
            _seeds_text(seeds_needed(PLAIN_MARGIN, sd)) for sd in part["between_sd"]]})


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


#: The comparisons the at-a-glance grid shows, with their column headings.
GLANCE = {"cca − random": "CCA − layer-matched", "cca − uniform": "CCA − uniform", "cca − disjoint": "CCA − disjoint",
          "cca − lofit": "CCA − LoFiT", "masked-ft − random-ft": "masked FT − random FT", "cca − base": "CCA − base"}


def glance(table: pd.DataFrame, reading: str, metric: str = "test") -> pd.DataFrame:
    """Budget × comparison at one reading and metric: the difference in points with its between-seed interval,
    the number of seeds behind it, and the verdict, one cell each — the comparisons table folded so a reader
    sees every budget and control at once (the README carries the test-accuracy grid)."""
    part = table[(table["reading"] == reading) & (table["metric"] == metric) & table["comparison"].isin(GLANCE)]
    if part.empty:
        return pd.DataFrame()
    cells = {}
    for r in part.itertuples():
        interval = _interval_text(r.diff, r.between_low, r.between_high) if r.seeds >= 2 else f"{100 * r.diff:+.1f}"
        capped = "" if r.control_budget == r.budget_share else f" (vs {100 * r.control_budget:g} %)"
        cells[(r.budget_share, GLANCE[r.comparison])] = f"{interval}{capped}, {r.seeds} seed{'s' * (r.seeds != 1)}: {r.verdict}"
    grid = pd.Series(cells).unstack()
    grid = grid[[name for name in GLANCE.values() if name in grid.columns]].fillna("not run")
    grid.index = [f"{100 * b:g} %" for b in grid.index]
    grid.index.name = "budget"
    return grid


def _interval_text(d: float, lo: float, hi: float) -> str:
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


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
    pictures = plot(rows, table, per_seed, out, sweep.config.greedy_reading, PLAIN_MARGIN)
    atomic_write_text(out / "summary.md", summary_text(sweep, rows, table, per_seed, pictures))
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


def overlap_section(path: Path) -> list[str]:
    """Percent of the DCM set's parameters each control shares with it (mean over draws), per budget and seed,
    and how far each control strays from its layers, from ``overlap.csv`` where one was written
    (``analyses/budget_overlap.py``); nothing otherwise."""
    if not path.exists():
        return []
    rows = pd.read_csv(path)
    table = rows.pivot_table(index=["control", "budget_share"], columns="seed", values="pct_params_shared")
    table.columns = [f"seed {seed}" for seed in table.columns]
    strays = []
    if "components_off_layer" in rows:
        most = rows.groupby("control")["components_off_layer"].max()
        strays = ["Components a control places beyond the DCM set's count for their kind and layer, at most (any "
                  "seed, budget and draw; `components_off_layer`): "
                  + ", ".join(f"{control} {int(n)}" for control, n in most.items()) + ".", ""]
    return ["## What the random sets share with the DCM set", "",
            "Percent of the DCM set's parameters that are also in the control's (mean over draws; `overlap.csv`). "
            "A comparison with a control that shares most of them says little about the selection.", "",
            table.round(1).to_markdown(), "", *strays]


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


def summary_text(sweep, rows: pd.DataFrame, table: pd.DataFrame, per_seed: pd.DataFrame, pictures: list[str]) -> str:
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
        shown["per seed"] = [
            "; ".join(f"{int(r.seed)}: {_interval_text(r.diff, r.low, r.high)}" for r in
                      per_seed[(per_seed["reading"] == x.reading) & (per_seed["budget_share"] == x.budget_share)
                               & (per_seed["comparison"] == x.comparison) & (per_seed["metric"] == x.metric)].itertuples())
            for x in table.itertuples()]
        shown["pooled"] = [_interval_text(d, lo, hi) for d, lo, hi in zip(table["diff"], table["low"], table["high"])]
        shown["between seeds"] = ["—" if np.isnan(lo) else f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"
                                  for lo, hi in zip(table["between_low"], table["between_high"])]
        shown["I²"] = ["—" if np.isnan(v) else f"{100 * v:.0f} %" for v in table["i2"]]
        brief = shown[(shown["reading"] == c.greedy_reading)
                      | ((shown["comparison"] == "cca − random") & (shown["metric"] == "pivot"))]
        selected = ("learning rate and step chosen by validation" if c.validate else
                    "the one recipe's last step: the same learning rate and steps for every variant, no validation")
        lines += ["## Comparisons (points; per seed, pooled over questions, between seeds)", "",
                  "Per seed: paired bootstrap over that seed's items, the control the mean of its random draws. "
                  "Between seeds: Student t over the seed means. Verdict: *cannot tell (seeds disagree)* when seed "
                  "intervals exclude 0 in opposite directions, else from the between-seed interval. Readings: "
                  f"`selected` ({selected}), `kl=…` (that edit scaled along its own direction to the KL to the base "
                  f"model on general text). Greedy accuracy (`test`, `newfacts`) is read at `{c.greedy_reading}`; "
                  "held-out pivots (`pivot`) at every reading. Shown: every comparison at the greedy reading and "
                  "CCA − random on pivots at every reading; all of them are in `comparisons.csv`.", "",
                  brief[["reading", "budget_share", "comparison", "metric", "seeds", "per seed", "pooled",
                         "between seeds", "I²", "verdict"]].to_markdown(index=False), ""]
    lines += overlap_section(sweep.dir / "overlap.csv")
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
