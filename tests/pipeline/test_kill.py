"""Kill at any point, resume to the same result (issue 30, item 5), and a disk that refuses writes.

Each trial SIGKILLs a real process running the tiny pipeline at a random moment inside one stage, then
resumes in a fresh process and compares every file with an uninterrupted run's. The processes come from a
fork server that has imported the package once, so a trial costs the stages it runs, not the imports.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cca_tl.pipeline import preset, run
from cca_tl.pipeline.stages import stage_names

#: The tiny preset, smaller still: every stage runs and writes, in about 10 s on one core.
OVERRIDES = {"data.n_per_template": 12, "data.test_per_template": 2, "traces.n_samples": 6,
             "evaluate.controls": ["random"], "analysis.faithfulness_points": 3}
KILLS_PER_STAGE = 3  # 8 stages: 24 kills
FLOAT = dict(rtol=1e-4, atol=1e-5)  # fp32 sums differ with memory alignment between processes (MKL)
#: Per-process facts, not results.
VOLATILE = {"seconds", "device", "artifacts", "report", "html"}


def _child(directory: str, kill_after_s: float | None) -> None:
    """A fresh process's run of whatever is not done in ``directory``; SIGKILLed after ``kill_after_s``."""
    torch.set_num_threads(1)  # two trials at once on two cores; the same in every process
    if kill_after_s is not None:
        threading.Timer(kill_after_s, os.kill, (os.getpid(), signal.SIGKILL)).start()
    run(preset("tiny", **OVERRIDES), directory, progress=False)
    os._exit(0)  # the timer thread must not keep a finished process alive


def _child_until(directory: str, stage: str) -> None:
    torch.set_num_threads(1)
    run(preset("tiny", **OVERRIDES), directory, stop_after=stage, progress=False)


@pytest.fixture(scope="module")
def processes():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["cca_tl.pipeline", "cca_tl.pipeline.stages", Path(__file__).stem])
    return context


def _start(processes, target, *args) -> multiprocessing.Process:
    process = processes.Process(target=target, args=args)
    process.start()
    return process


def _finish(process: multiprocessing.Process, timeout: float = 300) -> int:
    process.join(timeout)
    assert process.exitcode is not None, "a pipeline process hung"
    return process.exitcode


def _snapshots(processes, root: Path) -> tuple[dict[str, Path], dict[str, float]]:
    """The run directory as each stage leaves it (``""``: nothing yet), built one stage per process, and how
    long each such process took (its start, model load and that one stage)."""
    snapshots, seconds, previous = {"": root / "empty"}, {}, root / "empty"
    previous.mkdir()
    for stage in stage_names():
        here = root / f"after-{stage}"
        shutil.copytree(previous, here)
        start = time.perf_counter()
        assert _finish(_start(processes, _child_until, str(here), stage)) == 0
        seconds[stage] = time.perf_counter() - start
        snapshots[stage], previous = here, here
    return snapshots, seconds


