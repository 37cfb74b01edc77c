"""Where a HookedTransformer came from: the record loading leaves on a model for export and mask identity.

A leaf module (it imports nothing from cca_tl), so that loading, the architecture table and the component
registry can all read and write the record without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


def provenance(model: Any) -> ModelProvenance | None:
    """The provenance cca_tl recorded when it loaded ``model`` (None for models loaded elsewhere)."""
    return getattr(model, "cca_provenance", None)
