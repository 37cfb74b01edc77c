"""Which TransformerLens runs the model: ``hooked`` (3.x ``HookedTransformer``, the default) or ``bridge``
(4.x ``TransformerBridge`` over the HF model itself).

TransformerLens 4 deleted ``HookedTransformer``; the two lines cannot share an environment (cca_tl's core
install pins ``transformer-lens<4``; ``scripts/setup-tl4.sh`` builds ``.venv-tl4`` with 4.x). Every module
takes the model classes from here, so the package imports under either line: under 4.x the names below are
placeholders whose use says what to do instead, and ``load_model(backend="bridge")`` returns a bridge.

What the bridge offers, measured on one tiny model per layout (``analyses/tl4_probe.md``): it boots offline
from an HF model object; in compatibility mode without weight processing its logits equal the HF model's
bit for bit; the five hook points DCM uses (``attn.hook_q/k/v/z``, ``mlp.hook_post``) exist with
HookedTransformer's shapes, identity hooks leave the logits bit-identical and a gain there gets a gradient;
``W_Q`` and the other weight matrices are views of the HF weights, so edits are written to the HF model's
parameters. On GPT-NeoX the booted bridge no longer follows the HF model's fused ``query_key_value`` weight,
so an edit written there would not reach its forward: that family is refused on the bridge.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal

from cca_tl.errors import BackendError

Backend = Literal["hooked", "bridge"]
BACKENDS: tuple[Backend, ...] = ("hooked", "bridge")

#: HF architectures the bridge cannot serve for cca_tl, with the reason.
BRIDGE_REFUSED: dict[str, str] = {
    "GPTNeoXForCausalLM": "the bridge splits GPT-NeoX's fused query_key_value at boot, and its forward no longer "
                          "reads the HF weight an edit is written to (analyses/tl4_probe.md)",
}


def _transformer_lens_major() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("transformer-lens").split(".")[0])
    except PackageNotFoundError:
        return 0


TL_MAJOR = _transformer_lens_major()
INSTALLED: Backend = "bridge" if TL_MAJOR >= 4 else "hooked"


def _placeholder(name: str) -> type:
    """A stand-in for a TransformerLens 3 class under 4.x: isinstance checks answer False, any use says why."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise BackendError(f"{name} needs transformer-lens 3.x (pip install 'transformer-lens>=3.9,<4', the default "
                           f"install); this environment has {TL_MAJOR}.x: load the model with backend='bridge'.")

    return type(name, (), {"__init__": refuse, "__doc__": f"Placeholder: {name} is not in transformer-lens 4."})


if TL_MAJOR >= 4:
    HookedTransformer = _placeholder("HookedTransformer")
    HookedTransformerConfig = _placeholder("HookedTransformerConfig")
else:
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: F401


def require(backend: str) -> Backend:
    """``backend`` checked against what is installed, with what to do when it is not."""
    if backend not in BACKENDS:
        raise BackendError(f"backend must be one of {list(BACKENDS)}, not {backend!r}")
    if backend != INSTALLED:
        how = ("bash scripts/setup-tl4.sh, then use .venv-tl4" if backend == "bridge"
               else "the default install (bash scripts/setup.sh, .venv)")
        raise BackendError(f"backend={backend!r} needs transformer-lens {'4' if backend == 'bridge' else '3'}.x; "
                           f"this environment has {TL_MAJOR or 'no'} transformer-lens ({how}).")
    return backend


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens 4 bridge (not a HookedTransformer)."""
    return type(model).__name__ == "TransformerBridge" or hasattr(model, "original_model")


def backend_of(model: Any) -> Backend:
    return "bridge" if is_bridge(model) else "hooked"


class HFParameters:
    """A bridge's weights — the HF model's parameters — under their checkpoint names.

    The bridge wraps each HF submodule in place (the HF module moves to ``._original_component``), so the
    names ``named_parameters`` reports are not the checkpoint's; the registry, edits and export address the
    weights by checkpoint name (``model.layers.3.mlp.up_proj.weight``) through this. Tied weights appear once.
    """

    def __init__(self, bridge: Any):
        self._params = {name.replace("._original_component", ""): p
                        for name, p in bridge.original_model.named_parameters()}

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        return iter(self._params.items())

    def parameters(self) -> Iterator[Any]:
        return iter(self._params.values())

    def get_parameter(self, name: str) -> Any:
        if name not in self._params:
            raise AttributeError(f"The bridged HF model has no parameter {name!r}")
        return self._params[name]


def parameter_owner(model: Any) -> Any:
    """What owns ``model``'s weights by the names the component registry uses: the HookedTransformer itself
    (TransformerLens names), or on the bridge the HF model's parameters (checkpoint names)."""
    if not is_bridge(model):
        return model
    owner = getattr(model, "_cca_hf_parameters", None)
    if owner is None:
        owner = HFParameters(model)
        object.__setattr__(model, "_cca_hf_parameters", owner)  # plain attribute: not a submodule
    return owner


__all__ = ["BACKENDS", "BRIDGE_REFUSED", "Backend", "HFParameters", "parameter_owner", "HookedTransformer", "HookedTransformerConfig", "INSTALLED",
           "TL_MAJOR", "backend_of", "is_bridge", "require"]
