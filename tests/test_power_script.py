"""analyses/power.py end to end on the tiny preset: every cell's row, the sweep, the comparisons, resume."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "analyses" / "power.py"


def load_script():
    spec = importlib.util.spec_from_file_location("power_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_power_script_summarises_the_committed_runs_again(tmp_path):
    """The script reads the committed per-cell files and writes the same tables (the record is re-derivable)."""
    power = load_script()
    committed = SCRIPT.parent / "results" / "power"
    power.main(["--out", str(tmp_path)])
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert set(rows["variant"]) == {"base", "cca", "random", "all", "pivot-lora", "masked-ft", "random-ft", "full-ft",
                                    "lora"}
    assert set(rows["seed"]) == {0, 1, 2}
    for name in ("rows.csv", "comparisons.csv", "comparisons_per_seed.csv"):
        ours, theirs = pd.read_csv(tmp_path / name), pd.read_csv(committed / name)
        pd.testing.assert_frame_equal(ours, theirs, check_exact=False, rtol=1e-9)
    summary = (tmp_path / "summary.md").read_text()
    assert "per seed" in summary and "Shared arithmetic" in summary and "differences.png" in summary


def test_search_edges_counts_last_steps_and_sweep_ends():
    """The summary's caveat names the cells whose selected step or learning rate sits at an edge."""
    power = load_script()
    rows = pd.DataFrame([dict(seed=0, variant="cca", objective="pivot", lr=1e-4, best_step=4),
                         dict(seed=0, variant="random", objective="pivot", lr=5e-4, best_step=4),
                         dict(seed=0, variant="full-ft", objective="answer", lr=1e-5, best_step=9),
                         dict(seed=0, variant="base", objective=None, lr=float("nan"), best_step=float("nan"))])
    sweep = pd.DataFrame([dict(seed=0, variant=v, lr=lr, last_step=last)
                          for v, last in (("cca", 4), ("random", 4), ("full-ft", 18))
                          for lr in (1e-5, 1e-4, 5e-4)])
    text = power.search_edges(rows, sweep)
    assert "last one in 2 of 3 cells (cca, random)" in text
    assert "largest learning rate: 1 cells (random)" in text
    assert "smallest (1e-05) in 1 cells (full-ft)" in text and "largest (0.0005) in 1 (random)" in text


def test_committed_power_summary_reads_seeds_that_disagree_as_cannot_tell():
    """Issue 31: at the held-out pivots the three seeds' CCA − random intervals exclude 0 in opposite
    directions; the committed verdict must not be "no effect"."""
    out = SCRIPT.parent / "results" / "power"
    table = pd.read_csv(out / "comparisons.csv").set_index(["comparison", "metric"])
    assert table.loc[("cca − random", "pivot_accuracy"), "verdict"] == "cannot tell (seeds disagree)"
    per_seed = pd.read_csv(out / "comparisons_per_seed.csv")
    mine = per_seed[(per_seed["comparison"] == "cca − random") & (per_seed["metric"] == "pivot_accuracy")]
    assert (mine["high"] < 0).any() and (mine["low"] > 0).any()
    assert "no effect" not in (out / "summary.md").read_text().split("cca − random")[1].split("\n")[0]
