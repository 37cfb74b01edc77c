"""What every parameter layout shares: the family row's type, rope and context rules, TransformerLens' own
config derivation, and a reader of a model's TransformerLens parameters for the inverse conversion."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:  # an annotation only: the arch layer runs under either TransformerLens
    from transformer_lens import HookedTransformer

from cca_tl.errors import ExportError, ModelLoadError

#: TL allocates an ``n_ctx x n_ctx`` causal mask per layer and rotary tables of ``n_ctx`` rows; longer
#: contexts on request only (``load_model(..., n_ctx=...)``).
MAX_DEFAULT_CTX = 8192

Layout = Literal["llama", "gpt2", "neox"]
BiasGroup = Literal["qkv", "o", "mlp"]


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


@dataclass(frozen=True)
class HFUnit:
    """Where one unit of a kind lives in the HF model: ``block`` rows (axis 0) or columns (axis 1) of ``param``
    (a name under the layer prefix) starting at unit ``i · block``; ``block`` is ``"head"`` (``d_head``) or
    ``"unit"`` (1). ``bias`` names the bias group that must exist for the slice to be real."""

    param: str
    axis: int
    block: Literal["head", "unit"]
    bias: BiasGroup | None = None


def rope_parameters(hf_config: Any, layer_type: str = "full_attention") -> dict[str, Any]:
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


def context_length(hf_config: Any, field: str = "max_position_embeddings") -> int:
    """The model's context, capped at :data:`MAX_DEFAULT_CTX`."""
    return min(int(getattr(hf_config, field)), MAX_DEFAULT_CTX)


def tl_derived(architecture: str) -> Callable[[Any], dict[str, Any]]:
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
            rope_parameters(c)  # refuse rope scaling TL would silently ignore
            cfg["n_ctx"] = context_length(c)
        for key in ("trust_remote_code", "tokenizer_name"):  # the temporary directory holds no tokenizer
            cfg.pop(key, None)
        return cfg

    return derive


class TLParams:
    """A model's TransformerLens parameters for the inverse conversion, handed out once each: every one must be
    mapped to an HF tensor or be an all-zero placeholder (what :meth:`unused` reports was neither)."""

    def __init__(self, model: HookedTransformer, arch: str):
        self.arch = arch
        self.tl = {name: p.detach() for name, p in model.named_parameters()}
        self.used: set[str] = set()

    def __call__(self, name: str) -> Tensor:
        self.used.add(name)
        return self.tl[name]

    def kv(self, layer: int, leaf: str) -> Tensor:
        """TL names grouped-query K/V ``_W_K``; plain attention ``W_K``."""
        grouped = f"blocks.{layer}.attn._{leaf}"
        return self(grouped if grouped in self.tl else f"blocks.{layer}.attn.{leaf}")

    def must_be_zero(self, name: str) -> None:
        if name not in self.tl:
            return
        self.used.add(name)
        if torch.count_nonzero(self.tl[name]):
            raise ExportError(
                f"{name} is non-zero, but {self.arch} has no such parameter (TransformerLens keeps a zero "
                "placeholder). An edit touched it, or weights were processed (fold_value_biases moves "
                "value biases into b_O); it cannot be exported. Edit only the slices the component "
                "registry names for this model."
            )

    def unused(self) -> list[str]:
        return sorted(set(self.tl) - self.used)
