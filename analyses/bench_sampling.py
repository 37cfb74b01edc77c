"""Sampling one token per row from a 262,144-id vocabulary (Gemma-3): torch.multinomial vs cca_tl's
two-level sampler. Writes analyses/bench_sampling.md.

    .venv/bin/python analyses/bench_sampling.py
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from cca_tl.traces import sample_rows

VOCAB, REPEATS = 262_144, 5


def timed(fn) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(REPEATS):
        fn()
    return (time.perf_counter() - start) / REPEATS


def main() -> None:
    rows = []
    for batch in (16, 64):
        logits = torch.randn(batch, VOCAB)
        temps = torch.full((batch,), 0.8)
        gen = torch.Generator().manual_seed(0)
        multinomial = timed(lambda: torch.multinomial(torch.softmax(logits / 0.8, -1), 1))
        two_level = timed(lambda: sample_rows(logits, temps, gen))
        rows.append(dict(batch=batch, multinomial_ms=round(1000 * multinomial, 1),
                         two_level_ms=round(1000 * two_level, 1), speedup=round(multinomial / two_level, 1)))
    table = pd.DataFrame(rows)
    text = ("# Sampling from a 262k vocabulary (per decoding step)\n\nCommand: `.venv/bin/python analyses/"
            "bench_sampling.py` (2 CPU cores, no GPU; shared machine, noisy). Both sample exactly from "
            "softmax(logits / T); the two-level sampler picks a block of 512 ids by mass, then an id inside "
            "it (distribution tested in tests/test_traces.py).\n\n" + table.to_markdown(index=False) + "\n")
    (Path(__file__).resolve().parent / "bench_sampling.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
