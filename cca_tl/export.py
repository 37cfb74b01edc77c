"""HookedTransformer -> HuggingFace model directory, verified by reloading it in plain ``transformers``.

TransformerLens has no way back to HF format; this is the inverse of its weight converters, for every
family of :data:`cca_tl.arch.FAMILIES`, in three layouts (each inverse lives in its layout module,
:mod:`cca_tl.arch.llama`, :mod:`cca_tl.arch.gpt2`, :mod:`cca_tl.arch.neox`):

* ``llama`` (Gemma-2/3, OLMo-2, Qwen2/3, Llama, Mistral): ``W_Q [n, m, h] -> q_proj.weight [(n h), m]``
  (K/V per kv head, biases ``[n, h] -> [(n h)]``), ``W_O [n, h, m] -> o_proj.weight [m, (n h)]``, MLP
  matrices transposed back; norms by position (pre, Gemma's sandwich, OLMo-2's post) and q/k norms;
* ``gpt2``: Conv1D weights are ``[in, out]``: ``c_attn = [W_Q | W_K | W_V]`` along columns, learned
  positions, LayerNorm weights and biases;
* ``neox`` (Pythia): one fused ``query_key_value`` whose rows are grouped per head as ``(head, q/k/v, d)``.

Gemma's ``W_E`` was scaled by ``sqrt(d_model)`` and every RMSNorm weight shifted by +1: both are undone.
Tied embeddings stay tied when ``W_E`` and ``W_U`` still agree exactly, and are untied (with
``tie_word_embeddings=False``) when an edit made them differ.

On the bridge backend (TransformerLens 4) there is nothing to invert: the bridge runs the HF model's own
parameters, which are written as they are (:func:`bridge_state_dict`), with the same reload check.

Refused with :class:`~cca_tl.errors.ExportError`: models loaded *with* weight processing (folded norms or
centred weights cannot be inverted), architectures without an inverse here, and edits to parameters the
HF architecture does not have (TransformerLens' zero bias placeholders).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from cca_tl.backend import HookedTransformer, is_bridge, parameter_owner

from cca_tl._io import atomic_directory, atomic_write_text
from cca_tl.errors import ExportError
from cca_tl.arch import FAMILIES, TLParams, layout
from cca_tl.convert import embedding_matrix

#: Architectures :func:`export_hf` writes (every family cca_tl loads).
EXPORTABLE: tuple[str, ...] = tuple(FAMILIES)


DEFAULT_VERIFY_TEXTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
)


@dataclass
class ExportReport:
    """What :func:`export_hf` wrote and how faithful it is."""

    out_dir: str
    architecture: str
    tied_embeddings: bool
    max_abs_logit_diff: float | None
    n_params: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_exportable(model: HookedTransformer) -> str:
    """Return the HF architecture ``model`` exports to, or raise :class:`ExportError` saying why not."""
    prov = getattr(model, "cca_provenance", None)
    cfg = model.cfg
    if (prov is not None and prov.processed) or cfg.normalization_type in ("LNPre", "RMSPre"):
        raise ExportError(
            "This model was loaded with TransformerLens weight processing (folded norms / centred "
            "weights), which cannot be inverted to the original HF parameters. Load it with "
            "cca_tl.load_model(...) or HookedTransformer.from_pretrained_no_processing(...) and redo the edit."
        )
    arch = cfg.original_architecture
    if arch not in EXPORTABLE:
        raise ExportError(
            f"Export to HF format supports {', '.join(EXPORTABLE)}; this model's architecture is "
            f"{arch!r}" + (" (a pure TransformerLens model has no HF counterpart)." if arch is None else ".")
        )
    expected_norm = "LN" if FAMILIES[arch].layer_norm else "RMS"
    if cfg.normalization_type != expected_norm:
        raise ExportError(f"Expected normalization_type={expected_norm!r} for {arch}, found "
                          f"{cfg.normalization_type!r}.")
    w_u = model.W_U.detach()
    if w_u.shape[-1] > 1 and w_u.mean(-1).abs().max() <= 1e-7 * w_u.abs().mean():
        raise ExportError(
            "W_U is centred (center_unembed was applied): logits cannot be restored exactly. Load the "
            "model without weight processing."
        )
    return arch


def hf_config_for(model: HookedTransformer, hf_config: Any = None) -> Any:
    """The HF config to export with: the one given, the one recorded at load time, or the hub's."""
    if hf_config is None:
        prov = getattr(model, "cca_provenance", None)
        hf_config = getattr(prov, "hf_config", None)
    if hf_config is None:
        from transformers import AutoConfig

        try:
            hf_config = AutoConfig.from_pretrained(model.cfg.model_name)
        except Exception as exc:
            raise ExportError(
                f"No HF config is known for {model.cfg.model_name!r} (it was not loaded by cca_tl and the "
                "hub is unreachable). Pass hf_config=... (a transformers PretrainedConfig)."
            ) from exc
    hf_config = copy.deepcopy(hf_config)
    cfg = model.cfg
    expected = dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                    vocab_size=cfg.d_vocab)
    if getattr(hf_config, "intermediate_size", None) is not None:  # GPT-2 calls it n_inner (None = 4 d_model)
        expected["intermediate_size"] = cfg.d_mlp
    wrong = {k: (getattr(hf_config, k, None), v) for k, v in expected.items() if getattr(hf_config, k, None) != v}
    if wrong:
        raise ExportError(f"The HF config does not match the model: {wrong} (config value, model value).")
    return hf_config


