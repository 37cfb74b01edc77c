"""Published configs of real checkpoints, shipped with the package (numbers only, no weights): what
component tables and benchmarks at real shapes are built from, offline."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from cca_tl.errors import ModelLoadError


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
