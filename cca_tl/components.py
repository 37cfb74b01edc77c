"""The component registry: every maskable component of a HookedTransformer, its hook and its weights.

One table (:data:`KIND_SPECS`, in the spirit of pyvene's per-architecture tables) says, for each kind of
component, which TransformerLens hook carries it, along which axis of that hook's tensor its units lie,
and which parameter slices belong to it — the authors' set (docs/method.md §A4) and an extended set. DCM attaches
masks through it, the targeted update edits the slices it names, analysis counts with it and export
relies on it never naming a parameter the HF architecture lacks.

Kinds (hook tensor shapes are TransformerLens'):

=========  ==============================  ==========================  =====================================
kind       hook                            tensor                      authors' slices (extended adds)
=========  ==============================  ==========================  =====================================
``q``      ``blocks.{L}.attn.hook_q``      [batch, pos, n_heads, d_head]   ``W_Q[h]``, ``b_Q[h]``
``k``      ``blocks.{L}.attn.hook_k``      [batch, pos, n_kv, d_head]      ``W_K[g]``, ``b_K[g]`` (per kv head)
``v``      ``blocks.{L}.attn.hook_v``      [batch, pos, n_kv, d_head]      ``W_V[g]``, ``b_V[g]`` (per kv head)
``z``      ``blocks.{L}.attn.hook_z``      [batch, pos, n_heads, d_head]   ``W_O[h]``
``neuron`` ``blocks.{L}.mlp.hook_post``    [batch, pos, d_mlp]             ``W_in[:, n]`` (+ ``W_gate[:, n]``,
                                                                            ``b_in[n]``, ``W_out[n]``)
=========  ==============================  ==========================  =====================================

Biases are listed only where the model's original HF architecture has them (TransformerLens keeps zero
biases for Gemma, Llama ...; editing those could not be exported).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Iterable, Iterator, Literal

import pandas as pd
import torch
from torch import Tensor
from cca_tl.backend import HookedTransformer, HookedTransformerConfig, is_bridge, parameter_owner

from cca_tl.errors import MaskMismatchError
from cca_tl.arch import FAMILIES, hf_slices, hf_units, load_hf_config, tl_config_dict
from cca_tl.provenance import ModelProvenance

WeightSet = Literal["authors", "extended"]
#: How finely a mask selects: whole components (a head, a kv head, a neuron) or single channels (one
#: ``d_head`` coordinate of a head; a neuron is its own channel). CCA masks components, node pruning channels.
Granularity = Literal["component", "channel"]


class Kind(str, Enum):
    """A kind of maskable component."""

    Q = "q"
    K = "k"
    V = "v"
    Z = "z"
    NEURON = "neuron"


ALL_KINDS: tuple[Kind, ...] = (Kind.Q, Kind.K, Kind.V, Kind.Z, Kind.NEURON)
#: The kinds the paper masks by default (head outputs are optional, off by default).
DEFAULT_KINDS: tuple[Kind, ...] = (Kind.Q, Kind.K, Kind.V, Kind.NEURON)


@dataclass(frozen=True)
class SliceSpec:
    """A parameter slice that belongs to each unit of a kind.

    ``param`` is a TransformerLens parameter name template (``{layer}``); ``axis`` is the parameter axis
    indexed by the unit; ``bias`` names which HF bias must exist for the slice to be real.
    """

    param: str
    axis: int
    bias: Literal["qkv", "o", "mlp", None] = None
    #: HF slices (the bridge backend): unit ``i`` is ``block`` entries from ``i·block`` along ``axis``;
    #: ``None`` is TransformerLens' layout, one index of ``axis`` per unit.
    block: int | None = None

    def unit(self, layer: int, index: int) -> "ParamSlice":
        return ParamSlice(self.param.format(layer=layer), self.axis, index, self.block)


@dataclass(frozen=True)
class KindSpec:
    kind: Kind
    hook: str
    authors: tuple[SliceSpec, ...]
    extended_extra: tuple[SliceSpec, ...] = ()


KIND_SPECS: dict[Kind, KindSpec] = {
    Kind.Q: KindSpec(
        Kind.Q, "blocks.{layer}.attn.hook_q",
        authors=(SliceSpec("blocks.{layer}.attn.W_Q", 0), SliceSpec("blocks.{layer}.attn.b_Q", 0, "qkv")),
    ),
    Kind.K: KindSpec(
        Kind.K, "blocks.{layer}.attn.hook_k",
        authors=(SliceSpec("blocks.{layer}.attn.W_K", 0), SliceSpec("blocks.{layer}.attn.b_K", 0, "qkv")),
    ),
    Kind.V: KindSpec(
        Kind.V, "blocks.{layer}.attn.hook_v",
        authors=(SliceSpec("blocks.{layer}.attn.W_V", 0), SliceSpec("blocks.{layer}.attn.b_V", 0, "qkv")),
    ),
    Kind.Z: KindSpec(
        Kind.Z, "blocks.{layer}.attn.hook_z",
        authors=(SliceSpec("blocks.{layer}.attn.W_O", 0),),
    ),
    Kind.NEURON: KindSpec(
        Kind.NEURON, "blocks.{layer}.mlp.hook_post",
        authors=(SliceSpec("blocks.{layer}.mlp.W_in", 1), SliceSpec("blocks.{layer}.mlp.b_in", 0, "mlp")),
        extended_extra=(
            SliceSpec("blocks.{layer}.mlp.W_gate", 1),
            SliceSpec("blocks.{layer}.mlp.W_out", 0),
        ),
    ),
}

def hf_biases(model: HookedTransformer) -> frozenset[str]:
    """The bias groups (``qkv``, ``o``, ``mlp``) that really exist in the model (from the family table)."""

    arch = model.cfg.original_architecture
    if arch not in FAMILIES:  # a pure TL model, or one loaded elsewhere: every TL bias takes part
        return frozenset({"qkv", "o", "mlp"})
    hf_config = getattr(getattr(model, "cca_provenance", None), "hf_config", None)
    return FAMILIES[arch].biases(hf_config)


@dataclass(frozen=True)
class ModelIdentity:
    """What a mask must agree with to be used on a model: its name and every shape that indexes it."""

    name: str
    architecture: str | None
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_mlp: int

    @classmethod
    def of(cls, model: HookedTransformer) -> "ModelIdentity":
        cfg = model.cfg
        return cls(
            name=str(cfg.model_name),
            architecture=cfg.original_architecture,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            n_kv_heads=cfg.n_key_value_heads or cfg.n_heads,
            d_head=cfg.d_head,
            d_model=cfg.d_model,
            d_mlp=cfg.d_mlp or 0,
        )

    def shape_fields(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k not in ("name", "architecture")}

    def check_compatible(self, other: "ModelIdentity", *, what: str = "mask", strict_name: bool = True) -> None:
        """Raise :class:`MaskMismatchError` if ``other`` (the model) does not fit ``self`` (the mask's)."""
        ours, theirs = self.shape_fields(), other.shape_fields()
        diffs = [f"{k}: {ours[k]} vs {theirs[k]}" for k in ours if ours[k] != theirs[k]]
        if diffs:
            raise MaskMismatchError(
                f"This {what} was made for {self.name!r} and does not fit {other.name!r} "
                f"({'; '.join(diffs)})."
            )
        if strict_name and self.name != other.name:
            raise MaskMismatchError(
                f"This {what} was made for {self.name!r}, not {other.name!r} (same shapes). If the two "
                "are the same network (e.g. an exported copy), pass strict_name=False."
            )


@dataclass(frozen=True)
class ParamSlice:
    """One parameter slice: ``model.get_parameter(param).select(axis, index)`` (TransformerLens names), or on
    the bridge ``block`` rows/columns of an HF parameter from ``index·block``."""

    param: str
    axis: int
    index: int
    block: int | None = None

    def of(self, tensor: Tensor) -> Tensor:
        """This slice of ``tensor`` (the parameter, or anything of its shape) as a view."""
        if self.block is None:
            return tensor.select(self.axis, self.index)
        return tensor.narrow(self.axis, self.index * self.block, self.block)

    def view(self, model: HookedTransformer) -> Tensor:
        return self.of(parameter_owner(model).get_parameter(self.param))


@dataclass(frozen=True)
class Component:
    """One maskable component: a kind, a layer and a unit index (head, kv head or neuron)."""

    kind: Kind
    layer: int
    index: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))

    @property
    def hook_name(self) -> str:
        return KIND_SPECS[self.kind].hook.format(layer=self.layer)

    def __str__(self) -> str:
        return f"L{self.layer}.{self.kind.value}{self.index}"


