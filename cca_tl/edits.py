"""An update's result as data: the new values of the entries it wrote, to save, load, apply and scale.

:class:`WeightEdit` is a masked update's edit (the mask plus the values of its slices: the edited model is
the base model plus this file); :class:`RegionEdit` is any update's (masked, LoRA, head offsets), and can be
scaled along its own direction — how a sweep brings edits to the same size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from cca_tl.backend import HookedTransformer, parameter_owner

from cca_tl._io import atomic_write_bytes
from cca_tl.component_mask import ComponentMask
from cca_tl.entries import element_masks, set_entries
from cca_tl.errors import MaskMismatchError


@dataclass
class WeightEdit:
    """The new values of exactly the weight entries a targeted update may change (the selected components'
    slices), so an edited model is the base model plus this file."""

    mask: ComponentMask
    weight_set: str
    values: dict[str, torch.Tensor]

    @classmethod
    def capture(cls, model: HookedTransformer, mask: ComponentMask, weight_set: str) -> "WeightEdit":
        emasks = element_masks(model, mask, weight_set)
        owner = parameter_owner(model)
        return cls(mask, weight_set, {n: owner.get_parameter(n).detach()[m].clone().cpu() for n, m in emasks.items()})

    @torch.no_grad()
    def apply(self, model: HookedTransformer) -> None:
        emasks = element_masks(model, self.mask, self.weight_set)
        if set(emasks) != set(self.values):
            raise MaskMismatchError(f"This edit touches {sorted(self.values)} but the mask maps to {sorted(emasks)}.")
        for name, m in emasks.items():
            param = parameter_owner(model).get_parameter(name)
            if int(m.sum()) != self.values[name].numel():
                raise MaskMismatchError(f"Edit for {name} has {self.values[name].numel()} values; "
                                        f"the mask selects {int(m.sum())}.")
            param[m] = self.values[name].to(param.device, param.dtype)

    def touched(self, model: HookedTransformer) -> dict[str, Tensor]:
        """The regions :meth:`apply` writes (what a session protects first)."""
        return element_masks(model, self.mask, self.weight_set)

    def save(self, directory: str | Path) -> None:
        """``mask.safetensors`` and ``edit.safetensors`` in ``directory``, each written atomically."""
        from safetensors.torch import save

        directory = Path(directory)
        self.mask.save(directory / "mask.safetensors")
        blob = save({n: v.contiguous() for n, v in self.values.items()},
                    metadata={"cca_tl": json.dumps({"format": "cca_tl.WeightEdit/1", "weight_set": self.weight_set})})
        atomic_write_bytes(directory / "edit.safetensors", blob)

    @classmethod
    def load(cls, directory: str | Path) -> "WeightEdit":
        from safetensors import safe_open

        directory = Path(directory)
        with safe_open(str(directory / "edit.safetensors"), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("cca_tl", "{}"))
            values = {n: handle.get_tensor(n) for n in handle.keys()}
        return cls(ComponentMask.load(directory / "mask.safetensors"), meta["weight_set"], values)


@dataclass
class RegionEdit:
    """What any update wrote — the values of its regions (element masks, or whole tensors where a region is
    None) — as an edit a session can apply (:meth:`cca_tl.pipeline.ModelSession.apply`) and a sweep can
    scale. Masked updates, LoRA and head offsets alike: :attr:`UpdateResult.regions` says where."""

    regions: dict[str, Tensor | None]
    values: dict[str, Tensor]

    @classmethod
    def capture(cls, model: HookedTransformer, regions: dict[str, Tensor | None]) -> "RegionEdit":
        owner = parameter_owner(model)
        return cls(dict(regions), {n: (owner.get_parameter(n).detach()[r] if r is not None
                                       else owner.get_parameter(n).detach()).clone() for n, r in regions.items()})

    def touched(self, model: HookedTransformer) -> dict[str, Tensor | None]:
        return self.regions

    @torch.no_grad()
    def apply(self, model: HookedTransformer) -> None:
        for name, region in self.regions.items():
            set_entries(parameter_owner(model).get_parameter(name), None if region is None else region.nonzero(as_tuple=True),
                         self.values[name])

    def scaled(self, base: "RegionEdit", alpha: float) -> "RegionEdit":
        """The edit moved ``alpha`` of the way from ``base`` (the unedited values of the same regions):
        ``base + alpha·(self − base)``. ``alpha`` 0 is the unedited model, 1 this edit; a sweep scales an
        edit along its own direction to reach a fixed size (KL to the base model)."""
        if set(base.values) != set(self.values) or any(base.values[n].shape != v.shape for n, v in self.values.items()):
            raise MaskMismatchError("scaled() needs the unedited values of the same regions (RegionEdit.capture "
                                    "of the base model with this edit's regions).")
        return RegionEdit(self.regions, {n: base.values[n] + alpha * (v - base.values[n]) for n, v in self.values.items()})
