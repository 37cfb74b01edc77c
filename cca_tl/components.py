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

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterable, Iterator, Literal, Mapping, Union

import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor
from transformer_lens import HookedTransformer

from cca_tl.errors import MaskMismatchError

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
    """The bias families (``qkv``, ``o``, ``mlp``) that really exist in the model (from the family table)."""
    from cca_tl.families import FAMILIES

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
    """One parameter slice: ``model.get_parameter(param).select(axis, index)``."""

    param: str
    axis: int
    index: int

    def view(self, model: HookedTransformer) -> Tensor:
        return model.get_parameter(self.param).select(self.axis, self.index)


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
        params = dict(model.named_parameters())
        biases = hf_biases(model)
        self._slice_specs: dict[tuple[Kind, WeightSet], tuple[SliceSpec, ...]] = {}
        self._param_shapes = {name: tuple(p.shape) for name, p in params.items()}
        self.total_model_params = _real_param_count(model, params)
        for kind, spec in KIND_SPECS.items():
            for weight_set, specs in (("authors", spec.authors), ("extended", spec.authors + spec.extended_extra)):
                kept = []
                for s in specs:
                    if s.bias is not None and s.bias not in biases:
                        continue
                    resolved = _resolve_param(s.param, params)
                    if resolved is not None:
                        kept.append(SliceSpec(resolved, s.axis, s.bias))
                self._slice_specs[(kind, weight_set)] = tuple(kept)

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
        return [
            ParamSlice(s.param.format(layer=component.layer), s.axis, component.index)
            for s in self.slice_specs(component.kind, weight_set)
        ]

    def params_per_unit(self, kind: Kind | str, weight_set: WeightSet = "authors") -> int:
        """Number of scalar parameters one unit of ``kind`` owns."""
        total = 0
        for s in self.slice_specs(kind, weight_set):
            shape = list(self._param_shapes[s.param.format(layer=0)])
            del shape[s.axis]
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
        return _with_total(pd.DataFrame(data, index=pd.RangeIndex(self.n_layers, name="layer")))

    def summary(self, weight_set: WeightSet = "authors") -> pd.DataFrame:
        """Per kind: hook, units per layer, total components, parameters per unit and in all, the TL
        parameter slices of one unit and where they sit in the HF checkpoint."""
        from cca_tl.families import hf_slices

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


_BIAS_FAMILY = {"b_Q": "qkv", "b_K": "qkv", "_b_K": "qkv", "b_V": "qkv", "_b_V": "qkv", "b_O": "o",
                "b_in": "mlp", "b_out": "mlp", "b_U": "unembed"}


def real_parameter_names(model: HookedTransformer) -> list[str]:
    """All parameters except TransformerLens' zero placeholders for biases the HF architecture lacks."""
    has_hf = model.cfg.original_architecture is not None
    biases = hf_biases(model)
    names = []
    for name, _ in model.named_parameters():
        family = _BIAS_FAMILY.get(name.rsplit(".", 1)[-1])
        if has_hf and family is not None and family not in biases:
            continue
        names.append(name)
    return names


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


def _with_total(df: pd.DataFrame) -> pd.DataFrame:
    total = df.sum(numeric_only=True).to_frame("total").T
    out = pd.concat([df, total])
    out.index.name = "layer"
    return out


# ----------------------------------------------------------------------------------------------------
# The component mask
# ----------------------------------------------------------------------------------------------------


