"""Typed artifacts the stages hand each other through the run directory (each saves and loads itself).

The problem splits live here; a DCM result (:class:`cca_tl.dcm.DCMResult`) and a weight edit
(:class:`cca_tl.edits.WeightEdit`) save and load themselves beside the stage that makes them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cca_tl._io import atomic_write_text


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
