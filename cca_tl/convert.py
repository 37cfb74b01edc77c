"""An in-memory HF causal LM as a HookedTransformer, without weight processing, and back-compatible layout.

Why no processing: folding norms or centering weights changes the parameters, so an edited model could
not be written back to HuggingFace format. :func:`hooked_from_hf` converts with TransformerLens' own weight
conversion (through the family table, :mod:`cca_tl.arch`) and records where the model came from
(:class:`~cca_tl.provenance.ModelProvenance`) so that :mod:`cca_tl.export` can rebuild the HF config. The
embedding helpers keep a tied embedding tied across moves and dtype changes.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from cca_tl.backend import TL_MAJOR, HookedTransformer, HookedTransformerConfig

if TL_MAJOR < 4:
    from transformer_lens.components import Embed
else:  # TransformerLens 4 has no component tree: conversion to a HookedTransformer is the hooked backend's
    Embed = torch.nn.Module

from cca_tl.arch import FAMILIES, tl_config_dict
from cca_tl.provenance import ModelProvenance


def _hf_ties_embedding(hf_model: Any) -> bool:
    """Whether the HF model's input embedding and output head are one tensor."""
    head, embed = hf_model.get_output_embeddings(), hf_model.get_input_embeddings()
    return (head is not None and embed is not None and head.weight.shape == embed.weight.shape
            and head.weight.data_ptr() == embed.weight.data_ptr())


def hf_architecture_of(hf_model: Any) -> str:
    """The HF architecture class name (``Gemma3ForCausalLM`` ...), also for GGUF configs that omit it."""
    archs = getattr(hf_model.config, "architectures", None)
    return archs[0] if archs else type(hf_model).__name__


#: Per parameter leaf: the permutation TransformerLens' forward applies before its matmul. Storing the
#: parameter as a view of a contiguous tensor in that permuted layout makes TL's per-call copies
#: (``W_in.T.contiguous()``, ``rearrange(W_Q, "n m h -> (n h) m")``, ``W_U.T.contiguous()``) no-ops.
_FORWARD_LAYOUT: dict[str, tuple[int, ...]] = {
    "W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1),
    "W_O": (2, 0, 1), "W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0), "W_U": (1, 0),
}


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(range(len(perm)), key=perm.__getitem__))


@torch.no_grad()
def relayout_(model: HookedTransformer, *, keep_values: bool = True) -> HookedTransformer:
    """Store every matmul weight in the memory layout TransformerLens' forward reads it in (in place).

    Values, shapes and names are unchanged; only strides differ. Why: TL 3.9 copies weights on every
    call — the gated MLP runs ``F.linear(x, W_in.T.contiguous())`` for three matrices per layer, attention
    rearranges W_Q/W_K/W_V/W_O, and ``Unembed`` copies the transposed unembedding (671 MB on Gemma-3-270M,
    the largest single cost of a generated token). With the weights stored transposed those are views.
    Measured on Gemma-3-270M, 2 CPU cores, 32 rows x 40 greedy tokens: generation 29.9 s -> 25.9 s.
    """
    for name, param in list(model.named_parameters()):
        perm = _FORWARD_LAYOUT.get(name.rsplit(".", 1)[-1])
        if perm is None or param.dim() != len(perm):
            continue
        stored = param.detach().permute(perm)
        # keep_values=False (a model about to be loaded): fresh storage, not resident until written
        stored = stored.contiguous() if keep_values else torch.empty_like(stored, memory_format=torch.contiguous_format)
        module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        fresh = torch.nn.Parameter(stored.permute(_inverse(perm)), requires_grad=param.requires_grad)
        setattr(module, name.rsplit(".", 1)[-1], fresh)
    return model


class ScaledEmbed(Embed):
    """TransformerLens' ``Embed`` over the *unscaled* HF embedding, multiplied by ``scale`` (``sqrt(d_model)``
    in the model's dtype) at lookup, as HF's Gemma does.

    TL's Gemma conversion stores that product as ``W_E``, a second matrix beside the unembedding although
    HF ties the two; keeping the HF embedding lets ``W_E`` share the unembedding's storage
    (:func:`tie_embedding`). The product is computed per token instead of once: the same multiplication of
    the same numbers, so ``hook_embed`` is bit-identical to TL's (tested). ``W_E`` then holds the HF values
    (without the factor); :func:`embedding_matrix` gives TL's convention.
    """

    scale: Tensor

    def forward(self, tokens: Tensor) -> Tensor:
        return self.W_E[tokens, :] * self.scale


def embedding_matrix(model: HookedTransformer) -> Tensor:
    """``W_E`` in TransformerLens' convention (Gemma: scaled by ``sqrt(d_model)``), whatever the storage."""
    w_e = model.embed.W_E.detach()
    return w_e * model.embed.scale if isinstance(model.embed, ScaledEmbed) else w_e


def tie_embedding(model: HookedTransformer) -> bool:
    """Make ``embed.W_E`` a view of ``unembed.W_U``'s storage (the HF model ties them); True if tied.

    Gemma-3-270M: 671 MB less (its 2.6 GB resident after loading held the 262k x 640 matrix twice); the
    paper's Gemma-2-9B in bf16: 1.8 GB less. Called by the loaders on models whose HF embedding and output
    head are one tensor, and again after every move (``nn.Module.to`` copies parameters one by one, which
    unties them). Not when the two sit on different devices (``n_devices > 1``): they stay two copies.
    An update of every parameter then steps the shared matrix by both gradients, as training the tied HF
    model does.
    """
    w_u = model.unembed.W_U
    if w_u.device != model.embed.W_E.device:
        return False
    model.embed.W_E = torch.nn.Parameter(w_u.detach().T, requires_grad=model.embed.W_E.requires_grad)
    model.cca_tied_embedding = True
    return True


