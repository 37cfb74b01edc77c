"""Honest effect sizes for CCA (issue 7): controls, baselines, seeds, sweeps, retention, multi-round.

    .venv/bin/python analyses/controls.py [--seeds 0 1 2] [--out runs/controls] [--no-sweep] [--rounds 2]

For every seed (the seed changes the problem instances and splits, trace sampling, DCM batches and the random
mask) one pipeline run of the README's main job (Gemma-3-270M, easy arithmetic, preset ``easy`` with
``controls=random,all``) gives: base, CCA w/ mask, CCA w/o mask (all parameters), random mask of equal size
per kind. On the same splits: LoRA with the authors' settings (r 16, α 32, dropout 0.1 on
q,k,v,o,gate,up,down, lr 1e-5, 2 epochs, reference answers, answer tokens only), LoRA at the CCA edit's
parameter budget, and full fine-tuning (lr 1e-5, 2 epochs); each keeps its best epoch by validation accuracy
(epoch 0 = unedited included), as CCA keeps its best step. Retention for every variant: next-token KL to
the base model and top-1 next-token accuracy on CPython's pydoc topics (general English text), and
accuracy on templates that had no training records.

Seed 0 also gets a λ sweep and an update-lr sweep (selected by validation accuracy, test reported for the
selected setting) and multi-round CCA (round k+1 regenerates traces on round k's model, localizes, learns a
new mask and updates again; mask overlap between rounds).

The LoRA and full fine-tuning baselines were trained through the peft path (``cca_tl.baselines``), which is
deprecated: ``cca_tl.update.train_update(objective="answer", params="lora" | "all", optimizer="adamw")`` covers
it (without LoRA dropout; the power experiment and the budget sweep use it). Their committed JSON files are
read as they are; this script is the path's last user and moves to ``train_update`` when the module goes.

Everything is resumable (each piece writes its JSON atomically and is skipped when present). Writes
``analyses/results/controls/`` — ``table1.md`` (accuracy), ``table2.md`` (retention), ``sweep.md``,
``rounds.md``, ``verdict.md`` and the raw ``rows.csv``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from cca_tl._io import atomic_write_text
from cca_tl.dcm import DCMResult
from cca_tl.pipeline import EmptyMaskError, Run, preset
from cca_tl.edits import WeightEdit

OUT = Path(__file__).resolve().parent / "results" / "controls"
PRESET = "easy"
VARIANT_NAMES = {"base": "base", "cca": "CCA w/ mask", "all": "CCA w/o mask", "random": "random mask",
                 "lora-r16": "LoRA r16 (authors)", "lora-budget": "LoRA (CCA budget)", "full-ft": "full fine-tuning"}


def log(text: str) -> None:
    print(f"[controls {time.strftime('%H:%M:%S')}] {text}", flush=True)


def pipeline_rows(run: Run, seed: int, **extra) -> list[dict]:
    rows = []
    for variant, info in run.evaluations().items():
        upd = info.get("update") or (json.loads((run.dir / "update" / "result.json").read_text()) if variant == "cca" else {})
        rows.append(row(seed, variant, info, upd.get("fraction_components", 0.0), upd.get("fraction_params", 0.0),
                        upd.get("best_step"), **extra))
    return rows


def row(seed: int, variant: str, info: dict, frac_components: float, frac_params: float, best, **extra) -> dict:
    trained = set(info.get("trained_templates") or [])
    untrained = {t: a for t, a in info["per_template"].items() if t not in trained}
    return dict(seed=seed, variant=variant, macro_accuracy=info["macro_accuracy"], n_test=info["n_test"],
                pct_components=100 * frac_components, pct_params=100 * frac_params, best=best,
                retention_kl=info.get("retention_kl"), general_nll=info.get("general_nll"),
                general_top1=info.get("general_top1"),
                untrained_template_acc=(sum(untrained.values()) / len(untrained)) if untrained else None,
                n_untrained_templates=len(untrained), **extra)


def finetune_baselines(run: Run, seed: int, full_ft: bool = True) -> list[dict]:
    """LoRA (authors), LoRA (CCA budget), full fine-tuning — on this run's splits; cached as JSON."""
    from cca_tl.baselines import finetune, sft_examples
    from cca_tl.evaluate import accuracy, general_text_scores, retention_kl
    from cca_tl.lora import rank_for_budget

    cfg, splits = run.config, run.problems()
    out_dir = run.dir / "baselines"
    out_dir.mkdir(exist_ok=True)
    base = run.reset_model()
    examples = sft_examples(base, splits.train, run.prompt_fn())
    cca_params = json.loads((run.dir / "update" / "result.json").read_text())["n_params"]

    def val_accuracy(hf_model) -> float:
        macro, _, _ = accuracy(base, splits.val, run.prompt_fn(), max_new_tokens=cfg.traces.max_new_tokens,
                               batch_size=cfg.traces.gen_batch_size, hf_model=hf_model, stops=run.stops(), progress=False)
        return macro

    budget_r = rank_for_budget(base, cca_params)
    specs = {"lora-r16": dict(method="lora", r=16, lr=1e-5, epochs=2),
             "lora-budget": dict(method="lora", r=budget_r, lr=1e-5, epochs=2),
             "full-ft": dict(method="full", lr=1e-5, epochs=2)}
    if not full_ft:
        specs.pop("full-ft")
    rows = []
    for name, spec in specs.items():
        path = out_dir / f"{name}.json"
        if not path.exists():
            log(f"seed {seed}: {name} {spec}")
            start = time.perf_counter()
            result = finetune(base, examples, validate=val_accuracy, seed=seed, progress=False, **spec)
            macro, table, _ = accuracy(result.model, splits.test, run.prompt_fn(), max_new_tokens=cfg.traces.max_new_tokens,
                                       batch_size=cfg.traces.gen_batch_size, stops=run.stops(), progress=False)
            info = dict(variant=name, macro_accuracy=macro, n_test=len(splits.test),
                        per_template=table["accuracy"].to_dict(), trained_templates=sorted(table.index),
                        retention_kl=retention_kl(run.reset_model(), result.model), **general_text_scores(result.model),
                        trainable_params=result.trainable_params, fraction_params=result.fraction_params,
                        best_epoch=result.best_epoch, history=result.history.to_dict("records"), config=result.config,
                        seconds=time.perf_counter() - start)
            atomic_write_text(path, json.dumps(info, indent=1))
            del result
        info = json.loads(path.read_text())
        rows.append(row(seed, name, info, float("nan"), info["fraction_params"], info["best_epoch"]))
    return rows


