"""Real-shape speed and memory on a GPU, random weights, no download: ``analyses/bench_gpu.md`` (+ ``.csv``).

    python analyses/bench_gpu.py                          # on the GPU machine: Gemma-2-2B, Gemma-2-9B, OLMo-2-7B, bf16
    python analyses/bench_gpu.py --device cpu --dtype float32 --layers 2 --vocab 4096 --models gemma-2-2b  # smoke test

Per model, built on the device from its published config (the few numbers are below; TransformerLens'
own tables give the rest) with random weights — the HF model is created first and converted with
TransformerLens' weight converter, so both sides hold the same weights:

* **DCM step** with the prefix key/value cache (8 prefixes of 200 tokens: one token each per step);
* **targeted update step** (fwd + bwd over the full prefixes, 1 % of components selected);
* **trace generation**: ``cca_tl.generation.generate`` on the HookedTransformer vs plain HF ``generate``
  on the same weights, same prompts (a shared 160-token prompt + 40 own tokens, 64 rows, 64 new tokens);
* **peak GPU memory** of each (``torch.cuda.max_memory_allocated``).

No GPU was lent when this was written; the script was run on CPU at shrunken shapes only (the command in
the second line) so it is known to work end to end. ``--layers``/``--vocab`` shrink a model for that.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

HERE = Path(__file__).resolve().parent

#: Benchmark name -> the published config shipped in cca_tl/model_configs/ (the base models share the
#: -It/-Instruct models' shapes).
PUBLISHED = {"gemma-2-2b": "gemma-2-2b-it", "gemma-2-9b": "gemma-2-9b-it", "olmo-2-7b": "olmo-2-1124-7b-instruct"}


def build(name: str, device: torch.device, dtype: torch.dtype, layers: int | None, vocab: int | None):
    """(HF model, HookedTransformer) with the same random weights at the published shapes, converted by
    cca_tl's own loader (the family table), as a user's checkpoint would be."""
    import transformers

    from cca_tl.arch import load_hf_config
    from cca_tl.convert import hooked_from_hf

    overrides = dict(**({"num_hidden_layers": layers} if layers else {}), **({"vocab_size": vocab} if vocab else {}))
    hf_config = load_hf_config(PUBLISHED[name], **overrides)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):  # a shrunk vocabulary must still hold them
        ids = getattr(hf_config, key, None)
        if isinstance(ids, int) and ids >= hf_config.vocab_size:
            setattr(hf_config, key, hf_config.vocab_size - 1)
        elif isinstance(ids, list):
            setattr(hf_config, key, [min(i, hf_config.vocab_size - 1) for i in ids])
    torch.manual_seed(0)
    with torch.device(device):
        hf = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype).eval()
    model = hooked_from_hf(hf, name=name, source="random-published-config", dtype=dtype, device=device, n_ctx=512)
    return hf, model


def timed(fn, device: torch.device, reps: int = 3) -> tuple[float, float]:
    """Median seconds over ``reps`` after a warm-up, and peak memory (GB) of one call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return sorted(times)[len(times) // 2], peak


def bench(name: str, args) -> list[dict]:
    from cca_tl.component_mask import ComponentMask
    from cca_tl.contrast import ContrastSet, PrefixKV, two_logit_diff
    from cca_tl.dcm import DCMGains
    from cca_tl.generation import generate
    from cca_tl.update import targeted_update

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    hf, model = build(name, device, dtype, args.layers, args.vocab)
    vocab = model.cfg.d_vocab
    gen = torch.Generator().manual_seed(0)
    shared = torch.randint(10, vocab, (160,), generator=gen).tolist()
    prefixes = [shared + torch.randint(10, vocab, (40,), generator=gen).tolist() for _ in range(8)]
    data = ContrastSet(prefixes, [11 + i for i in range(8)], [12 + i for i in range(8)])
    rows = []

    dcm = DCMGains(model)
    cache = PrefixKV(model, data, batch_size=8)

    def dcm_step():
        batch = cache.batch(data, range(8))
        loss = -two_logit_diff(model, batch, dcm.hooks(batch.last_pos)).float().mean() + 1e-3 * dcm.l1()
        loss.backward()

    seconds, peak = timed(dcm_step, device)
    rows.append(dict(model=name, step="DCM step (8 x 200 tokens, prefix KV cache)", seconds=seconds, peak_gb=peak))

    mask = ComponentMask.empty(model)
    for kind, selected in mask.masks.items():
        selected |= torch.rand(selected.shape, generator=gen) < 0.01
    seconds, peak = timed(lambda: targeted_update(model, data, mask, lr=1e-4, steps=1, eval_steps=[], batch_size=8,
                                                  progress=False), device)
    rows.append(dict(model=name, step="targeted update step (8 x 200 tokens, 1 % of components)", seconds=seconds,
                     peak_gb=peak))

    prompts = [shared + torch.randint(10, vocab, (40,), generator=gen).tolist() for _ in range(args.rows)]
    model.tokenizer = _NumberTokenizer()
    ours, peak = timed(lambda: generate(model, prompts, max_new_tokens=args.new_tokens, batch_size=args.rows,
                                        stops=()), device, reps=1)
    rows.append(dict(model=name, step=f"generate, cca_tl ({args.rows} rows, {args.new_tokens} new tokens)",
                     seconds=ours, peak_gb=peak, tokens_per_s=args.rows * args.new_tokens / ours))
    ids = torch.tensor(prompts, device=device)

    def hf_generate():
        hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    theirs, peak = timed(hf_generate, device, reps=1)
    rows.append(dict(model=name, step=f"generate, HF generate (same weights, {args.rows} rows)", seconds=theirs,
                     peak_gb=peak, tokens_per_s=args.rows * args.new_tokens / theirs))
    del hf, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


class _NumberTokenizer:
    """Enough of a tokenizer for ``generate`` on random weights: no stops, no special ids but 0."""

    pad_token_id = 0
    padding_side = "right"
    all_special_ids: list[int] = []

    def decode(self, ids):
        return " ".join(map(str, ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PUBLISHED), choices=list(PUBLISHED))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layers", type=int, help="shrink: keep this many layers (smoke tests)")
    parser.add_argument("--vocab", type=int, help="shrink: this vocabulary size (smoke tests)")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(HERE / "bench_gpu"))
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows = [row for model in args.models for row in bench(model, args)]
    table = pd.DataFrame(rows)
    shrunk = f", shrunk to {args.layers} layers / vocab {args.vocab}" if (args.layers or args.vocab) else ""
    text = (f"# Real-shape benchmarks (random weights)\n\nDevice: **{name}**, dtype {args.dtype}{shrunk}. Command: "
            f"`python analyses/bench_gpu.py {' '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in vars(args).items() if v and k not in ('out', 'models'))} "
            f"--models {' '.join(args.models)}`\n\n{table.to_markdown(index=False, floatfmt='.3f')}\n")
    Path(args.out + ".md").write_text(text)
    table.assign(device=name, dtype=args.dtype).to_csv(args.out + ".csv", index=False)
    print(text)
    print(json.dumps(dict(device=name, rows=len(rows))))


if __name__ == "__main__":
    main()