@dataclass
class ComponentMask:
    """A boolean selection of components of one model: per kind a ``[n_layers, *entry shape]`` tensor —
    ``[n_layers, units]`` at component granularity (CCA), ``[n_layers, units, d_head]`` for head kinds at
    channel granularity (node pruning; see :meth:`ComponentRegistry.entry_shape`).

    Only the kinds present in ``masks`` take part (a default CCA mask has q, k, v and neuron; head
    outputs ``z`` are opt-in). ``identity`` records which model it belongs to.
    """

    identity: ModelIdentity
    masks: dict[Kind, Bool[Tensor, "layer unit"]] = field(default_factory=dict)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def empty(cls, model_or_registry: HookedTransformer | ComponentRegistry,
              kinds: Iterable[Kind | str] = DEFAULT_KINDS, granularity: Granularity = "component") -> "ComponentMask":
        reg = registry_of(model_or_registry)
        return cls(reg.identity, {
            Kind(k): torch.zeros(reg.n_layers, *reg.entry_shape(k, granularity), dtype=torch.bool)
            for k in kinds if reg.n_units(k) > 0
        })

    @classmethod
    def full(cls, model_or_registry: HookedTransformer | ComponentRegistry,
             kinds: Iterable[Kind | str] = DEFAULT_KINDS, granularity: Granularity = "component") -> "ComponentMask":
        mask = cls.empty(model_or_registry, kinds, granularity)
        for kind in mask.masks:
            mask.masks[kind].fill_(True)
        return mask

    @classmethod
    def from_components(cls, model_or_registry: HookedTransformer | ComponentRegistry,
                        components: Iterable[Component], kinds: Iterable[Kind | str] = DEFAULT_KINDS) -> "ComponentMask":
        reg = registry_of(model_or_registry)
        components = list(components)
        mask = cls.empty(reg, {*map(Kind, kinds), *(c.kind for c in components)})
        for c in components:
            reg._check_component(c)
            mask.masks[c.kind][c.layer, c.index] = True
        return mask

    @classmethod
    def top_k(cls, model_or_registry: HookedTransformer | ComponentRegistry, scores: Mapping[Kind | str, Tensor],
              k: int) -> "ComponentMask":
        """The ``k`` entries with the highest score across kinds (DCM gains, pruning scores; ties broken by
        position); each score tensor has the shape of the mask entry it ranks."""
        reg = registry_of(model_or_registry)
        return cls(reg.identity, {Kind(kind): m for kind, m in top_k_select(scores, k).items()})

    # -- queries ------------------------------------------------------------------------------------
    @property
    def kinds(self) -> tuple[Kind, ...]:
        return tuple(k for k in ALL_KINDS if k in self.masks)

    @property
    def granularity(self) -> Granularity:
        """``"channel"`` when a head kind's entries are per ``d_head`` channel, else ``"component"``."""
        return "channel" if any(m.ndim == 3 for m in self.masks.values()) else "component"

    def count(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def size(self) -> int:
        """Number of mask entries (all components of the kinds this mask covers)."""
        return int(sum(m.numel() for m in self.masks.values()))

    def __len__(self) -> int:
        return self.count()

    def counts_by_kind(self) -> dict[str, int]:
        return {k.value: int(self.masks[k].sum()) for k in self.kinds}

    def counts_by_layer(self) -> pd.DataFrame:
        """Selected components per layer (rows) and kind (columns), with a total row."""
        data = {k.value: self.masks[k].flatten(1).sum(dim=1).tolist() for k in self.kinds}
        return _with_total(pd.DataFrame(data, index=pd.RangeIndex(self.identity.n_layers, name="layer")))

    def fraction_components(self) -> float:
        """Selected entries / all entries (the paper's "% components updated", as a fraction)."""
        return self.count() / max(self.size(), 1)

    def n_params(self, model_or_registry: HookedTransformer | ComponentRegistry,
                 weight_set: WeightSet = "authors") -> int:
        reg = registry_of(model_or_registry)
        self.validate(reg)
        return sum(int(self.masks[k].sum()) * self._params_per_entry(reg, k, weight_set) for k in self.kinds)

    def _params_per_entry(self, reg: ComponentRegistry, kind: Kind, weight_set: WeightSet) -> int:
        """A channel of a head owns ``1/d_head`` of the head's slices (one column of ``W_Q[h]``, ...)."""
        per_unit = reg.params_per_unit(kind, weight_set)
        return per_unit // reg.identity.d_head if self.masks[kind].ndim == 3 else per_unit

    def fraction_params(self, model_or_registry: HookedTransformer | ComponentRegistry,
                        weight_set: WeightSet = "authors") -> float:
        """Parameters the selected components own / all parameters of the model."""
        reg = registry_of(model_or_registry)
        return self.n_params(reg, weight_set) / reg.total_model_params

    def components(self) -> list[Component]:
        """The selected components (component granularity only)."""
        if self.granularity != "component":
            raise ValueError("components() lists whole components; this mask selects channels (read .masks).")
        out = []
        for kind in self.kinds:
            for layer, index in self.masks[kind].nonzero().tolist():
                out.append(Component(kind, layer, index))
        return out

    def __contains__(self, component: Component) -> bool:
        m = self.masks.get(component.kind)
        return bool(m is not None and m[component.layer, component.index])

    def summary(self, model_or_registry: HookedTransformer | ComponentRegistry | None = None,
                weight_set: WeightSet = "authors") -> pd.DataFrame:
        """Per kind: selected, of how many, %; with parameter counts when a model is given."""
        rows = []
        for kind in self.kinds:
            sel, tot = int(self.masks[kind].sum()), self.masks[kind].numel()
            row = dict(kind=kind.value, selected=sel, of=tot, pct=100.0 * sel / max(tot, 1))
            if model_or_registry is not None:
                row["params"] = sel * self._params_per_entry(registry_of(model_or_registry), kind, weight_set)
            rows.append(row)
        df = pd.DataFrame(rows).set_index("kind")
        total = dict(selected=self.count(), of=self.size(), pct=100.0 * self.fraction_components())
        if model_or_registry is not None:
            total["params"] = int(df["params"].sum())
        df.loc["all"] = pd.Series(total)
        return df

    # -- validation ---------------------------------------------------------------------------------
    def validate(self, model_or_registry: HookedTransformer | ComponentRegistry, *, strict_name: bool = True) -> None:
        """Raise :class:`MaskMismatchError` unless this mask fits the model exactly."""
        reg = registry_of(model_or_registry)
        self.identity.check_compatible(reg.identity, strict_name=strict_name)
        for kind, m in self.masks.items():
            expected = (reg.n_layers, *reg.entry_shape(kind, "channel" if m.ndim == 3 else "component"))
            if tuple(m.shape) != expected or m.dtype != torch.bool:
                raise MaskMismatchError(
                    f"Mask entry {kind.value!r} has shape {tuple(m.shape)} ({m.dtype}); the model needs a "
                    f"boolean {expected}."
                )

    # -- set operations -----------------------------------------------------------------------------
    def _combine(self, other: "ComponentMask", op) -> "ComponentMask":
        if not isinstance(other, ComponentMask):
            return NotImplemented
        other.identity.check_compatible(self.identity, what="other mask")
        kinds = [k for k in ALL_KINDS if k in self.masks or k in other.masks]
        out = {}
        for k in kinds:
            a = self.masks.get(k)
            b = other.masks.get(k)
            a = torch.zeros_like(b) if a is None else a
            b = torch.zeros_like(a) if b is None else b
            out[k] = op(a, b)
        return ComponentMask(self.identity, out)

    def __or__(self, other: "ComponentMask") -> "ComponentMask":
        return self._combine(other, torch.logical_or)

    def __and__(self, other: "ComponentMask") -> "ComponentMask":
        return self._combine(other, torch.logical_and)

    def __sub__(self, other: "ComponentMask") -> "ComponentMask":
        return self._combine(other, lambda a, b: a & ~b)

    def __xor__(self, other: "ComponentMask") -> "ComponentMask":
        return self._combine(other, torch.logical_xor)

    def __invert__(self) -> "ComponentMask":
        return ComponentMask(self.identity, {k: ~m for k, m in self.masks.items()})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ComponentMask):
            return NotImplemented
        return (self.identity == other.identity and self.kinds == other.kinds
                and all(torch.equal(self.masks[k], other.masks[k]) for k in self.kinds))

    def random_like(self, seed: int = 0) -> "ComponentMask":
        """A seeded random mask with the same number of selected units per kind *and* layer (the control
        the paper lacks)."""
        generator = torch.Generator().manual_seed(seed)
        out = {}
        for kind in self.kinds:
            m = torch.zeros_like(self.masks[kind]).flatten(1)
            for layer, n in enumerate(self.masks[kind].flatten(1).sum(dim=1).tolist()):
                m[layer, torch.randperm(m.shape[1], generator=generator)[:n]] = True
            out[kind] = m.reshape(self.masks[kind].shape)
        return ComponentMask(self.identity, out)

    def jaccard(self, other: "ComponentMask") -> float:
        """|A ∩ B| / |A ∪ B| (1.0 for two empty masks): how much two masks overlap."""
        union = (self | other).count()
        return 1.0 if union == 0 else (self & other).count() / union

    # -- persistence --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write to ``.safetensors`` (dense, fast) or ``.json`` (sparse list, human-readable), atomically."""
        from cca_tl._io import atomic_write_bytes

        path = Path(path)
        meta = {"format": "cca_tl.ComponentMask/1", "identity": asdict(self.identity),
                "kinds": [k.value for k in self.kinds], "granularity": self.granularity}
        if path.suffix == ".json":
            doc = dict(meta, selected={k.value: self.masks[k].nonzero().tolist() for k in self.kinds})
            atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
        elif path.suffix == ".safetensors":
            from safetensors.torch import save

            blob = save({k.value: self.masks[k].contiguous() for k in self.kinds},
                        metadata={"cca_tl": json.dumps(meta)})
            atomic_write_bytes(path, blob)
        else:
            raise ValueError(f"Save a mask as .json or .safetensors, not {path.suffix!r}")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ComponentMask":
        path = Path(path)
        if path.suffix == ".json":
            doc = json.loads(path.read_text())
            _check_format(doc, path)
            identity = ModelIdentity(**doc["identity"])
            shapes = _entry_shapes(identity, doc.get("granularity", "component"))
            masks = {}
            for k in doc["kinds"]:
                kind = Kind(k)
                m = torch.zeros(identity.n_layers, *shapes[kind], dtype=torch.bool)
                for index in doc["selected"][k]:
                    m[tuple(index)] = True
                masks[kind] = m
            return cls(identity, masks)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {}).get("cca_tl", "{}"))
                _check_format(meta, path)
                masks = {Kind(k): handle.get_tensor(k) for k in meta["kinds"]}
            return cls(ModelIdentity(**meta["identity"]), masks)
        raise ValueError(f"Load a mask from .json or .safetensors, not {path.suffix!r}")

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts_by_kind().items())
        unit = "" if self.granularity == "component" else " channels"
        return (f"ComponentMask({self.identity.name!r}: {self.count()}/{self.size()}{unit} selected "
                f"[{counts}])")