@torch.no_grad()
def hf_state_dict(model: HookedTransformer, *, tie_if_unchanged: bool = True) -> tuple[dict[str, Tensor], bool]:
    """HF-layout state dict of ``model``'s current weights, and whether embeddings are tied.

    Every TransformerLens parameter is accounted for: mapped to an HF tensor, or checked to be an
    all-zero placeholder of a parameter the HF architecture lacks.
    """
    from cca_tl.components import hf_biases

    arch = check_exportable(model)
    fam, parameter_layout = FAMILIES[arch], layout(arch)
    cfg = model.cfg
    p = TLParams(model, arch)
    sd = parameter_layout.hf_layers(p, fam, cfg, hf_biases(model))
    p.must_be_zero("unembed.b_U")

    embed_name, head_name = parameter_layout.EMBEDDINGS
    p("embed.W_E")
    w_e, w_u = embedding_matrix(model), p("unembed.W_U")  # TL's convention, also over a tied ScaledEmbed
    lm_head = w_u.T
    scale = torch.tensor(cfg.d_model ** 0.5, dtype=w_e.dtype)
    # Tied iff the embedding TL would derive from lm_head is exactly W_E (bit-for-bit: no edit happened).
    reconstructed_w_e = lm_head * scale if fam.embed_scale else lm_head
    tied = tie_if_unchanged and torch.equal(reconstructed_w_e, w_e)
    if tied:
        sd[embed_name] = lm_head
    else:
        sd[embed_name] = w_e / scale if fam.embed_scale else w_e
        sd[head_name] = lm_head

    unused = p.unused()
    if unused:
        raise ExportError(f"No HF counterpart is known for these parameters of {arch}: {unused[:8]}")
    return {k: v.contiguous().clone() for k, v in sd.items()}, tied


@torch.no_grad()
def bridge_state_dict(model: Any) -> tuple[dict[str, Tensor], bool]:
    """A bridge's weights as an HF state dict, and whether embeddings are tied: nothing to convert, the
    bridge runs the HF model's own parameters (:class:`cca_tl.backend.HFParameters` gives their checkpoint
    names; a tied head is the embedding tensor itself, so it appears once)."""
    arch = model.cfg.original_architecture
    if arch not in EXPORTABLE:
        raise ExportError(f"Export to HF format supports {', '.join(EXPORTABLE)}; this model's architecture is "
                          f"{arch!r}.")
    params = dict(parameter_owner(model).named_parameters())
    embed_name, head_name = layout(arch).EMBEDDINGS
    tied = embed_name in params and head_name not in params
    return {k: v.detach().contiguous().clone() for k, v in params.items()}, tied


