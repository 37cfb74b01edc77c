"""Typed artifacts the stages hand each other through the run directory (each saves and loads itself)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from cca_tl._io import atomic_write_text
from cca_tl.components import ComponentMask
from cca_tl.errors import CCAError


@dataclass
class ProblemSplits:
    """train / val / test problems (each already capped per template)."""

    train: list
    val: list
    test: list

    def save(self, path: Path) -> None:
        doc = {name: [p.to_dict() for p in getattr(self, name)] for name in ("train", "val", "test")}
        atomic_write_text(path, json.dumps(doc, indent=1))

    @classmethod
    def load(cls, path: Path) -> "ProblemSplits":
        from cca_tl.tasks import Problem

        doc = json.loads(Path(path).read_text())
        return cls(**{name: [Problem(**p) for p in doc[name]] for name in ("train", "val", "test")})

    def split_of(self) -> dict[tuple[str, int], str]:
        return {(p.template_id, p.instance_id): name for name in ("train", "val", "test") for p in getattr(self, name)}


@dataclass
class WeightEdit:
    """The new values of exactly the weight entries a targeted update may change (the selected components'
    slices), so an edited model is the base model plus this file."""

    mask: ComponentMask
    weight_set: str
    values: dict[str, torch.Tensor]

    @classmethod
    def capture(cls, model: HookedTransformer, mask: ComponentMask, weight_set: str) -> "WeightEdit":
        from cca_tl.update import element_masks

        emasks = element_masks(model, mask, weight_set)
        return cls(mask, weight_set, {n: model.get_parameter(n).detach()[m].clone().cpu() for n, m in emasks.items()})

    @torch.no_grad()
    def apply(self, model: HookedTransformer) -> None:
        from cca_tl.update import element_masks

        emasks = element_masks(model, self.mask, self.weight_set)
        if set(emasks) != set(self.values):
            raise CCAError(f"This edit touches {sorted(self.values)} but the mask maps to {sorted(emasks)}.")
        for name, m in emasks.items():
            param = model.get_parameter(name)
            if int(m.sum()) != self.values[name].numel():
                raise CCAError(f"Edit for {name} has {self.values[name].numel()} values; the mask selects {int(m.sum())}.")
            param[m] = self.values[name].to(param.device, param.dtype)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save

        from cca_tl._io import atomic_write_bytes

        self.mask.save(directory / "mask.safetensors")
        blob = save({n: v.contiguous() for n, v in self.values.items()},
                    metadata={"cca_tl": json.dumps({"format": "cca_tl.WeightEdit/1", "weight_set": self.weight_set})})
        atomic_write_bytes(directory / "edit.safetensors", blob)

    @classmethod
    def load(cls, directory: Path) -> "WeightEdit":
        from safetensors import safe_open

        with safe_open(str(directory / "edit.safetensors"), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("cca_tl", "{}"))
            values = {n: handle.get_tensor(n) for n in handle.keys()}
        return cls(ComponentMask.load(directory / "mask.safetensors"), meta["weight_set"], values)


def save_dcm(result, directory: Path) -> None:
    """A DCMResult as mask (.safetensors and .json), gains, history and result.json."""
    from safetensors.torch import save

    from cca_tl._io import atomic_write_bytes

    result.mask.save(directory / "mask.safetensors")
    result.mask.save(directory / "mask.json")
    atomic_write_bytes(directory / "gains.safetensors", save({k: v.contiguous() for k, v in result.gains.items()}))
    atomic_write_text(directory / "history.csv", result.history.to_csv(index=False))
    atomic_write_text(directory / "result.json", json.dumps(dict(lam=result.lam, stopped=result.stopped,
                                                                 config=result.config), indent=1))


def load_dcm(directory: Path):
    from safetensors.torch import load_file

    from cca_tl.dcm import DCMResult

    meta = json.loads((directory / "result.json").read_text())
    return DCMResult(ComponentMask.load(directory / "mask.safetensors"), load_file(str(directory / "gains.safetensors")),
                     pd.read_csv(directory / "history.csv"), meta["lam"], meta["stopped"], meta["config"])