def _check_format(doc: dict, path: Path) -> None:
    if doc.get("format") != "cca_tl.ComponentMask/1":
        raise MaskMismatchError(f"{path} is not a cca_tl component mask (format {doc.get('format')!r}).")


def _entry_shapes(identity: ModelIdentity, granularity: Granularity) -> dict[Kind, tuple[int, ...]]:
    channel = (identity.d_head,) if granularity == "channel" else ()
    return {Kind.Q: (identity.n_heads, *channel), Kind.K: (identity.n_kv_heads, *channel),
            Kind.V: (identity.n_kv_heads, *channel), Kind.Z: (identity.n_heads, *channel),
            Kind.NEURON: (identity.d_mlp,)}


def top_k_select(scores: Mapping[object, Tensor], k: int) -> dict:
    """Boolean masks (same keys and shapes as ``scores``) marking the ``k`` highest scores over all of them;
    ties broken by position."""
    keys = list(scores)
    flat = torch.cat([scores[key].detach().flatten().float().cpu() for key in keys])
    if not 0 <= k <= flat.numel():
        raise ValueError(f"k={k} outside [0, {flat.numel()}]")
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    out, start = {}, 0
    for key in keys:
        n = scores[key].numel()
        out[key] = chosen[start:start + n].reshape(scores[key].shape)
        start += n
    return out


def registry_of(obj: HookedTransformer | ComponentRegistry) -> ComponentRegistry:
    if isinstance(obj, ComponentRegistry):
        return obj
    if isinstance(obj, HookedTransformer):
        cached = getattr(obj, "_cca_registry", None)
        if cached is None or cached.identity != ModelIdentity.of(obj):
            cached = ComponentRegistry(obj)
            obj._cca_registry = cached
        return cached
    raise TypeError(f"Expected a HookedTransformer or ComponentRegistry, got {type(obj).__name__}")


def component_table(obj: Union[HookedTransformer, ComponentRegistry, ComponentMask],
                    kinds: Iterable[Kind | str] = ALL_KINDS) -> pd.DataFrame:
    """Layer x kind component counts: all components of a model, or the selected ones of a mask."""
    if isinstance(obj, ComponentMask):
        return obj.counts_by_layer()
    return registry_of(obj).table(kinds)
