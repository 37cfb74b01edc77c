"""The CCA pipeline as resumable stages over a run directory (the API behind ``cca-tl run``).

``problems → traces → localize → dcm → update → evaluate → analysis → report``. Each stage reads the
artifacts of the stages before it from the run directory and writes its own atomically, then a marker
``stages/<stage>.json`` (timing and headline numbers). A killed run resumes at the first stage without a
marker; a run directory refuses a config that differs from the one it was started with.

>>> from cca_tl.pipeline import RunConfig, run
>>> summary = run(RunConfig(), "runs/easy")          # the README's main job, Gemma-3-270M, easy task
>>> print(summary["report"])                          # runs/easy/report.md

Run directory::

    config.json                    the RunConfig
    problems.json                  train / val / test problems (ProblemSplits)
    traces/                        greedy + sampled traces (datasets.Dataset), train + val questions
    localization/                  error-localization records with a ``split`` column (datasets.Dataset)
    dcm/                           mask.safetensors, mask.json, gains.safetensors, history.csv, result.json
    update/                        edit.safetensors (new values of the edited weight entries only),
                                   history.csv, result.json
    evaluate/                      <variant>.json and <variant>_records.csv; accuracy.csv
    analysis/                      component tables, mask.png, ablation.csv, faithfulness.csv/.png,
                                   attention.html
    report.md                      everything above, tied together
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from cca_tl._io import atomic_directory, atomic_write_text
from cca_tl.components import ComponentMask, Kind
from cca_tl.errors import CCAError

STAGES = ("problems", "traces", "localize", "dcm", "update", "evaluate", "analysis", "report")
CONTROL_VARIANTS = ("random", "all")


class RunConfigMismatch(CCAError):
    """The run directory was started with a different config."""


class EmptyMaskError(CCAError):
    """DCM kept no component: an update would change nothing."""


class EmptyLocalizationError(CCAError):
    """No right/wrong trace pair was found, so there is nothing to learn a mask from."""


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything that determines a run's results. Defaults: the README's main job (≤ 10 min, 2 CPU cores)."""

    model: str = "gemma-3-270m"
    task: Literal["arithmetic", "gsm-symbolic"] = "arithmetic"
    n_per_template: int = 50             # instances generated per template before the 52/8/40 split
    max_value: int = 9                   # arithmetic task difficulty
    templates: list[str] | None = None   # None: all templates of the task
    n_templates: int | None = None       # keep only the first N template ids (sorted), to size a run
    prompt: Literal["few-shot", "chat"] = "few-shot"
    shots: int | None = 2                # few-shot exemplars (None: all)
    train_per_template: int | None = 8   # questions per template traced for training (None: whole split)
    val_per_template: int | None = 4
    test_per_template: int | None = 8
    weak_threshold: float = 0.8          # train only on templates with greedy train accuracy below this
    localization: Literal["prefix", "branching"] = "prefix"
    n_samples: int = 6                   # sampled traces per question at most (paper: 10)
    max_new_tokens: int = 40
    gen_batch_size: int = 64             # generation is memory-bound on CPU: big batches are nearly free
    kinds: list[str] = field(default_factory=lambda: ["q", "k", "v", "neuron"])
    form: Literal["paper", "authors"] = "paper"
    lam: float = 1e-2
    dcm_lr: float = 0.1
    dcm_epochs: int = 10
    dcm_batch_size: int = 8
    weight_set: Literal["authors", "extended"] = "authors"
    update_lr: float = 1e-4              # 5e-4 raised Gemma's train logit diff by ~4 per step and broke generation
    update_steps: int = 8
    update_eval_steps: list[int] | None = None  # None: 2, 4, 6, 8, 10, then every 5
    update_batch_size: int = 16          # larger batches share the few-shot prompt more (shared_prefix_batch)
    val_metric: Literal["accuracy", "logit_diff"] = "accuracy"  # picks the update's best step (paper: accuracy)
    controls: list[str] = field(default_factory=lambda: ["random"])
    ablation_random_sets: int = 3
    faithfulness_points: int = 8
    attention_heads: int = 4
    seed: int = 0
    start_from: str | None = None        # multi-round CCA: a finished run dir whose edit is this run's base

    def __post_init__(self) -> None:
        bad = [c for c in self.controls if c not in CONTROL_VARIANTS]
        if bad:
            raise ValueError(f"Unknown control(s) {bad}; choose from {list(CONTROL_VARIANTS)}.")
        if self.task not in ("arithmetic", "gsm-symbolic"):
            raise ValueError(f"task must be 'arithmetic' or 'gsm-symbolic', not {self.task!r}")
        if self.localization not in ("prefix", "branching"):
            raise ValueError(f"localization must be 'prefix' or 'branching', not {self.localization!r}")
        if self.val_metric not in ("accuracy", "logit_diff"):
            raise ValueError(f"val_metric must be 'accuracy' or 'logit_diff', not {self.val_metric!r}")
        if self.prompt not in ("few-shot", "chat"):
            raise ValueError(f"prompt must be 'few-shot' or 'chat', not {self.prompt!r}")
        for k in self.kinds:
            Kind(k)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
    # The README's main job: Gemma-3-270M on the easy arithmetic task, ≤ 10 minutes on 2 CPU cores.
    "easy": {},
    # Qwen2.5-Coder-0.5B-Instruct (optional extra) on GSM-Symbolic, chat prompt; sized for a CPU afternoon.
    "gsm-qwen": dict(model="qwen2.5-coder-0.5b-instruct", task="gsm-symbolic", prompt="chat", shots=None,
                     n_templates=16, train_per_template=3, val_per_template=1, test_per_template=2,
                     max_new_tokens=256, n_samples=6, lam=1e-3, update_lr=2e-5, update_steps=6,
                     controls=["random", "all"]),
    # A seeded random tiny Gemma-3 with a character tokenizer: the whole pipeline in seconds (tests, demos).
    # Its answers are never right, so the update's best step is chosen by the logit difference.
    "tiny": dict(model="tiny-gemma3", shots=0, n_per_template=24, train_per_template=None, val_per_template=None,
                 test_per_template=4, max_value=3, max_new_tokens=12, n_samples=8, val_metric="logit_diff",
                 dcm_epochs=4, lam=1e-2, dcm_lr=0.3, update_steps=4, update_lr=1e-2, update_batch_size=8,
                 controls=["random", "all"], faithfulness_points=5, attention_heads=2),
}


