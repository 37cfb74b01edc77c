"""The power experiment's committed record, summarised: objective x parameters at a matched budget, 3 seeds
(issue 15; the record corrected in issue 31).

    .venv/bin/python analyses/power.py                          # rewrite analyses/results/power from its runs
    .venv/bin/cca-tl sweep analyses/sweeps/power.toml --out runs/sweeps/power     # run the experiment again

The experiment now runs as a sweep (:mod:`cca_tl.sweep`, the grid in ``analyses/sweeps/power.toml``) over the
pipeline's own stages and evaluation; this script only reads what the original run committed under
``analyses/results/power/runs/seed<N>/power/`` (per cell a JSON row, per-question and per-pivot outcomes, the
learning-rate sweep) and writes the tables, plots and summary beside it. What that run did:

Task: the two-step task (Gemma-3-270M greedy macro accuracy 0.37 on 320 questions, analyses/task_screen.md),
preset ``power``: per seed 320 test questions, 120 validation questions, ~120 training pivots (reference
localization on 200 training questions). The seed changes the questions, their split, the DCM batches, the
random mask and the LoRA initialisation.

Per seed, on the same data: the base model and eight updates, objective x parameters
(:data:`cca_tl.update.VARIANTS`):

==========  ================  ================  =====================  ================
objective   DCM mask          random mask       all parameters         LoRA (same count)
==========  ================  ================  =====================  ================
pivot       ``cca``           ``random``        ``all``                ``pivot-lora``
answer      ``masked-ft``     ``random-ft``     ``full-ft``            ``lora``
==========  ================  ================  =====================  ================

* pivot objective: CCA's — the full-batch mean logit difference at the training pivots, plain SGD, 4 steps;
* answer objective: reference-answer fine-tuning of the questions behind those pivots (the same questions,
  the loss on every token of their reference solutions), AdamW, mini-batches of 8, one epoch;
* random mask: the DCM mask's count per kind and layer, seeded; LoRA: on all seven projections, the rank
  whose parameter count is closest to the DCM mask's (scale α/r = 2, no dropout).

Selection, the same rule for every cell: learning rate from {1e-5, 5e-5, 1e-4, 5e-4} (the authors' sweep)
and step from {0, half, end} by **reference-path accuracy on the 120 validation questions** — the share whose
reference solution is the greedy path under teacher forcing (:func:`cca_tl.answers.reference_path_scores`;
forward passes only, and on this task within a few questions of greedy accuracy: measured per seed in
``base.json``). Step 0 (the unedited model) is a candidate; ties keep the smaller edit. The validation
pivot logit difference was the main job's rule, but it rose at every step while answer accuracy fell
(docs/method.md §A6), so it would pick the largest edit.

Reported per cell: greedy accuracy on the 320 test questions, held-out pivot accuracy and logit difference on
the test pivots (the base model's wrong test answers; never seen by DCM, the update or the selection) and on
the validation pivots (from the validation questions: never trained on, but the selection reads those
questions), KL to the base model and NLL on general text, the share of parameters trained.
The run wrote each seed's pipeline stages and each cell's row, learning-rate sweep and per-item outcomes
under ``analyses/results/power/runs/seed<N>/`` (~3 MB per seed, no weights); this script writes
``analyses/results/power/`` from them (rows.csv, sweep.csv, comparisons.csv, comparisons_per_seed.csv,
summary.md, plots). Comparisons are read per seed, pooled and between seeds, with a verdict that says "cannot
tell" when seeds disagree (:func:`cca_tl.stats.compare_over_seeds`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from cca_tl._io import atomic_write_text
from cca_tl.stats import MARGINS
from cca_tl.update import VARIANTS

OUT = Path(__file__).resolve().parent / "results" / "power"
PIVOT_STEPS = 4
MARGIN = {"test_accuracy": MARGINS["accuracy"], "pivot_accuracy": MARGINS["pivot_accuracy"]}


def log(text: str) -> None:
    print(f"[power {time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- summary -------------------------------------------------------------------------------------------


def collect(runs: Path, seeds: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, sweep = [], []
    for seed in seeds:
        folder = runs / f"seed{seed}" / "power"
        for variant in ["base", *VARIANTS]:
            path = folder / f"{variant}.json"
            if path.exists():
                info = json.loads(path.read_text())
                info.pop("per_template", None)
                rows.append(info)
        for path in sorted((folder / "sweep").glob("*.json")) if folder.exists() else []:
            row = json.loads(path.read_text())
            row["last_step"] = max(row.pop("history", {}).get("step", [None]), default=None)
            sweep.append(row)
    return pd.DataFrame(rows), pd.DataFrame(sweep)


def paired_groups(runs: Path, seeds: list[int], a: str, b: str, metric: str) -> list:
    """Per seed, the per-item outcomes of variants a and b (questions for test accuracy, test pivots for
    pivot accuracy), when both are there."""
    groups = []
    for seed in seeds:
        folder = runs / f"seed{seed}" / "power"
        suffix, column = ("records", "correct") if metric == "test_accuracy" else ("pivots", "logit_diff")
        paths = [folder / f"{v}_{suffix}.csv" for v in (a, b)]
        if not all(p.exists() for p in paths):
            continue
        x, y = (pd.read_csv(p)[column] for p in paths)
        if column == "logit_diff":
            x, y = x > 0, y > 0
        groups.append((x.to_numpy(float), y.to_numpy(float)))
    return groups


COMPARISONS = [  # (a, b, what the difference answers)
    ("cca", "base", "does CCA change the model at all"),
    ("cca", "random", "the DCM mask against a random mask of the same size (pivot objective)"),
    ("cca", "all", "the mask against every parameter (pivot objective)"),
    ("cca", "pivot-lora", "the mask against LoRA at the same budget (pivot objective)"),
    ("cca", "masked-ft", "the objective, on the DCM mask"),
    ("pivot-lora", "lora", "the objective, on LoRA"),
    ("masked-ft", "random-ft", "the DCM mask against a random one (answer objective)"),
    ("masked-ft", "lora", "the mask against LoRA at the same budget (answer objective)"),
    ("lora", "cca", "the gap between LoRA fine-tuning and CCA"),
]


def comparisons(runs: Path, seeds: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each comparison over the seeds (:func:`cca_tl.stats.compare_over_seeds`): one row per comparison and
    metric with the pooled interval (question noise only), the between-seed interval, heterogeneity and the
    verdict; and one row per seed with that seed's own paired interval."""
    from cca_tl.stats import compare_over_seeds

    rows, per_seed = [], []
    for a, b, question in COMPARISONS:
        for metric in ("test_accuracy", "pivot_accuracy"):
            found = [(seed, g) for seed in seeds for g in paired_groups(runs, [seed], a, b, metric)]
            if not found:
                continue
            groups = [g for _, g in found]
            result = compare_over_seeds(groups, MARGIN[metric])
            between = result.between or (float("nan"),) * 3
            spread = result.heterogeneity
            rows.append(dict(comparison=f"{a} − {b}", metric=metric, seeds=len(groups),
                             n=sum(len(x) for x, _ in groups), diff=result.pooled[0], low=result.pooled[1],
                             high=result.pooled[2], between_low=between[1], between_high=between[2],
                             q=spread.q if spread else float("nan"), q_p=spread.p if spread else float("nan"),
                             i2=spread.i2 if spread else float("nan"), verdict=result.verdict, question=question))
            for (seed, (x, _)), (diff, low, high) in zip(found, result.per_seed):
                per_seed.append(dict(comparison=f"{a} − {b}", metric=metric, seed=seed, n=len(x), diff=diff,
                                     low=low, high=high))
    return pd.DataFrame(rows), pd.DataFrame(per_seed)


