"""The architecture layer: what cca_tl knows of each HuggingFace family, as data, and nothing above it.

The table :data:`FAMILIES` has one row per HF architecture class (the way transformers keeps its string
registries): its parameter layout, its HF → TransformerLens config derivation, which biases really exist,
where its norms sit, and its own weight conversion where TransformerLens 3.9's falls short. Each layout is
one module — :mod:`~cca_tl.arch.llama`, :mod:`~cca_tl.arch.gpt2`, :mod:`~cca_tl.arch.neox` — holding its
config derivations, its TL → HF inverse (``hf_layers``), its embedding names and a description of where a
component's weights live in the checkpoint. Loading (:mod:`cca_tl.convert`), the component registry
(:mod:`cca_tl.components`), export (:mod:`cca_tl.export`) and the tiny test models read it.

Adding a family of a known layout is one row here (and a tiny config in :mod:`cca_tl.testing`); a new
layout is one module beside the three. Families TL 3.9 cannot represent are refused at load with the
reason (:class:`~cca_tl.errors.ModelLoadError`). This layer imports nothing of cca_tl but its errors.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from cca_tl.arch import gpt2, llama, neox
from cca_tl.arch.common import MAX_DEFAULT_CTX, BiasGroup, Family, HFUnit, Layout, TLParams, tl_derived
from cca_tl.arch.gpt2 import gpt2_tl_config
from cca_tl.arch.llama import (convert_olmo2, gemma2_tl_config, gemma3_tl_config, llama_biases, olmo2_tl_config,
                               qwen3_tl_config)
from cca_tl.arch.neox import neox_tl_config
from cca_tl.arch.published import load_hf_config, published_config_names
from cca_tl.errors import ModelLoadError

#: The parameter layouts, each a module with ``hf_layers``, ``EMBEDDINGS``, ``HF_SLICES``, ``HF_UNITS``,
#: ``LAYER_PREFIX``.
LAYOUTS: dict[str, ModuleType] = {"llama": llama, "gpt2": gpt2, "neox": neox}


def _none(_: Any) -> frozenset[str]:
    return frozenset()


def _all_biases(_: Any) -> frozenset[str]:
    return frozenset({"qkv", "o", "mlp"})


def _qkv_only(_: Any) -> frozenset[str]:
    return frozenset({"qkv"})


FAMILIES: dict[str, Family] = {f.architecture: f for f in (
    Family("Gemma3ForCausalLM", "llama", gemma3_tl_config, _none, norms="sandwich", qk_norm="head",
           embed_scale=True, norm_offset=1.0),
    Family("Gemma2ForCausalLM", "llama", gemma2_tl_config, _none, norms="sandwich",
           embed_scale=True, norm_offset=1.0),
    Family("Olmo2ForCausalLM", "llama", olmo2_tl_config, _none, norms="post", qk_norm="full",
           convert=convert_olmo2),
    Family("Qwen3ForCausalLM", "llama", qwen3_tl_config, _none, qk_norm="head"),
    Family("Qwen2ForCausalLM", "llama", tl_derived("Qwen2ForCausalLM"), _qkv_only),
    Family("LlamaForCausalLM", "llama", tl_derived("LlamaForCausalLM"), llama_biases),
    Family("MistralForCausalLM", "llama", tl_derived("MistralForCausalLM"), _none),
    Family("GPT2LMHeadModel", "gpt2", gpt2_tl_config, _all_biases, layer_norm=True),
    Family("GPTNeoXForCausalLM", "neox", neox_tl_config, _all_biases, layer_norm=True),
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


def layout(architecture: str) -> ModuleType:
    """The layout module of a supported HF architecture."""
    return LAYOUTS[family(architecture).layout]


def hf_slices(architecture: str | None, kind: str, weight_set: str = "authors") -> str:
    """Where one unit of ``kind`` lives in the HF checkpoint, in words (``""`` for pure-TL models)."""
    if architecture not in FAMILIES:
        return ""
    module = layout(architecture)
    authors, extra = module.HF_SLICES[kind]
    text = authors if weight_set == "authors" or not extra else f"{authors}; {extra}"
    return module.LAYER_PREFIX + text


def hf_units(architecture: str | None) -> tuple[str, dict[str, tuple[tuple[HFUnit, ...], tuple[HFUnit, ...]]]] | None:
    """(layer prefix, per kind the HF slices of one unit) for editing the HF parameters directly (the bridge
    backend); None where the layout has no such table (:data:`HF_UNITS` of its module says why)."""
    if architecture not in FAMILIES:
        return None
    module = layout(architecture)
    return None if module.HF_UNITS is None else (module.LAYER_PREFIX.replace("{L}", "{layer}"), module.HF_UNITS)


__all__ = ["FAMILIES", "LAYOUTS", "MAX_DEFAULT_CTX", "BiasGroup", "Family", "HFUnit", "hf_units", "Layout", "TLParams", "family",
           "hf_slices", "layout", "load_hf_config", "published_config_names", "tl_config_dict", "convert_olmo2",
           "gemma2_tl_config", "gemma3_tl_config", "gpt2_tl_config", "olmo2_tl_config"]
