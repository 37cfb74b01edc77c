"""Where a sweep cell's time goes, measured on the cells a sweep has finished (issue 31, deliverable 6).

    .venv/bin/python analyses/bench_sweep_cell.py analyses/results/budget     # writes bench_sweep_cell.{md,csv}

Every cell records its wall time split into training (every learning rate, each with the update's own
validation at half and end), the selected reading (greedy test and new-fact questions, forward metrics) and
the matched readings (KL search and forward metrics per KL target); each learning rate's seconds are in
``cells/<key>/lr<lr>.json``. This script tabulates them per variant and budget beside the dry-run estimate
(``Sweep.plan``'s per-unit costs), and the seed's setup stages from their markers. The numbers are what the
sweep measured where it ran — on 2 CPU cores shared with other work unless said otherwise — not a separate
timing run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def cell_times(sweep_dir: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(sweep_dir.glob("seeds/seed*/sweep/cells/*.json")):
        if path.stem == "base":
            continue
        row = json.loads(path.read_text())["rows"][0]
        lrs = sorted((path.parent / path.stem).glob("lr*.json"))
        per_lr = [json.loads(p.read_text())["seconds"] for p in lrs]
        rows.append(dict(seed=row["seed"], variant=row["variant"], budget_share=row["budget_share"], draw=row["draw"],
                         seconds=row.get("seconds"), train=row.get("seconds_train"),
                         per_lr=sum(per_lr) / len(per_lr) if per_lr else None, n_lrs=len(per_lr),
                         selected=row.get("seconds_selected"), matched=row.get("seconds_matched")))
    return pd.DataFrame(rows)


def setup_times(sweep_dir: Path) -> pd.DataFrame:
    rows = []
    for seed_dir in sorted(sweep_dir.glob("seeds/seed*")):
        for marker in sorted((seed_dir / "stages").glob("*.json")):
            info = json.loads(marker.read_text())
            rows.append(dict(seed=seed_dir.name, stage=marker.stem, seconds=info.get("seconds"),
                             device=info.get("device")))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="a sweep directory (cca-tl sweep --out)")
    parser.add_argument("--out", type=Path, default=HERE / "bench_sweep_cell")
    parser.add_argument("--note", default="", help="what else ran on the machine while these cells ran")
    args = parser.parse_args(argv)
    from cca_tl.sweep import Sweep, VARIANTS

    sweep = Sweep.open(args.sweep)
    cells, setup = cell_times(args.sweep), setup_times(args.sweep)
    if cells.empty:
        print("no finished cell yet")
        return 1
    seed = sweep.config.seeds[0]
    run_config = sweep.config.run_config(seed)
    from cca_tl.pipeline.plan import sizes, unit_costs

    s, u = sizes(run_config), unit_costs(run_config)
    estimate = {v: sweep.cell_seconds(run_config, s, u, VARIANTS[v].objective) for v in cells["variant"].unique()}
    table = (cells.groupby("variant")[["seconds", "train", "per_lr", "selected", "matched"]].mean().round(0)
             .assign(median=cells.groupby("variant")["seconds"].median().round(0),
                     fastest=cells.groupby("variant")["seconds"].min().round(0),
                     cells=cells.groupby("variant").size(), estimate=pd.Series(estimate).round(0)))
    cells.to_csv(args.out.with_suffix(".csv"), index=False)
    command = f".venv/bin/python analyses/bench_sweep_cell.py {args.sweep}" + (" --note '…'" if args.note else "")
    text = "\n".join([
        "# Where a sweep cell's time goes", "",
        f"Command: `{command}`. Sweep `{sweep.config.name}` ({sweep.config.preset} preset, "
        f"{len(sweep.config.learning_rates('cca'))} learning rates, {sweep.config.pivot_steps} pivot steps, "
        f"{len(sweep.config.kl_targets)} KL targets); cells measured where the sweep ran "
        f"({', '.join(sorted(set(setup['device'].dropna())))}). Seconds, mean per variant (`median` and `fastest`: of the whole cell; the cells ran on machines of different speed, some beside other work, so the mean is not what one cell costs):", "",
        table.to_markdown(), "",
        "`train`: every learning rate (with validation at half and end when the sweep validates); `per_lr`: one "
        "of them; `selected`: the readings of the edit as trained or selected (greedy accuracy there only when "
        "`greedy_at` is null); `matched`: the KL search and the readings at each KL target (greedy accuracy at "
        f"`greedy_at` = {sweep.config.greedy_at}); `median`, `fastest`: the whole cell; `estimate`: the dry run's per-unit estimate.", "",
        *([f"Note: {args.note}", ""] if args.note else []),
        "## Setup per seed (stage markers)", "", setup.to_markdown(index=False), ""])
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
