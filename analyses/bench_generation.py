"""Generation throughput: HookedTransformer.generate vs the HF twin's generate on the same weights and batch.

    .venv/bin/python analyses/bench_generation.py [--batch 8 --new-tokens 48]

Both decode greedily with a KV cache from the same batch (one 4-shot easy-task prompt per row, equal
lengths, so no padding favours either), stopping only at --new-tokens. Prints and writes a table to
analyses/bench_generation.md, with the top of a profile of the TransformerLens run (why it is slower).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import time
from pathlib import Path

import pandas as pd
import torch

from cca_tl import load_model
from cca_tl.tasks import ARITHMETIC_EXEMPLARS, arithmetic_problems, few_shot_prompt
from cca_tl.traces import hf_twin

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    model = load_model(args.model)
    start = time.perf_counter()
    twin = hf_twin(model)
    twin_s = time.perf_counter() - start
    question = arithmetic_problems(1, seed=0)[0].question
    tokens = model.to_tokens(few_shot_prompt(question, ARITHMETIC_EXEMPLARS)).repeat(args.batch, 1)
    n_new = args.batch * args.new_tokens

    def run_hf():
        with torch.no_grad():
            return twin.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens), do_sample=False,
                                 max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0)

    def run_tl():
        return model.generate(tokens, max_new_tokens=args.new_tokens, do_sample=False, use_past_kv_cache=True,
                              stop_at_eos=False, verbose=False)

    rows, outputs = [], {}
    for name, fn in (("HF twin generate (cca_tl.traces)", run_hf), ("HookedTransformer.generate", run_tl)):
        fn()  # warm-up
        start = time.perf_counter()
        outputs[name] = fn()
        seconds = time.perf_counter() - start
        rows.append(dict(method=name, seconds=round(seconds, 2), new_tokens=n_new, tokens_per_s=round(n_new / seconds, 1)))
    df = pd.DataFrame(rows).set_index("method")
    same = torch.equal(outputs["HF twin generate (cca_tl.traces)"][:, tokens.shape[1]:].cpu(),
                       outputs["HookedTransformer.generate"][:, tokens.shape[1]:].cpu())
    profile = cProfile.Profile()
    profile.enable()
    run_tl()
    profile.disable()
    buf = io.StringIO()
    pstats.Stats(profile, stream=buf).sort_stats("tottime").print_stats(8)
    top = "\n".join(l for l in buf.getvalue().splitlines() if l.strip())[-1800:]
    ratio = df.loc["HookedTransformer.generate", "seconds"] / df.loc["HF twin generate (cca_tl.traces)", "seconds"]
    text = (f"# Generation throughput on {args.model}\n\nCommand: `.venv/bin/python analyses/bench_generation.py "
            f"--model {args.model} --batch {args.batch} --new-tokens {args.new_tokens}`\n\nMachine: "
            f"{platform.machine()}, {os.cpu_count()} cores, CPU only, torch {torch.__version__}. Batch {args.batch} x "
            f"{tokens.shape[1]}-token prompt, {args.new_tokens} greedy new tokens each. Building the twin: "
            f"{twin_s:.1f} s. Identical greedy tokens from both: {same}.\n\n{df.to_markdown()}\n\n"
            f"The HF twin is **{ratio:.1f}x faster**. Why: TransformerLens 3.9's `Unembed.forward` computes "
            f"`F.linear(residual, self.W_U.T.contiguous(), self.b_U)`, copying the whole transposed unembedding "
            f"({model.cfg.d_model} x {model.cfg.d_vocab_out}) on every call, i.e. once per generated token (the "
            f"`contiguous` row below), on top of full-vocabulary logits for every prompt position at prefill. "
            f"Top of a profile of HookedTransformer.generate:\n\n```\n{top}\n```\n")
    print(text)
    (HERE / "bench_generation.md").write_text(text)
    df.to_csv(HERE / "bench_generation.csv")


if __name__ == "__main__":
    main()
