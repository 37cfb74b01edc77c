"""The parts of a sweep cell, each timed alone on one seed's finished setup (issue 31, deliverable 6).

    .venv/bin/python analyses/bench_sweep_parts.py analyses/results/budget     # writes bench_sweep_parts.md

Pause anything else on the machine first: the numbers are only meaningful uncontended. Times one pivot
training step at the smallest and the largest budget, one validation reading (reference-path accuracy on the
validation questions), one KL measurement on the retention texts, the held-out pivot reading, and the greedy
reading of the test and new-fact questions — the pieces :meth:`cca_tl.sweep.Sweep.cell_seconds` adds up.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="a sweep directory whose first seed has finished its setup")
    parser.add_argument("--out", type=Path, default=HERE / "bench_sweep_parts.md")
    args = parser.parse_args(argv)
    from cca_tl.evaluate import general_text, pivot_scores, retention_scores
    from cca_tl.pipeline.stages.evaluate import retention_reference
    from cca_tl.pipeline.stages.update import val_metric
    from cca_tl.sweep import Sweep
    from cca_tl.sweep.cell import SeedSweep
    from cca_tl.sweep.grid import Cell
    from cca_tl.sweep.readings import greedy_readings

    sweep = Sweep.open(args.sweep, progress=False)
    seed = sweep.config.seeds[0]
    state = SeedSweep(dataclasses.replace(sweep.config, pivot_steps=1), seed, sweep.seed_dir(seed), progress=False)
    run, rows = state.run, []

    def timed(part: str, fn) -> object:
        start = time.perf_counter()
        value = fn()
        rows.append(dict(part=part, seconds=round(time.perf_counter() - start, 1)))
        print(rows[-1], flush=True)
        return value

    metric = val_metric(run)
    timed("validation reading (reference-path, unedited: measured once per seed)", lambda: metric(run.model))
    for budget in (min(sweep.config.budgets), max(sweep.config.budgets)):
        cell = Cell(seed, "cca", budget, 0)
        params = state.parameters(cell)
        timed(f"one pivot step, {params.n_components} components ({100 * budget:g} %)",
              lambda: state._train(cell, params, sweep.config.lrs[0], keep_last=True))
    timed("validation reading (reference-path, edited)", lambda: metric(run.model))
    texts = general_text(run.config.evaluate.retention_texts)
    timed("one KL measurement (retention texts)", lambda: retention_scores(
        run.model, run.session.base_weights, texts, reference=retention_reference(run)))
    timed(f"held-out pivot reading ({len(run.test_pivots())} pivots)", lambda: pivot_scores(run.model, run.test_pivots()))
    timed(f"greedy reading ({run.config.data.test_per_template} test + {sweep.config.newfacts_per_template} new-fact "
          "questions per template)", lambda: greedy_readings(run, state.newfacts, Path("/tmp"), "bench"))
    run.session.restore()
    table = pd.DataFrame(rows)
    args.out.write_text("\n".join([
        "# The parts of a sweep cell", "",
        f"Command: `.venv/bin/python analyses/bench_sweep_parts.py {args.sweep}` (seed {seed}; "
        f"{run.session.describe()}; nothing else running).", "", table.to_markdown(index=False), ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
