"""Generation throughput: cca_tl's generation vs HF ``generate`` and ``HookedTransformer.generate``.

    .venv/bin/python analyses/bench_generation.py [--batch 32 --new-tokens 40]

All three decode greedily with a KV cache from the same batch (one few-shot easy-task prompt per row, equal
lengths, so no padding favours any), stopping only at --new-tokens, on the same weights:
``cca_tl.generation.generate`` (what the pipeline uses: on the HookedTransformer, shared-prompt cache,
last-position unembedding, copy-free grouped-query attention), HF ``generate`` on a transformers copy
(``cca_tl.traces.hf_twin``, what the pipeline used before) and TransformerLens' own ``generate``. Writes
analyses/bench_generation.md with the top of a profile of the TransformerLens run (why it is slowest).
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
from cca_tl.generation import generate
from cca_tl.tasks import ARITHMETIC_EXEMPLARS, arithmetic_problems, few_shot_prompt
from cca_tl.export import hf_copy

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=40)
    args = parser.parse_args()
    model = load_model(args.model)
    start = time.perf_counter()
    twin = hf_copy(model)
    twin_s = time.perf_counter() - start
    question = arithmetic_problems(1, seed=0)[0].question
    tokens = model.to_tokens(few_shot_prompt(question, ARITHMETIC_EXEMPLARS)).repeat(args.batch, 1)
    n_new = args.batch * args.new_tokens

    def run_hf():
        with torch.no_grad():
            return twin.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens), do_sample=False,
                                 max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0)

    def run_ours():
        return generate(model, tokens.tolist(), max_new_tokens=args.new_tokens, batch_size=args.batch, stops=())

    def run_tl():
        return model.generate(tokens, max_new_tokens=args.new_tokens, do_sample=False, use_past_kv_cache=True,
                              stop_at_eos=False, verbose=False)

    rows, outputs = [], {}
    methods = (("cca_tl.generation.generate", run_ours), ("HF generate (transformers copy)", run_hf),
               ("HookedTransformer.generate", run_tl))
    for name, fn in methods:
        fn()  # warm-up
        start = time.perf_counter()
        outputs[name] = fn()
        seconds = time.perf_counter() - start
        made = n_new if isinstance(outputs[name], torch.Tensor) else sum(len(g.token_ids) for g in outputs[name])
        rows.append(dict(method=name, seconds=round(seconds, 2), new_tokens=made, tokens_per_s=round(made / seconds, 1)))
    df = pd.DataFrame(rows).set_index("method")
    hf_new = outputs["HF generate (transformers copy)"][:, tokens.shape[1]:].cpu()
    ours = outputs["cca_tl.generation.generate"]  # rows end at a special token; the others run on
    same = (torch.equal(hf_new, outputs["HookedTransformer.generate"][:, tokens.shape[1]:].cpu())
            and all(hf_new[i, :len(g.token_ids)].tolist() == g.token_ids for i, g in enumerate(ours)))
    profile = cProfile.Profile()
    profile.enable()
    run_tl()
    profile.disable()
    buf = io.StringIO()
    pstats.Stats(profile, stream=buf).sort_stats("tottime").print_stats(8)
    top = "\n".join(l for l in buf.getvalue().splitlines() if l.strip())[-1800:]
    seconds = df["seconds"]
    vs_hf = seconds["HF generate (transformers copy)"] / seconds["cca_tl.generation.generate"]
    vs_tl = seconds["HookedTransformer.generate"] / seconds["cca_tl.generation.generate"]
    text = (f"# Generation throughput on {args.model}\n\nCommand: `.venv/bin/python analyses/bench_generation.py "
            f"--model {args.model} --batch {args.batch} --new-tokens {args.new_tokens}`\n\nMachine: "
            f"{platform.machine()}, {os.cpu_count()} cores, CPU only, torch {torch.__version__}. Batch {args.batch} x "
            f"{tokens.shape[1]}-token prompt, {args.new_tokens} greedy new tokens each. Building the transformers "
            f"copy: {twin_s:.1f} s. Identical greedy tokens from all three: {same}.\n\n{df.to_markdown()}\n\n"
            f"cca_tl's generation is **{vs_hf:.2f}x** as fast as HF `generate` and **{vs_tl:.1f}x** as fast as "
            f"`HookedTransformer.generate`. Why TL's own is slow: TransformerLens 3.9's `Unembed.forward` computes "
            f"`F.linear(residual, self.W_U.T.contiguous(), self.b_U)`, copying the whole transposed unembedding "
            f"({model.cfg.d_model} x {model.cfg.d_vocab_out}) on every call, i.e. once per generated token (the "
            f"`contiguous` row below), on top of full-vocabulary logits for every prompt position at prefill. "
            f"Top of a profile of HookedTransformer.generate:\n\n```\n{top}\n```\n")
    print(text)
    (HERE / "bench_generation.md").write_text(text)
    df.to_csv(HERE / "bench_generation.csv")


if __name__ == "__main__":
    main()
