"""The run configuration and its presets.

Two kinds of fields: those that determine a run's results (locked: a run directory refuses a config that
differs in any of them), and *execution* settings — ``device``, ``n_devices`` — that say where it runs and
may change when a run is resumed elsewhere (a run started on a laptop can be finished on a GPU machine).
``dtype`` changes the numbers, so it is locked.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from cca_tl.components import Kind

CONTROL_VARIANTS = ("random", "all")
DTYPES = ("float32", "bfloat16", "float16")
EXECUTION_KEYS = ("device", "n_devices")  # where a run executes; not part of its identity


@dataclass
class RunConfig:
    """Everything that determines a run's results. Defaults: the README's main job (2 CPU cores)."""

    model: str = "gemma-3-270m"
    device: str = "auto"                 # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    n_devices: int = 1                   # TransformerLens' layer split over this many GPUs (big models)
    task: Literal["two-step", "arithmetic", "gsm-symbolic"] = "two-step"
    n_per_template: int = 100            # instances generated per template before the 52/8/40 split
    max_value: int = 3                   # largest operand of the two-step / arithmetic tasks
    templates: list[str] | None = None   # None: all templates of the task
    n_templates: int | None = None       # keep only the first N template ids (sorted), to size a run
    prompt: Literal["few-shot", "chat"] = "few-shot"
    shots: int | None = None             # few-shot exemplars (None: all)
    train_per_template: int | None = 12  # questions per template traced for training (None: whole split)
    val_per_template: int | None = 8
    test_per_template: int | None = 24
    weak_threshold: float = 0.8          # train only on templates with greedy train accuracy below this
    # reference: pivots where wrong greedy answers leave the reference solution (no sampling; the two-step
    # task's right answers are its reference text). prefix / branching: the paper's, from sampled traces.
    localization: Literal["reference", "prefix", "branching"] = "reference"
    n_samples: int = 0                   # sampled traces per question at most (paper: 10; reference needs none)
    max_new_tokens: int = 32
    # Rows decoded together. Throughput is flat from 32 to 128 rows on 2 CPU cores (compute-bound), and the
    # key/value buffer grows with the rows: 32 halves it against 64 at no cost in time.
    gen_batch_size: int = 32
    kinds: list[str] = field(default_factory=lambda: ["q", "k", "v", "neuron"])
    form: Literal["paper", "authors"] = "paper"
    lam: float = 1e-2
    dcm_lr: float = 0.1
    dcm_epochs: int = 10
    dcm_batch_size: int = 8
    weight_set: Literal["authors", "extended"] = "authors"
    update_lr: float = 1e-4              # 5e-4 raised Gemma's train logit diff by ~4 per step and broke generation
    # With val_metric="logit_diff" the held-out pivot logit difference rose at every one of 8 steps at lr 1e-4
    # (so the last step is always chosen) while CCA's test accuracy fell from 0.31 to 0.14: the step count
    # is the edit's size. 4 steps: a smaller edit, and half the update's time (analyses/bench_main_job.md).
    update_steps: int = 4
    update_eval_steps: list[int] | None = None  # None: 2, 4, 6, 8, 10, then every 5
    # The gradient is accumulated over the whole train set whatever this is; it trades time for memory.
    # Gemma-3-270M, 30 two-step pivots, one step (2 CPU cores; analyses/bench_update_memory.md): batch 4 ->
    # 23 s, 3.42 GB peak; 8 -> 20 s, 3.90 GB; 16 -> 20 s, 4.76 GB.
    update_batch_size: int = 4
    # Picks the update's best step. logit_diff: mean pivot logit difference on the held-out val records —
    # forward passes only; accuracy (the paper's): greedy accuracy on the val questions, one generation each.
    val_metric: Literal["accuracy", "logit_diff"] = "logit_diff"
    controls: list[str] = field(default_factory=lambda: ["random"])
    # Retention: KL to the base model and NLL over this many 128-token general texts (CPython's pydoc topics;
    # 8 texts = 1,024 positions). Each text costs an edited variant two full-vocabulary forward passes.
    retention_texts: int = 8
    ablation_random_sets: int = 3
    faithfulness_points: int = 8
    attention_heads: int = 4
    seed: int = 0
    start_from: str | None = None        # multi-round CCA: a finished run dir whose edit is this run's base

    def __post_init__(self) -> None:
        bad = [c for c in self.controls if c not in CONTROL_VARIANTS]
        if bad:
            raise ValueError(f"Unknown control(s) {bad}; choose from {list(CONTROL_VARIANTS)}.")
        for name, allowed in (("task", ("two-step", "arithmetic", "gsm-symbolic")), ("localization", ("reference", "prefix", "branching")),
                              ("val_metric", ("accuracy", "logit_diff")), ("prompt", ("few-shot", "chat")),
                              ("dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, not {getattr(self, name)!r}")
        if not isinstance(self.retention_texts, int) or self.retention_texts < 1:
            raise ValueError(f"retention_texts must be a positive integer, not {self.retention_texts!r}")
        if not isinstance(self.n_devices, int) or self.n_devices < 1:
            raise ValueError(f"n_devices must be a positive integer, not {self.n_devices!r}")
        for k in self.kinds:
            Kind(k)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that determine results (everything but the execution settings)."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_KEYS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown config keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def with_overrides(self, pairs: Sequence[str]) -> "RunConfig":
        """Apply ``key=value`` strings (values parsed as JSON where possible, e.g. ``lam=1e-3``,
        ``controls=["random","all"]``, ``templates=null``)."""
        data = self.to_dict()
        for pair in pairs:
            if "=" not in pair:
                raise ValueError(f"Expected key=value, got {pair!r}")
            key, raw = pair.split("=", 1)
            if key not in data:
                raise ValueError(f"Unknown config key {key!r}; known: {sorted(data)}")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            if isinstance(data[key], list) and isinstance(value, str):
                value = [v for v in value.split(",") if v]
            data[key] = value
        return RunConfig.from_dict(data)


PRESETS: dict[str, dict[str, Any]] = {
    # The README's main job: Gemma-3-270M on the two-step task (which it half-solves), on 2 CPU cores.
    "easy": {},
    # The previous main job: the longer arithmetic task, the paper's Prefix localization from sampled traces
    # and validation by accuracy (Gemma-3-270M is at ~15 % there).
    "arithmetic": dict(task="arithmetic", max_value=9, n_per_template=50, shots=2, train_per_template=8,
                       val_per_template=4, test_per_template=8, localization="prefix", n_samples=6,
                       max_new_tokens=40, val_metric="accuracy", update_steps=8, retention_texts=16),
    # Qwen2.5-Coder-0.5B-Instruct (optional extra) on GSM-Symbolic, chat prompt; sized for a CPU afternoon.
    "gsm-qwen": dict(model="qwen2.5-coder-0.5b-instruct", task="gsm-symbolic", prompt="chat", shots=None,
                     localization="prefix", val_metric="accuracy", max_value=9, gen_batch_size=64,
                     n_templates=16, train_per_template=3, val_per_template=1, test_per_template=2,
                     max_new_tokens=256, n_samples=6, lam=1e-3, update_lr=2e-5, update_steps=6,
                     controls=["random", "all"]),
    # A seeded random tiny Gemma-3 with a character tokenizer: the whole pipeline in seconds (tests, demos).
    # Its answers are never right, so the update's best step is chosen by the logit difference.
    "tiny": dict(model="tiny-gemma3", task="arithmetic", localization="prefix", shots=0, n_per_template=24,
                 train_per_template=None, val_per_template=None,
                 test_per_template=4, max_value=3, max_new_tokens=12, n_samples=8, val_metric="logit_diff",
                 dcm_epochs=4, lam=1e-2, dcm_lr=0.3, update_steps=4, update_lr=1e-2, update_batch_size=8,
                 controls=["random", "all"], faithfulness_points=5, attention_heads=2),
}


def preset(name: str, **overrides: Any) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return RunConfig.from_dict({**RunConfig().to_dict(), **PRESETS[name], **overrides})
