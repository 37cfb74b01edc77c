"""The ``bridge`` backend: an in-memory HF causal LM wrapped by TransformerLens 4's ``TransformerBridge``.

The bridge runs the HF model itself: its weights stay the HF parameters (``W_Q`` and friends are views of
them), so nothing is converted and nothing has to be converted back. Compatibility mode gives the
TransformerLens 3 hook names cca_tl intervenes at; ``no_processing=True`` keeps the raw weights, as the
hooked backend loads them (folding norms would make the weights something else than the HF model's).
What the bridge does with each layout was measured first (``analyses/tl4_probe.md``).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from cca_tl.backend import BRIDGE_REFUSED, require
from cca_tl.convert import hf_architecture_of
from cca_tl.errors import BackendError, ModelLoadError
from cca_tl.arch import FAMILIES
from cca_tl.provenance import ModelProvenance


def bridge_from_hf(hf_model: Any, tokenizer: Any = None, *, name: str, source: str = "hf-object",
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   details: dict[str, Any] | None = None) -> Any:
    """``hf_model`` behind a ``TransformerBridge`` in compatibility mode without weight processing, with
    the same :class:`ModelProvenance` a hooked model carries. The bridge holds ``hf_model`` itself (no copy):
    the caller hands it over."""
    require("bridge")
    from transformer_lens.model_bridge import TransformerBridge

    arch = hf_architecture_of(hf_model)
    if arch in BRIDGE_REFUSED:
        raise BackendError(f"{arch} is not served on the bridge backend: {BRIDGE_REFUSED[arch]}. "
                           "Use backend='hooked'.")
    if arch not in FAMILIES:
        raise ModelLoadError(f"{arch} is not a supported family; supported: {sorted(FAMILIES)}")
    hf_model.config.architectures = [arch]  # what the bridge picks its adapter by (a config-built model lacks it)
    hf_config = copy.deepcopy(hf_model.config)
    hf_model = hf_model.to(device=device, dtype=dtype).eval()
    bridge = TransformerBridge.boot_transformers(arch, hf_model=hf_model, tokenizer=tokenizer, device=device,
                                                 dtype=dtype)
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    bridge.cfg.model_name = name
    bridge.cfg.original_architecture = arch
    bridge.eval()
    bridge.cca_provenance = ModelProvenance(name=name, source=source, hf_architecture=arch, hf_config=hf_config,
                                            details=dict(details or {}, backend="bridge"))
    return bridge


def model_from_hf(hf_model: Any, tokenizer: Any = None, *, backend: str = "hooked", name: str,
                  source: str = "hf-object", dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                  n_ctx: int | None = None, details: dict[str, Any] | None = None, release_hf: bool = False) -> Any:
    """An in-memory HF causal LM as the ``backend``'s model: a HookedTransformer (converted, no weight
    processing; :func:`cca_tl.convert.hooked_from_hf`) or a bridge over it (:func:`bridge_from_hf`)."""
    if require(backend) == "hooked":
        from cca_tl.convert import hooked_from_hf

        return hooked_from_hf(hf_model, tokenizer, name=name, source=source, dtype=dtype, device=device, n_ctx=n_ctx,
                              details=details, release_hf=release_hf)
    if n_ctx is not None and n_ctx != getattr(hf_model.config, "max_position_embeddings", n_ctx):
        raise BackendError("n_ctx cannot be changed on the bridge backend: the bridge runs the HF model as it is.")
    return bridge_from_hf(hf_model, tokenizer, name=name, source=source, dtype=dtype, device=device, details=details)


@contextmanager
def attention_sees_the_cache(bridge: Any) -> Iterator[None]:
    """Within the block, the bridge's attention modules find transformers' key/value cache.

    transformers 5.25 hands each attention layer its cache as ``cache=``; TransformerLens 4.3's attention
    bridges look for ``past_key_values`` (or ``layer_past``) only, so a cached decoding step silently
    ignores every earlier token (measured on tiny-gemma3: the cache stays empty and the second token's
    logits are off by 0.58). A keyword pre-hook hands the cache over under the old name too."""
    def also_as_past_key_values(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs = dict(kwargs, past_key_values=kwargs["cache"])
        return args, kwargs

    handles = [m.register_forward_pre_hook(also_as_past_key_values, with_kwargs=True)
               for m in bridge.modules() if hasattr(type(m), "_update_kv_cache")]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def hf_of(model: Any) -> Any:
    """The HF model a bridge runs (its parameters are the model's weights)."""
    hf = getattr(model, "original_model", None)
    if hf is None:
        raise BackendError(f"{type(model).__name__} is not a TransformerBridge")
    return hf


__all__ = ["attention_sees_the_cache", "bridge_from_hf", "hf_of", "model_from_hf"]