def fit_to_hf_layout(sd: dict[str, Tensor], config: Any, tied: bool) -> dict[str, Tensor]:
    """Every key and shape of the HF model built from ``config`` must be present (meta init, no memory).
    Returns ``sd`` with the output head under the name the installed transformers uses."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(config)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if "lm_head.weight" in sd and "lm_head.weight" not in expected and "embed_out.weight" in expected:
        sd = {("embed_out.weight" if k == "lm_head.weight" else k): v for k, v in sd.items()}
    if tied:
        expected.pop("lm_head.weight", None)
        expected.pop("embed_out.weight", None)
    got = {k: tuple(v.shape) for k, v in sd.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    if missing or extra or wrong:
        raise ExportError(
            f"Exported state dict does not fit {type(reference).__name__}: missing {missing[:5]}, "
            f"unexpected {extra[:5]}, wrong shapes {[(k, got[k], expected[k]) for k in wrong[:5]]}"
        )
    return sd


def export_hf(
    model: HookedTransformer,
    out_dir: str | Path,
    *,
    hf_config: Any = None,
    tokenizer: Any = None,
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
    tolerance: float = 1e-3,
    overwrite: bool = False,
) -> ExportReport:
    """Write ``model``'s current weights as an HF model directory (safetensors + config + tokenizer).

    ``AutoModelForCausalLM.from_pretrained(out_dir)`` then loads it without cca_tl. With ``verify`` the
    staged export is reloaded in plain transformers and its logits compared with the HookedTransformer's
    on sample text *before* it is moved into place; a difference above ``tolerance`` (fp32) raises and
    leaves ``out_dir`` untouched. The weights themselves are exact copies; what remains is fp32 kernel
    noise between TransformerLens and transformers (measured 6e-5 on Gemma-3-270M, 9e-5 on
    Qwen2.5-0.5B), whereas a wrong mapping shows up at order 1 — hence the 1e-3 default.
    """
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    start = time.perf_counter()
    if not is_bridge(model):
        check_exportable(model)  # first: an unsupported model should hear why, not about a missing config
    config = hf_config_for(model, hf_config)
    state_dict, tied = bridge_state_dict(model) if is_bridge(model) else hf_state_dict(model)
    config.tie_word_embeddings = tied
    config.dtype = dtype
    state_dict = fit_to_hf_layout(state_dict, config, tied)
    state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    max_diff = None
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        save_file(state_dict, str(staging / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(str(staging))
        try:
            GenerationConfig.from_model_config(config).save_pretrained(str(staging))
        except Exception:  # generation defaults are a convenience, not part of the weights
            pass
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        if verify:
            max_diff = max_logit_diff(model, staging)
            limit = tolerance if dtype == torch.float32 else max(tolerance, 0.5)
            if not max_diff <= limit:
                raise ExportError(
                    f"The reloaded export differs from the HookedTransformer by max |Δlogit| = {max_diff:.3g} "
                    f"(> {limit}); nothing was written to {out_dir}."
                )
        report = ExportReport(
            out_dir=str(out_dir), architecture=config.architectures[0], tied_embeddings=tied,
            max_abs_logit_diff=max_diff, n_params=sum(v.numel() for v in state_dict.values()),
            seconds=time.perf_counter() - start,
        )
        prov = getattr(model, "cca_provenance", None)
        record = dict(report.to_dict(), source_model=getattr(prov, "name", model.cfg.model_name),
                      source=getattr(prov, "source", None), exported_by="cca_tl")
        atomic_write_text(staging / "cca_tl_export.json", json.dumps(record, indent=1))
    return report


def _verification_ids(model: HookedTransformer, texts: Sequence[str] | None) -> Tensor:
    if model.tokenizer is not None:
        rows = [model.to_tokens(t, prepend_bos=True)[0] for t in (texts or DEFAULT_VERIFY_TEXTS)]
        length = min(len(r) for r in rows)
        return torch.stack([r[:length] for r in rows])
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, model.cfg.d_vocab, (2, 24), generator=generator)


@torch.no_grad()
def max_logit_diff(model: HookedTransformer, hf_dir: str | Path, texts: Sequence[str] | None = None) -> float:
    """Reload ``hf_dir`` with plain ``transformers`` and return max |Δlogit| against ``model`` (fp32)."""
    from transformers import AutoModelForCausalLM

    ids = _verification_ids(model, texts).to(model.cfg.device)
    hf_model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    hf_logits = hf_model(ids.cpu()).logits.float()
    tl_logits = model(ids).float().cpu()
    return float((hf_logits - tl_logits).abs().max())


def hf_copy(model: HookedTransformer) -> Any:
    """A transformers model holding exactly ``model``'s current weights (fp32), in memory: the reference the
    tests compare TransformerLens against, and what ``peft`` wraps (:mod:`cca_tl.baselines`)."""
    from transformers import AutoModelForCausalLM

    state_dict, tied = hf_state_dict(model)
    config = hf_config_for(model)
    config.tie_word_embeddings = tied
    state_dict = fit_to_hf_layout(state_dict, config, tied)  # names as the installed transformers has them
    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:  # pragma: no cover - older transformers
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        twin = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = twin.load_state_dict(state_dict, strict=False)
    if unexpected or [k for k in missing if not (tied and k in ("lm_head.weight", "embed_out.weight"))]:
        raise RuntimeError(f"HF copy does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if tied:
        twin.tie_weights()
    return twin.eval()
