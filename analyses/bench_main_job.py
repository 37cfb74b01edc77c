"""Time and memory of the README's main job, per stage: ``analyses/bench_main_job.md`` (+ ``.csv``).

    .venv/bin/python analyses/bench_main_job.py [--out runs/bench_main] [--device cpu] [--dtype float32]

Runs ``cca-tl run`` (preset ``easy``) in a fresh run directory under ``/usr/bin/time -v`` and samples the
process' resident memory every 0.5 s; stage boundaries come from the stage markers' timestamps, so each
stage gets its seconds (from its marker) and its peak RSS. The budget of the scale issue: ≤ 480 s of stage
time and ≤ 3.5 GB peak RSS, in a fresh clone on 2 CPU cores. ``--label`` names the measurement in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from cca_tl.pipeline import RunConfig

HERE = Path(__file__).resolve().parent
STAGES = ("problems", "traces", "localize", "dcm", "update", "evaluate", "analysis", "report")
BEFORE = {  # measured by the issue in a fresh clone, 2 cores (stage seconds), peak RSS 12.4 GB
    "traces": 352, "update": 208, "evaluate": 528, "analysis": 42, "dcm": 25}


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[int]:
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        out += tree(int(child))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_main")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--label", default="after")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    cli = [sys.executable, "-m", "cca_tl.cli", "run", "--out", str(out), "--device", args.device,
           "--dtype", args.dtype, "--quiet"]
    samples: list[tuple[float, int]] = []
    start = time.time()
    proc = subprocess.Popen(["/usr/bin/time", "-v", *cli], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def sample() -> None:
        while proc.poll() is None:
            samples.append((time.time(), max(rss_kb(p) for p in tree(proc.pid))))
            time.sleep(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output, _ = proc.communicate()
    thread.join()
    if proc.returncode != 0:
        sys.exit(f"the main job failed:\n{output[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", output).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", output).group(1)
    rows, previous_end = [], start
    for stage in STAGES:
        marker = out / "stages" / f"{stage}.json"
        end = marker.stat().st_mtime
        seconds = json.loads(marker.read_text())["seconds"]
        peak = max((kb for t, kb in samples if previous_end - 0.5 <= t <= end + 0.5), default=0)
        rows.append(dict(stage=stage, seconds=seconds, peak_rss_gb=round(peak / 2**20, 2),
                         before_seconds=BEFORE.get(stage)))
        previous_end = end
    table = pd.DataFrame(rows).set_index("stage")
    total = table["seconds"].sum()
    head = json.loads((out / "stages" / "evaluate.json").read_text())
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, device {args.device}, dtype {args.dtype}, "
               f"python {platform.python_version()}")
    history_path = HERE / "bench_main_job_history.csv"
    history = pd.read_csv(history_path) if history_path.exists() else pd.DataFrame()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    config = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    history = pd.concat([history, pd.DataFrame([dict(
        label=args.label, commit=commit, task=config.data.task, stage_seconds=round(total),
        peak_rss_gb=round(peak_kb / 2**20, 2), **{s: round(table.loc[s, "seconds"]) for s in ("traces", "update", "evaluate")})])])
    history.to_csv(history_path, index=False)
    text = "\n".join([
        "# The main job: time and memory per stage", "",
        f"Command: `.venv/bin/python analyses/bench_main_job.py --device {args.device} --dtype {args.dtype}` "
        f"(runs `cca-tl run` — preset `easy`, Gemma-3-270M — under `/usr/bin/time -v`). Machine: {machine}.", "",
        f"**{args.label}: {total:.0f} s of stage time** (wall {wall}, which adds loading the model and "
        f"imports), **peak RSS {peak_kb / 2**20:.2f} GB** (`/usr/bin/time -v`). Before (issue, fresh clone, "
        "2 cores): 1,155 s of stage time, 12.4 GB peak RSS. Budget: ≤ 480 s, ≤ 3.5 GB.", "",
        table.to_markdown(floatfmt=".2f"), "",
        f"Headline of this run: {json.dumps(head.get('macro_accuracy'))}; DCM kept {head.get('selected')} "
        "components.", "",
        "## Every measurement (`analyses/bench_main_job_history.csv`)", "",
        "The same command on the same machine varies by ±20 % in time (the host's two cores are shared). "
        "Until the task changed the main job was the arithmetic task (40-token traces, sampled Prefix traces, "
        "validation by generation); since then it is the two-step task (`analyses/task_screen.md`).", "",
        history.to_markdown(index=False), ""])
    (HERE / "bench_main_job.md").write_text(text)
    table.assign(label=args.label, peak_rss_gb_total=round(peak_kb / 2**20, 2)).to_csv(HERE / "bench_main_job.csv")
    print(text)


if __name__ == "__main__":
    main()