class ComponentRegistry:
    """Every maskable component of one model, and the weights that belong to each.

    >>> reg = ComponentRegistry.from_model(model)
    >>> reg.n_units(Kind.K)                       # kv heads per layer under GQA
    >>> reg.slices(Component(Kind.NEURON, 3, 17))  # [ParamSlice('blocks.3.mlp.W_in', 1, 17)]
    """

    def __init__(self, model: HookedTransformer):
        self.identity = ModelIdentity.of(model)
        cfg = model.cfg
        self._units = {
            Kind.Q: cfg.n_heads,
            Kind.K: cfg.n_key_value_heads or cfg.n_heads,
            Kind.V: cfg.n_key_value_heads or cfg.n_heads,
            Kind.Z: cfg.n_heads,
            Kind.NEURON: 0 if cfg.attn_only else cfg.d_mlp,
        }
        params = dict(parameter_owner(model).named_parameters())
        biases = hf_biases(model)
        self._param_shapes = {name: tuple(p.shape) for name, p in params.items()}
        #: Why this model's weights cannot be edited through the registry (None: they can).
        self.not_editable: str | None = None
        if is_bridge(model):  # the HF model's own parameters, each tied weight once
            self.total_model_params = sum(p.numel() for p in params.values())
            self._slice_specs = self._hf_slice_specs(cfg, biases, params)
        else:
            self.total_model_params = _real_param_count(model, params)
            self._slice_specs = _tl_slice_specs(biases, params)

    def _hf_slice_specs(self, cfg: Any, biases: frozenset[str], params: dict[str, Tensor]
                        ) -> dict[tuple[Kind, WeightSet], tuple[SliceSpec, ...]]:
        """The bridge's slices: the HF parameters a unit owns, from the layout's ``HF_UNITS`` table."""
        table = hf_units(self.identity.architecture)
        if table is None:
            self.not_editable = (f"the {self.identity.architecture} layout has no HF slice table for the bridge "
                                 "backend (its module's HF_UNITS says why); edit it with backend='hooked'")
            return {(kind, ws): () for kind in KIND_SPECS for ws in ("authors", "extended")}
        prefix, units = table
        block = {"head": cfg.d_head, "unit": 1}
        out: dict[tuple[Kind, WeightSet], tuple[SliceSpec, ...]] = {}
        for kind in KIND_SPECS:
            authors, extra = units[kind.value]
            for weight_set, entries in (("authors", authors), ("extended", authors + extra)):
                out[(kind, weight_set)] = tuple(
                    SliceSpec(prefix + u.param, u.axis, u.bias, block[u.block]) for u in entries
                    if (u.bias is None or u.bias in biases) and (prefix + u.param).format(layer=0) in params)
        return out

    def check_editable(self) -> None:
        """Raise :class:`~cca_tl.errors.BackendError` if the registry cannot say which weights a component owns."""
        if self.not_editable is not None:
            from cca_tl.errors import BackendError

            raise BackendError(f"{self.identity.name!r} cannot be edited here: {self.not_editable}.")

    @classmethod
    def from_model(cls, model: HookedTransformer) -> "ComponentRegistry":
        return cls(model)

    @property
    def n_layers(self) -> int:
        return self.identity.n_layers

    def kinds(self) -> tuple[Kind, ...]:
        return tuple(k for k in ALL_KINDS if self._units[k] > 0)

    def n_units(self, kind: Kind | str) -> int:
        """Units of ``kind`` per layer (heads, kv heads or neurons)."""
        return self._units[Kind(kind)]

    def n_components(self, kinds: Iterable[Kind | str] = DEFAULT_KINDS) -> int:
        return sum(self.n_units(k) * self.n_layers for k in kinds)

    def hook_name(self, kind: Kind | str, layer: int) -> str:
        return KIND_SPECS[Kind(kind)].hook.format(layer=layer)

    def entry_shape(self, kind: Kind | str, granularity: Granularity = "component") -> tuple[int, ...]:
        """Shape of one layer's mask entries: ``(units,)``, or ``(units, d_head)`` for a head kind at channel
        granularity (the trailing axes of the kind's hook tensor)."""
        kind = Kind(kind)
        if granularity not in ("component", "channel"):
            raise ValueError(f"granularity must be 'component' or 'channel', not {granularity!r}")
        if granularity == "channel" and kind is not Kind.NEURON:
            return (self.n_units(kind), self.identity.d_head)
        return (self.n_units(kind),)

    def slice_specs(self, kind: Kind | str, weight_set: WeightSet = "authors") -> tuple[SliceSpec, ...]:
        """Parameter templates (``{layer}``) and unit axes of one kind's slices."""
        return self._slice_specs[(Kind(kind), weight_set)]

    def slices(self, component: Component, weight_set: WeightSet = "authors") -> list[ParamSlice]:
        """The parameter slices that belong to ``component``."""
        self._check_component(component)
        return [s.unit(component.layer, component.index) for s in self.slice_specs(component.kind, weight_set)]

    def params_per_unit(self, kind: Kind | str, weight_set: WeightSet = "authors") -> int:
        """Number of scalar parameters one unit of ``kind`` owns."""
        total = 0
        for s in self.slice_specs(kind, weight_set):
            shape = list(self._param_shapes[s.param.format(layer=0)])
            if s.block is None:
                del shape[s.axis]
            else:
                shape[s.axis] = s.block
            total += int(torch.Size(shape).numel())
        return total

    def components(self, kinds: Iterable[Kind | str] = DEFAULT_KINDS) -> Iterator[Component]:
        for kind in map(Kind, kinds):
            for layer in range(self.n_layers):
                for index in range(self.n_units(kind)):
                    yield Component(kind, layer, index)

    def table(self, kinds: Iterable[Kind | str] = ALL_KINDS) -> pd.DataFrame:
        """Components per layer and kind (the model's full component table)."""
        kinds = [Kind(k) for k in kinds if self.n_units(k) > 0]
        data = {k.value: [self.n_units(k)] * self.n_layers for k in kinds}
        return with_total_row(pd.DataFrame(data, index=pd.RangeIndex(self.n_layers, name="layer")))

    def summary(self, weight_set: WeightSet = "authors") -> pd.DataFrame:
        """Per kind: hook, units per layer, total components, parameters per unit and in all, the TL
        parameter slices of one unit and where they sit in the HF checkpoint."""

        rows = []
        for kind in self.kinds():
            per_unit = self.params_per_unit(kind, weight_set)
            total = self.n_units(kind) * self.n_layers
            rows.append(dict(
                kind=kind.value,
                hook=KIND_SPECS[kind].hook.format(layer="{L}"),
                units_per_layer=self.n_units(kind),
                components=total,
                params_per_unit=per_unit,
                params=per_unit * total,
                slices=", ".join(
                    s.param.format(layer="{L}").split(".", 2)[-1] + f"[axis {s.axis}]"
                    for s in self.slice_specs(kind, weight_set)
                ),
                hf_slices=hf_slices(self.identity.architecture, kind.value, weight_set),
            ))
        return pd.DataFrame(rows).set_index("kind")

    def _check_component(self, component: Component) -> None:
        if not 0 <= component.layer < self.n_layers or not 0 <= component.index < self.n_units(component.kind):
            raise MaskMismatchError(
                f"Component {component} does not exist in {self.identity.name!r} "
                f"({self.n_layers} layers, {self.n_units(component.kind)} {component.kind.value} units per layer)."
            )


