"""The ``llama`` parameter layout: Gemma-2/3, OLMo-2, Qwen2/3, Llama, Mistral — separate ``q/k/v/o_proj``
and gated-MLP projections, norms before (most), around (Gemma's sandwich) or after (OLMo-2) each sublayer.

Here: the HF → TL config derivations TransformerLens 3.9 lacks (Gemma-2/3 and OLMo-2 it knows only by hub
name), OLMo-2's weight conversion (TL's fails for grouped-query OLMo-2), the TL → HF inverse
(:func:`hf_layers`), and where a component's weights live in the checkpoint.
"""

from __future__ import annotations

from typing import Any

import einops
from torch import Tensor

from cca_tl.arch.common import Family, HFUnit, TLParams, context_length, rope_parameters, tl_derived
from cca_tl.errors import ModelLoadError

LAYER_PREFIX = "model.layers.{L}."
#: (input embedding, output head) parameter names.
EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")

#: Where one unit of each kind lives in the checkpoint, in words: (authors' slices, what the extended
#: set adds); h = head, g = kv head, n = neuron, d = d_head.
HF_SLICES: dict[str, tuple[str, str]] = {
    "q": ("self_attn.q_proj.weight rows [h·d, (h+1)·d)", ""),
    "k": ("self_attn.k_proj.weight rows [g·d, (g+1)·d)", ""),
    "v": ("self_attn.v_proj.weight rows [g·d, (g+1)·d)", ""),
    "z": ("self_attn.o_proj.weight columns [h·d, (h+1)·d)", ""),
    "neuron": ("mlp.up_proj.weight row n", "mlp.gate_proj.weight row n, mlp.down_proj.weight column n"),
}

#: The same as data, for the bridge backend, which edits the HF parameters themselves: per kind, (authors'
#: slices, what the extended set adds). The sets match the TransformerLens slices of the registry one to one.
HF_UNITS: dict[str, tuple[tuple[HFUnit, ...], tuple[HFUnit, ...]]] = {
    kind: ((HFUnit(f"self_attn.{kind}_proj.weight", 0, "head"), HFUnit(f"self_attn.{kind}_proj.bias", 0, "head", "qkv")),
           ())
    for kind in ("q", "k", "v")
}
HF_UNITS["z"] = ((HFUnit("self_attn.o_proj.weight", 1, "head"),), ())
HF_UNITS["neuron"] = ((HFUnit("mlp.up_proj.weight", 0, "unit"), HFUnit("mlp.up_proj.bias", 0, "unit", "mlp")),
                      (HFUnit("mlp.gate_proj.weight", 0, "unit"), HFUnit("mlp.down_proj.weight", 1, "unit")))


def _rotary_rms(c: Any, d_head: int) -> dict[str, Any]:
    """Fields every Llama-shaped model (RMSNorm, rotary, gated MLP) shares."""
    return dict(
        d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=context_length(c), eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        initializer_range=c.initializer_range, normalization_type="RMS", final_rms=True,
        positional_embedding_type="rotary", rotary_dim=d_head, rotary_adjacent_pairs=False,
        rotary_base=float(rope_parameters(c).get("rope_theta", 10000.0)), gated_mlp=True, use_attn_scale=True,
    )


def _attn_types(c: Any) -> list[str]:
    return ["global" if t == "full_attention" else "local" for t in c.layer_types]


