"""The ``neox`` parameter layout (GPT-NeoX, Pythia): one fused ``query_key_value`` whose rows are grouped
per head as ``(head, q/k/v, d_head)``, LayerNorms with biases, parallel attention and MLP.

Here: the HF → TL config derivation (TL 3.9's own, refusing what it would silently get wrong), the TL → HF
inverse (:func:`hf_layers`), and where a component's weights live in the checkpoint.
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from torch import Tensor

from cca_tl.arch.common import Family, TLParams, tl_derived
from cca_tl.errors import ModelLoadError

LAYER_PREFIX = "gpt_neox.layers.{L}."
#: (input embedding, output head) parameter names. transformers >= 5.14 calls the head ``lm_head`` (earlier
#: ``embed_out``); :func:`cca_tl.export.fit_to_hf_layout` renames it to what the installed class has.
EMBEDDINGS = ("gpt_neox.embed_in.weight", "lm_head.weight")

#: Where one unit of each kind lives in the checkpoint, in words: (authors' slices, what the extended
#: set adds); h = head, g = kv head, n = neuron, d = d_head.
HF_SLICES: dict[str, tuple[str, str]] = {  # the fused matrix holds per head a block of 3·d rows: q, then k, then v
    "q": ("attention.query_key_value.weight rows [3h·d, (3h+1)·d) (+ bias)", ""),
    "k": ("attention.query_key_value.weight rows [(3h+1)·d, (3h+2)·d) (+ bias)", ""),
    "v": ("attention.query_key_value.weight rows [(3h+2)·d, (3h+3)·d) (+ bias)", ""),
    "z": ("attention.dense.weight columns [h·d, (h+1)·d)", ""),
    "neuron": ("mlp.dense_h_to_4h.weight row n (+ bias)", "mlp.dense_4h_to_h.weight column n"),
}

#: No HF slices for the bridge backend: the bridge is refused for GPT-NeoX (analyses/tl4_probe.md).
HF_UNITS = None


def neox_tl_config(c: Any) -> dict[str, Any]:
    """GPT-NeoX through TransformerLens' own derivation; refused without attention biases."""
    if not getattr(c, "attention_bias", True):
        raise ModelLoadError("GPT-NeoX with attention_bias=False is not supported (TL's conversion needs biases).")
    return tl_derived("GPTNeoXForCausalLM")(c)


def hf_layers(p: TLParams, fam: Family, cfg: Any, biases: frozenset[str]) -> dict[str, Tensor]:
    """GPT-NeoX (Pythia): the fused ``query_key_value`` rows run (head, q/k/v, d_head)."""
    sd: dict[str, Tensor] = {}
    for layer in range(cfg.n_layers):
        pre, blk = f"gpt_neox.layers.{layer}", f"blocks.{layer}"
        w = torch.stack([p(f"{blk}.attn.W_{x}") for x in "QKV"])  # [qkv, i, m, h]
        sd[f"{pre}.attention.query_key_value.weight"] = einops.rearrange(w, "qkv i m h -> (i qkv h) m")
        b = torch.stack([p(f"{blk}.attn.b_{x}") for x in "QKV"])  # [qkv, i, h]
        sd[f"{pre}.attention.query_key_value.bias"] = einops.rearrange(b, "qkv i h -> (i qkv h)")
        sd[f"{pre}.attention.dense.weight"] = einops.rearrange(p(f"{blk}.attn.W_O"), "i h m -> m (i h)")
        sd[f"{pre}.attention.dense.bias"] = p(f"{blk}.attn.b_O")
        for ln, tl_ln in (("input_layernorm", "ln1"), ("post_attention_layernorm", "ln2")):
            sd[f"{pre}.{ln}.weight"] = p(f"{blk}.{tl_ln}.w")
            sd[f"{pre}.{ln}.bias"] = p(f"{blk}.{tl_ln}.b")
        sd[f"{pre}.mlp.dense_h_to_4h.weight"] = p(f"{blk}.mlp.W_in").T
        sd[f"{pre}.mlp.dense_h_to_4h.bias"] = p(f"{blk}.mlp.b_in")
        sd[f"{pre}.mlp.dense_4h_to_h.weight"] = p(f"{blk}.mlp.W_out").T
        sd[f"{pre}.mlp.dense_4h_to_h.bias"] = p(f"{blk}.mlp.b_out")
    sd["gpt_neox.final_layer_norm.weight"] = p("ln_final.w")
    sd["gpt_neox.final_layer_norm.bias"] = p("ln_final.b")
    return sd
