"""Benchmark one DCM step and one targeted-update step on Gemma-3-270M; print a table, write it to analyses/.

    .venv/bin/python analyses/bench_dcm.py [--batch 8 --length 200 --reps 3]

Rows: seconds per step (median of --reps after one warm-up) for
  * DCM, two-logit readout (cca_tl.contrast.two_logit_diff): stop after the last block, final norm at the last
    position, two unembedding columns;
  * DCM, full-logit readout (cca_tl.contrast.full_logit_diff): the whole [batch, pos, 262k] logits;
  * targeted update (mask variant, authors' slices of a 1%-of-components mask), two-logit readout;
and the FLOP floor: the step's counted FLOPs divided by this machine's measured fp32 matmul throughput
(same run, same shapes as the model's MLP). Weights are frozen in DCM, so backward computes activation
gradients only (≈ the forward's matmul FLOPs again); the update step also computes the touched weights'
gradients.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from cca_tl import ComponentMask, load_model
from cca_tl.contrast import Batch, ContrastSet, PrefixKV, full_logit_diff, two_logit_diff
from cca_tl.dcm import DCMGains
from cca_tl.entries import element_masks

HERE = Path(__file__).resolve().parent


def matmul_gflops(m: int, k: int, n: int, reps: int = 10) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9


def forward_flops(model, n_tokens: int, seq: int, full_logits: bool) -> float:
    """Matmul FLOPs of one forward pass (projections, MLP, attention scores and mixing, unembedding)."""
    cfg = model.cfg
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    per_layer = cfg.d_model * cfg.d_head * (2 * cfg.n_heads + 2 * n_kv) + cfg.d_model * cfg.d_mlp * (3 if cfg.gated_mlp else 2)
    proj = 2 * per_layer * cfg.n_layers * n_tokens
    attn = 2 * 2 * cfg.n_heads * cfg.d_head * seq * n_tokens * cfg.n_layers  # QK^T and AV over the full TxT
    unembed = 2 * cfg.d_model * cfg.d_vocab * n_tokens if full_logits else 0
    return proj + attn + unembed


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model)
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    lengths = [args.length - i * 3 for i in range(args.batch)]  # ragged, as real prefixes are
    prefixes = [torch.randint(1000, 50000, (n,), generator=g).tolist() for n in lengths]
    data = ContrastSet(prefixes, [1234] * args.batch, [4321] * args.batch)
    batch = Batch.collate(data)
    dcm = DCMGains(model)
    opt = torch.optim.Adam(dcm.parameters(), lr=5e-3)

    def dcm_step(readout, the_batch=batch):
        def step():
            diff = readout(model, the_batch, dcm.hooks(the_batch.last_pos))
            loss = -diff.mean() + 1e-3 * dcm.l1()
            opt.zero_grad()
            loss.backward()
            opt.step()
            dcm.clamp_()
        return step

    mask = ComponentMask.full(model).random_like(seed=0)
    sel = ComponentMask.empty(model)
    for kind, m in mask.masks.items():  # ~1% of each kind's components, at least one
        k = max(1, m.numel() // 100)
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=g)[:k]] = True
        sel.masks[kind] = flat.view_as(m)
    emasks = element_masks(model, sel)
    params = {n: model.get_parameter(n) for n in emasks}

    def update_step():
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        loss = -two_logit_diff(model, batch).mean()
        loss.backward()
        with torch.no_grad():
            for n, m in emasks.items():
                params[n].copy_(torch.where(m, params[n] - 1e-4 * params[n].grad, params[n]))
        for p in params.values():
            p.requires_grad_(False)

    cfg = model.cfg
    n_tokens, seq = sum(lengths), max(lengths)
    gflops = matmul_gflops(n_tokens, cfg.d_model, cfg.d_mlp)
    fwd_two = forward_flops(model, n_tokens, seq, False)
    fwd_full = forward_flops(model, n_tokens, seq, True)
    touched_weight_grads = 2 * n_tokens * sum(int(m.sum()) for m in emasks.values())
    prefix_kv = None

    def build_cache():
        nonlocal prefix_kv
        prefix_kv = PrefixKV(model, data, batch_size=args.batch)

    cache_s = timed(build_cache, args.reps)
    cached_batch = prefix_kv.batch(data, range(len(data)))
    cached_fwd = forward_flops(model, len(data), seq, False) - 2 * 2 * cfg.n_heads * cfg.d_head * seq * len(data) * cfg.n_layers * (1 - 1 / seq)
    rows = [dict(step="prefix KV cache build (once per dataset; this batch)", seconds=round(cache_s, 2),
                 gflop=round(forward_flops(model, n_tokens - len(data), seq, False) / 1e9),
                 floor_s=round(forward_flops(model, n_tokens - len(data), seq, False) / (gflops * 1e9), 2),
                 x_floor=None)]
    rows[0]["x_floor"] = round(rows[0]["seconds"] / rows[0]["floor_s"], 2)
    for name, fn, flops in [
        ("DCM step, two-logit readout + prefix KV cache (default)", dcm_step(two_logit_diff, cached_batch), 2 * cached_fwd),
        ("DCM step, two-logit readout", dcm_step(two_logit_diff), 2 * fwd_two),
        ("DCM step, full-logit readout", dcm_step(full_logit_diff), 2 * fwd_full),
        ("update step (mask, 1% of components), two-logit", update_step, 2 * fwd_two + touched_weight_grads),
    ]:
        seconds = timed(fn, args.reps)
        floor = flops / (gflops * 1e9)
        rows.append(dict(step=name, seconds=round(seconds, 2), gflop=round(flops / 1e9), floor_s=round(floor, 2),
                         x_floor=round(seconds / floor, 2)))
    df = pd.DataFrame(rows).set_index("step")
    speedup = df.loc["DCM step, full-logit readout", "seconds"] / df.loc["DCM step, two-logit readout", "seconds"]
    cached_speedup = df.loc["DCM step, full-logit readout", "seconds"] / df.loc[
        "DCM step, two-logit readout + prefix KV cache (default)", "seconds"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    machine = f"{platform.machine()}, {os.cpu_count()} cores, CPU only, torch {torch.__version__}, {torch.get_num_threads()} threads"
    text = (
        f"# DCM and update step cost on {args.model}\n\n"
        f"Command: `.venv/bin/python analyses/bench_dcm.py --model {args.model} --batch {args.batch} "
        f"--length {args.length} --reps {args.reps}`\n\nMachine: {machine}. Batch {args.batch} prefixes of "
        f"{min(lengths)}-{max(lengths)} tokens ({n_tokens} tokens, right-padded to {seq}); median of {args.reps} "
        f"after a warm-up. Measured fp32 matmul throughput ({n_tokens}x{cfg.d_model} @ {cfg.d_model}x{cfg.d_mlp}): "
        f"**{gflops:.0f} GFLOP/s**. Peak RSS {peak:,.0f} MB.\n\n{df.to_markdown()}\n\n"
        f"Two-logit readout vs full logits: **{speedup:.1f}x faster** per step; with the prefix KV cache "
        f"(DCM's default for positions='last': the mask never touches the prefix, so its keys/values are "
        f"computed once per dataset and each step runs one token per example) **{cached_speedup:.0f}x faster**. "
        f"FLOP floors: the step's counted matmul FLOPs at the measured throughput; x_floor = seconds / floor.\n"
    )
    print(text)
    (HERE / "bench_dcm.md").write_text(text)
    df.to_csv(HERE / "bench_dcm.csv")


if __name__ == "__main__":
    main()
