"""Train the weight-sparse model and its dense twin on the CPython standard library (docs/method.md §B, issue 6).

    .venv/bin/python analyses/train_sparse_twins.py [--steps 1500] [--out runs/sparse]

Writes the models to ``<out>/{sparse,dense}`` (checkpointed, resumable) and a summary table to
``analyses/results/sparse_twins/training.md`` plus the loss / L0 / learning-rate curves as a PNG.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

from cca_tl.sparse.train import SparseTrainConfig, python_tokenizer, train_sparse

RESULTS = Path(__file__).parent / "results" / "sparse_twins"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", default="runs/sparse")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    tokenizer = python_tokenizer()
    sparse_cfg = SparseTrainConfig(steps=args.steps)
    rows, trained = [], {}
    for label, cfg in (("dense", sparse_cfg.dense()), ("sparse", sparse_cfg)):
        t = time.perf_counter()
        result = train_sparse(cfg, Path(args.out) / label, tokenizer=tokenizer)
        trained[label] = result
        nz = result.nonzero_fraction()
        rows.append(dict(model=label, steps=cfg.steps, weight_l0=cfg.weight_l0, activation_keep=cfg.activation_keep,
                         parameters=int(nz.entries.sum()), nonzero=int(nz.nonzero.sum()),
                         final_train_loss=result.history.loss.tail(50).mean(), held_out_loss=result.held_out_loss,
                         train_seconds=round(result.seconds), wall_seconds_this_call=round(time.perf_counter() - t)))
    table = pd.DataFrame(rows).set_index("model")
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for label, result in trained.items():
        h = result.history
        axes[0].plot(h.step, h.loss.rolling(25, min_periods=1).mean(), label=label)
        axes[1].plot(h.step, h.l0, label=label)
        axes[2].plot(h.step, h.lr, label=label)
    for ax, title in zip(axes, ("training loss (25-step mean, nats)", "weight L0 (kept fraction)", "learning rate (sharkfin)")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "training_curves.png", dpi=110)
    text = ["# Weight-sparse model and dense twin, trained on the CPython standard library", "",
            f"Command: `.venv/bin/python analyses/train_sparse_twins.py --steps {args.steps} --out {args.out}`  ",
            f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU only (no GPU lent).  ",
            f"Config (sparse): `{sparse_cfg.to_dict()}`", "", table.to_markdown(floatfmt=".4g"), "",
            "Losses are next-token cross-entropy in nats per token with the 2,048-entry BPE tokenizer trained on the "
            "same library; held-out = files excluded from training by a hash of their path.", "",
            "![curves](training_curves.png)", ""]
    (RESULTS / "training.md").write_text("\n".join(text))
    print(table.to_string())


if __name__ == "__main__":
    main()
