"""The ``gpt2`` parameter layout: Conv1D weights stored ``[in, out]``, ``c_attn = [W_Q | W_K | W_V]`` along
its columns, learned positions, LayerNorm weights and biases, tied embeddings.

Here: the HF → TL config derivation (TL 3.9's reads ``n_ctx``, which transformers 5 no longer has), the
TL → HF inverse (:func:`hf_layers`), and where a component's weights live in the checkpoint.
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from torch import Tensor

from cca_tl.arch.common import Family, TLParams
from cca_tl.errors import ModelLoadError

LAYER_PREFIX = "transformer.h.{L}."
#: (input embedding, output head) parameter names.
EMBEDDINGS = ("transformer.wte.weight", "lm_head.weight")

#: Where one unit of each kind lives in the checkpoint, in words: (authors' slices, what the extended
#: set adds); h = head, g = kv head, n = neuron, d = d_head.
HF_SLICES: dict[str, tuple[str, str]] = {
    "q": ("attn.c_attn.weight columns [h·d, (h+1)·d) (+ bias)", ""),
    "k": ("attn.c_attn.weight columns d_model + [h·d, (h+1)·d) (+ bias)", ""),
    "v": ("attn.c_attn.weight columns 2·d_model + [h·d, (h+1)·d) (+ bias)", ""),
    "z": ("attn.c_proj.weight rows [h·d, (h+1)·d)", ""),
    "neuron": ("mlp.c_fc.weight column n (+ bias)", "mlp.c_proj.weight row n"),
}

#: No HF slices for the bridge backend: the bridge splits ``c_attn`` into separate q/k/v modules, so a component has no slice of the HF weight its forward reads (analyses/tl4_probe.md).
HF_UNITS = None


def gpt2_tl_config(c: Any) -> dict[str, Any]:
    """GPT-2: LayerNorm with biases, learned positions, Conv1D projections, tied embeddings.
    ``n_ctx`` is the number of learned positions (TL would otherwise cut rows export needs)."""
    if getattr(c, "reorder_and_upcast_attn", False):
        raise ModelLoadError("GPT-2 with reorder_and_upcast_attn=True has no TransformerLens counterpart.")
    return dict(
        d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
        n_layers=c.n_layer, n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size,
        act_fn=c.activation_function, use_attn_scale=getattr(c, "scale_attn_weights", True),
        use_local_attn=False, scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx,
        normalization_type="LN", positional_embedding_type="standard", initializer_range=c.initializer_range,
        original_architecture="GPT2LMHeadModel",
    )


def hf_layers(p: TLParams, fam: Family, cfg: Any, biases: frozenset[str]) -> dict[str, Tensor]:
    """GPT-2: Conv1D weights ``[in, out]``; ``c_attn`` holds q, k and v side by side along its columns."""
    sd: dict[str, Tensor] = {"transformer.wpe.weight": p("pos_embed.W_pos")}
    for layer in range(cfg.n_layers):
        pre, blk = f"transformer.h.{layer}", f"blocks.{layer}"
        qkv = [einops.rearrange(p(f"{blk}.attn.W_{x}"), "i m h -> m (i h)") for x in "QKV"]
        sd[f"{pre}.attn.c_attn.weight"] = torch.cat(qkv, dim=1)
        sd[f"{pre}.attn.c_attn.bias"] = torch.cat([p(f"{blk}.attn.b_{x}").reshape(-1) for x in "QKV"])
        sd[f"{pre}.attn.c_proj.weight"] = einops.rearrange(p(f"{blk}.attn.W_O"), "i h m -> (i h) m")
        sd[f"{pre}.attn.c_proj.bias"] = p(f"{blk}.attn.b_O")
        for ln, tl_ln in (("ln_1", "ln1"), ("ln_2", "ln2")):
            sd[f"{pre}.{ln}.weight"] = p(f"{blk}.{tl_ln}.w")
            sd[f"{pre}.{ln}.bias"] = p(f"{blk}.{tl_ln}.b")
        sd[f"{pre}.mlp.c_fc.weight"] = p(f"{blk}.mlp.W_in")
        sd[f"{pre}.mlp.c_fc.bias"] = p(f"{blk}.mlp.b_in")
        sd[f"{pre}.mlp.c_proj.weight"] = p(f"{blk}.mlp.W_out")
        sd[f"{pre}.mlp.c_proj.bias"] = p(f"{blk}.mlp.b_out")
    sd["transformer.ln_f.weight"] = p("ln_final.w")
    sd["transformer.ln_f.bias"] = p("ln_final.b")
    return sd
