"""How close ``cca-tl run --dry-run`` comes: its per-stage estimates against the stage times that finished
runs measured (their ``stages/*.json`` markers).

    .venv/bin/python analyses/plan_check.py RUN_DIR[=LABEL] ... [--peak LABEL=GB ...] [--out analyses/plan_check]

Writes ``<out>.csv`` (one row per run and stage) and ``<out>.md`` (the table and, per run, the estimated and
measured totals over the stages it finished, and the peak memory where ``--peak`` gives the run's measured
peak RSS, e.g. from ``/usr/bin/time -v``). The estimate is computed from each run's own config exactly
as the dry run would compute it before the run; only stages a run finished are compared.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from cca_tl.pipeline import RunConfig
from cca_tl.pipeline.plan import plan

HERE = Path(__file__).resolve().parent


def compare(run_dir: Path, label: str) -> pd.DataFrame:
    config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    estimate = plan(config, threads=2)
    rows = []
    for stage in estimate.index:
        marker = run_dir / "stages" / f"{stage}.json"
        if marker.exists():
            info = json.loads(marker.read_text())
            rows.append(dict(run=label, stage=stage, work=estimate.loc[stage, "work"],
                             estimated_s=round(float(estimate.loc[stage, "seconds"]), 1),
                             measured_s=info.get("seconds"), device=info.get("device", "cpu (2 threads)")))
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="run directories, optionally RUN=LABEL")
    parser.add_argument("--out", type=Path, default=HERE / "plan_check")
    parser.add_argument("--peak", action="append", default=[], metavar="LABEL=GB",
                        help="a run's measured peak RSS in GB (repeatable)")
    parser.add_argument("--note", default="", help="what the reader must know (which runs fitted the costs)")
    args = parser.parse_args()
    frames, estimates = [], {}
    for item in args.runs:
        path, _, label = item.partition("=")
        label = label or Path(path).name
        frames.append(compare(Path(path), label))
        estimates[label] = plan(RunConfig.from_dict(json.loads((Path(path) / "config.json").read_text())), threads=2)
    table = pd.concat(frames, ignore_index=True)
    totals = table.groupby("run", sort=False)[["estimated_s", "measured_s"]].sum()
    totals["error_pct"] = 100 * (totals["estimated_s"] / totals["measured_s"] - 1)
    peaks = dict(item.rsplit("=", 1) for item in args.peak)
    totals["estimated_peak_gb"] = [float(estimates[run]["peak_gb"].max()) for run in totals.index]
    totals["measured_peak_gb"] = [float(peaks[run]) if run in peaks else None for run in totals.index]
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    lines = ["# The dry run's estimates against measured stage times", "",
             f"Command: `.venv/bin/python analyses/plan_check.py {' '.join(repr(r) for r in args.runs)}"
             f"{''.join(f' --peak {p!r}' for p in args.peak)}"
             f"{'' if args.out == HERE / 'plan_check' else f' --out analyses/{args.out.name}'} --note '…'`. Estimates from each "
             "run's config (`cca_tl.pipeline.plan`, 2 threads); measured: the run's stage markers.", "",
             args.note, "", "## Totals over the stages each run finished", "", totals.to_markdown(floatfmt=".1f"), "",
             "## Per stage", "", table.to_markdown(index=False, floatfmt=".1f"), ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print(totals.to_string(float_format=lambda x: f"{x:.1f}"))


if __name__ == "__main__":
    main()
