"""``cca-tl run --dry-run``: the plan's sizes are the run's, it writes nothing, and its estimates move with
the sizes (its accuracy against measured runs is in analyses/plan_check.md, not a test)."""

from __future__ import annotations

import json

import pytest

from cca_tl.cli import main
from cca_tl.pipeline import preset, run
from cca_tl.pipeline.plan import FLOOR_SECONDS, UNIT_SECONDS, describe, parameter_count, plan, sizes, unit_costs
from cca_tl.pipeline.stages import stage_names


def test_plan_sizes_are_the_runs_own(tmp_path):
    config = preset("tiny")
    table = plan(config)
    assert tuple(table.index) == tuple(stage_names())
    assert (table["seconds"] >= 0).all() and (table["peak_gb"] > 0).all()
    run(config, tmp_path / "r", stop_after="problems", progress=False)
    counts = json.loads((tmp_path / "r" / "stages" / "problems.json").read_text())
    s = sizes(config)
    assert (s.train_q, s.val_q, s.test_q) == (counts["train"], counts["val"], counts["test"])
    assert f"{counts['train']} train / {counts['val']} val / {counts['test']} test questions" == table.loc["problems", "work"]


def test_estimates_grow_with_the_work():
    small, large = preset("easy", device="cpu", test_per_template=12), preset("easy", device="cpu", steps=8)
    a, b = plan(small, threads=2), plan(large, threads=2)
    assert sizes(large).test_q == 2 * sizes(small).test_q
    assert b.loc["evaluate", "seconds"] > 1.5 * a.loc["evaluate", "seconds"]
    assert b.loc["update", "seconds"] > 1.8 * a.loc["update", "seconds"]
    assert b.loc["traces", "seconds"] == a.loc["traces", "seconds"]
    # twice the threads: the part above the per-call floor halves; the controls' updates are part of evaluate
    two, four = plan(small, threads=2)["seconds"].sum(), plan(small, threads=4)["seconds"].sum()
    assert two / 2 < four < 0.6 * two
    with_all = plan(preset("easy", device="cpu", controls=["random", "all"]), threads=2)
    assert with_all.loc["evaluate", "seconds"] > a.loc["evaluate", "seconds"] * 1.5
    assert parameter_count("gemma-3-270m") == 268_098_176


def test_unit_costs_are_gemmas_at_calibration_and_never_below_the_floor():
    gemma = unit_costs(preset("easy", device="cpu"), threads=2)
    assert gemma == pytest.approx({k: v for k, v in UNIT_SECONDS.items() if k != "update_all"}, rel=1e-12)
    tiny = unit_costs(preset("tiny", device="cpu"), threads=2)
    assert all(FLOOR_SECONDS[k] <= tiny[k] < 1.1 * FLOOR_SECONDS[k] for k in tiny)
    # the tiny preset is seconds of work, not the ~0.1 s that scaling every cost by parameters gave
    assert plan(preset("tiny", device="cpu"), threads=2)["seconds"].sum() > 5


def test_no_time_estimate_without_the_models_size(tmp_path):
    config = preset("tiny", model=str(tmp_path / "no-such-model"))
    table = plan(config)
    assert table.loc[["traces", "dcm", "update", "evaluate", "analysis"], "seconds"].isna().all()
    assert "No time estimate" in describe(config, table)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--preset", "tiny", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "to run" in text and "nothing was run" in text and "Estimated total" in text
    assert not out.exists()
    run(preset("tiny"), out, stop_after="dcm", progress=False)
    assert main(["run", "--preset", "tiny", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "resumes: problems, traces, localize, dcm done" in text
    assert not (out / "stages" / "update.json").exists()
