"""Measure loading and export on the real offline models; print a table and write it to analyses/.

Each measurement runs in its own Python process, so peak RSS is that of the step alone. "cold" uses an
empty cache (the GGUF is parsed and dequantised); "warm" loads the cached dequantised copy.

    .venv/bin/python analyses/measure_foundation.py [--models gemma-3-270m qwen2.5-coder-0.5b-instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time, tempfile
import torch
torch.manual_seed(0)
from cca_tl import load_model, export_hf, ComponentRegistry, Component
name, do_export = sys.argv[1], sys.argv[2] == "1"
t = time.perf_counter()
model = load_model(name)
load_s = time.perf_counter() - t
row = dict(load_s=round(load_s, 1), load_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
if do_export:
    reg = ComponentRegistry.from_model(model)
    edited = [Component("q", 1, 0), Component("k", 2, 0), Component("v", 3, 0), Component("neuron", 4, 11)]
    with torch.no_grad():
        for c in edited:
            for s in reg.slices(c, "extended"):
                s.view(model).mul_(1.5)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        report = export_hf(model, d + "/out")
        row.update(export_s=round(time.perf_counter() - t, 1), export_max_abs_logit_diff=report.max_abs_logit_diff,
                   tied_embeddings=report.tied_embeddings, hf_params=report.n_params,
                   peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
print("ROW" + json.dumps(row))
"""


def run(name: str, *, cold: bool, export: bool) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    tmp = None
    if cold:
        tmp = tempfile.TemporaryDirectory()
        env["CCA_TL_CACHE"] = tmp.name
    out = subprocess.run([sys.executable, "-c", CHILD, name, "1" if export else "0"], env=env,
                         capture_output=True, text=True)
    if tmp:
        tmp.cleanup()
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    line = next(l for l in out.stdout.splitlines() if l.startswith("ROW"))
    return json.loads(line[3:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["gemma-3-270m", "qwen2.5-coder-0.5b-instruct"])
    args = parser.parse_args()
    rows = []
    for name in args.models:
        try:
            cold = run(name, cold=True, export=False)
            warm = run(name, cold=False, export=True)
        except RuntimeError as exc:
            print(f"skipping {name}: {str(exc).strip().splitlines()[-1]}")
            continue
        rows.append(dict(model=name, cold_load_s=cold["load_s"], cold_peak_rss_mb=cold["load_peak_rss_mb"],
                         warm_load_s=warm["load_s"], warm_peak_rss_mb=warm["load_peak_rss_mb"],
                         export_s=warm["export_s"], export_peak_rss_mb=warm["peak_rss_mb"],
                         max_abs_logit_diff=warm["export_max_abs_logit_diff"],
                         tied=warm["tied_embeddings"], hf_params=warm["hf_params"]))
    df = pd.DataFrame(rows).set_index("model")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only"
    text = (f"# Loading and HF export on the real offline models\n\nMachine: {machine}. Command: "
            f"`.venv/bin/python analyses/measure_foundation.py --models {' '.join(args.models)}`\n\n"
            "cold = empty cache (GGUF parsed + dequantised, then cached); warm = cached fp32 copy. Export edits "
            "4 components (extended slices x1.5), writes the HF directory, reloads it in plain transformers "
            "and compares logits on two sample texts.\n\n" + df.to_markdown() + "\n")
    print(text)
    (HERE / "foundation_load_export.md").write_text(text)
    df.to_csv(HERE / "foundation_load_export.csv")


if __name__ == "__main__":
    main()
