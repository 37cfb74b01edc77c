"""The component mask: a boolean selection of one model's components (CCA) or channels (node pruning).

It is the hand-off between stages: DCM learns one, the budget sweep draws them, the targeted update edits
the weights it names, analysis counts it, and it saves to ``.safetensors`` or ``.json`` with the identity of
the model it belongs to (:class:`~cca_tl.components.ModelIdentity`), so a mask is never applied to another
model. The registry it indexes is :mod:`cca_tl.components`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Union

import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor
from cca_tl.backend import HookedTransformer

from cca_tl.components import (ALL_KINDS, DEFAULT_KINDS, Component, ComponentRegistry, Granularity, Kind,
                               ModelIdentity, WeightSet, registry_of, with_total_row)
from cca_tl.errors import MaskMismatchError


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
        return with_total_row(pd.DataFrame(data, index=pd.RangeIndex(self.identity.n_layers, name="layer")))

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


def component_table(obj: Union[HookedTransformer, ComponentRegistry, ComponentMask],
                    kinds: Iterable[Kind | str] = ALL_KINDS) -> pd.DataFrame:
    """Layer x kind component counts: all components of a model, or the selected ones of a mask."""
    if isinstance(obj, ComponentMask):
        return obj.counts_by_layer()
    return registry_of(obj).table(kinds)
