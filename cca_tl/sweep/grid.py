"""A sweep declared as data: which updates, at which budgets, with how many random draws, seeds and learning
rates, and at which edit sizes they are compared.

A sweep file is TOML (or JSON) with the fields of :class:`SweepConfig`; every value is checked for type and
range when the file is read, before any model loads. Each (seed, variant, budget, draw) is a :class:`Cell`;
a cell is the unit of work and of resume.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cca_tl.errors import CCAError

Objective = Literal["pivot", "answer"]
Selection = Literal["dcm", "layer-matched", "uniform", "disjoint", "heads", "all", "lora"]


@dataclass(frozen=True)
class VariantSpec:
    """An update in the sweep: its objective and where its components come from. ``dcm``: the top-k
    components of the stored DCM gains; ``layer-matched``: a seeded random set with the DCM set's count per
    kind and layer; ``uniform``: a seeded random set with its count per kind, uniform over layers;
    ``disjoint``: a seeded random set with its count per kind and, as far as free units allow, per layer, that
    shares none of its components (:func:`cca_tl.sweep.budgets.disjoint_matched`);
    ``heads``: LoFiT-style output offsets (:mod:`cca_tl.offsets`) on as many heads as the DCM set's
    parameter count pays for, the heads with the largest attribution of a per-head output scale; ``all``:
    every parameter (the budget does not apply); ``lora``: LoRA factors on every projection at the rank whose
    parameter count is closest to the DCM set's (:func:`cca_tl.lora.rank_for_budget`)."""

    objective: Objective
    selection: Selection
    description: str


VARIANTS: dict[str, VariantSpec] = {
    "cca": VariantSpec("pivot", "dcm", "CCA: the pivot objective on the top-k DCM components"),
    "random": VariantSpec("pivot", "layer-matched", "the pivot objective on a layer-matched random set"),
    "uniform": VariantSpec("pivot", "uniform", "the pivot objective on a random set uniform over layers"),
    "disjoint": VariantSpec("pivot", "disjoint", "the pivot objective on a random set of the DCM set's kinds and "
                                                 "layers that shares none of its components"),
    "masked-ft": VariantSpec("answer", "dcm", "reference-answer fine-tuning of the top-k DCM components"),
    "random-ft": VariantSpec("answer", "layer-matched", "reference-answer fine-tuning of a layer-matched random set"),
    "lofit": VariantSpec("pivot", "heads", "the pivot objective on LoFiT-style head output offsets (AdamW)"),
    # the power experiment's other cells (objective × parameters; names as cca_tl.update.VARIANTS)
    "all": VariantSpec("pivot", "all", "the pivot objective on every parameter"),
    "pivot-lora": VariantSpec("pivot", "lora", "the pivot objective on budget-matched LoRA factors"),
    "full-ft": VariantSpec("answer", "all", "reference-answer fine-tuning of every parameter"),
    "lora": VariantSpec("answer", "lora", "reference-answer fine-tuning of budget-matched LoRA factors"),
}


@dataclass(frozen=True)
class Cell:
    """One trained model of the sweep (``draw`` numbers the random draws; 0 for the DCM selection)."""

    seed: int
    variant: str
    budget: float
    draw: int = 0

    @property
    def key(self) -> str:
        return f"{self.variant}_b{self.budget:g}_d{self.draw}"


