"""What TransformerLens 4's TransformerBridge offers cca_tl, measured on seeded tiny models (issue 29).

    bash scripts/setup-tl4.sh                      # .venv-tl4: the same stack with transformer-lens 4.x
    .venv-tl4/bin/python analyses/tl4_probe.py     # writes analyses/tl4_probe.md

It does not import cca_tl: cca_tl's modules import ``HookedTransformer``, which TransformerLens 4 deleted, so
the package cannot be imported in that environment until the backend seam exists. The tiny models are one
per parameter layout cca_tl knows (llama-like, Gemma-3, OLMo-2 post-norm, GPT-2, GPT-NeoX), built from
configs with seeded random weights and the character tokenizer the tiny models carry (built by cca_tl's own
environment under ``~/.cache/cca_tl``), so nothing is downloaded.

For each model: does ``TransformerBridge.boot_transformers(hf_model=...)`` work offline; after
``enable_compatibility_mode(no_processing=True)`` (cca_tl loads without weight processing), how far are the
bridge's logits from the HF model's; do the five hook points DCM uses exist with HookedTransformer's shapes;
does an identity hook on all of them leave the logits bit-identical (the zero-mask invariant); does a gain
at ``hook_q`` receive a gradient; is ``W_Q`` a leaf or a view of the HF weight (where an edit must write);
and does an edit of the HF ``q_proj`` rows of one head show in ``W_Q`` and in the bridge's logits (does the
bridge's forward still follow the HF weights after it booted).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch
import transformers as tf

HOOKS = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "mlp.hook_post")
COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=256)
MODELS = {
    "llama (GQA)": ("LlamaConfig", "LlamaForCausalLM", dict(COMMON, num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen2 (qkv biases)": ("Qwen2Config", "Qwen2ForCausalLM", dict(COMMON, num_key_value_heads=2,
                                                                  tie_word_embeddings=False)),
    "gemma3 (MQA, sliding)": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                              dict(COMMON, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                                   sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                                   tie_word_embeddings=True)),
    "olmo2 (post-norm)": ("Olmo2Config", "Olmo2ForCausalLM", dict(COMMON, num_key_value_heads=4,
                                                                 tie_word_embeddings=False)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=256, n_embd=64, n_head=4, n_layer=2, n_positions=256)),
    "gpt-neox (parallel)": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                            dict(COMMON, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False)),
}
TEXT = "Q: Tom has 3 apples and buys 4 more. How many? A: 3 + 4 = 7."


def tiny_hf(config_class: str, model_class: str, fields: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    config = getattr(tf, config_class)(**fields)
    config._attn_implementation = "eager"  # the bridge forces eager attention; compare like with like
    config.architectures = [model_class]  # what the bridge picks its adapter by (from_pretrained sets it)
    return getattr(tf, model_class)(config).eval()


def q_rows(hf: torch.nn.Module, layer: int) -> tuple[torch.Tensor, tuple]:
    """The HF weight holding layer ``layer``'s query projection and the index of head 0's query in it."""
    d_head = 16
    if hasattr(hf, "transformer"):  # GPT-2: fused c_attn, a Conv1D [in, 3·d_model]: head 0's query columns
        return hf.transformer.h[layer].attn.c_attn.weight, (slice(None), slice(0, d_head))
    if hasattr(hf, "gpt_neox"):  # NeoX: fused rows [q, k, v] per head: head 0's query rows come first
        return hf.gpt_neox.layers[layer].attention.query_key_value.weight, (slice(0, d_head),)
    return hf.model.layers[layer].self_attn.q_proj.weight, (slice(0, d_head),)


def probe(name: str, spec: tuple, tokenizer) -> dict:
    from transformer_lens.model_bridge import TransformerBridge

    hf = tiny_hf(*spec)
    row: dict = dict(model=name)
    start = time.perf_counter()
    try:
        bridge = TransformerBridge.boot_transformers(spec[1], hf_model=hf, tokenizer=tokenizer)
        bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    except Exception as error:  # a family the bridge cannot serve: recorded, not fatal
        return dict(row, boots=f"no: {type(error).__name__}: {str(error)[:80]}")
    row["boots"] = f"yes ({time.perf_counter() - start:.1f} s)"
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        reference, plain = hf(ids).logits, bridge(ids)
        row["max |bridge − HF| logit"] = f"{(plain - reference).abs().max().item():.1e}"
        shapes = {}

        def record(t, hook):
            shapes[hook.name.split(".", 2)[-1]] = tuple(t.shape[2:])
            return t

        names = [f"blocks.{layer}.{h}" for layer in range(2) for h in HOOKS]
        bridge.run_with_hooks(ids, fwd_hooks=[(n, record) for n in names])
        row["hook shapes (per position)"] = "; ".join(f"{h.split('.')[-1][5:]} {shapes.get(h, 'missing')}"
                                                      for h in HOOKS)
        identity = bridge.run_with_hooks(ids, fwd_hooks=[(n, lambda t, hook: t * 1.0) for n in names])
        row["identity hooks bit-identical"] = torch.equal(identity, plain)
    gain = torch.zeros(bridge.cfg.n_heads, requires_grad=True)
    logits = bridge.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_q",
                                                    lambda t, hook: t * (1 + gain)[None, None, :, None])])
    logits[0, -1].logsumexp(-1).backward()
    row["gain at hook_q gets a gradient"] = bool(gain.grad is not None and gain.grad.abs().sum() > 0)
    w_q = bridge.blocks[1].attn.W_Q
    row["W_Q"] = f"{tuple(w_q.shape)}, {'leaf' if w_q.is_leaf else 'view of HF weight'}"
    weight, head0 = q_rows(hf, 1)
    with torch.no_grad():
        before = w_q.detach().clone()
        # random, not constant: a constant added to every input column is invisible after a LayerNorm
        # (its output sums to zero over features while the LayerNorm is fresh)
        weight[head0] += 0.5 * torch.randn(weight[head0].shape, generator=torch.Generator().manual_seed(1))
        after = bridge.blocks[1].attn.W_Q.detach()
        moved_heads = [h for h in range(after.shape[0]) if not torch.equal(after[h], before[h])]
        row["HF q edit of head 0 shows in W_Q heads"] = str(moved_heads)
        edited = bridge(ids)
        row["HF model's own logits move"] = f"{(hf(ids).logits - reference).abs().max().item():.1e}"
        row["logits move"] = f"{(edited - plain).abs().max().item():.1e}"
        row["after the edit, max |bridge − HF| logit"] = f"{(edited - hf(ids).logits).abs().max().item():.1e}"
    row["a parameter's name"] = f"`{list(bridge.named_parameters())[1][0]}`"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("tl4_probe.md")))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser("~/.cache/cca_tl/tokenizers/char256-v1"))
    table = pd.DataFrame([probe(name, spec, tokenizer) for name, spec in MODELS.items()])
    text = "\n".join([
        "# TransformerLens 4's TransformerBridge on cca_tl's layouts (issue 29)", "",
        "Command: `.venv-tl4/bin/python analyses/tl4_probe.py` (environment from `bash scripts/setup-tl4.sh`). "
        f"transformer-lens {version('transformer-lens')}, transformers {version('transformers')}, torch "
        f"{version('torch')}, {platform.machine()} CPU, no GPU. Tiny seeded models (2 layers, d_model 64, 4 heads "
        "of 16), bridge booted from the HF model object with `enable_compatibility_mode(no_processing=True)`.", "",
        table.set_index("model").T.to_markdown(), ""])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