def preset(name: str, **overrides: Any) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return RunConfig.from_dict({**RunConfig().to_dict(), **PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------------
# Typed artifacts
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------


class Run:
    """A run directory and its config; ``run.execute()`` does whatever is not done yet."""

    def __init__(self, config: RunConfig, directory: str | Path, *, progress: bool = True,
                 model: HookedTransformer | None = None):
        self.config, self.dir, self.progress = config, Path(directory), progress
        self._model = model
        self._twin = None
        self._twin_stale = False
        self._base_state: dict[str, torch.Tensor] | None = None
        self._base_val_accuracy: float | None = None
        import datasets

        datasets.disable_progress_bars()  # the stages have their own progress output
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = self.dir / "config.json"
        if existing.exists():
            # Keys added to RunConfig after the run started take their defaults.
            previous = RunConfig.from_dict(json.loads(existing.read_text())).to_dict()
            if previous != config.to_dict():
                diff = {k: (previous.get(k), v) for k, v in config.to_dict().items() if previous.get(k) != v}
                raise RunConfigMismatch(
                    f"{self.dir} was started with a different config (key: (then, now)): {diff}. Use a new run "
                    "directory, or rerun with the same config to resume.")
        else:
            atomic_write_text(existing, json.dumps(config.to_dict(), indent=1))

    @classmethod
    def open(cls, directory: str | Path, **kwargs: Any) -> "Run":
        """An existing run directory with its own config."""
        path = Path(directory) / "config.json"
        if not path.exists():
            raise CCAError(f"{directory} is not a cca_tl run directory (no config.json).")
        return cls(RunConfig.from_dict(json.loads(path.read_text())), directory, **kwargs)

    # -- bookkeeping --------------------------------------------------------------------------------
    def marker(self, stage: str) -> Path:
        return self.dir / "stages" / f"{stage}.json"

    def done(self, stage: str) -> bool:
        return self.marker(stage).exists()

    def stage_info(self, stage: str) -> dict:
        return json.loads(self.marker(stage).read_text()) if self.done(stage) else {}

    def _log(self, text: str) -> None:
        if self.progress:
            print(f"[cca-tl] {text}", flush=True)

    @property
    def model(self) -> HookedTransformer:
        if self._model is None:
            from cca_tl.models import load_model

            self._log(f"loading {self.config.model}")
            self._model = load_model(self.config.model, seed=self.config.seed)
            if self.config.start_from:
                previous = Path(self.config.start_from) / "update"
                if not (previous / "edit.safetensors").exists():
                    raise CCAError(f"start_from={self.config.start_from!r} has no finished update stage to start from.")
                self._log(f"applying the edit of {self.config.start_from} (multi-round CCA)")
                WeightEdit.load(previous).apply(self._model)
        if self._base_state is None:
            self._base_state = {n: p.detach().clone() for n, p in self._model.named_parameters()}
        return self._model

    def reset_model(self) -> HookedTransformer:
        """Put the model back to its loaded (unedited) weights."""
        model = self.model
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(self._base_state[n])
        self._twin_stale = True
        return model

    def base_copy(self) -> HookedTransformer:
        """A separate copy of the unedited model (for retention: KL between base and edited)."""
        if getattr(self, "_base_copy", None) is None:
            import copy

            base = copy.deepcopy(self.model)  # the current model may be edited: do not reset it
            with torch.no_grad():
                for n, p in base.named_parameters():
                    p.copy_(self._base_state[n])
            self._base_copy = base
        return self._base_copy

    def twin(self):
        """The HF twin of the model's *current* weights (built once, then synced after edits)."""
        from cca_tl.traces import hf_twin, sync_twin

        if self._twin is None:
            self._twin = hf_twin(self.model)
        elif self._twin_stale:
            self._twin = sync_twin(self._twin, self.model)
        self._twin_stale = False
        return self._twin

    def prompt_fn(self) -> Callable[[str], str]:
        from cca_tl.tasks import ARITHMETIC_EXEMPLARS, GSM8K_EXEMPLARS, chat_prompt, few_shot_prompt

        cfg = self.config
        if cfg.prompt == "chat":
            return functools.partial(chat_prompt, self.model.tokenizer)
        exemplars = ARITHMETIC_EXEMPLARS if cfg.task == "arithmetic" else GSM8K_EXEMPLARS
        exemplars = exemplars if cfg.shots is None else exemplars[:cfg.shots]
        return functools.partial(few_shot_prompt, exemplars=exemplars)

    def stops(self) -> tuple[str, ...]:
        from cca_tl.traces import DEFAULT_STOPS

        return () if self.config.prompt == "chat" else DEFAULT_STOPS

    # -- stages -------------------------------------------------------------------------------------
    def execute(self, *, stop_after: str | None = None) -> dict[str, Any]:
        """Run every stage not yet done (in order); ``stop_after`` ends after that stage (as a kill would).

        Returns the summary: stages run and skipped, headline numbers, report path.
        """
        if stop_after is not None and stop_after not in STAGES:
            raise ValueError(f"stop_after must be one of {STAGES}")
        ran, skipped = [], []
        for stage in STAGES:
            if self.done(stage):
                skipped.append(stage)
            else:
                start = time.perf_counter()
                self._log(f"stage {stage} ...")
                info = getattr(self, f"stage_{stage}")() or {}
                info = dict(info, seconds=round(time.perf_counter() - start, 2))
                atomic_write_text(self.marker(stage), json.dumps(info, indent=1, default=str))
                self._log(f"stage {stage} done in {info['seconds']:.1f} s")
                ran.append(stage)
            if stage == stop_after:
                break
        return dict(ran=ran, skipped=skipped, run_dir=str(self.dir), report=str(self.dir / "report.md"),
                    headline=self.headline() if self.done("evaluate") else None)

    def stage_problems(self) -> dict:
        from cca_tl.tasks import arithmetic_problems, gsm_symbolic, split_problems

        cfg = self.config
        if cfg.task == "arithmetic":
            problems = arithmetic_problems(cfg.n_per_template, seed=cfg.seed, max_value=cfg.max_value,
                                           templates=cfg.templates)
        else:
            problems = gsm_symbolic(cfg.n_per_template, seed=cfg.seed, templates=cfg.templates)
        if cfg.n_templates is not None:
            keep = sorted({p.template_id for p in problems})[:cfg.n_templates]
            problems = [p for p in problems if p.template_id in keep]
        splits = split_problems(problems, seed=cfg.seed)
        caps = dict(train=cfg.train_per_template, val=cfg.val_per_template, test=cfg.test_per_template)
        capped = {name: _cap_per_template(items, caps[name]) for name, items in splits.items()}
        artifact = ProblemSplits(**capped)
        if not artifact.train or not artifact.test:
            raise CCAError(f"The split left {len(artifact.train)} train and {len(artifact.test)} test problems; "
                           "raise n_per_template.")
        artifact.save(self.dir / "problems.json")
        return {name: len(items) for name, items in capped.items()}

    def problems(self) -> ProblemSplits:
        return ProblemSplits.load(self.dir / "problems.json")

    def stage_traces(self) -> dict:
        from cca_tl.traces import generate_traces

        cfg, splits = self.config, self.problems()
        traces = generate_traces(self.model, splits.train + splits.val, self.prompt_fn(), n_samples=cfg.n_samples,
                                 max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size, seed=cfg.seed,
                                 twin=self.twin(), stops=self.stops(), progress=self.progress)
        with atomic_directory(self.dir / "traces", overwrite=True) as staging:
            traces.save_to_disk(str(staging))
        return dict(questions=len(traces), greedy_correct=int(sum(traces["greedy_correct"])),
                    pairs=int(sum(traces["flipped"])))

    def traces(self):
        from datasets import load_from_disk

        return load_from_disk(str(self.dir / "traces"))

    def stage_localize(self) -> dict:
        from cca_tl.localize import localize_branching, localize_prefix
        from cca_tl.tasks import macro_accuracy, weak_templates

        cfg = self.config
        traces, split_of = self.traces(), self.problems().split_of()
        train_rows = [dict(template_id=t["template_id"], correct=t["greedy_correct"]) for t in traces
                      if split_of[(t["template_id"], t["instance_id"])] == "train"]
        _, per_template = macro_accuracy(train_rows)
        weak = set(weak_templates(per_template, cfg.weak_threshold))
        kept = traces.filter(lambda t: t["template_id"] in weak, keep_in_memory=True)
        if cfg.localization == "prefix":
            records = localize_prefix(kept, self.model.tokenizer)
        else:
            records = localize_branching(kept, self.model, twin=self.twin(), max_new_tokens=cfg.max_new_tokens,
                                         batch_size=cfg.gen_batch_size)
        splits = [split_of[(t, i)] for t, i in zip(records["template_id"], records["instance_id"])]
        n_train = splits.count("train")
        if n_train == 0:
            raise EmptyLocalizationError(
                f"No {cfg.localization} localization record on the train split: {int(sum(traces['flipped']))} of "
                f"{len(traces)} questions had a trace of opposite correctness, weak templates: {sorted(weak)}. "
                "Trace more questions (train_per_template), sample more (n_samples), or pick a task the model "
                "solves sometimes.")
        records = records.add_column("split", splits)
        with atomic_directory(self.dir / "localization", overwrite=True) as staging:
            records.save_to_disk(str(staging))
        return dict(records=len(records), train=n_train, val=len(records) - n_train, weak_templates=sorted(weak),
                    train_macro_accuracy=float(per_template["accuracy"].mean()))

    def localization(self, split: str | None = None):
        from datasets import load_from_disk

        records = load_from_disk(str(self.dir / "localization"))
        return records if split is None else records.filter(lambda r: r["split"] == split, keep_in_memory=True)

    def contrast(self, split: str):
        from cca_tl.dcm import ContrastSet

        records = self.localization(split)
        return ContrastSet.from_dataset(records) if len(records) else None

    def stage_dcm(self) -> dict:
        from cca_tl.dcm import train_dcm

        cfg = self.config
        result = train_dcm(self.model, self.contrast("train"), lam=cfg.lam, kinds=cfg.kinds, form=cfg.form,
                           lr=cfg.dcm_lr, batch_size=cfg.dcm_batch_size, max_epochs=cfg.dcm_epochs, seed=cfg.seed,
                           progress=self.progress)
        with atomic_directory(self.dir / "dcm", overwrite=True) as staging:
            save_dcm(result, staging)
        if result.mask.count() == 0:
            raise EmptyMaskError(
                f"DCM at lam={cfg.lam} selected no component (the mask is in {self.dir / 'dcm'}): there is nothing "
                f"to update. Lower lam (e.g. --set lam={cfg.lam / 3:.2g}) or train DCM longer (dcm_epochs).")
        return dict(selected=result.mask.count(), by_kind=result.mask.counts_by_kind(),
                    pct_components=100 * result.mask.fraction_components(), stopped=result.stopped)

    def dcm(self):
        return load_dcm(self.dir / "dcm")

    def _update(self, variant: str) -> Any:
        """Run one targeted update on the (reset) model; returns the UpdateResult."""
        from cca_tl.update import targeted_update

        cfg = self.config
        train, val = self.contrast("train"), self.contrast("val")
        model = self.reset_model()
        result = targeted_update(model, train, self.dcm().mask, variant=variant, weight_set=cfg.weight_set,
                                 lr=cfg.update_lr, steps=cfg.update_steps, batch_size=cfg.update_batch_size,
                                 val_metric=self._val_accuracy_metric(),
                                 val_data=val if val is not None else train, eval_steps=cfg.update_eval_steps,
                                 seed=cfg.seed, progress=self.progress)
        self._twin_stale = True
        return result

    def _val_accuracy_metric(self) -> Callable[[HookedTransformer], float] | None:
        """Greedy macro accuracy on the val questions (the paper's selection rule), or None for the logit
        difference. The unedited model's value is computed once per process and reused across variants."""
        from cca_tl.evaluate import accuracy

        cfg, val = self.config, self.problems().val
        if cfg.val_metric != "accuracy" or not val:
            return None
        first = [True]

        def metric(model: HookedTransformer) -> float:
            is_base, first[0] = first[0], False
            if is_base and self._base_val_accuracy is not None:
                return self._base_val_accuracy
            self._twin_stale = True  # the weights just changed
            macro, _, _ = accuracy(model, val, self.prompt_fn(), max_new_tokens=cfg.max_new_tokens,
                                   batch_size=cfg.gen_batch_size, twin=self.twin(), stops=self.stops(),
                                   progress=False)
            if is_base:
                self._base_val_accuracy = macro
            return macro

        return metric

    def stage_update(self) -> dict:
        result = self._update("mask")
        edit = WeightEdit.capture(self.model, result.mask, self.config.weight_set)
        with atomic_directory(self.dir / "update", overwrite=True) as staging:
            edit.save(staging)
            atomic_write_text(staging / "history.csv", result.history.to_csv(index=False))
            atomic_write_text(staging / "result.json", json.dumps(_update_summary(result, self.contrast("val")), indent=1))
        self._twin_stale = True
        return _update_summary(result, self.contrast("val"))

    def edited_model(self) -> HookedTransformer:
        """The base model with the CCA edit applied (in place on this run's model)."""
        model = self.reset_model()
        WeightEdit.load(self.dir / "update").apply(model)
        self._twin_stale = True
        return model

    def stage_evaluate(self) -> dict:
        from cca_tl.evaluate import accuracy, general_text_scores, localization_logit_diff, retention_kl

        cfg, splits = self.config, self.problems()
        out_dir = self.dir / "evaluate"
        out_dir.mkdir(exist_ok=True)
        variants = ["base", "cca", *[f"control-{c}" for c in cfg.controls]]
        val = self.localization("val")
        for variant in variants:
            path = out_dir / f"{variant}.json"
            if path.exists():  # per-variant resume
                continue
            update_info = {}
            if variant == "base":
                model = self.reset_model()
            elif variant == "cca":
                model = self.edited_model()
            else:
                result = self._update(variant.removeprefix("control-"))
                update_info = _update_summary(result, self.contrast("val"))
                model = self.model
                self._twin_stale = True
            self._log(f"evaluating {variant} on {len(splits.test)} test questions")
            macro, table, records = accuracy(model, splits.test, self.prompt_fn(), max_new_tokens=cfg.max_new_tokens,
                                             batch_size=cfg.gen_batch_size, twin=self.twin(), stops=self.stops(),
                                             progress=self.progress)
            info = dict(variant=variant, macro_accuracy=macro, n_test=len(records),
                        per_template=table["accuracy"].to_dict(),
                        trained_templates=sorted(set(self.localization("train")["template_id"])),
                        retention_kl=0.0 if variant == "base" else retention_kl(self.base_copy(), model),
                        **general_text_scores(model),
                        val_logit_diff=localization_logit_diff(model, val) if len(val) else None,
                        train_logit_diff=localization_logit_diff(model, self.localization("train")),
                        update=update_info)
            atomic_write_text(out_dir / f"{variant}_records.csv", records.to_csv(index=False))
            atomic_write_text(path, json.dumps(info, indent=1))
        table = self.accuracy_table()
        atomic_write_text(out_dir / "accuracy.csv", table.to_csv())
        self.reset_model()
        return self.headline()

    def evaluations(self) -> dict[str, dict]:
        out = {}
        for path in sorted((self.dir / "evaluate").glob("*.json")):
            info = json.loads(path.read_text())
            out[info["variant"]] = info
        return out

    def accuracy_table(self) -> pd.DataFrame:
        """One row per variant: macro test accuracy, per-template accuracy, logit differences, % updated."""
        rows = []
        order = ["base", "cca", *[f"control-{c}" for c in CONTROL_VARIANTS]]
        evals = self.evaluations()
        for variant in [v for v in order if v in evals]:
            info = evals[variant]
            upd = info.get("update") or (json.loads((self.dir / "update" / "result.json").read_text())
                                         if variant == "cca" else {})
            row = dict(variant=variant, macro_accuracy=info["macro_accuracy"], n_test=info["n_test"],
                       train_logit_diff=info["train_logit_diff"], val_logit_diff=info["val_logit_diff"],
                       pct_components=100 * upd["fraction_components"] if upd else 0.0,
                       pct_params=100 * upd["fraction_params"] if upd else 0.0,
                       best_step=upd.get("best_step") if upd else None,
                       retention_kl=info.get("retention_kl"), general_top1=info.get("general_top1"))
            row.update({f"acc[{t}]": a for t, a in info["per_template"].items()})
            rows.append(row)
        return pd.DataFrame(rows).set_index("variant")

    def headline(self) -> dict:
        evals = self.evaluations()
        head = {v: round(info["macro_accuracy"], 4) for v, info in evals.items()}
        dcm = self.stage_info("dcm")
        return dict(macro_accuracy=head, selected=dcm.get("selected"), pct_components=dcm.get("pct_components"))

    def stage_analysis(self) -> dict:
        from cca_tl.analysis import (ablation_checks, attention_view, count_table, default_sizes, faithfulness_area,
                                     faithfulness_curve, layer_table, plot_faithfulness, plot_mask, save_html,
                                     top_heads)

        cfg = self.config
        model = self.reset_model()
        dcm = self.dcm()
        data = self.contrast("train")
        with atomic_directory(self.dir / "analysis", overwrite=True) as out:
            atomic_write_text(out / "components.csv", count_table({"cca": dcm.mask}).to_csv())
            atomic_write_text(out / "components_per_layer.csv", layer_table(dcm.mask).to_csv())
            fig = plot_mask(dcm.mask, dcm.gains, title=f"DCM mask, {cfg.model}, λ={cfg.lam:g}")
            fig.savefig(out / "mask.png", dpi=110)
            checks = ablation_checks(model, data, dcm.mask, seed=cfg.seed, n_random=cfg.ablation_random_sets)
            atomic_write_text(out / "ablation.csv", checks.to_csv())
            total = sum(v.numel() for v in dcm.gains.values())
            sizes = default_sizes(total, extra=[dcm.mask.count()], points=cfg.faithfulness_points)
            curve = faithfulness_curve(model, data, dcm.gains, sizes=sizes, progress=self.progress)
            atomic_write_text(out / "faithfulness.csv", curve.to_csv(index=False))
            plot_faithfulness(curve, mark=dcm.mask.count()).savefig(out / "faithfulness.png", dpi=110)
            area = faithfulness_area(curve)
            heads = top_heads(_registry_of(model), dcm.gains, cfg.attention_heads)
            example = self.localization("train")[0]
            view = attention_view(model, example["prefix_ids"], heads)
            tok = model.tokenizer
            save_html(view, out / "attention.html", title=f"Top DCM heads of {cfg.model}: {heads}",
                      caption=f"Last 64 tokens of a training prefix; desired next token "
                              f"{tok.decode([example['desired_id']])!r}, undesired {tok.decode([example['undesired_id']])!r}.")
            import matplotlib.pyplot as plt

            plt.close("all")
        return dict(cpr=area["cpr"], cmd=area["cmd"], heads=heads)

    def stage_report(self) -> dict:
        text = render_report(self)
        atomic_write_text(self.dir / "report.md", text)
        return dict(report=str(self.dir / "report.md"))


def _registry_of(model: HookedTransformer):
    from cca_tl.components import _registry

    return _registry(model)


def _cap_per_template(items: list, cap: int | None) -> list:
    if cap is None:
        return list(items)
    seen: dict[str, int] = {}
    out = []
    for p in items:
        if seen.get(p.template_id, 0) < cap:
            out.append(p)
            seen[p.template_id] = seen.get(p.template_id, 0) + 1
    return out


def _update_summary(result, val) -> dict:
    return dict(variant=result.variant, lr=result.lr, best_step=result.best_step, best_metric=result.best_metric,
                val_metric="accuracy" if result.config.get("val_metric") == "custom" else "logit_diff",
                n_params=result.n_params, fraction_params=result.fraction_params,
                fraction_components=result.fraction_components, val_is_train=val is None,
                start_metric=float(result.history["val_metric"].iloc[0]))


def verdict(table: pd.DataFrame) -> str:
    """A plain statement of what CCA did relative to the base model and each control."""
    n = int(table["n_test"].iloc[0])
    point = 100 / max(n, 1)
    base = table.loc["base", "macro_accuracy"]
    lines = [f"With {n} test questions one question is about {point:.1f} points (macro over templates)."]
    for variant in [v for v in table.index if v != "base"]:
        delta = 100 * (table.loc[variant, "macro_accuracy"] - base)
        step = table.loc[variant, "best_step"]
        kept = " — validation kept the unedited model (no update step improved it), so nothing changed" if step == 0 else ""
        lines.append(f"- **{variant}**: {delta:+.1f} points vs base{kept}.")
    if "cca" in table.index:
        cca = table.loc["cca", "macro_accuracy"]
        for control in [v for v in table.index if v.startswith("control-")]:
            gap = 100 * (cca - table.loc[control, "macro_accuracy"])
            beyond = abs(gap) > 2 * point
            lines.append(f"- CCA vs {control}: {gap:+.1f} points — "
                         f"{'larger than two questions' if beyond else 'within two questions: no effect can be claimed'}.")
    return "\n".join(lines)


def render_report(run: Run) -> str:
    """A markdown report of a finished run: config, traces, mask, accuracy with controls, ablations."""
    cfg = run.config
    info = {s: run.stage_info(s) for s in STAGES}
    table = run.accuracy_table()
    dcm = run.dcm()
    analysis = run.dir / "analysis"
    checks = pd.read_csv(analysis / "ablation.csv").set_index(["ablation", "set"])
    accuracy_cols = ["macro_accuracy", "n_test", "train_logit_diff", "val_logit_diff", "pct_components",
                     "pct_params", "best_step"]
    per_template = table[[c for c in table.columns if c.startswith("acc[")]]
    seconds = sum(i.get("seconds", 0) for i in info.values())
    lines = [
        f"# CCA run: {cfg.model} on the {cfg.task} task",
        "",
        f"Run directory `{run.dir}`; total stage time {seconds:.0f} s. Config: `{json.dumps(cfg.to_dict())}`",
        "",
        "## Traces and localization",
        f"- {info['traces'].get('questions')} train+val questions traced: {info['traces'].get('greedy_correct')} "
        f"greedy-correct, {info['traces'].get('pairs')} with a trace of opposite correctness.",
        f"- {cfg.localization} localization: {info['localize'].get('train')} train and {info['localize'].get('val')} "
        f"val records; weak templates (greedy train accuracy < {cfg.weak_threshold}): "
        f"{', '.join(info['localize'].get('weak_templates', []))}.",
        "",
        "## DCM mask",
        f"λ = {cfg.lam:g}, {cfg.dcm_epochs} epochs at most ({dcm.stopped}): **{dcm.mask.count()} of {dcm.mask.size()} "
        f"components ({100 * dcm.mask.fraction_components():.2f} %)**.",
        "",
        dcm.mask.summary().astype({"selected": int, "of": int}).to_markdown(floatfmt=".2f"),
        "",
        "![mask](analysis/mask.png)",
        "",
        "## Accuracy on held-out test questions (greedy, macro over templates)",
        f"Base model, CCA (update of the selected components only), and controls: `random` = the same update on a "
        f"random mask with the same count per kind and layer; `all` = the same update on every parameter (CCA w/o "
        f"mask). lr {cfg.update_lr:g}, {cfg.update_steps} steps, best step by validation "
        f"{'accuracy' if cfg.val_metric == 'accuracy' else 'logit difference'} (step 0, the unedited model, is a "
        "candidate: an update that never helps on validation changes nothing).",
        "",
        table[accuracy_cols].to_markdown(floatfmt=".3f"),
        "",
        "Per template:",
        "",
        per_template.to_markdown(floatfmt=".3f"),
        "",
        verdict(table),
        "",
        "## Ablation checks (train localization records, at the last prefix position)",
        "",
        checks.to_markdown(floatfmt=".3f"),
        "",
        f"Faithfulness of top-n circuits (by DCM gain, rest mean-ablated): CPR {info['analysis'].get('cpr', float('nan')):.3f}, "
        f"CMD {info['analysis'].get('cmd', float('nan')):.3f}.",
        "",
        "![faithfulness](analysis/faithfulness.png)",
        "",
        f"Attention of the top heads {info['analysis'].get('heads')}: [analysis/attention.html](analysis/attention.html) "
        "(self-contained, opens offline).",
        "",
    ]
    return "\n".join(lines)


def run(config: RunConfig | None = None, directory: str | Path = "runs/easy", *, stop_after: str | None = None,
        progress: bool = True, model: HookedTransformer | None = None) -> dict[str, Any]:
    """Run (or resume) the whole pipeline; see the module docstring."""
    return Run(config or RunConfig(), directory, progress=progress, model=model).execute(stop_after=stop_after)
