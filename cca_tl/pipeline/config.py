"""The run configuration and its presets: one typed section per stage, validated from the annotations.

``RunConfig`` holds what says *which* model runs and where (``model``, ``device``, ``dtype``, ``backend``, ``n_devices``,
``seed``, ``start_from``) and one section per stage: :class:`DataConfig` (problems), :class:`TracesConfig`
(traces and localization), :class:`DCMConfig`, :class:`UpdateConfig`, :class:`EvaluateConfig` and
:class:`AnalysisConfig`. Every field is checked against its type annotation (``Literal`` choices, ``int``,
``float``, ``list[...]``, ``None`` where optional) plus the bounds in its metadata, so a typo or a wrong
type is an error when the config is made, not a crash an hour into a run. A section whose stage is one
library function lives beside it and gives that function its defaults (``DCMConfig`` in :mod:`cca_tl.dcm`,
``UpdateConfig`` in :mod:`cca_tl.update`), so a notebook call and a run without overrides agree.

Two kinds of fields: those that determine a run's results (locked: a run directory refuses a config that
differs in any of them), and *execution* settings — ``device``, ``n_devices`` — that say where it runs and
may change when a run is resumed elsewhere (a run started on a laptop can be finished on a GPU machine).
``dtype`` changes the numbers, so it is locked.

Keys are written ``section.field`` (``dcm.lam``, ``update.lr``); a field name that only one section has may
be given alone (``lam``). Run directories written before the sections existed hold flat keys
(``lam``, ``dcm_lr``, ``update_steps``, ...); :meth:`RunConfig.from_dict` reads them unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from cca_tl.dcm import DCMConfig
from cca_tl.update import UpdateConfig
from cca_tl.validated import Validated, bounded, positive

CONTROL_VARIANTS = ("random", "all")
DTYPES = ("float32", "bfloat16", "float16")
EXECUTION_KEYS = ("device", "n_devices")  # where a run executes; not part of its identity

Control = Literal["random", "all"]


#: Devices a run accepts: "auto" (CUDA when present), "cpu", "mps", "cuda" or "cuda:<index>".
def _device_ok(device: str) -> bool:
    if device in ("auto", "cpu", "mps", "cuda"):
        return True
    return device.startswith("cuda:") and device[5:].isdigit()


@dataclass
class DataConfig(Validated):
    """Which problems (stage ``problems``): the task, its templates, the prompt and the split sizes."""

    task: Literal["two-step", "arithmetic", "gsm-symbolic"] = "two-step"
    n_per_template: int = positive(100)  # instances generated per template before the split
    split: list[float] = field(default_factory=lambda: [0.52, 0.08, 0.40])  # train / val / test shares (the paper's)
    max_value: int = positive(3)         # largest operand of the two-step / arithmetic tasks
    templates: list[str] | None = None    # None: all templates of the task
    n_templates: int | None = bounded(None, min=1)  # keep only the first N template ids (sorted), to size a run
    max_clauses: int | None = field(default=None, metadata={"min": 1})  # gsm-symbolic: at most this many reasoning clauses
    prompt: Literal["few-shot", "chat"] = "few-shot"
    shots: int | None = bounded(None, min=0)  # few-shot exemplars (None: all)
    train_per_template: int | None = bounded(12, min=1)  # questions per template traced for training (None: whole split)
    val_per_template: int | None = bounded(8, min=1)
    test_per_template: int | None = bounded(24, min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_clauses is not None and self.task != "gsm-symbolic":
            raise ValueError(f"max_clauses filters GSM-Symbolic templates; the {self.task} task has none.")
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(f"split must be three non-negative shares of train / val / test summing to 1, "
                             f"not {self.split}")


@dataclass
class TracesConfig(Validated):
    """Traces and localization (stages ``traces``, ``localize``)."""

    # reference: pivots where wrong greedy answers leave the reference solution (no sampling; the two-step
    # task's right answers are its reference text). prefix / branching: the paper's, from sampled traces.
    localization: Literal["reference", "prefix", "branching"] = "reference"
    weak_threshold: float = bounded(0.8, min=0, max=1)  # train only on templates with greedy train accuracy below this
    n_samples: int = bounded(0, min=0)  # sampled traces per question at most (paper: 10; reference needs none)
    max_new_tokens: int = positive(32)
    # Rows decoded together. Throughput is flat from 32 to 128 rows on 2 CPU cores (compute-bound), and the
    # key/value buffer grows with the rows: 32 halves it against 64 at no cost in time.
    gen_batch_size: int = positive(32)


@dataclass
class EvaluateConfig(Validated):
    """Evaluation (stage ``evaluate``): the controls beside CCA, and retention."""

    controls: list[Control] = field(default_factory=lambda: ["random"])
    # Retention: KL to the base model and NLL over this many 128-token general texts (CPython's pydoc topics;
    # 8 texts = 1,024 positions). Each text costs an edited variant two full-vocabulary forward passes.
    retention_texts: int = positive(8)


@dataclass
class AnalysisConfig(Validated):
    """Ablation checks, the faithfulness curve and attention views (stage ``analysis``)."""

    ablation_random_sets: int = positive(3)
    faithfulness_points: int = positive(8)
    attention_heads: int = positive(4)


SECTIONS: dict[str, type] = dict(data=DataConfig, traces=TracesConfig, dcm=DCMConfig, update=UpdateConfig,
                                 evaluate=EvaluateConfig, analysis=AnalysisConfig)


@dataclass
class RunConfig(Validated):
    """Everything that determines a run's results. Defaults: the README's main job (2 CPU cores)."""

    model: str = "gemma-3-270m"
    device: str = "auto"                  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    #: which TransformerLens runs the model: "hooked" (3.x HookedTransformer) or "bridge" (4.x, over the HF
    #: model); locked, since the two compute the same numbers only to float tolerance
    backend: Literal["hooked", "bridge"] = "hooked"
    n_devices: int = positive(1)         # TransformerLens' layer split over this many GPUs (big models)
    seed: int = 0
    start_from: str | None = None         # multi-round CCA: a finished run dir whose edit is this run's base
    data: DataConfig = field(default_factory=DataConfig)
    traces: TracesConfig = field(default_factory=TracesConfig)
    dcm: DCMConfig = field(default_factory=DCMConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _device_ok(self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:<index>', not {self.device!r}")

    # -- keys -----------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        """Every leaf key: ``model``, ..., ``data.task``, ..., ``analysis.attention_heads``."""
        out = []
        for f in dataclasses.fields(cls):
            section = SECTIONS.get(f.name)
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(section)] if section else [f.name]
        return out

    @classmethod
    def resolve(cls, key: str) -> str:
        """A dotted key, a field name only one section has (``lam``), or a pre-section flat name
        (``dcm_lr``, ``update_steps``) → the dotted key. Unknown keys are a clear error."""
        keys = cls.keys()
        if key in keys:
            return key
        if key in LEGACY_KEYS:
            return LEGACY_KEYS[key]
        matches = [k for k in keys if k.rsplit(".", 1)[-1] == key]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ValueError(f"Config key {key!r} is ambiguous: say which of {matches}.")
        raise ValueError(f"Unknown config key {key!r}; known: {keys}")

    # -- dict forms -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested: ``{"model": ..., "dcm": {"lam": ...}, ...}`` (what ``config.json`` holds)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"model": ..., "dcm.lam": ..., ...}``."""
        nested = self.to_dict()
        return {key: (nested[key] if "." not in key else nested[key.split(".")[0]][key.split(".")[1]])
                for key in self.keys()}

    def result_fields(self) -> dict[str, Any]:
        """The fields that determine results (every flat key but the execution settings): what a run
        directory must agree with to be resumed."""
        return {k: v for k, v in self.flat().items() if k not in EXECUTION_KEYS}

    def identity(self) -> dict[str, Any]:
        """Deprecated: :meth:`result_fields` ("identity" is :class:`cca_tl.components.ModelIdentity`)."""
        import warnings

        warnings.warn("RunConfig.identity() is deprecated; use RunConfig.result_fields().", DeprecationWarning,
                      stacklevel=2)
        return self.result_fields()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """From nested sections, dotted keys, single-section field names or a flat pre-section dict (keys
        absent take their defaults)."""
        nested: dict[str, Any] = {}
        for key, value in _flatten(data).items():
            resolved = cls.resolve(key)
            if "." in resolved:
                section, name = resolved.split(".")
                nested.setdefault(section, {})[name] = value
            else:
                nested[resolved] = value
        sections = {name: SECTIONS[name](**values) for name, values in nested.items() if name in SECTIONS}
        return cls(**{**{k: v for k, v in nested.items() if k not in SECTIONS}, **sections})

    def with_overrides(self, pairs: Sequence[str]) -> "RunConfig":
        """Apply ``key=value`` strings (values parsed as JSON where possible, e.g. ``dcm.lam=1e-3``,
        ``evaluate.controls=["random","all"]``, ``data.templates=null``; ``lam=1e-3`` and
        ``controls=random,all`` work too)."""
        flat = self.flat()
        for pair in pairs:
            if "=" not in pair:
                raise ValueError(f"Expected key=value, got {pair!r}")
            key, raw = pair.split("=", 1)
            key = self.resolve(key)
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            if isinstance(flat[key], list) and isinstance(value, str):
                value = [v for v in value.split(",") if v]
            flat[key] = value
        return RunConfig.from_dict(flat)