def untie_embedding(model: HookedTransformer) -> None:
    """Give ``embed.W_E`` its own storage again (to edit the unembedding alone, say); an export then writes
    the embedding and the output head apart (``tie_word_embeddings=False``) if they differ."""
    model.embed.W_E = torch.nn.Parameter(model.embed.W_E.detach().clone(), requires_grad=model.embed.W_E.requires_grad)
    model.cca_tied_embedding = False


def _scale_embedding_at_lookup(model: HookedTransformer) -> None:
    """Swap TL's ``Embed`` for :class:`ScaledEmbed` (same parameters, names and hooks)."""
    model.embed.__class__ = ScaledEmbed
    model.embed.register_buffer("scale", torch.tensor(model.cfg.d_model ** 0.5, dtype=model.cfg.dtype,
                                                      device=model.embed.W_E.device), persistent=False)


def retied(model: HookedTransformer) -> HookedTransformer:
    """After a move or a dtype change: share the embedding's storage again if it was shared."""
    if getattr(model, "cca_tied_embedding", False):
        tie_embedding(model)
    return model


@torch.no_grad()
def _load_unprocessed(model: HookedTransformer, state_dict: dict[str, Tensor], *, tied: bool = False) -> None:
    """``load_and_process_state_dict`` with every processing flag off, at one model's memory.

    The parameters are put in TL's forward layout (:func:`relayout_`) while still empty, so no second copy
    is made afterwards, and each converted tensor is dropped as soon as it is copied, so an HF tensor's
    storage is freed once its last view is in. TL's own method keeps the whole converted state dict
    alive to the end: loading Gemma-3-270M peaked at 3.78 GB that way, 1.3 GB above its end state.
    """
    relayout_(model, keep_values=False)
    if tied:  # W_E becomes a view of W_U before anything is loaded: the embedding is never held twice
        tie_embedding(model)
        state_dict["embed.W_E"] = model.embed.W_E  # (TL would fill a missing key) dropped again below
    filled = model.fill_missing_keys(state_dict)
    if tied:
        filled.pop("embed.W_E")
    if filled is not state_dict:
        state_dict.clear()  # the caller's dict would otherwise keep every tensor alive
    # Largest first: the embedding and unembedding (671 MB each on Gemma-3-270M) go in while the fewest
    # other tensors are resident. Alphabetical order put W_U last: peak 3.86 GB; largest first, with the
    # HF weights read without mmap (each storage freed on its own): 3.47 GB.
    for key in sorted(filled, key=lambda k: -filled[k].numel()):
        model.load_state_dict({key: filled.pop(key)}, strict=False)


@torch.no_grad()
def hooked_from_hf(
    hf_model: Any,
    tokenizer: Any = None,
    *,
    name: str,
    source: str = "hf-object",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    n_ctx: int | None = None,
    details: dict[str, Any] | None = None,
    release_hf: bool = False,
) -> HookedTransformer:
    """Convert an in-memory HF causal LM to a HookedTransformer with **no** weight processing.

    The HF config is kept (deep-copied) in the model's :class:`ModelProvenance` for export.
    ``release_hf``: move the HF model to the meta device once its weights are converted (cca_tl's own
    loaders, which own the HF model): loading Gemma-3-270M then peaks at about one model's size less.
    """
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict


    arch = hf_architecture_of(hf_model)
    hf_config = copy.deepcopy(hf_model.config)
    hf_config.architectures = [arch]
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config  # GGUF weights come back dequantised; nothing is quantised now
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    with tempfile.TemporaryDirectory(prefix="cca_tl_cfg_") as tmp:
        config_dir = Path(tmp) / "cfg"
        hf_config.save_pretrained(config_dir)
        cfg_dict = tl_config_dict(hf_config)
        # init_weights=False: parameters stay untouched torch.empty pages until the converted weights are
        # copied in one by one, so loading never holds a random-initialised copy beside the real one.
        cfg_dict.update(model_name=name, tokenizer_name=None, dtype=dtype, device=str(device), init_weights=False)
        if n_ctx is not None:
            cfg_dict["n_ctx"] = n_ctx
        cfg = HookedTransformerConfig(**cfg_dict)
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        family = FAMILIES[arch]  # tl_config_dict above refused any other architecture
        state_dict = (family.convert(hf_model, cfg) if family.convert is not None
                      else get_pretrained_state_dict(str(config_dir), cfg, hf_model=hf_model, dtype=dtype))
    tied = _hf_ties_embedding(hf_model)
    if tied and family.embed_scale:
        _scale_embedding_at_lookup(model)
    if release_hf:  # converted tensors that are views keep their storage; the rest is freed now
        hf_model.to("meta")
    _load_unprocessed(model, state_dict, tied=tied)
    if torch.device(device) != torch.device("cpu"):
        retied(model.to(device))
    model.eval()
    model.cca_provenance = ModelProvenance(
        name=name, source=source, hf_architecture=arch, hf_config=hf_config, details=details or {}
    )
    return model