def _gemma_soft_caps_and_scale(c: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    if c.query_pre_attn_scalar != c.head_dim:  # HF scales scores by query_pre_attn_scalar ** -0.5
        cfg["attn_scale"] = float(c.query_pre_attn_scalar) ** 0.5
    if getattr(c, "final_logit_softcapping", None):
        cfg["output_logits_soft_cap"] = float(c.final_logit_softcapping)
    if getattr(c, "attn_logit_softcapping", None):
        cfg["attn_scores_soft_cap"] = float(c.attn_logit_softcapping)
    return cfg


def gemma2_tl_config(c: Any) -> dict[str, Any]:
    """Gemma-2: pre- and post-norms around attention and MLP, alternating sliding-window layers,
    attention and final-logit soft-capping, ``query_pre_attn_scalar`` (TL's gemma-2-2b entry)."""
    cfg = _rotary_rms(c, c.head_dim)
    cfg.update(
        n_key_value_heads=c.num_key_value_heads, act_fn=c.hidden_activation, use_local_attn=True,
        window_size=c.sliding_window, attn_types=_attn_types(c), use_normalization_before_and_after=True,
        original_architecture="Gemma2ForCausalLM",
    )
    return _gemma_soft_caps_and_scale(c, cfg)


def gemma3_tl_config(c: Any) -> dict[str, Any]:
    """Gemma-3: Gemma-2's layout plus per-head q/k RMSNorm and a separate rope base for local layers."""
    cfg = _rotary_rms(c, c.head_dim)
    cfg.update(
        n_key_value_heads=c.num_key_value_heads, act_fn=c.hidden_activation, use_local_attn=True,
        window_size=c.sliding_window, attn_types=_attn_types(c), use_normalization_before_and_after=True,
        use_qk_norm=True, rotary_base=float(rope_parameters(c, "full_attention").get("rope_theta", 1_000_000.0)),
        rotary_base_local=float(rope_parameters(c, "sliding_attention").get("rope_theta", 10_000.0)),
        original_architecture="Gemma3ForCausalLM",
    )
    return _gemma_soft_caps_and_scale(c, cfg)


def olmo2_tl_config(c: Any) -> dict[str, Any]:
    """OLMo-2: norms *after* attention and MLP only, q/k RMSNorm over the whole projection width; with
    grouped-query attention (OLMo-2-0325-32B) the k norm spans the kv heads only."""
    if getattr(c, "attention_bias", False):
        raise ModelLoadError("OLMo-2 with attention_bias=True is not supported (TL's conversion drops biases).")
    cfg = _rotary_rms(c, c.hidden_size // c.num_attention_heads)
    cfg.update(act_fn=c.hidden_act, original_architecture="Olmo2ForCausalLM")
    if c.num_key_value_heads not in (None, c.num_attention_heads):
        cfg["n_key_value_heads"] = c.num_key_value_heads
    return cfg


def convert_olmo2(hf_model: Any, cfg: Any) -> dict[str, Any]:
    """OLMo-2 HF weights -> TL names. TL 3.9's ``convert_olmo2_weights`` reshapes K and V with the query
    head count, which fails for grouped-query OLMo-2 (32B); this is the same mapping with K/V per kv head
    (``_W_K``/``_W_V``, the names TL's grouped-query attention uses)."""
    import einops
    import torch

    kv_heads = cfg.n_key_value_heads or cfg.n_heads
    grouped = "_" if cfg.n_key_value_heads else ""
    zeros = lambda *shape: torch.zeros(*shape, dtype=cfg.dtype)  # noqa: E731  TL's bias placeholders
    base = hf_model.model
    sd: dict[str, Any] = {"embed.W_E": base.embed_tokens.weight, "ln_final.w": base.norm.weight,
                          "unembed.W_U": hf_model.lm_head.weight.T, "unembed.b_U": zeros(cfg.d_vocab)}
    for layer, block in enumerate(base.layers):
        attn, mlp, pre = block.self_attn, block.mlp, f"blocks.{layer}"
        sd[f"{pre}.attn.W_Q"] = einops.rearrange(attn.q_proj.weight, "(n h) m -> n m h", n=cfg.n_heads)
        sd[f"{pre}.attn.{grouped}W_K"] = einops.rearrange(attn.k_proj.weight, "(n h) m -> n m h", n=kv_heads)
        sd[f"{pre}.attn.{grouped}W_V"] = einops.rearrange(attn.v_proj.weight, "(n h) m -> n m h", n=kv_heads)
        sd[f"{pre}.attn.W_O"] = einops.rearrange(attn.o_proj.weight, "m (n h) -> n h m", n=cfg.n_heads)
        sd[f"{pre}.attn.b_Q"] = zeros(cfg.n_heads, cfg.d_head)
        sd[f"{pre}.attn.{grouped}b_K"] = zeros(kv_heads, cfg.d_head)
        sd[f"{pre}.attn.{grouped}b_V"] = zeros(kv_heads, cfg.d_head)
        sd[f"{pre}.attn.b_O"] = zeros(cfg.d_model)
        sd[f"{pre}.attn.q_norm.w"] = attn.q_norm.weight
        sd[f"{pre}.attn.k_norm.w"] = attn.k_norm.weight
        sd[f"{pre}.ln1.w"] = block.post_attention_layernorm.weight  # TL applies ln1/ln2 after the sublayer
        sd[f"{pre}.ln2.w"] = block.post_feedforward_layernorm.weight
        sd[f"{pre}.mlp.W_in"] = mlp.up_proj.weight.T
        sd[f"{pre}.mlp.W_gate"] = mlp.gate_proj.weight.T
        sd[f"{pre}.mlp.W_out"] = mlp.down_proj.weight.T
        sd[f"{pre}.mlp.b_in"] = zeros(cfg.d_mlp)
        sd[f"{pre}.mlp.b_out"] = zeros(cfg.d_model)
    return sd


def qwen3_tl_config(c: Any) -> dict[str, Any]:
    if getattr(c, "attention_bias", False):
        raise ModelLoadError("Qwen3 with attention_bias=True is not supported (TL's conversion drops biases).")
    return tl_derived("Qwen3ForCausalLM")(c)


def llama_biases(c: Any) -> frozenset[str]:
    """Llama's biases exist where its config says so (``attention_bias``, ``mlp_bias``)."""
    biases = {"qkv", "o"} if getattr(c, "attention_bias", False) else set()
    return frozenset(biases | ({"mlp"} if getattr(c, "mlp_bias", False) else set()))


def hf_layers(p: TLParams, fam: Family, cfg: Any, biases: frozenset[str]) -> dict[str, Tensor]:
    """Gemma-2/3, OLMo-2, Qwen2/3, Llama, Mistral: separate q/k/v/o and gated-MLP projections."""

    def norm(name: str) -> Tensor:
        return p(name).float() - fam.norm_offset if fam.norm_offset else p(name)

    sd: dict[str, Tensor] = {}
    for layer in range(cfg.n_layers):
        pre, blk = f"model.layers.{layer}", f"blocks.{layer}"
        attn = f"{pre}.self_attn"
        sd[f"{attn}.q_proj.weight"] = einops.rearrange(p(f"{blk}.attn.W_Q"), "n m h -> (n h) m")
        sd[f"{attn}.k_proj.weight"] = einops.rearrange(p.kv(layer, "W_K"), "n m h -> (n h) m")
        sd[f"{attn}.v_proj.weight"] = einops.rearrange(p.kv(layer, "W_V"), "n m h -> (n h) m")
        sd[f"{attn}.o_proj.weight"] = einops.rearrange(p(f"{blk}.attn.W_O"), "n h m -> m (n h)")
        if "qkv" in biases:
            sd[f"{attn}.q_proj.bias"] = p(f"{blk}.attn.b_Q").reshape(-1)
            sd[f"{attn}.k_proj.bias"] = p.kv(layer, "b_K").reshape(-1)
            sd[f"{attn}.v_proj.bias"] = p.kv(layer, "b_V").reshape(-1)
        else:
            for leaf in ("b_Q", "b_K", "_b_K", "b_V", "_b_V"):
                p.must_be_zero(f"{blk}.attn.{leaf}")
        if "o" in biases:
            sd[f"{attn}.o_proj.bias"] = p(f"{blk}.attn.b_O")
        else:
            p.must_be_zero(f"{blk}.attn.b_O")
        if fam.qk_norm:
            sd[f"{attn}.q_norm.weight"] = norm(f"{blk}.attn.q_norm.w")
            sd[f"{attn}.k_norm.weight"] = norm(f"{blk}.attn.k_norm.w")
        if fam.norms == "pre":
            sd[f"{pre}.input_layernorm.weight"] = norm(f"{blk}.ln1.w")
            sd[f"{pre}.post_attention_layernorm.weight"] = norm(f"{blk}.ln2.w")
        elif fam.norms == "sandwich":
            sd[f"{pre}.input_layernorm.weight"] = norm(f"{blk}.ln1.w")
            sd[f"{pre}.post_attention_layernorm.weight"] = norm(f"{blk}.ln1_post.w")
            sd[f"{pre}.pre_feedforward_layernorm.weight"] = norm(f"{blk}.ln2.w")
            sd[f"{pre}.post_feedforward_layernorm.weight"] = norm(f"{blk}.ln2_post.w")
        else:  # OLMo-2: TL's ln1/ln2 are applied to the attention and MLP outputs
            sd[f"{pre}.post_attention_layernorm.weight"] = norm(f"{blk}.ln1.w")
            sd[f"{pre}.post_feedforward_layernorm.weight"] = norm(f"{blk}.ln2.w")
        sd[f"{pre}.mlp.up_proj.weight"] = p(f"{blk}.mlp.W_in").T
        sd[f"{pre}.mlp.gate_proj.weight"] = p(f"{blk}.mlp.W_gate").T
        sd[f"{pre}.mlp.down_proj.weight"] = p(f"{blk}.mlp.W_out").T
        if "mlp" in biases:
            sd[f"{pre}.mlp.up_proj.bias"] = p(f"{blk}.mlp.b_in")
            sd[f"{pre}.mlp.down_proj.bias"] = p(f"{blk}.mlp.b_out")
        else:
            p.must_be_zero(f"{blk}.mlp.b_in")
            p.must_be_zero(f"{blk}.mlp.b_out")
    sd["model.norm.weight"] = norm("ln_final.w")
    return sd