#: Flat keys of run directories written before the sections existed, where the field name changed.
LEGACY_KEYS = {"dcm_lr": "dcm.lr", "dcm_epochs": "dcm.epochs", "dcm_batch_size": "dcm.batch_size",
               "update_lr": "update.lr", "update_steps": "update.steps", "update_eval_steps": "update.eval_steps",
               "update_batch_size": "update.batch_size"}


PRESETS: dict[str, dict[str, Any]] = {
    # The README's main job: Gemma-3-270M on the two-step task (which it half-solves), on 2 CPU cores.
    "easy": {},
    # The previous main job: the longer arithmetic task, the paper's Prefix localization from sampled traces
    # and validation by accuracy (Gemma-3-270M is at ~15 % there).
    "arithmetic": {
        "data": dict(task="arithmetic", max_value=9, n_per_template=50, shots=2, train_per_template=8,
                     val_per_template=4, test_per_template=8),
        "traces": dict(localization="prefix", n_samples=6, max_new_tokens=40),
        "update": dict(val_metric="accuracy", steps=8),
        "evaluate": dict(retention_texts=16),
    },
    # The power experiment (analyses/power.py): per seed 320 test questions, 120 validation questions and
    # ~120 training pivots; a third of each template's distinct questions per split (the paper's 8 %
    # validation share would leave ~20 validation questions per template).
    "power": {
        "data": dict(n_per_template=300, split=[0.34, 0.33, 0.33], train_per_template=50, val_per_template=30,
                     test_per_template=80),
        "evaluate": dict(controls=["random", "all"]),
    },
    # Qwen2.5-Coder-0.5B-Instruct (optional extra) on GSM-Symbolic, chat prompt; sized for a CPU afternoon.
    "gsm-qwen": {
        "model": "qwen2.5-coder-0.5b-instruct",
        "data": dict(task="gsm-symbolic", prompt="chat", shots=None, max_value=9, n_templates=16, max_clauses=2,
                     train_per_template=3, val_per_template=1, test_per_template=2),
        "traces": dict(localization="prefix", gen_batch_size=64, max_new_tokens=256, n_samples=6),
        "dcm": dict(lam=1e-3),
        "update": dict(val_metric="accuracy", lr=2e-5, steps=6),
        "evaluate": dict(controls=["random", "all"]),
    },
    # A seeded random tiny Gemma-3 with a character tokenizer: the whole pipeline in seconds (tests, demos).
    # Its answers are never right, so the update's best step is chosen by the logit difference.
    "tiny": {
        "model": "tiny-gemma3",
        "data": dict(task="arithmetic", shots=0, n_per_template=24, train_per_template=None,
                     val_per_template=None, test_per_template=4, max_value=3),
        "traces": dict(localization="prefix", max_new_tokens=12, n_samples=8),
        "dcm": dict(epochs=4, lam=1e-2, lr=0.3),
        "update": dict(val_metric="logit_diff", steps=4, lr=1e-2, batch_size=8),
        "evaluate": dict(controls=["random", "all"]),
        "analysis": dict(faithfulness_points=5, attention_heads=2),
    },
}


def preset(name: str, **overrides: Any) -> RunConfig:
    """A preset with ``overrides`` (any key :meth:`RunConfig.from_dict` reads: ``lam=1e-3``,
    ``update_lr=...``, or a section as a dict)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose from {sorted(PRESETS)}")
    flat = RunConfig.from_dict(PRESETS[name]).flat()
    for key, value in _flatten(overrides).items():
        flat[RunConfig.resolve(key)] = value
    return RunConfig.from_dict(flat)


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out
