"""The architecture table: how each HuggingFace family maps to a HookedTransformer and back.

One :class:`Family` per HF architecture class says everything the rest of the package needs to know about
it, so loading (:mod:`cca_tl.models`), the component registry (:mod:`cca_tl.components`) and export
(:mod:`cca_tl.export`) read the same row:

* ``tl_config``: the HF config → TransformerLens config derivation. TL 3.9 derives configs from an HF
  config only for some families (Llama, Qwen2/3, Mistral, GPT-NeoX); Gemma-2/3 and OLMo-2 it knows only by
  official hub name, and GPT-2's derivation reads ``n_ctx``, which transformers 5 no longer has. Those are
  derived here, field for field as TL's own official-model tables set them.
* ``layout``: which HF parameter naming the weights go back to (``llama``: ``q_proj``/``up_proj``...,
  ``gpt2``: Conv1D ``c_attn``/``c_fc``, ``neox``: fused per-head ``query_key_value``);
* ``norms``: where the RMS/LayerNorms sit (``pre``, Gemma's ``sandwich``, OLMo-2's ``post``), and
  ``qk_norm``: per head (Gemma-3, Qwen3) or over the whole projection (OLMo-2);
* ``biases``: which bias families really exist (TL keeps zero placeholders for the others, and a
  component's weights never include a placeholder, or the edit could not be exported).

* ``convert``: the HF → TL weight mapping where TL's own converter falls short (grouped-query OLMo-2).

Families TL 3.9 cannot represent are refused at load with the reason (:class:`~cca_tl.errors.ModelLoadError`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Literal

from cca_tl.errors import ModelLoadError

#: TL allocates an ``n_ctx x n_ctx`` causal mask per layer and rotary tables of ``n_ctx`` rows; longer
#: contexts on request only (``load_model(..., n_ctx=...)``).
MAX_DEFAULT_CTX = 8192

Layout = Literal["llama", "gpt2", "neox"]
BiasFamily = Literal["qkv", "o", "mlp"]


@dataclass(frozen=True)
class Family:
    """How one HF architecture differs from TransformerLens' parameter layout."""

    architecture: str
    layout: Layout
    tl_config: Callable[[Any], dict[str, Any]]
    biases: Callable[[Any], frozenset[str]]
    norms: Literal["pre", "sandwich", "post"] = "pre"
    qk_norm: Literal[None, "head", "full"] = None
    embed_scale: bool = False  # TL's W_E = embed_tokens * sqrt(d_model)  (Gemma)
    norm_offset: float = 0.0  # TL's norm weight = HF weight + offset     (Gemma's 1 + w)
    layer_norm: bool = False  # LayerNorm with biases (GPT-2, NeoX) rather than RMSNorm
    #: HF model -> TL state dict, where TL 3.9's own converter cannot be used (``None``: TL's)
    convert: Callable[[Any, Any], dict[str, Any]] | None = None


# ----------------------------------------------------------------------------------------------------
# HF config -> TL config
# ----------------------------------------------------------------------------------------------------


def _rope(hf_config: Any, layer_type: str = "full_attention") -> dict[str, Any]:
    """The rope parameters (flat, or nested per layer type as Gemma-3 stores them); only default rope."""
    rope = dict(getattr(hf_config, "rope_parameters", None) or {})
    if isinstance(rope.get(layer_type), dict):
        rope = rope[layer_type]
    kind = rope.get("rope_type", "default")
    if kind != "default":
        raise ModelLoadError(
            f"{type(hf_config).__name__} with rope scaling {kind!r} is not supported by cca_tl's "
            "TransformerLens conversion (only the default rope is)."
        )
    if "rope_theta" not in rope and getattr(hf_config, "rope_theta", None) is not None:
        rope["rope_theta"] = hf_config.rope_theta
    return rope


def _ctx(hf_config: Any, field: str = "max_position_embeddings") -> int:
    return min(int(getattr(hf_config, field)), MAX_DEFAULT_CTX)