@dataclass(frozen=True)
class SweepConfig:
    """The grid. Budgets are shares of the maskable components (the DCM kinds); every budget's component set
    is the top-k of the seed's stored DCM gains (no DCM retraining per budget), ties among saturated gains
    broken by the gains' attribution (:func:`cca_tl.sweep.budgets.gain_attribution`)."""

    name: str = "sweep"
    preset: str = "power"                       # the run preset behind each seed (cca_tl.pipeline.PRESETS)
    overrides: list[str] = field(default_factory=list)  # key=value, as `cca-tl run --set`
    seeds: list[int] = field(default_factory=lambda: [0])
    budgets: list[float] = field(default_factory=lambda: [0.0025, 0.01, 0.08])
    variants: list[str] = field(default_factory=lambda: ["cca", "random", "uniform"])
    draws: int = 3                              # layer-matched random draws per seed and budget
    uniform_draws: int = 1                      # uniform random draws per seed and budget
    disjoint_draws: int = 1                     # disjoint random draws per seed and budget
    # Variants run only at some budgets, e.g. {"masked-ft" = [0.001, 0.08]}; a variant not named: every budget.
    variant_budgets: dict[str, list[float]] = field(default_factory=dict)
    lrs: list[float] = field(default_factory=lambda: [1e-4, 5e-4])  # the pivot objective's (SGD)
    answer_lrs: list[float] | None = None       # the answer objective's (AdamW); None: lrs
    offset_lrs: list[float] = field(default_factory=lambda: [1e-3, 5e-3])  # head offsets' (AdamW, as LoFiT)
    pivot_steps: int = 4                        # SGD steps of the pivot objective (full batch)
    answer_epochs: int = 1                      # AdamW epochs of the answer objective
    answer_batch: int = 8
    kl_targets: list[float] = field(default_factory=lambda: [5e-4, 1e-3, 2e-3])  # matched edit sizes (nats/token)
    newfacts_per_template: int = 25             # new-fact test questions per template (0: none)
    # How a cell reads its edit (the costs are Gemma-3-270M's on 2 CPU cores, where the 262k-token unembedding
    # makes every answer-level reading cost ~0.5-0.8 s per question and a pivot reading ~0.1 s):
    validate: bool = True                       # select learning rate and step on validation (else: one lr per
                                                # objective, its last step — the same recipe for every variant)
    greedy_at: float | None = None              # where greedy accuracy is read: None the selected edit, or one of
                                                # kl_targets (the edit scaled to that size)
    reference_readings: bool = True             # reference-path accuracy (test, new facts) at every reading

    def __post_init__(self) -> None:
        from cca_tl.pipeline.config import PRESETS

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise CCAError(f"sweep config: {message}")

        need(isinstance(self.name, str) and self.name.replace("-", "").replace("_", "").isalnum(),
             f"name must be letters, digits, - or _, not {self.name!r}")
        need(self.preset in PRESETS, f"preset must be one of {sorted(PRESETS)}, not {self.preset!r}")
        need(_list_of(self.overrides, str) and all("=" in o for o in self.overrides),
             f"overrides must be a list of 'key=value' strings, not {self.overrides!r}")
        need(_list_of(self.seeds, int) and len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds),
             f"seeds must be a non-empty list of distinct integers, not {self.seeds!r}")
        need(_list_of(self.budgets, (int, float)) and len(self.budgets) > 0
             and all(0 < b <= 1 for b in self.budgets),
             f"budgets must be a non-empty list of shares in (0, 1] of the components, not {self.budgets!r}")
        need(_list_of(self.variants, str) and len(self.variants) > 0 and set(self.variants) <= set(VARIANTS),
             f"variants must be a non-empty list from {list(VARIANTS)}, not {self.variants!r}")
        for name in ("draws", "uniform_draws", "disjoint_draws", "pivot_steps", "answer_epochs", "answer_batch"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be an integer ≥ 1, not {value!r}")
        need(isinstance(self.variant_budgets, dict) and set(self.variant_budgets) <= set(VARIANTS)
             and all(_list_of(b, (int, float)) and set(b) <= set(self.budgets) for b in self.variant_budgets.values()),
             f"variant_budgets must map variants from {list(VARIANTS)} to lists of budgets from {self.budgets}, "
             f"not {self.variant_budgets!r}")
        need(_list_of(self.lrs, (int, float)) and len(self.lrs) > 0 and all(lr > 0 and math.isfinite(lr)
                                                                             for lr in self.lrs),
             f"lrs must be a non-empty list of learning rates > 0, not {self.lrs!r}")
        need(self.answer_lrs is None or (_list_of(self.answer_lrs, (int, float)) and len(self.answer_lrs) > 0
                                         and all(lr > 0 and math.isfinite(lr) for lr in self.answer_lrs)),
             f"answer_lrs must be null or a non-empty list of learning rates > 0, not {self.answer_lrs!r}")
        need(_list_of(self.offset_lrs, (int, float)) and len(self.offset_lrs) > 0
             and all(lr > 0 and math.isfinite(lr) for lr in self.offset_lrs),
             f"offset_lrs must be a non-empty list of learning rates > 0, not {self.offset_lrs!r}")
        need(_list_of(self.kl_targets, (int, float)) and all(t > 0 for t in self.kl_targets),
             f"kl_targets must be a list of KL values > 0 (nats per token), not {self.kl_targets!r}")
        need(isinstance(self.newfacts_per_template, int) and self.newfacts_per_template >= 0,
             f"newfacts_per_template must be an integer ≥ 0, not {self.newfacts_per_template!r}")
        need(isinstance(self.validate, bool), f"validate must be true or false, not {self.validate!r}")
        need(isinstance(self.reference_readings, bool),
             f"reference_readings must be true or false, not {self.reference_readings!r}")
        need(self.greedy_at is None or self.greedy_at in self.kl_targets,
             f"greedy_at must be null (the selected edit) or one of kl_targets {self.kl_targets}, not {self.greedy_at!r}")
        if not self.validate:
            lists = {v: self.learning_rates(v) for v in self.variants}
            need(all(len(v) == 1 for v in lists.values()),
                 f"validate = false trains one recipe per variant: give one learning rate each, not {lists}")
        self.run_config(self.seeds[0])  # the preset with the overrides must make a valid run config

    # -- reading ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> "SweepConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CCAError(f"sweep config: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "SweepConfig":
        """A sweep file: TOML (``.toml``) or JSON; a parse error names the file and the place."""
        path = Path(path)
        if not path.exists():
            raise CCAError(f"No sweep config at {path}.")
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
            raise CCAError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {error}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # -- what it means ----------------------------------------------------------------------------
    def run_config(self, seed: int):
        """The pipeline config of one seed: the preset, selection by reference-path accuracy on the validation
        questions (forward only; the power experiment's rule), then the sweep's overrides."""
        from cca_tl.pipeline.config import preset

        try:
            return preset(self.preset, seed=seed).with_overrides(["update.val_metric=reference", *self.overrides])
        except ValueError as error:
            raise CCAError(f"sweep config: {error}") from None

    @property
    def greedy_reading(self) -> str:
        """The reading that holds greedy accuracy (the plain answer's)."""
        return "selected" if self.greedy_at is None else f"kl={self.greedy_at:g}"

    def learning_rates(self, variant: str) -> list[float]:
        spec = VARIANTS[variant]
        if spec.selection == "heads":
            return sorted(self.offset_lrs)
        return sorted(self.answer_lrs if spec.objective == "answer" and self.answer_lrs is not None else self.lrs)

    def cells(self, seed: int) -> list[Cell]:
        """Every cell of one seed, in the order they run: budgets from the smallest, the DCM selection
        before its random draws."""
        out = []
        for budget in sorted(self.budgets):
            for variant in self.variants:
                spec = VARIANTS[variant]
                if budget not in self.variant_budgets.get(variant, [budget]):
                    continue
                out += [Cell(seed, variant, float(budget), draw) for draw in range(self.draws_for(spec.selection))]
        return out

    def draws_for(self, selection: str) -> int:
        """Random draws per seed and budget of a selection (1 where it is not random)."""
        return {"layer-matched": self.draws, "uniform": self.uniform_draws,
                "disjoint": self.disjoint_draws}.get(selection, 1)

    def schedule(self) -> list[list[Cell]]:
        """Every cell of every seed in groups that run one after the other. A group is one comparison at one
        budget on every seed: CCA with the first layer-matched draw, then the uniform draw, then the disjoint
        draw, then each further layer-matched draw, then the other variants in :data:`PRIORITY` order; within
        each, budgets from the smallest. A sweep stopped anywhere has the fullest answer its time allowed: a
        comparison over all seeds (a between-seed interval) at the tight budgets before one seed's reading at
        every budget.

        The uniform draw comes before further layer-matched ones because on Gemma-3-270M (one kv head and four
        query heads per layer) a layer-matched draw shares 43–94 % of the DCM set's parameters at budgets up to
        1 % (``analyses/budget_overlap.py``): every k/v head is the DCM set's own, a q head a quarter of the
        time, and a head owns 256 neurons' worth of weights. A uniform draw shares under 1 % there, and a
        disjoint draw nothing, by construction, while keeping the layers. A later variant's further draws wait
        likewise for its first draw on every seed (random-ft of the budget sweep: all three draws of seed 0
        before any draw of seed 1 would have left masked FT − random FT on one seed for ~40 minutes)."""
        cells = [c for seed in self.seeds for c in self.cells(seed)]

        def group(c: Cell) -> tuple[float, ...]:
            if c.variant == "cca" or (c.variant == "random" and c.draw == 0):
                return (0, 0, c.budget)
            if c.variant == "uniform":
                return (0, 1, c.budget)
            if c.variant == "disjoint":
                return (0, 2, c.budget)
            if c.variant == "random":
                return (0, 2 + c.draw, c.budget)
            return (1, PRIORITY.index(c.variant), c.draw, c.budget)

        ordered = sorted(cells, key=lambda c: (group(c), self.seeds.index(c.seed), c.draw, c.variant))
        groups: list[list[Cell]] = []
        for c in ordered:
            if groups and group(groups[-1][0]) == group(c):
                groups[-1].append(c)
            else:
                groups.append([c])
        return groups


#: The order cells run in across seeds (:meth:`SweepConfig.schedule`): the comparison the plain answer needs
#: first — CCA and one layer-matched draw on every seed — then the uniform draw, the disjoint draw, the other
#: layer-matched draws, then the other controls.
PRIORITY = ("cca", "random", "uniform", "disjoint", "lofit", "masked-ft", "random-ft", "all", "pivot-lora", "full-ft",
            "lora")


def _list_of(value, kind) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