def plot(rows: pd.DataFrame, table: pd.DataFrame, per_seed: pd.DataFrame, sweep: pd.DataFrame,
         out: Path) -> list[str]:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    written = []
    if not table.empty:
        fig = Figure(figsize=(12, 0.6 * len(table) / 2 + 2.2))
        axes = fig.subplots(1, 2, sharey=True)
        for ax, metric in zip(axes, ("test_accuracy", "pivot_accuracy")):
            part = table[table["metric"] == metric].iloc[::-1].reset_index(drop=True)
            y = range(len(part))
            ax.hlines(list(y), 100 * part["between_low"], 100 * part["between_high"], color="tab:orange", lw=7,
                      alpha=0.35, label="between seeds (t over seed means)")
            ax.errorbar(100 * part["diff"], list(y), xerr=[100 * (part["diff"] - part["low"]),
                                                           100 * (part["high"] - part["diff"])],
                        fmt="o", color="black", capsize=3, label="pooled (question noise only)")
            seeds = sorted(per_seed["seed"].unique()) if not per_seed.empty else []
            for k, seed in enumerate(seeds):
                mine = per_seed[(per_seed["metric"] == metric) & (per_seed["seed"] == seed)].set_index("comparison")
                ys = [i - 0.18 - 0.14 * k for i in y]  # below the pooled point
                keep = [c in mine.index for c in part["comparison"]]
                rows_ = mine.loc[[c for c, k_ in zip(part["comparison"], keep) if k_]]
                ax.errorbar(100 * rows_["diff"], [v for v, k_ in zip(ys, keep) if k_],
                            xerr=[100 * (rows_["diff"] - rows_["low"]), 100 * (rows_["high"] - rows_["diff"])],
                            fmt=".", ms=4, lw=0.8, alpha=0.8, label=f"seed {seed}")
            ax.axvline(0, color="grey", lw=1)
            ax.axvspan(-100 * MARGIN[metric], 100 * MARGIN[metric], color="grey", alpha=0.12)
            ax.set_yticks(list(y), part["comparison"])
            ax.set_xlabel(f"{metric.replace('_', ' ')} difference (points), 95 % CI")
        axes[0].set_title("answers (test questions)")
        axes[1].set_title("held-out test pivots")
        fig.legend(*axes[1].get_legend_handles_labels(), loc="upper center", ncol=5, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        fig.savefig(out / "differences.png", dpi=110)
        written.append("differences.png")
    if not rows.empty:
        means = rows.groupby("variant")[["test_accuracy", "pivot_accuracy", "kl_to_base"]].mean()
        order = [v for v in ["base", *VARIANTS] if v in means.index]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        placed: list[tuple[float, float]] = []
        for v in sorted(order, key=lambda v: -means.loc[v, "test_accuracy"]):
            x, y = 100 * means.loc[v, "pivot_accuracy"], 100 * means.loc[v, "test_accuracy"]
            ax.scatter(x, y, s=40)
            crowd = sum(abs(x - px) < 8 and abs(y - py) < 4 for px, py in placed)  # neighbours already labelled
            placed.append((x, y))
            right = x < 85  # near the right edge, label to the left
            ax.annotate(v, (x, y), textcoords="offset points", xytext=(5 if right else -5, 3 - 10 * crowd),
                        ha="left" if right else "right", fontsize=8)
        ax.set_xlabel("held-out test pivot accuracy (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("mean over seeds")
        fig.tight_layout()
        fig.savefig(out / "variants.png", dpi=110)
        plt.close(fig)
        written.append("variants.png")
    if not sweep.empty:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, objective in zip(axes, ("pivot", "answer")):
            for variant, (obj, _) in VARIANTS.items():
                part = sweep[(sweep["variant"] == variant)] if obj == objective else sweep.iloc[0:0]
                for seed, runs in part.groupby("seed"):
                    runs = runs.sort_values("lr")
                    ax.plot(runs["lr"], 100 * runs["best_val"], marker="o", label=f"{variant} (seed {seed})")
            base = rows[rows["variant"] == "base"]
            for value in 100 * base["val_reference_accuracy"]:
                ax.axhline(value, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_xlabel("learning rate")
            ax.set_title(f"{objective} objective")
            if ax.get_lines()[len(base):]:
                ax.legend(fontsize=7)
        axes[0].set_ylabel("val reference-path accuracy at the best step (%)")
        fig.tight_layout()
        fig.savefig(out / "sweep.png", dpi=110)
        plt.close(fig)
        written.append("sweep.png")
    return written


def summarise(runs: Path, seeds: list[int], out: Path = OUT, command: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows, sweep = collect(runs, seeds)
    if rows.empty:
        log("nothing to summarise yet")
        return
    columns = ["seed", "variant", "objective", "params", "n_test", "test_accuracy", "n_pivots_test", "pivot_accuracy",
               "pivot_logit_diff", "n_pivots_val", "val_pivot_accuracy", "n_val", "val_reference_accuracy",
               "pct_params", "n_params", "lora_rank", "lr", "best_step", "kl_to_base", "general_nll", "general_top1",
               "seconds_train", "seconds_eval"]
    rows = rows.reindex(columns=[c for c in columns if c in rows.columns])
    atomic_write_text(out / "rows.csv", rows.to_csv(index=False))
    if not sweep.empty:
        atomic_write_text(out / "sweep.csv", sweep.to_csv(index=False))
    table, per_seed = comparisons(runs, seeds)
    atomic_write_text(out / "comparisons.csv", table.to_csv(index=False))
    atomic_write_text(out / "comparisons_per_seed.csv", per_seed.to_csv(index=False))
    pictures = plot(rows, table, per_seed, sweep, out)
    command = command or ".venv/bin/python analyses/power.py --seeds " + " ".join(map(str, seeds))
    overlap = fact_overlap(runs, seeds)
    atomic_write_text(out / "summary.md", summary_text(rows, sweep, table, per_seed, command, pictures, overlap,
                                                          mask_profile(runs, seeds)))
    log(f"wrote {out}/summary.md ({len(rows)} rows)")


def summary_text(rows: pd.DataFrame, sweep: pd.DataFrame, table: pd.DataFrame, per_seed: pd.DataFrame,
                 command: str, pictures: list[str], overlap: pd.DataFrame | None = None,
                 profile: pd.DataFrame | None = None) -> str:
    done = rows.groupby("seed")["variant"].nunique().to_dict()
    means = rows.groupby("variant")[["test_accuracy", "pivot_accuracy", "val_pivot_accuracy", "kl_to_base",
                                     "general_nll", "pct_params"]].mean()
    grid = pd.DataFrame(index=["pivot", "answer"], columns=["mask", "random", "all", "lora"], dtype=object)
    for variant, (objective, params) in VARIANTS.items():
        if variant in means.index:
            grid.loc[objective, params] = (f"{100 * means.loc[variant, 'test_accuracy']:.1f} / "
                                           f"{100 * means.loc[variant, 'pivot_accuracy']:.1f}")
    lines = [
        "# Does CCA work? Objective x parameters with power (issue 15; read per seed since issue 31)",
        "",
        f"Command: `{command}` (2 CPU cores, float32, no GPU). Design, selection rule and sizes: the docstring of `analyses/power.py`. Cells "
        f"finished per seed: {done} (of 9).",
        "",
        "## Mean over seeds: test accuracy / held-out test pivot accuracy (%)",
        "",
        grid.fillna("—").to_markdown(),
        "",
        f"Base model: {100 * means.loc['base', 'test_accuracy']:.1f} / {100 * means.loc['base', 'pivot_accuracy']:.1f}"
        if "base" in means.index else "",
        "",
        "## Every seed and cell (`rows.csv`)",
        "",
        rows[["seed", "variant", "n_test", "test_accuracy", "n_pivots_test", "pivot_accuracy", "val_reference_accuracy",
              "lr", "best_step", "pct_params", "kl_to_base", "general_nll"]].round(4)
        .assign(lr=rows["lr"].map(lambda lr: "—" if pd.isna(lr) else f"{lr:g}")).to_markdown(index=False),
        "",
        "## Paired differences over seeds (95 % intervals, points)",
        "",
        "Each seed is its own experiment (split, DCM mask, random draw, trained models). *Per seed*: paired "
        "bootstrap over that seed's test questions (or test pivots). *Pooled*: the same, stratified over seeds — "
        "question noise only, given these trained models. *Between seeds*: Student t over the seed means — the "
        "run-to-run variation, and with 3 seeds wide on purpose (t = 4.30). Heterogeneity: Cochran's Q on "
        "seeds − 1 degrees of freedom (p) and I², the share of the spread between seeds that question noise "
        "does not explain.",
        "",
        f"Verdict, in order: *cannot tell (seeds disagree)* when one seed's interval excludes 0 above and another's "
        f"below; otherwise from the between-seed interval — *effect* when it excludes 0, *no effect* when it lies "
        f"within ±{100 * MARGIN['test_accuracy']:.0f} points (test accuracy) or ±{100 * MARGIN['pivot_accuracy']:.0f} "
        "points (pivot accuracy), differences too small to matter for a user; *cannot tell* otherwise.",
        "",
    ]
    if not table.empty:
        lines += [comparison_table(table, per_seed).to_markdown(index=False), ""]
    lines += [f"![{p}]({p})" for p in pictures]
    lines += ["", "## What these numbers can and cannot show", ""]
    lines += ["- " + sentence for sentence in caveats(rows, overlap, profile)]
    if not sweep.empty:
        lines += ["- " + search_edges(rows, sweep)]
        chosen = rows.dropna(subset=["lr"])[["seed", "variant", "lr", "best_step"]]
        lines += ["", "## Learning-rate sweep (`sweep.csv`)", "",
                  "Validation reference-path accuracy at the best step of each learning rate; the selected setting "
                  "per seed and cell:", "", chosen.to_markdown(index=False)]
    return "\n".join(lines) + "\n"


def comparison_table(table: pd.DataFrame, per_seed: pd.DataFrame) -> pd.DataFrame:
    """The summary's table: per seed, pooled and between-seed intervals side by side (points)."""
    interval = lambda d, lo, hi: f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"  # noqa: E731
    rows = []
    for _, row in table.iterrows():
        mine = per_seed[(per_seed["comparison"] == row["comparison"]) & (per_seed["metric"] == row["metric"])]
        seeds = "; ".join(f"{int(r.seed)}: {interval(r.diff, r.low, r.high)}" for r in mine.itertuples())
        between = ("—" if pd.isna(row["between_low"]) else
                   f"[{100 * row['between_low']:+.1f}, {100 * row['between_high']:+.1f}]")
        spread = "—" if pd.isna(row["q"]) else f"{row['q']:.1f} (p {row['q_p']:.2g}), {100 * row['i2']:.0f} %"
        rows.append({"comparison": row["comparison"], "metric": row["metric"].replace("_accuracy", ""),
                     "per seed": seeds, "pooled": interval(row["diff"], row["low"], row["high"]),
                     "between seeds": between, "Q (p), I²": spread, "verdict": row["verdict"]})
    return pd.DataFrame(rows)


def fact_overlap(runs: Path, seeds: list[int]) -> pd.DataFrame:
    """Per seed: how many test questions' arithmetic (their reference solution, which the operands fix) also
    occurs among the traced training questions, and among the questions behind the training pivots (what
    the answer objective trains on); and the distinct operand combinations each template drew."""
    from datasets import load_from_disk

    rows, drawn = [], {}
    for seed in seeds:
        folder = runs / f"seed{seed}"
        if not (folder / "problems.json").exists():
            continue
        splits = json.loads((folder / "problems.json").read_text())
        for problem in (p for part in splits.values() for p in part):
            drawn.setdefault(problem["template_id"], set()).add(problem["solution"])
        train = {p["solution"] for p in splits["train"]}
        pivots = load_from_disk(str(folder / "localization")).to_pandas()
        pivots = pivots[pivots["split"] == "train"]
        behind = {(t, i) for t, i in zip(pivots["template_id"], pivots["instance_id"])}
        answer_train = {p["solution"] for p in splits["train"] if (p["template_id"], p["instance_id"]) in behind}
        test = [p["solution"] for p in splits["test"]]
        rows.append(dict(seed=seed, n_test=len(test), n_train=len(splits["train"]), n_answer_train=len(behind),
                         test_in_train=sum(t in train for t in test),
                         test_in_answer_train=sum(t in answer_train for t in test)))
    frame = pd.DataFrame(rows)
    frame.attrs["combinations"] = {t: len(v) for t, v in sorted(drawn.items())}
    return frame


def mask_profile(runs: Path, seeds: list[int]) -> pd.DataFrame:
    """Per seed: how large the DCM mask is and where its neurons sit."""
    from cca_tl.components import Kind
    from cca_tl.component_mask import ComponentMask

    rows = []
    for seed in seeds:
        path = runs / f"seed{seed}" / "dcm" / "mask.safetensors"
        if not path.exists():
            continue
        mask = ComponentMask.load(path)
        neurons = mask.masks[Kind.NEURON].flatten(1).sum(dim=1).float()
        upper = neurons[-(len(neurons) // 3):].sum() / max(float(neurons.sum()), 1.0)
        rows.append(dict(seed=seed, count=mask.count(), size=mask.size(), share=mask.fraction_components(),
                         neuron_share_of_mask=float(neurons.sum()) / max(mask.count(), 1),
                         share_of_neurons=float(neurons.sum()) / mask.masks[Kind.NEURON].numel(),
                         upper_third=float(upper)))
    return pd.DataFrame(rows)


def caveats(rows: pd.DataFrame, overlap: pd.DataFrame | None, profile: pd.DataFrame | None = None) -> list[str]:
    """The limits of the experiment, each sentence computed from the committed data."""
    out = []
    if overlap is not None and not overlap.empty:
        combos = overlap.attrs["combinations"]
        per = lambda c: ", ".join(str(int(v)) for v in overlap[c])  # noqa: E731
        out.append(
            f"**Shared arithmetic.** Test questions are distinct texts, but with operands ≤ 3 a template has "
            f"{min(combos.values())}–{max(combos.values())} operand combinations "
            f"({', '.join(f'{t} {n}' for t, n in combos.items())}, counting every seed's draws), so most test "
            f"questions' arithmetic also occurs (with other names and items) in training: {per('test_in_train')} of "
            f"{per('n_test')} test questions (seeds {', '.join(map(str, overlap['seed']))}) against the "
            f"{per('n_train')} training questions, and {per('test_in_answer_train')} against the {per('n_answer_train')} "
            "questions behind the training pivots that the answer objective trains on. Reference-answer "
            "fine-tuning can learn much of that table of facts; the pivot objective moves one token per record. "
            "The answer objective's lead measures both the objective and this overlap; the budget sweep "
            "(issue 31) adds a test set whose arithmetic never occurs in training.")
    base = rows[rows["variant"] == "base"]
    if not base.empty:
        out.append(f"**The base model** is at {', '.join(f'{100 * a:.1f}' for a in base['test_accuracy'])} % on the "
                   "test questions (seeds in order): below the 35–70 % band the task was chosen for, and unevenly "
                   "over templates (per-template accuracy in each `base.json`).")
    edited = rows[(rows["variant"] != "base") & (rows["params"] != "all")]
    if not edited.empty:
        out.append(f"**Parameter share.** The masks and LoRA train {edited['pct_params'].min():.2f}–"
                   f"{edited['pct_params'].max():.2f} % of the parameters (the mask's count varies by seed).")
    kl = rows.pivot_table(index="seed", columns="variant", values="kl_to_base")
    pivots = rows.pivot_table(index="seed", columns="variant", values="pivot_accuracy")
    if {"cca", "random"} <= set(kl.columns):
        pairs = "; ".join(f"seed {s}: {r['cca']:.4f} vs {r['random']:.4f}" for s, r in kl.iterrows())
        larger_won = int((((kl["cca"] - kl["random"]) * (pivots["cca"] - pivots["random"])) > 0).sum())
        out.append("**Edit sizes differ between cells.** Selection picks each cell's learning rate and step, so "
                   f"cells are compared at different edit sizes — KL to the base model, CCA vs random mask: {pairs}. "
                   f"In {larger_won} of {len(kl)} seeds the cell with the larger edit has the higher held-out pivot "
                   "accuracy: a difference between cells mixes the parameter set with the size of the edit.")
    nll = rows.groupby("variant")["general_nll"].mean()
    if "base" in nll.index and len(nll) > 1:
        out.append(f"**Retention.** General-text NLL, mean over seeds: base {nll['base']:.3f}; edits from "
                   f"{nll.min():.3f} ({nll.idxmin()}) to {nll.max():.3f} ({nll.idxmax()}); KL to the base model ≤ "
                   f"{rows['kl_to_base'].max():.3f} everywhere.")
    out += ["**Pooled intervals carry question noise only.** They hold each seed's trained models fixed; the split, "
            "mask, random draw and selection vary between seeds, and only the between-seed interval carries that.",
            "**Validation pivots** (`val_pivot_accuracy`) come from the validation questions, which the selection "
            "reads (reference-path accuracy): they are held out from training, not from selection. The test pivots "
            "are held out from both.",
            "**The selection metric** is a lower bound of greedy accuracy: on the base model, every question on "
            "the reference path is greedy-correct, and some greedy-correct answers leave the path (`base.json`: "
            "`val_on_path_and_correct`, `val_correct_off_path`).",
            "**Objective includes its optimiser**: SGD full-batch steps for the pivot objective (the paper's), "
            "AdamW mini-batches for the answer objective (the authors' baselines); the learning rate is swept per "
            "cell, the step count is fixed (4 pivot steps, one epoch of answers).",
            "**Held-out pivots** are where the *base* model's wrong test answers leave the reference: the base "
            "scores 0 there by construction, so pivot accuracy measures repair of the base model's slips, not "
            "new errors an edit introduces (test accuracy does).",
            ]
    if profile is not None and not profile.empty:
        out.append(f"**The mask is dense and there is one random draw per seed.** The DCM masks select "
                   f"{', '.join(str(int(c)) for c in profile['count'])} of {int(profile['size'].iloc[0])} components "
                   f"({', '.join(f'{100 * f:.1f}' for f in profile['share'])} %; neurons "
                   f"{', '.join(f'{100 * f:.1f}' for f in profile['neuron_share_of_mask'])} % of each mask, "
                   f"{', '.join(f'{100 * f:.1f}' for f in profile['share_of_neurons'])} % of all neurons; "
                   f"{', '.join(f'{100 * f:.0f}' for f in profile['upper_third'])} % of the selected neurons in the "
                   "top third of the layers). The paper's regime is 0.17–1.59 % of components. The random control "
                   "copies the mask's count per kind and layer, one draw per seed. The budget sweep (issue 31) "
                   "looks at tight budgets with several draws.")
    return out


def search_edges(rows: pd.DataFrame, sweep: pd.DataFrame) -> str:
    """A sentence on how often the selected setting sits at an edge of the search: the last step (a longer
    update might have scored higher) or the sweep's smallest or largest learning rate."""
    chosen = rows.dropna(subset=["lr"]).merge(sweep[["seed", "variant", "lr", "last_step"]],
                                              on=["seed", "variant", "lr"], how="left")
    at_end = chosen[chosen["best_step"] == chosen["last_step"]]
    low, high = sweep["lr"].min(), sweep["lr"].max()
    at_floor, at_ceiling = chosen[chosen["lr"] == low], chosen[chosen["lr"] == high]
    names = lambda frame: ", ".join(sorted(set(frame["variant"]))) or "none"  # noqa: E731
    pivot_edge = at_end[(at_end["objective"] == "pivot") & (at_end["lr"] == high)]
    return (f"**Edges of the search.** The selected step is the last one in {len(at_end)} of {len(chosen)} cells "
            f"({names(at_end)}); every comparison is at the same fixed budget ({PIVOT_STEPS} pivot steps, one epoch "
            f"of answers). For the pivot objective's plain SGD, steps and learning rate trade off (a step moves the "
            f"weights by lr × gradient; the grid spans {PIVOT_STEPS // 2} × {low:g} to {PIVOT_STEPS} × {high:g}), "
            f"so a last-step pick is at the "
            f"edge of the edit's size only at the largest learning rate: {len(pivot_edge)} cells "
            f"({names(pivot_edge)}). For AdamW on answers, a second epoch might help the cells below the "
            f"others. The selected learning rate is the sweep's smallest "
            f"({low:g}) in {len(at_floor)} cells ({names(at_floor)}) and its largest ({high:g}) in "
            f"{len(at_ceiling)} ({names(at_ceiling)}): a wider sweep could move those cells.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=OUT / "runs", help="the seeds' committed run directories")
    parser.add_argument("--out", type=Path, default=OUT, help="where the tables and plots go")
    args = parser.parse_args(argv)
    summarise(args.runs, args.seeds, args.out, ".venv/bin/python analyses/power.py")


if __name__ == "__main__":
    sys.exit(main())