def _rotary_rms(c: Any, d_head: int) -> dict[str, Any]:
    """Fields every Llama-shaped model (RMSNorm, rotary, gated MLP) shares."""
    return dict(
        d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=_ctx(c), eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        initializer_range=c.initializer_range, normalization_type="RMS", final_rms=True,
        positional_embedding_type="rotary", rotary_dim=d_head, rotary_adjacent_pairs=False,
        rotary_base=float(_rope(c).get("rope_theta", 10000.0)), gated_mlp=True, use_attn_scale=True,
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
        use_qk_norm=True, rotary_base=float(_rope(c, "full_attention").get("rope_theta", 1_000_000.0)),
        rotary_base_local=float(_rope(c, "sliding_attention").get("rope_theta", 10_000.0)),
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


def _tl_derived(architecture: str) -> Callable[[Any], dict[str, Any]]:
    """TL 3.9's own derivation (it reads a saved config directory, offline), with the context capped."""

    def derive(c: Any) -> dict[str, Any]:
        from transformer_lens.loading_from_pretrained import convert_hf_model_config

        with tempfile.TemporaryDirectory(prefix="cca_tl_cfg_") as tmp:
            c.save_pretrained(tmp)
            try:
                cfg = convert_hf_model_config(tmp)
            except (NotImplementedError, ValueError, AttributeError) as exc:
                raise ModelLoadError(f"TransformerLens cannot convert this {architecture}: {exc}") from exc
        if cfg.get("positional_embedding_type") == "rotary":
            _rope(c)  # refuse rope scaling TL would silently ignore
            cfg["n_ctx"] = _ctx(c)
        for key in ("trust_remote_code", "tokenizer_name"):  # the temporary directory holds no tokenizer
            cfg.pop(key, None)
        return cfg

    return derive


def _neox_tl_config(c: Any) -> dict[str, Any]:
    if not getattr(c, "attention_bias", True):
        raise ModelLoadError("GPT-NeoX with attention_bias=False is not supported (TL's conversion needs biases).")
    return _tl_derived("GPTNeoXForCausalLM")(c)


def _qwen3_tl_config(c: Any) -> dict[str, Any]:
    if getattr(c, "attention_bias", False):
        raise ModelLoadError("Qwen3 with attention_bias=True is not supported (TL's conversion drops biases).")
    return _tl_derived("Qwen3ForCausalLM")(c)


def _none(_: Any) -> frozenset[str]:
    return frozenset()


def _all_biases(_: Any) -> frozenset[str]:
    return frozenset({"qkv", "o", "mlp"})


def _llama_biases(c: Any) -> frozenset[str]:
    biases = {"qkv", "o"} if getattr(c, "attention_bias", False) else set()
    return frozenset(biases | ({"mlp"} if getattr(c, "mlp_bias", False) else set()))


FAMILIES: dict[str, Family] = {f.architecture: f for f in (
    Family("Gemma3ForCausalLM", "llama", gemma3_tl_config, _none, norms="sandwich", qk_norm="head",
           embed_scale=True, norm_offset=1.0),
    Family("Gemma2ForCausalLM", "llama", gemma2_tl_config, _none, norms="sandwich",
           embed_scale=True, norm_offset=1.0),
    Family("Olmo2ForCausalLM", "llama", olmo2_tl_config, _none, norms="post", qk_norm="full",
           convert=convert_olmo2),
    Family("Qwen3ForCausalLM", "llama", _qwen3_tl_config, _none, qk_norm="head"),
    Family("Qwen2ForCausalLM", "llama", _tl_derived("Qwen2ForCausalLM"), lambda c: frozenset({"qkv"})),
    Family("LlamaForCausalLM", "llama", _tl_derived("LlamaForCausalLM"), _llama_biases),
    Family("MistralForCausalLM", "llama", _tl_derived("MistralForCausalLM"), _none),
    Family("GPT2LMHeadModel", "gpt2", gpt2_tl_config, _all_biases, layer_norm=True),
    Family("GPTNeoXForCausalLM", "neox", _neox_tl_config, _all_biases, layer_norm=True),
)}


def family(architecture: str | None) -> Family:
    """The table row for an HF architecture; :class:`ModelLoadError` names the supported ones."""
    if architecture not in FAMILIES:
        raise ModelLoadError(
            f"Architecture {architecture!r} is not supported by cca_tl; supported: {', '.join(FAMILIES)}."
        )
    return FAMILIES[architecture]


def tl_config_dict(hf_config: Any) -> dict[str, Any]:
    """The TransformerLens config (a dict for ``HookedTransformerConfig``) of an HF causal-LM config."""
    archs = getattr(hf_config, "architectures", None) or []
    fam = family(archs[0] if archs else None)
    cfg = fam.tl_config(hf_config)
    cfg["original_architecture"] = fam.architecture
    return cfg


# ----------------------------------------------------------------------------------------------------
# Where a component's weights live in the HF checkpoint (for people reading the component table)
# ----------------------------------------------------------------------------------------------------

_HF_SLICES: dict[Layout, dict[str, tuple[str, str]]] = {
    # kind: (authors' slices, what the extended set adds); h = head, g = kv head, n = neuron, d = d_head
    "llama": {
        "q": ("self_attn.q_proj.weight rows [h·d, (h+1)·d)", ""),
        "k": ("self_attn.k_proj.weight rows [g·d, (g+1)·d)", ""),
        "v": ("self_attn.v_proj.weight rows [g·d, (g+1)·d)", ""),
        "z": ("self_attn.o_proj.weight columns [h·d, (h+1)·d)", ""),
        "neuron": ("mlp.up_proj.weight row n", "mlp.gate_proj.weight row n, mlp.down_proj.weight column n"),
    },
    "gpt2": {
        "q": ("attn.c_attn.weight columns [h·d, (h+1)·d) (+ bias)", ""),
        "k": ("attn.c_attn.weight columns d_model + [h·d, (h+1)·d) (+ bias)", ""),
        "v": ("attn.c_attn.weight columns 2·d_model + [h·d, (h+1)·d) (+ bias)", ""),
        "z": ("attn.c_proj.weight rows [h·d, (h+1)·d)", ""),
        "neuron": ("mlp.c_fc.weight column n (+ bias)", "mlp.c_proj.weight row n"),
    },
    "neox": {  # the fused matrix holds per head a block of 3·d rows: q, then k, then v
        "q": ("attention.query_key_value.weight rows [3h·d, (3h+1)·d) (+ bias)", ""),
        "k": ("attention.query_key_value.weight rows [(3h+1)·d, (3h+2)·d) (+ bias)", ""),
        "v": ("attention.query_key_value.weight rows [(3h+2)·d, (3h+3)·d) (+ bias)", ""),
        "z": ("attention.dense.weight columns [h·d, (h+1)·d)", ""),
        "neuron": ("mlp.dense_h_to_4h.weight row n (+ bias)", "mlp.dense_4h_to_h.weight column n"),
    },
}
_LAYER_PREFIX: dict[Layout, str] = {"llama": "model.layers.{L}.", "gpt2": "transformer.h.{L}.",
                                    "neox": "gpt_neox.layers.{L}."}


def hf_slices(architecture: str | None, kind: str, weight_set: str = "authors") -> str:
    """Where one unit of ``kind`` lives in the HF checkpoint, in words (``""`` for pure-TL models)."""
    if architecture not in FAMILIES:
        return ""
    layout = FAMILIES[architecture].layout
    authors, extra = _HF_SLICES[layout][kind]
    text = authors if weight_set == "authors" or not extra else f"{authors}; {extra}"
    return _LAYER_PREFIX[layout] + text


# ----------------------------------------------------------------------------------------------------
# Published configs of real checkpoints (numbers only; no weights)
# ----------------------------------------------------------------------------------------------------


def published_config_names() -> list[str]:
    """Names of the HF configs shipped with the package (``cca_tl/model_configs/*.json``)."""
    folder = resources.files("cca_tl") / "model_configs"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_hf_config(name_or_path: str | Path, **overrides: Any) -> Any:
    """An HF config from a shipped name (``gemma-2-2b-it``), a ``config.json`` file or a model directory,
    offline; ``overrides`` replace fields (e.g. fewer layers for a benchmark at shrunken depth)."""
    from transformers import AutoConfig

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        shipped = resources.files("cca_tl") / "model_configs" / f"{str(name_or_path).lower()}.json"
        if not shipped.is_file():
            raise ModelLoadError(
                f"No config {str(name_or_path)!r}: pass a config.json, a model directory, or one of "
                f"{', '.join(published_config_names())}."
            )
        path = Path(str(shipped))
    try:
        doc = json.loads(path.read_text())
        doc.pop("_source", None)
        if "num_hidden_layers" in overrides:
            doc.pop("layer_types", None)  # derived again for the new depth
        doc.update(overrides)
        return AutoConfig.for_model(doc.pop("model_type"), **doc)
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not an HF model config: {type(exc).__name__}: {exc}") from exc
