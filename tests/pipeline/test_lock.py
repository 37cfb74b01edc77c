"""One writer per run directory and per sweep cell (issue 30, item 1): a second writer is refused at once,
naming the first; a lock a dead process left is taken over; a run with nothing to write needs no lock."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cca_tl.cli import main as cli
from cca_tl.errors import LockedError
from cca_tl.pipeline import Run, preset

HOLD = ("import sys, time\nfrom cca_tl._io import held_lock\nwith held_lock(sys.argv[1], 'x'):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n")


@pytest.fixture
def holder():
    """Start a process that holds the lock on a path until the test ends (or kills it)."""
    started = []

    def hold(path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        started.append(process)
        return process

    yield hold
    for process in started:
        process.kill()
        process.wait()


def test_a_second_writer_is_refused_at_once_naming_the_first(tmp_path, holder, capsys):
    first = holder(tmp_path / "r" / ".lock")
    run = Run(preset("tiny"), tmp_path / "r", progress=False)
    start = time.perf_counter()
    with pytest.raises(LockedError, match=rf"being written by another process \(.*\"pid\": {first.pid}"):
        run.execute(stop_after="problems")
    assert time.perf_counter() - start < 5 and not run.done("problems")
    assert cli(["run", "--preset", "tiny", "--out", str(tmp_path / "r"), "--stop-after", "problems"]) == 2
    assert f'"pid": {first.pid}' in capsys.readouterr().err
    first.kill()
    first.wait()  # the holder died: its lock went with it, and the file it left is taken over
    assert run.execute(stop_after="problems")["ran"] == ["problems"]
    out = capsys.readouterr().out
    assert "taking over the lock" in out or (tmp_path / "r" / ".lock").read_text() == ""


def test_a_stale_lock_file_is_taken_over_with_a_notice(tmp_path, capsys):
    lock = tmp_path / "r" / ".lock"
    lock.parent.mkdir()
    lock.write_text(json.dumps(dict(pid=999999, host="gone", command="cca-tl run", started="yesterday")))
    Run(preset("tiny"), tmp_path / "r", progress=False).execute(stop_after="problems")
    assert "taking over the lock of run directory" in capsys.readouterr().out and lock.read_text() == ""


def test_readers_and_finished_runs_need_no_lock(tmp_path, holder):
    run = Run(preset("tiny"), tmp_path / "r", progress=False)
    run.execute(stop_after="problems")
    holder(tmp_path / "r" / ".lock")
    again = Run.open(tmp_path / "r", progress=False)
    assert again.execute(stop_after="problems")["skipped"] == ["problems"]  # nothing to write
    assert again.stage_info("problems")["train"] > 0


def test_a_sweep_skips_a_cell_another_process_holds(tmp_path, holder, capsys):
    from cca_tl.sweep import Sweep, SweepConfig

    config = SweepConfig(name="locked", preset="tiny", seeds=[0], budgets=[0.05], variants=["cca", "random"], draws=1,
                         lrs=[0.05], kl_targets=[0.001], newfacts_per_template=0,
                         overrides=["data.task=two-step", "traces.localization=reference", "traces.n_samples=0",
                                    "update.val_metric=logit_diff"])
    sweep = Sweep(config, tmp_path / "s", progress=True)
    held = holder(sweep.seed_dir(0) / "sweep" / "cells" / "random_b0.05_d0.lock")
    sweep.execute(summarise=False)
    assert sweep.done(0) == {"base", "cca_b0.05_d0"}
    assert "sweep cell random_b0.05_d0 of seed 0 is being written by another process" in capsys.readouterr().out
    held.kill()
    held.wait()
    sweep.execute(summarise=False)
    assert sweep.done(0) == {"base", "cca_b0.05_d0", "random_b0.05_d0"}
