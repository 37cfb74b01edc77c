"""Time and peak memory of one targeted-update step per mini-batch size: ``analyses/bench_update_memory.md``.

    .venv/bin/python analyses/bench_update_memory.py RUN_DIR [--batch-sizes 4 8 16]

``RUN_DIR`` is a main-job run directory that has finished its DCM stage (e.g. the ``runs/bench_main`` that
``analyses/bench_main_job.py`` leaves). One step of the random-mask update on its train pivots per batch
size, RSS sampled every 20 ms in this process; the gradient is full-batch whatever the batch size, so the
batch size trades time for memory only. This chose ``update.batch_size`` of the run config.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()
    from cca_tl._io import release_freed_memory
    from cca_tl.pipeline import Run
    from cca_tl.update import targeted_update

    peak = [0.0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_gb())
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    run = Run.open(args.run_dir, progress=False)
    model, train, mask = run.model, run.contrast("train"), run.dcm().mask
    rows = []
    for batch_size in args.batch_sizes:
        run.session.restore()
        release_freed_memory()
        base = peak[0] = rss_gb()
        start = time.perf_counter()
        targeted_update(model, train, mask, variant="random", lr=1e-4, steps=1, batch_size=batch_size,
                        eval_steps=[], progress=False, protect=run.session.protect)
        rows.append(dict(batch_size=batch_size, seconds_per_step=round(time.perf_counter() - start, 1),
                         rss_before_gb=round(base, 2), peak_rss_gb=round(peak[0], 2),
                         added_gb=round(peak[0] - base, 2)))
        print(rows[-1], flush=True)
    run.session.restore()
    table = pd.DataFrame(rows)
    text = "\n".join([
        "# One targeted-update step: time and memory per mini-batch size", "",
        f"Command: `.venv/bin/python analyses/bench_update_memory.py {args.run_dir}` ({platform.machine()}, "
        f"{os.cpu_count()} cores, {run.config.model}, {run.config.dtype}, {len(train)} train pivots, the shared "
        "prompt run once per step). The host's cores are shared: times vary by ±20–35 %.", "",
        table.to_markdown(index=False), ""])
    (HERE / "bench_update_memory.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