_BIAS_GROUP = {"b_Q": "qkv", "b_K": "qkv", "_b_K": "qkv", "b_V": "qkv", "_b_V": "qkv", "b_O": "o",
                "b_in": "mlp", "b_out": "mlp", "b_U": "unembed"}


def real_parameter_names(model: HookedTransformer) -> list[str]:
    """All parameters except TransformerLens' zero placeholders for biases the HF architecture lacks (on the
    bridge: the HF model's parameters, which have no placeholders)."""
    if is_bridge(model):
        return [name for name, _ in parameter_owner(model).named_parameters()]
    has_hf = model.cfg.original_architecture is not None
    biases = hf_biases(model)
    names = []
    for name, _ in model.named_parameters():
        group = _BIAS_GROUP.get(name.rsplit(".", 1)[-1])
        if has_hf and group is not None and group not in biases:
            continue
        names.append(name)
    return names


def _tl_slice_specs(biases: frozenset[str], params: dict[str, Tensor]
                    ) -> dict[tuple[Kind, WeightSet], tuple[SliceSpec, ...]]:
    """The hooked backend's slices: :data:`KIND_SPECS`, less the biases the HF architecture lacks."""
    out: dict[tuple[Kind, WeightSet], tuple[SliceSpec, ...]] = {}
    for kind, spec in KIND_SPECS.items():
        for weight_set, specs in (("authors", spec.authors), ("extended", spec.authors + spec.extended_extra)):
            kept = []
            for s in specs:
                if s.bias is not None and s.bias not in biases:
                    continue
                resolved = _resolve_param(s.param, params)
                if resolved is not None:
                    kept.append(SliceSpec(resolved, s.axis, s.bias))
            out[(kind, weight_set)] = tuple(kept)
    return out