def test_sigkill_at_random_points_in_every_stage_then_resume_equals_an_uninterrupted_run(processes, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    assert _finish(_start(processes, _child, str(uninterrupted), None)) == 0
    snapshots, seconds = _snapshots(processes, tmp_path)
    _assert_same_run(snapshots["report"], uninterrupted)  # stopping cleanly after every stage changes nothing

    rng = random.Random(0)
    names = stage_names()
    trials = [(stage, names[names.index(stage) - 1] if names.index(stage) else "",
               rng.uniform(0.0, seconds[stage])) for stage in names for _ in range(KILLS_PER_STAGE)]
    killed = 0
    for pair in range(0, len(trials), 2):  # two trials at a time
        batch = trials[pair:pair + 2]
        dirs = [tmp_path / f"trial{pair + i}" for i in range(len(batch))]
        for (stage, before, _), directory in zip(batch, dirs):
            shutil.copytree(snapshots[before], directory)
        started = [_start(processes, _child, str(d), t) for (_, _, t), d in zip(batch, dirs)]
        codes = [_finish(p) for p in started]
        killed += sum(code == -signal.SIGKILL for code in codes)
        resumed = [_start(processes, _child, str(d), None) for d in dirs]
        for (stage, _, after), directory, process in zip(batch, dirs, resumed):
            assert _finish(process) == 0, f"the resume after a kill in {stage} at {after:.2f} s failed"
            _assert_same_run(directory, uninterrupted, f"killed in {stage} at {after:.2f} s")
            shutil.rmtree(directory)
    # The kill times are drawn inside each stage's duration, so most trials must really have been killed.
    assert killed >= len(trials) * 2 // 3, f"only {killed} of {len(trials)} processes were killed"


def _assert_same_run(got: Path, want: Path, trial: str = "") -> None:
    """Every file of ``want`` is in ``got`` with the same content (floats to fp32 noise), nothing else is,
    and nothing a killed write left behind is."""
    files = {p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file() and p.name != ".lock"}
    expected = {p.relative_to(want).as_posix() for p in want.rglob("*") if p.is_file() and p.name != ".lock"}
    assert files == expected, f"{trial}: files differ: extra {files - expected}, missing {expected - files}"
    for rel in sorted(expected):
        a, b = got / rel, want / rel
        if rel.endswith(".json"):
            _assert_close_json(_clean(json.loads(a.read_text()), got), _clean(json.loads(b.read_text()), want),
                               f"{trial}: {rel}")
        elif rel.endswith(".csv"):
            pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b), check_exact=False, **FLOAT, obj=rel)
        elif rel.endswith(".safetensors"):
            from safetensors.torch import load_file

            x, y = load_file(a), load_file(b)
            assert x.keys() == y.keys(), f"{trial}: {rel}"
            for key in x:
                torch.testing.assert_close(x[key], y[key], **FLOAT, msg=f"{trial}: {rel} {key}")
        elif rel.endswith(".arrow"):
            from datasets import Dataset

            pd.testing.assert_frame_equal(Dataset.from_file(str(a)).to_pandas(),
                                          Dataset.from_file(str(b)).to_pandas(), check_exact=False, **FLOAT)
        else:  # figures, HTML and the report render the numbers checked above
            assert a.stat().st_size > 0, f"{trial}: {rel} is empty"


def _clean(value, directory: Path):
    if isinstance(value, dict):
        return {k: _clean(v, directory) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_clean(v, directory) for v in value]
    return value.replace(str(directory), "<run>") if isinstance(value, str) else value


def _assert_close_json(a, b, where: str) -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=FLOAT["rtol"], abs=FLOAT["atol"]), where
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_close_json(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close_json(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# -- a disk that refuses writes ---------------------------------------------------------------------
def _limit_file_size(limit: int):
    """For the child: files may not grow past ``limit`` bytes (as a full disk, writes fail: EFBIG)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_disk_that_refuses_writes_is_a_clear_error_that_keeps_finished_stages(tmp_path):
    out = tmp_path / "r"
    smaller = [f"--set={key}={value}" for key, value in OVERRIDES.items() if key != "evaluate.controls"]
    command = [sys.executable, "-m", "cca_tl.cli", "run", "--preset", "tiny", *smaller, "--out", str(out), "--quiet"]
    # problems.json (10 kB) fits, the traces dataset (70 kB) does not.
    failed = subprocess.run(command, preexec_fn=_limit_file_size(32_000), capture_output=True, text=True)
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert (f"Cannot write the traces stage's artifacts in {out}: File too large. The finished stages (problems) "
            "are kept.") in failed.stderr
    assert "rerun the same command to resume" in failed.stderr
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["problems.json"]
    assert not [p for p in out.rglob(".*") if p.name != ".lock"], "a staging directory was left behind"
    resumed = subprocess.run(command[:-1], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "stage problems" not in resumed.stdout and "stage traces done" in resumed.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_a_read_only_run_directory_is_a_clear_error(tmp_path, capsys):
    from cca_tl.cli import main

    out = tmp_path / "r"
    assert main(["run", "--preset", "tiny", "--out", str(out), "--quiet", "--stop-after", "problems"]) == 0
    for path in [out, *out.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        assert main(["run", "--preset", "tiny", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "Cannot write" in err and "The finished stages (problems) are kept" in err
    finally:
        for path in [out, *out.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
