"""``cca-tl``: the command line door to the same functions notebooks call."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cca_tl._io import read_json
from cca_tl.errors import CCAError

STAGE_CHOICES = ("problems", "traces", "localize", "dcm", "update", "evaluate", "analysis", "report")


def _cmd_components(args: argparse.Namespace) -> int:
    """Load a model and print (and optionally write) its component table."""
    import resource

    from cca_tl.components import ComponentRegistry
    from cca_tl.models import load_model

    from cca_tl.components import config_registry, paper_shares

    start = time.perf_counter()
    if args.config:  # numbers only: no weights are read
        reg = config_registry(args.config)
        how = "from its config alone (no weights)"
    else:
        reg = ComponentRegistry.from_model(load_model(args.model, device=args.device))
        how = f"loaded in {time.perf_counter() - start:.1f} s"
    summary = reg.summary(args.weights)
    per_layer = reg.table()
    shares = paper_shares(reg)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    arch = reg.identity.architecture or "pure TransformerLens"
    print(f"{reg.identity.name} ({arch}): {reg.n_layers} layers, {reg.total_model_params:,} parameters; "
          f"{how}, peak RSS {peak_mb:,.0f} MB\n")
    print(f"Maskable components ({args.weights} weight set):")
    with _wide_tables():
        print(summary.to_string())
        print("\nWhat the paper's shares of components (q, k, v heads and neurons) would be here:")
        print(shares.to_string(formatters={"pct": "{:.2f} %".format, "pct_params": "{:.3f} %".format}))
        if not args.config:
            print("\nPer layer:")
            print(per_layer.to_string())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        shares.to_csv(out / "components_paper_shares.csv")
        summary.to_csv(out / "components_summary.csv")
        per_layer.to_csv(out / "components_per_layer.csv")
        (out / "components.md").write_text(
            f"# Components of {reg.identity.name}\n\n{summary.to_markdown()}\n\n"
            f"What the paper's shares of components would be here:\n\n{shares.to_markdown()}\n\n"
            f"{per_layer.to_markdown()}\n"
        )
        print(f"\nwrote {out}/components_summary.csv, components_per_layer.csv, components_paper_shares.csv, "
              "components.md")
    return 0


def _wide_tables():
    import pandas as pd

    return pd.option_context("display.width", 250, "display.max_colwidth", 120, "display.max_columns", 20)


def _cmd_export(args: argparse.Namespace) -> int:
    """Write a run's edited model (or a plain model) as a verified HF directory."""
    from cca_tl.export import export_hf

    source = Path(args.source)
    if (source / "config.json").exists() and (source / "stages").is_dir():
        from cca_tl.pipeline import Run

        run = Run.open(source, progress=False)
        if not run.done("update"):
            raise CCAError(f"{source} has no finished update stage yet; run `cca-tl run` to finish it.")
        model = run.edited_model()
        what = f"{run.config.model} with the CCA edit of {source}"
    else:
        from cca_tl.models import load_model

        model = load_model(args.source)
        what = args.source
    report = export_hf(model, args.out, overwrite=args.overwrite)
    print(f"exported {what} to {args.out}")
    print(json.dumps(report.to_dict(), indent=1))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """Run or resume the CCA pipeline and print where the report is and its headline numbers."""
    from cca_tl.pipeline import RunConfig, preset, run

    if args.config:
        config = RunConfig.from_dict(read_json(args.config, "fix the file (a RunConfig as JSON)"))
    else:
        config = preset(args.preset)
    overrides = list(args.set or [])
    if args.model:
        overrides.append(f"model={args.model}")
    if args.device:
        overrides.append(f"device={args.device}")
    if args.dtype:
        overrides.append(f"dtype={args.dtype}")
    if getattr(args, "backend", None):
        overrides.append(f"backend={args.backend}")
    config = config.with_overrides(overrides)
    out = args.out or f"runs/{args.preset}"
    if args.dry_run:
        return _print_plan(config, Path(out))
    start = time.perf_counter()
    summary = run(config, out, stop_after=args.stop_after, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(f"\nran {summary['ran'] or 'nothing'}; already done: {summary['skipped'] or 'nothing'} ({elapsed:.0f} s)")
    head = summary["headline"]
    if head:
        acc = ", ".join(f"{k} {v:.3f}" for k, v in head["macro_accuracy"].items())
        print(f"test macro accuracy: {acc}")
        print(f"DCM mask: {head['selected']} components ({head['pct_components']:.2f} %)")
    if Path(summary["report"]).exists():
        print(f"report: {summary['report']}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    """Run (or resume) a sweep declared in a TOML/JSON file; or print its plan; or rewrite its summary."""
    from cca_tl.sweep import Sweep, SweepConfig

    config = SweepConfig.load(args.config)
    out = Path(args.out or f"runs/sweeps/{config.name}")
    sweep = Sweep(config, out, progress=not args.quiet)
    if args.dry_run:
        table = sweep.plan(args.seeds, budgets=args.budgets, variants=args.variants)
        with _wide_tables():
            print(table.to_string(float_format=lambda x: f"{x:,.0f}"))
        total = table["seconds"].sum(skipna=False)
        estimate = ("no time estimate (a GPU, or a model of unknown size)" if total != total
                    else f"≈ {total / 3600:.1f} h" if total > 7200 else f"≈ {total / 60:.0f} min")
        print(f"\nsweep {config.name} in {out}: {int(table['cells_to_run'].sum())} cells to run, {estimate} "
              "(per-unit costs measured on Gemma-3-270M / 2 CPU cores, scaled); nothing was run.")
        return 0
    if args.summary:
        rows = sweep.summarise()
        print(f"{len(rows)} rows; summary: {out / 'summary.md'}")
        return 0
    rows = sweep.execute(args.seeds, budgets=args.budgets, variants=args.variants)
    print(f"{len(rows)} rows in {out / 'rows.csv'}; summary: {out / 'summary.md'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """(Re)write a finished run's report.md and self-contained report.html from its artifacts (no model
    is loaded, nothing is recomputed)."""
    from cca_tl.pipeline import Run
    from cca_tl.pipeline.stages.report import write_reports

    run = Run.open(args.run, progress=False)
    missing = [s for s in ("evaluate", "analysis") if not run.done(s)]
    if missing:
        raise CCAError(f"{args.run} has not finished {' and '.join(missing)} yet; `cca-tl run --out {args.run}` "
                       "with its config resumes it.")
    paths = write_reports(run)
    print(f"wrote {paths['report']} and {paths['html']}")
    return 0


def _print_plan(config, out: Path) -> int:
    """``run --dry-run``: the stages, their sizes, time and memory estimates; stages already done in ``out``
    cost nothing. Loads no model and writes nothing."""
    from cca_tl.pipeline.plan import describe, plan

    table = plan(config)
    done = [s for s in table.index if (out / "stages" / f"{s}.json").exists()]
    table.loc[done, "seconds"] = 0.0
    table.insert(0, "status", ["done" if s in done else "to run" for s in table.index])
    with _wide_tables():
        print(describe(config, table))
    print(f"\nrun directory: {out}{' (resumes: ' + ', '.join(done) + ' done)' if done else ''}; nothing was run.")
    return 0


def _cmd_lm_eval(args: argparse.Namespace) -> int:
    """The authors' retention suite (lm-eval) on a run's base and edited model, or on one model."""
    from cca_tl.retention_suite import AUTHORS_SUITE, compare

    tasks = args.tasks.split(",") if args.tasks else AUTHORS_SUITE
    table = compare(args.source, tasks, limit=args.limit, batch_size=args.batch_size, device=args.device,
                    include_path=args.include_path)
    with _wide_tables():
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "retention_suite.csv", index=False)
        (out / "retention_suite.md").write_text(f"# lm-eval retention suite: {args.source}\n\n"
                                               f"{table.to_markdown(index=False, floatfmt='.4f')}\n")
        print(f"\nwrote {out}/retention_suite.csv and retention_suite.md")
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    """Component counts of the DCM masks of several runs (or mask files), with mean ± std."""
    from cca_tl.analysis import count_summary, count_table
    from cca_tl.component_mask import ComponentMask

    masks = {}
    for item in args.runs:
        path = Path(item)
        if path.is_dir():
            mask_path = path / "dcm" / "mask.safetensors"
            if not mask_path.exists():
                raise CCAError(f"{path} has no DCM mask yet (dcm/mask.safetensors).")
            masks[str(path)] = ComponentMask.load(mask_path)
        elif path.suffix in (".safetensors", ".json") and path.exists():
            masks[str(path)] = ComponentMask.load(path)
        else:
            raise CCAError(f"{item} is neither a run directory nor a mask file.")
    by_model: dict[str, dict] = {}
    for label, mask in masks.items():
        by_model.setdefault(mask.identity.name, {})[label] = mask
    table = count_table(masks)
    table.insert(0, "model", [m.identity.name for m in masks.values()])
    summaries = pd_concat({model: count_summary(group) for model, group in by_model.items()})
    print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    print("\nmean ± std per model:")
    print(summaries.to_string())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "component_counts.csv")
        summaries.to_csv(out / "component_counts_summary.csv")
        (out / "component_counts.md").write_text(
            f"# Component counts\n\n{table.to_markdown(floatfmt='.3f')}\n\n## Mean ± std per model\n\n"
            f"{summaries.to_markdown()}\n")
        print(f"\nwrote {out}/component_counts.csv, component_counts_summary.csv, component_counts.md")
    return 0


def pd_concat(frames: dict):
    import pandas as pd

    kinds_first = lambda df: df[[c for c in df.columns if not c.endswith(("_mean", "_std"))]]  # noqa: E731
    return pd.concat({k: kinds_first(v) for k, v in frames.items()}).droplevel(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cca-tl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("components", help="print a model's component table")
    p.add_argument("--model", default="gemma-3-270m", help="model name, .gguf file or HF directory")
    p.add_argument("--config", help="count from an HF config alone, offline: a config.json, a model directory, "
                                    "or a shipped name (gemma-2-2b-it, gemma-2-9b-it, olmo-2-1124-7b-instruct, "
                                    "olmo-2-1124-13b-instruct, gpt2, pythia-160m, qwen2.5-0.5b-instruct, qwen3-0.6b)")
    p.add_argument("--device", default="cpu", help="where to load it: cpu (default), cuda, auto")
    p.add_argument("--weights", choices=("authors", "extended"), default="authors",
                   help="which weight set belongs to a component (docs/method.md §A4)")
    p.add_argument("--out", help="directory to write CSV and markdown tables to")
    p.set_defaults(func=_cmd_components)

    p = sub.add_parser("run", help="run or resume the CCA pipeline (the main job)")
    p.add_argument("--preset", default="easy", choices=("easy", "power", "arithmetic", "gsm-qwen", "tiny"),
                   help="starting config: easy = Gemma-3-270M on the two-step task (default); power = the same task at "
                        "the power experiment's sizes (analyses/power.py); arithmetic = the "
                        "previous main job (longer task, sampled Prefix traces); gsm-qwen = the Qwen extra on "
                        "GSM-Symbolic; tiny = a random tiny model (seconds)")
    p.add_argument("--config", help="a JSON config file instead of a preset")
    p.add_argument("--model", help="override the model")
    p.add_argument("--device", help="auto (CUDA when present; the default), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="model dtype (default float32; float16 on GPUs only)")
    p.add_argument("--backend", choices=("hooked", "bridge"),
                   help="hooked = TransformerLens 3 HookedTransformer (default); bridge = TransformerLens 4 "
                        "TransformerBridge (needs the .venv-tl4 environment: bash scripts/setup-tl4.sh)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", help="run directory (default runs/<preset>); an existing one is resumed")
    p.add_argument("--stop-after", choices=STAGE_CHOICES, help="stop after this stage")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (stages, sizes, estimated time and peak memory) and run nothing")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="run or resume an experiment grid (variants × budgets × draws × seeds × lrs)",
                       description="Run or resume a sweep declared in CONFIG (TOML or JSON; fields: "
                                   "cca_tl.sweep.SweepConfig). Resumes per cell; writes rows.csv, comparisons, "
                                   "plots and summary.md into the sweep directory.")
    p.add_argument("config", help="the sweep file (e.g. analyses/sweeps/budget.toml)")
    p.add_argument("--out", help="sweep directory (default runs/sweeps/<name>); an existing one is resumed")
    p.add_argument("--seeds", type=int, nargs="+", help="run only these of the sweep's seeds")
    p.add_argument("--budgets", type=float, nargs="+", help="run only these of the sweep's budgets (e.g. 0.001 0.0025)")
    p.add_argument("--variants", nargs="+", help="run only these of the sweep's variants (e.g. lofit uniform)")
    p.add_argument("--dry-run", action="store_true", help="print the cells to run and their estimated time; run nothing")
    p.add_argument("--summary", action="store_true", help="only rewrite rows.csv, comparisons, plots and summary.md")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("export", help="write a run's edited model (or a model) as a verified HF directory")
    p.add_argument("source", help="a run directory, or a model name / .gguf file / HF directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("report", help="(re)write a finished run's report.md and self-contained report.html")
    p.add_argument("run", help="a run directory whose analysis stage is done")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("lm-eval", help="the authors' retention suite (MMLU, TriviaQA, TruthfulQA, GSM8K) via lm-eval")
    p.add_argument("source", help="a run directory (base and edited model), an HF directory or a model name")
    p.add_argument("--tasks", help="comma-separated lm-eval tasks (default: mmlu,triviaqa,truthfulqa_mc2,gsm8k)")
    p.add_argument("--limit", type=int, help="at most this many examples per task (a quick look, not a result)")
    p.add_argument("--include-path", help="a directory of local lm-eval task YAML files (these work offline)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="directory to write retention_suite.csv and .md to")
    p.set_defaults(func=_cmd_lm_eval)

    p = sub.add_parser("table", help="component-count table across runs or mask files")
    p.add_argument("runs", nargs="+", help="run directories or mask files (.safetensors/.json)")
    p.add_argument("--out", help="directory to write CSV and markdown to")
    p.set_defaults(func=_cmd_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CCAError, FileExistsError, ValueError) as exc:
        print(f"cca-tl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
