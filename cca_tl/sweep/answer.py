"""The plain answer a sweep gives, and the tables that show it: does the DCM set beat each random control by
:data:`PLAIN_MARGIN` with a between-seed interval above 0; how CCA fares against the LoFiT anchor and masked
fine-tuning of the same components; what the seeds could see (where a win is ruled out, where more seeds could
still find one); and the budget x control grid.
All of it reads the comparisons table of :func:`cca_tl.sweep.compare.comparisons`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cca_tl.stats import detectable_effect, seeds_needed
from cca_tl.sweep.compare import ANCHORS

#: What "beats" means in the plain answer: at least this many points, and a between-seed interval above 0.
PLAIN_MARGIN = 0.05
#: The controls the plain answer speaks to: the layer-matched draws (the same count per kind and layer), the
#: uniform draw, which shares almost none of the DCM set's weights where a layer-matched draw shares most of
#: them (Gemma-3-270M up to 1 %: one kv head per layer; ``analyses/budget_overlap.py``), and the disjoint draw
#: (the kinds and layers without the DCM set's own components).
CONTROLS = (("random", "layer-matched random sets"), ("uniform", "uniform random sets"),
            ("disjoint", "disjoint random sets of the same kinds and layers"))
#: The edits a user could pick instead of CCA, with the plain answer's words for them: the LoFiT anchor (capped
#: below the larger budgets, :data:`~cca_tl.sweep.compare.ANCHORS`) and masked fine-tuning, the answer objective
#: on the DCM set's own components, so CCA − masked FT isolates the objective (the budget sweep at 0.1 %, five
#: seeds: -15.8 test points, between-seed interval [-26.5, -5.1]).
ALTERNATIVES = {**{anchor: (f"the {name} anchor", "") for anchor, name in ANCHORS.items()},
                "masked-ft": ("masked fine-tuning", "the answer objective on the same components")}


def plain_answer(table: pd.DataFrame, reading: str = "selected") -> str:
    """At which budgets the DCM set beats each control by ≥ 5 test points (greedy, at ``reading``) with a
    between-seed interval above 0 — or that it does not at any budget measured on two or more seeds; then
    how CCA fares against each of :data:`ALTERNATIVES` (an anchor at its cap)."""
    if table.empty:
        return "No comparison is finished yet."
    sentences = [text for control, words in CONTROLS if (text := _answer_against(table, control, words, reading))]
    sentences += [text for other, words in ALTERNATIVES.items()
                  if (text := _answer_to_alternative(table, other, words, reading))]
    return " ".join(sentences) or "No CCA − random comparison on the test questions is finished yet."


def _answer_to_alternative(table: pd.DataFrame, other: str, words: tuple[str, str], reading: str) -> str | None:
    """CCA at each budget against another edit (at its cap, for an anchor), in the verdicts' words, budget by
    budget, on two seeds or more."""
    comparison = f"cca − {other}"
    part = table[(table["comparison"] == comparison) & (table["reading"] == reading)
                 & (table["metric"] == "test") & (table["seeds"] >= 2)].sort_values("budget_share")
    if part.empty:
        return None
    name, gloss = words
    budgets = sorted(part["control_budget"].unique()) if "control_budget" in part else []
    aside = "; ".join(filter(None, (gloss, f"its cells at {_budget_list(budgets)}" if budgets else "")))
    aside = f" ({aside})" if aside else ""
    said = "; ".join(f"{100 * r.budget_share:g} % {interval_text(r.diff, r.between_low, r.between_high)}, "
                     f"{r.verdict}" for r in part.itertuples())
    return (f"Against {name}{aside}, {GLANCE[comparison]} in test points with between-seed intervals, by CCA's "
            f"budget: {said} (reading `{reading}`).")


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
    reach = _reach(enough)
    wins = enough[reach == "shown"]
    if wins.empty:
        return (f"Against {words}, the DCM-selected components do not win by ≥ {100 * PLAIN_MARGIN:g} test points "
                f"with a between-seed interval above 0 at any budget measured on two or more seeds ({where})."
                + _reach_clause(enough, reach))
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


def _reach_clause(part: pd.DataFrame, reach: pd.Series) -> str:
    """" A win of that size is ruled out at …; open at …, where … would take … seeds." for the plain answer
    (``reach``: :func:`_reach` of ``part``)."""
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
        "between seeds": [interval_text(d, lo, hi) for d, lo, hi in
                          zip(part["diff"], part["between_low"], part["between_high"])],
        f"a {100 * PLAIN_MARGIN:g}-point win": _reach(part).to_numpy(),
        "spread (SD, points)": (100 * part["between_sd"]).round(1).to_numpy(),
        "seen with 80 % power (points)": [round(100 * detectable_effect(sd, n), 1)
                                          for sd, n in zip(part["between_sd"], part["seeds"])],
        f"seeds a {100 * PLAIN_MARGIN:g}-point difference needs": [
            _seeds_text(seeds_needed(PLAIN_MARGIN, sd)) for sd in part["between_sd"]]})


#: The comparisons the at-a-glance grid shows, with their column headings.
GLANCE = {"cca − random": "CCA − layer-matched", "cca − uniform": "CCA − uniform", "cca − disjoint": "CCA − disjoint",
          "cca − lofit": "CCA − LoFiT", "cca − masked-ft": "CCA − masked FT",
          "masked-ft − random-ft": "masked FT − random FT", "cca − base": "CCA − base"}


def glance(table: pd.DataFrame, reading: str, metric: str = "test") -> pd.DataFrame:
    """Budget × comparison at one reading and metric: the difference in points with its between-seed interval,
    the number of seeds behind it, and the verdict, one cell each — the comparisons table folded so a reader
    sees every budget and control at once (the README carries the test-accuracy grid)."""
    part = table[(table["reading"] == reading) & (table["metric"] == metric) & table["comparison"].isin(GLANCE)]
    if part.empty:
        return pd.DataFrame()
    cells = {}
    for r in part.itertuples():
        interval = interval_text(r.diff, r.between_low, r.between_high) if r.seeds >= 2 else f"{100 * r.diff:+.1f}"
        capped = "" if r.control_budget == r.budget_share else f" (vs {100 * r.control_budget:g} %)"
        cells[(r.budget_share, GLANCE[r.comparison])] = f"{interval}{capped}, {r.seeds} seed{'s' * (r.seeds != 1)}: {r.verdict}"
    grid = pd.Series(cells).unstack()
    grid = grid[[name for name in GLANCE.values() if name in grid.columns]].fillna("not run")
    grid.index = [f"{100 * b:g} %" for b in grid.index]
    grid.index.name = "budget"
    return grid


def interval_text(d: float, lo: float, hi: float) -> str:
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