def release(run: Run) -> None:
    """Drop a run's model (and what restoring it needed) once its seed is done."""
    import gc

    run.session.close()
    gc.collect()


def seed_run(seed: int, out: Path) -> Run:
    run = Run(preset(PRESET, seed=seed, controls=["random", "all"]), out / f"seed{seed}")
    run.execute(stop_after="evaluate")
    return run


def clone_front(src: Run, dst_dir: Path, config) -> Run:
    """A run with another config that shares ``src``'s problems, traces and localization (stages that do not
    depend on the changed keys), so a sweep point costs only DCM + update."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in ("problems.json", "traces", "localization"):
        target = dst_dir / name
        if not target.exists():
            (shutil.copytree if (src.dir / name).is_dir() else shutil.copy2)(src.dir / name, target)
    (dst_dir / "stages").mkdir(exist_ok=True)
    for stage in ("problems", "traces", "localize"):
        if not (dst_dir / "stages" / f"{stage}.json").exists():
            shutil.copy2(src.marker(stage), dst_dir / "stages" / f"{stage}.json")
    return Run(config, dst_dir)


def sweep(run0: Run, out: Path) -> pd.DataFrame:
    base_cfg = run0.config
    points = [dict(lam=3e-3), dict(update_lr=3e-5)]  # sized for 2 CPU cores; add points on a GPU
    rows = [dict(lam=base_cfg.lam, update_lr=base_cfg.update_lr, run=str(run0.dir),
                 **_sweep_stats(run0))]
    for point in points:
        cfg = preset(PRESET, seed=base_cfg.seed, controls=[], **point)
        name = "sweep-" + "-".join(f"{k}{v:g}" for k, v in point.items())
        run = clone_front(run0, out / name, cfg)
        log(f"sweep {point}")
        try:
            run.execute(stop_after="update")
        except EmptyMaskError as err:
            rows.append(dict(lam=cfg.dcm.lam, update_lr=cfg.update.lr, run=str(run.dir), selected=0,
                             best_val_accuracy=float("-inf"), note=str(err).split(":")[0]))
            continue
        rows.append(dict(lam=cfg.dcm.lam, update_lr=cfg.update.lr, run=str(run.dir), **_sweep_stats(run)))
        release(run)
    df = pd.DataFrame(rows)
    best = df.sort_values(["best_val_accuracy", "selected"], ascending=[False, True]).iloc[0]
    df["chosen"] = df["run"] == best["run"]
    chosen = Run.open(best["run"])
    chosen.execute(stop_after="evaluate")
    ev = chosen.evaluations()
    df["test_accuracy_cca"] = [ev["cca"]["macro_accuracy"] if c else None for c in df["chosen"]]
    df["test_accuracy_base"] = [ev["base"]["macro_accuracy"] if c else None for c in df["chosen"]]
    release(chosen)
    return df


def _sweep_stats(run: Run) -> dict:
    upd = json.loads((run.dir / "update" / "result.json").read_text())
    hist = pd.read_csv(run.dir / "update" / "history.csv")
    dcm = DCMResult.load(run.dir / "dcm")
    return dict(selected=dcm.mask.count(), pct_components=100 * upd["fraction_components"], best_step=upd["best_step"],
                best_val_accuracy=upd["best_metric"], start_val_accuracy=upd.get("start_metric"),
                val_curve=" ".join(f"{int(s)}:{v:.3f}" for s, v in zip(hist["step"], hist["val_metric"]) if pd.notna(v)))


def rounds(run0: Run, out: Path, n_rounds: int) -> tuple[pd.DataFrame, str]:
    """Multi-round CCA from ``run0``. If ``run0``'s validated edit is a no-op (best step 0), every further
    round would repeat round 1 on the same model, so the rounds use the update selected by the validation
    *logit difference* instead (the update's own objective) — said in the returned note."""
    from cca_tl.evaluate import general_text_scores, retention_kl
    from cca_tl.models import load_model

    note = f"Round 1 is `{run0.dir}`."
    overrides: dict = {}
    if json.loads((run0.dir / "update" / "result.json").read_text())["best_step"] == 0:
        overrides = dict(val_metric="logit_diff")
        note = (f"`{run0.dir}` kept the unedited model (validation accuracy never rose), so repeating it would "
                "change nothing: these rounds select each update's step by the validation logit difference "
                "(the update's own objective), sharing round 1's traces and localization.")
        cfg = preset(PRESET, seed=run0.config.seed, controls=[], lam=run0.config.dcm.lam,
                     update_lr=run0.config.update.lr, **overrides)
        first = clone_front(run0, out / "round1-logitdiff", cfg)
        log("round 1 (logit-difference selection)")
        first.execute(stop_after="evaluate")
        run0 = first
    runs = [run0]
    for k in range(2, n_rounds + 1):
        cfg = preset(PRESET, seed=run0.config.seed, controls=[], lam=run0.config.dcm.lam, update_lr=run0.config.update.lr,
                     start_from=str(runs[-1].dir), **overrides)
        run = Run(cfg, out / f"round{k}{'-logitdiff' if overrides else ''}")
        log(f"round {k} (from {runs[-1].dir})")
        try:
            run.execute(stop_after="evaluate")
        except Exception as err:  # e.g. no right/wrong pair left: report, do not hide
            log(f"round {k} stopped: {err}")
            runs.append(run)
            break
        runs.append(run)
    original = load_model(run0.config.model)
    masks = [DCMResult.load(r.dir / "dcm").mask if (r.dir / "dcm").exists() else None for r in runs]
    rows = []
    for k, (run, mask) in enumerate(zip(runs, masks), start=1):
        ev = run.evaluations()
        if "cca" not in ev:
            rows.append(dict(round=k, note="did not finish (see log)"))
            continue
        edited = load_model(run0.config.model)
        for r in runs[:k]:
            WeightEdit.load(r.dir / "update").apply(edited)
        prev = masks[k - 2] if k > 1 else None
        rows.append(dict(round=k, start_accuracy=ev["base"]["macro_accuracy"], after_accuracy=ev["cca"]["macro_accuracy"],
                         selected=mask.count(), best_step=json.loads((run.dir / "update" / "result.json").read_text())["best_step"],
                         overlap_with_previous=(prev & mask).count() if prev is not None else None,
                         jaccard_with_previous=prev.jaccard(mask) if prev is not None else None,
                         kl_to_original=retention_kl(original, edited), **general_text_scores(edited)))
    return pd.DataFrame(rows), note


def mean_std(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    g = df.groupby("variant", sort=False)[cols]
    mean, std = g.mean(), g.std(ddof=1)
    out = pd.DataFrame(index=mean.index)
    for c in cols:
        out[c] = [f"{m:.3f} ± {s:.3f}" if pd.notna(s) else (f"{m:.3f}" if pd.notna(m) else "–")
                  for m, s in zip(mean[c], std[c])]
    out.insert(0, "seeds", g.size())
    out.index = [VARIANT_NAMES.get(v, v) for v in out.index]
    return out


def verdict(df: pd.DataFrame, header: str) -> str:
    """Per control: paired (same seed) accuracy difference CCA − control, and a plain statement."""
    acc = df.pivot_table(index="seed", columns="variant", values="macro_accuracy")
    lines = ["# Did CCA beat each control?", "", header, "",
             "| control | CCA − control per seed | mean ± std | statement |", "|---|---|---|---|"]
    for control in [v for v in VARIANT_NAMES if v not in ("cca",) and v in acc]:
        diff = (acc["cca"] - acc[control]).dropna()
        mean, std = diff.mean(), diff.std(ddof=1) if len(diff) > 1 else float("nan")
        if (diff > 0).all():
            statement = "CCA higher on every seed"
        elif (diff < 0).all():
            statement = "CCA lower on every seed"
        elif (diff == 0).all():
            statement = "identical on every seed: no effect either way"
        elif (diff >= 0).all():
            statement = "CCA higher or equal on every seed (not a consistent gain)"
        else:
            statement = "mixed across seeds: no consistent difference"
        lines.append(f"| {VARIANT_NAMES[control]} | {' '.join(f'{d:+.3f}' for d in diff)} | {mean:+.3f} ± {std:.3f} | {statement} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    global PRESET, OUT
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/controls")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--full-ft-seeds", type=int, nargs="*", default=[0],
                        help="seeds that also get full fine-tuning (the slowest baseline on a CPU)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rounds-from", default=None,
                        help="run dir that is round 1 (default: seed 0's validation-chosen setting)")
    parser.add_argument("--preset", default="easy", help="'tiny' for a smoke test of this script (seconds)")
    parser.add_argument("--results", default=str(OUT))
    args = parser.parse_args()
    PRESET, OUT = args.preset, Path(args.results)
    out = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    all_rows, runs = [], {}
    for seed in args.seeds:
        log(f"seed {seed}: pipeline")
        run = seed_run(seed, out)
        runs[seed] = run
        all_rows += pipeline_rows(run, seed)
        all_rows += finetune_baselines(run, seed, full_ft=seed in args.full_ft_seeds)
        release(run)
        pd.DataFrame(all_rows).to_csv(OUT / "rows.csv", index=False)
    df = pd.DataFrame(all_rows)
    order = list(VARIANT_NAMES)
    df["variant"] = pd.Categorical(df["variant"], order, ordered=True)
    df = df.sort_values(["variant", "seed"])
    df["variant"] = df["variant"].astype(str)
    base = df[df.variant == "base"].set_index("seed")
    for col in ("macro_accuracy", "general_nll", "general_top1", "untrained_template_acc"):
        df[f"delta_{col}"] = df[col] - df["seed"].map(base[col])
    df.to_csv(OUT / "rows.csv", index=False)
    preset_arg = "" if PRESET == "easy" else f" --preset {PRESET}"
    cmd = (f"`.venv/bin/python analyses/controls.py{preset_arg} --seeds {' '.join(map(str, args.seeds))} --out {args.out}"
           f" --full-ft-seeds {' '.join(map(str, args.full_ft_seeds))}"
           f"{' --rounds-from ' + args.rounds_from if args.rounds_from else ''}"
           f"{' --no-sweep' if args.no_sweep else ''} --rounds {args.rounds}`")
    n_test = int(df[df.variant == "base"]["n_test"].iloc[0])
    cfg0 = next(iter(runs.values())).config
    df_templates = sorted({p.template_id for p in next(iter(runs.values())).problems().test})
    t1 = mean_std(df, ["macro_accuracy", "delta_macro_accuracy", "pct_components", "pct_params"])
    t2 = mean_std(df, ["retention_kl", "delta_general_nll", "delta_general_top1", "delta_untrained_template_acc"])
    per_seed = df.pivot_table(index="variant", columns="seed", values="macro_accuracy", sort=False)
    per_seed.index = [VARIANT_NAMES.get(v, v) for v in per_seed.index]
    header = (f"Command: {cmd} (2 CPU cores, no GPU lent; {time.perf_counter() - started:.0f} s for this "
              f"invocation, earlier pieces resumed from `{args.out}`). Model `{cfg0.model}`, task `{cfg0.task}` "
              f"({len(df_templates)} templates), preset `{PRESET}`, {n_test} test questions per seed (one question = {100 / n_test:.1f} points "
              "of macro accuracy when templates are equal in size). Mean ± std over seeds (ddof 1); macro = mean "
              "of per-template accuracies.")
    (OUT / "table1.md").write_text(
        f"# Table 1 — accuracy (layout of the paper's Table 1)\n\n{header}\n\n{t1.to_markdown()}\n\n"
        f"Per seed (macro test accuracy):\n\n{per_seed.to_markdown(floatfmt='.3f')}\n\n"
        "`% components` is the share of q/k/v heads and neurons whose weights were updated (LoRA/full FT: not "
        "component-wise, –); `% params` the share of parameters changed (LoRA: trainable adapter parameters "
        "relative to the model).\n")
    (OUT / "table2.md").write_text(
        f"# Table 2 — retention (deltas vs the base model)\n\n{header}\n\n{t2.to_markdown()}\n\n"
        "KL: mean next-token KL(base ‖ edited) in nats over every position of 16 CPython pydoc help topics "
        "(≤128 tokens each). NLL / top-1: the edited model's next-token NLL and top-1 accuracy on the same text "
        "minus the base model's. Untrained templates: templates with no training record for CCA (weak-template "
        "filter), so CCA never saw them; for LoRA / full FT every template is trained (–). When every "
        "template is below the weak-template threshold none is held out and the column is empty; a "
        "held-out-template measurement then needs `templates=` restricted to a subset.\n\n"
        "Offline general benchmarks: none of the installable packages we checked ships a labelled benchmark "
        "that works without a download (`datasets` fetches from the hub; lm-eval-harness too), so general "
        "ability is measured on CPython's own pydoc text, which ships with every Python.\n")
    (OUT / "verdict.md").write_text(verdict(df, header))
    chosen_run = runs.get(0)
    if not args.no_sweep and 0 in runs:
        sw = sweep(runs[0], out)
        chosen_run = Run.open(sw.loc[sw["chosen"], "run"].iloc[0])
        sw.to_csv(OUT / "sweep.csv", index=False)
        (OUT / "sweep.md").write_text(
            f"# λ and update-lr sweep (seed 0)\n\nCommand: {cmd}. Sweep points share seed 0's traces and "
            "localization; each learns its own DCM mask and update; the setting with the best validation "
            "accuracy (ties: the smaller mask) is evaluated on test.\n\n" + sw.to_markdown(index=False, floatfmt=".4g") + "\n")
    if args.rounds_from:
        chosen_run = Run.open(args.rounds_from)
    if args.rounds > 1 and chosen_run is not None:
        rd, note = rounds(chosen_run, out, args.rounds)
        rd.to_csv(OUT / "rounds.csv", index=False)
        (OUT / "rounds.md").write_text(
            f"# Multi-round CCA (seed 0)\n\nCommand: {cmd}. Round k+1 starts from round k's edited model "
            "(`RunConfig.start_from`): new traces, localization, DCM mask and update. KL / NLL / top-1 are "
            f"measured against the original model on pydoc text. {note}\n\n" + rd.to_markdown(index=False, floatfmt=".4g") + "\n")
    log("done")


if __name__ == "__main__":
    main()
