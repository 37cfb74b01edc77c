"""Copy a finished run's report and its small artifacts into analyses/results/<name>/ (committed results).

    .venv/bin/python analyses/collect_run.py runs/easy --name easy_gemma --command "cca-tl run ..."

Copies report.md (with the command that made it prepended), the self-contained report.html, stages/*.json
timings, evaluate/accuracy.csv, the analysis tables and pictures, and the attention page; model weights and
traces stay in the run dir.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL = ["evaluate/accuracy.csv", "analysis/components.csv", "analysis/components_per_layer.csv",
         "analysis/ablation.csv", "analysis/faithfulness.csv", "analysis/mask.png", "analysis/faithfulness.png",
         "analysis/attention.html", "report.html", "dcm/history.csv", "dcm/mask.json", "update/history.csv", "config.json"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--command", required=True, help="the exact command that made the run")
    parser.add_argument("--device", default="2 CPU cores, no GPU")
    args = parser.parse_args()
    out = HERE / "results" / args.name
    out.mkdir(parents=True, exist_ok=True)
    for rel in SMALL:
        src = args.run / rel
        if src.exists():
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    timings = {p.stem: json.loads(p.read_text()).get("seconds") for p in sorted((args.run / "stages").glob("*.json"))}
    report = (args.run / "report.md").read_text()
    header = (f"Command: `{args.command}`  \nDevice: {args.device}.  \nStage times (s): "
              f"{', '.join(f'{k} {v:.0f}' for k, v in timings.items())}; total {sum(timings.values()):.0f} s.\n\n")
    title, _, rest = report.partition("\n")
    (out / "report.md").write_text(f"{title}\n\n{header}{rest}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