def _real_param_count(model: HookedTransformer, params: dict[str, Tensor]) -> int:
    """Parameters of the network itself: TL's zero bias placeholders left out, tied embeddings once.

    For a model of an HF architecture this equals the HF model's parameter count, the denominator a
    reader expects behind "% of parameters".
    """
    total = sum(params[name].numel() for name in real_parameter_names(model))
    hf_config = getattr(getattr(model, "cca_provenance", None), "hf_config", None)
    if getattr(hf_config, "tie_word_embeddings", False):
        total -= params["unembed.W_U"].numel()
    return int(total)


def _resolve_param(template: str, params: dict[str, Tensor]) -> str | None:
    """TL names grouped-query K/V weights ``_W_K``/``_b_K``; plain attention ``W_K``/``b_K``."""
    probe = template.format(layer=0)
    if probe in params:
        return template
    head, _, leaf = template.rpartition(".")
    underscored = f"{head}._{leaf}"
    if underscored.format(layer=0) in params:
        return underscored
    return None


def with_total_row(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``total`` row summing its numeric columns (the layer tables' last row)."""
    total = df.sum(numeric_only=True).to_frame("total").T
    out = pd.concat([df, total])
    out.index.name = "layer"
    return out


def config_registry(name_or_config: Any) -> ComponentRegistry:
    """The component registry of a model from its HF config alone: no weights are read or allocated
    (the HookedTransformer is built on torch's meta device), so Gemma-2-9B's table costs milliseconds.
    ``name_or_config``: a shipped config name, a ``config.json`` / model directory, or an HF config."""
    hf_config = name_or_config if hasattr(name_or_config, "to_dict") else load_hf_config(name_or_config)
    name = str(name_or_config) if not hasattr(name_or_config, "to_dict") else hf_config.architectures[0]
    cfg = HookedTransformerConfig(**dict(tl_config_dict(hf_config), model_name=name, device="meta",
                                         init_weights=False))
    with torch.device("meta"):
        model = HookedTransformer(cfg, move_to_device=False)
    model.cca_provenance = ModelProvenance(name=name, source="config", hf_architecture=cfg.original_architecture,
                                           hf_config=hf_config)
    return ComponentRegistry(model)


#: The paper's "% of components updated" (CCA with mask, Branching; docs/method.md §A5), per model.
PAPER_SHARES: dict[str, float] = {"Gemma-2-2B-It": 1.59, "OLMo-2-1124-13B-Instruct": 0.44,
                                  "OLMo-2-1124-7B-Instruct": 0.25, "Gemma-2-9B-It": 0.17}


def paper_shares(registry: ComponentRegistry) -> pd.DataFrame:
    """What each published share of components means in ``registry``'s model: how many components, split
    between heads (q, k, v) and neurons in the model's own proportions (the paper does not publish the
    split), and the parameters they own (authors' weight set)."""
    total = registry.n_components(DEFAULT_KINDS)
    heads = registry.n_components(("q", "k", "v"))
    neurons = registry.n_components(("neuron",))
    mean_params = sum(registry.params_per_unit(k) * registry.n_units(k) * registry.n_layers
                      for k in DEFAULT_KINDS) / total
    rows = [dict(published_for=model, pct=pct, components=round(total * pct / 100), of=total,
                 heads=round(heads * pct / 100), neurons=round(neurons * pct / 100),
                 params=round(total * pct / 100 * mean_params),
                 pct_params=100 * total * pct / 100 * mean_params / registry.total_model_params)
            for model, pct in PAPER_SHARES.items()]
    return pd.DataFrame(rows).set_index("published_for")


def registry_of(obj: HookedTransformer | ComponentRegistry) -> ComponentRegistry:
    if isinstance(obj, ComponentRegistry):
        return obj
    if isinstance(obj, HookedTransformer) or is_bridge(obj):
        cached = getattr(obj, "_cca_registry", None)
        if cached is None or cached.identity != ModelIdentity.of(obj):
            cached = ComponentRegistry(obj)
            obj._cca_registry = cached
        return cached
    raise TypeError(f"Expected a HookedTransformer, TransformerBridge or ComponentRegistry, got {type(obj).__name__}")
