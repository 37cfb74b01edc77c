"""A run directory: its config lock, stage markers, resume, and typed access to the artifacts in it."""

from __future__ import annotations

import functools
import gc
import json
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from cca_tl.backend import HookedTransformer

from cca_tl._io import (WRITE_REFUSED, atomic_write_text, held_lock, read_json, refused_writes_explained,
                        release_freed_memory)
from cca_tl.errors import CCAError, OutOfMemory, RunConfigMismatch
from cca_tl.pipeline.artifacts import ProblemSplits
from cca_tl.pipeline.config import CONTROL_VARIANTS, RunConfig
from cca_tl.pipeline.markers import StageMarkers
from cca_tl.pipeline.session import ModelSession
from cca_tl.pipeline.stage import Stage
from cca_tl.pipeline.stages import STAGES, stage_names
from cca_tl.edits import WeightEdit

#: What to do about a config.json that does not parse.
CONFIG_REPAIR = "restore config.json (the run's settings) from a copy, or start a new run directory"


class Run:
    """A run directory and its config; ``run.execute()`` does whatever is not done yet.

    ``run.session`` owns the model (device, dtype, unedited weights); stages reach the model only through it.
    """

    def __init__(self, config: RunConfig, directory: str | Path, *, progress: bool = True,
                 model: HookedTransformer | None = None):
        import datasets

        self.config, self.dir, self.progress = config, Path(directory), progress
        self.markers = StageMarkers(self.dir)
        datasets.disable_progress_bars()  # the stages have their own progress output
        self._check_config()
        start_edit = self._start_edit()
        self.session = ModelSession(config.model, device=config.device, dtype=config.dtype,
                                    n_devices=config.n_devices, seed=config.seed, model=model, backend=config.backend,
                                    base_edit=start_edit, log=self.log)
        with refused_writes_explained(self.dir, self.kept):
            self.dir.mkdir(parents=True, exist_ok=True)
            if not (self.dir / "config.json").exists():
                atomic_write_text(self.dir / "config.json", json.dumps(config.to_dict(), indent=1))
        self.base_metrics: dict[str, Any] = {}  # measurements of the unedited model, made once per process

    def _check_config(self) -> None:
        existing = self.dir / "config.json"
        if not existing.exists():
            return
        # Keys added to RunConfig after the run started take their defaults; execution settings may differ.
        previous = RunConfig.from_dict(read_json(existing, CONFIG_REPAIR)).result_fields()
        now = self.config.result_fields()
        if previous != now:
            diff = {k: (previous.get(k), v) for k, v in now.items() if previous.get(k) != v}
            raise RunConfigMismatch(
                f"{self.dir} was started with a different config (key: (then, now)): {diff}. Use a new run "
                "directory, or rerun with the same config to resume.")

    def _start_edit(self) -> WeightEdit | None:
        if not self.config.start_from:
            return None
        previous = Path(self.config.start_from) / "update"
        if not (previous / "edit.safetensors").exists():
            raise CCAError(f"start_from={self.config.start_from!r} has no finished update stage to start from.")
        return WeightEdit.load(previous)

    @classmethod
    def open(cls, directory: str | Path, **kwargs: Any) -> "Run":
        """An existing run directory with its own config."""
        path = Path(directory) / "config.json"
        if not path.exists():
            raise CCAError(f"{directory} is not a cca_tl run directory (no config.json).")
        return cls(RunConfig.from_dict(read_json(path, CONFIG_REPAIR)), directory, **kwargs)

    # -- bookkeeping (cca_tl.pipeline.markers) -------------------------------------------------------
    def marker(self, stage: str) -> Path:
        return self.markers.path(stage)

    def done(self, stage: str) -> bool:
        """Whether ``stage`` finished (a broken marker is set aside and the stage runs again)."""
        return self.markers.done(stage)

    def stage_info(self, stage: str) -> dict:
        return self.markers.info(stage)

    def log(self, text: str) -> None:
        if self.progress:
            print(f"[cca-tl] {text}", flush=True)

    @property
    def model(self) -> HookedTransformer:
        """The session's model as it is now (edited or not)."""
        return self.session.model

    def reset_model(self) -> HookedTransformer:
        """The model with its unedited weights (the loaded model, plus ``start_from``'s edit)."""
        return self.session.restore()

    def edited_model(self) -> HookedTransformer:
        """The base model with the CCA edit applied (in place on this run's model)."""
        return self.session.apply(WeightEdit.load(self.dir / "update"))

    def prompt_fn(self) -> Callable[[str], str]:
        from cca_tl.tasks import EXEMPLARS, chat_prompt, few_shot_prompt

        cfg = self.config
        if cfg.data.prompt == "chat":
            return functools.partial(chat_prompt, self.model.tokenizer)
        exemplars = EXEMPLARS[cfg.data.task]
        exemplars = exemplars if cfg.data.shots is None else exemplars[:cfg.data.shots]
        return functools.partial(few_shot_prompt, exemplars=exemplars)

    def stops(self) -> tuple[str, ...]:
        from cca_tl.generation import DEFAULT_STOPS

        return () if self.config.data.prompt == "chat" else DEFAULT_STOPS

    # -- artifacts ----------------------------------------------------------------------------------
    def problems(self) -> ProblemSplits:
        return ProblemSplits.load(self.dir / "problems.json")

    def traces(self):
        from datasets import load_from_disk

        return load_from_disk(str(self.dir / "traces"))

    def localization(self, split: str | None = None):
        from datasets import load_from_disk

        records = load_from_disk(str(self.dir / "localization"))
        return records if split is None else records.filter(lambda r: r["split"] == split, keep_in_memory=True)

    def contrast(self, split: str):
        from cca_tl.contrast import ContrastSet

        records = self.localization(split)
        return ContrastSet.from_dataset(records) if len(records) else None

    def test_pivots(self):
        """Held-out test pivots (the base model's wrong test answers against the reference solutions)."""
        from datasets import load_from_disk

        return load_from_disk(str(self.dir / "evaluate" / "test_pivots"))

    def paired(self, variant: str, other: str) -> dict[str, float]:
        """``variant − other`` with paired bootstrap 95 % intervals: test accuracy (per question; the
        questions are the same) and held-out pivot accuracy (per test pivot record)."""
        from cca_tl.stats import paired_bootstrap_ci

        out: dict[str, float] = {}
        for name, suffix, column in (("accuracy", "records", "correct"), ("pivot_accuracy", "pivots", "logit_diff")):
            a, b = (pd.read_csv(self.evaluation_file(v, suffix))[column] for v in (variant, other))
            if column == "logit_diff":
                a, b = a > 0, b > 0
            mean, low, high = paired_bootstrap_ci(a.to_numpy(float), b.to_numpy(float), seed=self.config.seed)
            out.update({f"{name}_diff": mean, f"{name}_low": low, f"{name}_high": high, f"{name}_n": len(a)})
        return out

    def dcm(self):
        from cca_tl.dcm import DCMResult

        return DCMResult.load(self.dir / "dcm")

    def evaluations(self) -> dict[str, dict]:
        """Per variant (``base``, ``cca``, ``random``, ``all``) its ``evaluate/<variant>.json``."""
        out = {}
        for path in sorted((self.dir / "evaluate").glob("*.json")):
            info = read_json(path, "delete it to evaluate that variant again")
            info["variant"] = info["variant"].removeprefix("control-")  # written before the names were one
            out[info["variant"]] = info
        return out

    def evaluation_file(self, variant: str, suffix: str) -> Path:
        """``evaluate/<variant>_<suffix>.csv`` (``control-<variant>_...`` in runs from before the names were one)."""
        path = self.dir / "evaluate" / f"{variant}_{suffix}.csv"
        legacy = self.dir / "evaluate" / f"control-{variant}_{suffix}.csv"
        return legacy if not path.exists() and legacy.exists() else path

    def accuracy_table(self) -> pd.DataFrame:
        """One row per variant: macro test accuracy, per-template accuracy, logit differences, % updated."""
        rows = []
        order = ["base", "cca", *CONTROL_VARIANTS]
        evals = self.evaluations()
        for variant in [v for v in order if v in evals]:
            info = evals[variant]
            upd = info.get("update") or (json.loads((self.dir / "update" / "result.json").read_text())
                                         if variant == "cca" else {})
            row = dict(variant=variant, macro_accuracy=info["macro_accuracy"], n_test=info["n_test"],
                       pivot_accuracy=info.get("pivot_accuracy"), pivot_logit_diff=info.get("pivot_logit_diff"),
                       n_pivots_test=info.get("n_pivots"),
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
        pivots = {v: round(info["pivot_accuracy"], 4) for v, info in evals.items()
                  if info.get("pivot_accuracy") is not None}
        dcm = self.stage_info("dcm")
        out = dict(macro_accuracy=head, pivot_accuracy=pivots, selected=dcm.get("selected"),
                   pct_components=dcm.get("pct_components"))
        for other in [v for v in evals if v in CONTROL_VARIANTS]:
            if "cca" in evals and (self.dir / "evaluate" / "cca_pivots.csv").exists():
                d = self.paired("cca", other)
                out[f"cca_minus_{other}"] = {  # paired bootstrap 95 % intervals, in points
                    k: f"{100 * d[k + '_diff']:+.1f} [{100 * d[k + '_low']:+.1f}, {100 * d[k + '_high']:+.1f}]"
                    for k in ("accuracy", "pivot_accuracy")}
        return out

    # -- execution ----------------------------------------------------------------------------------
    def execute(self, *, stop_after: str | None = None) -> dict[str, Any]:
        """Run every stage not yet done (in order); ``stop_after`` ends after that stage (as a kill would).

        Returns the summary: stages run and skipped, headline numbers, report path.
        """
        names = stage_names()
        if stop_after is not None and stop_after not in names:
            raise ValueError(f"stop_after must be one of {names}")
        wanted = names[:names.index(stop_after) + 1] if stop_after else names
        broken = self.markers.first_broken(names)
        if broken is None and all(self.done(name) for name in wanted):  # nothing to write: no lock needed
            return self._execute(stop_after)
        lock = held_lock(self.dir / ".lock", f"run directory {self.dir}")
        with refused_writes_explained(self.dir, self.kept), lock:
            self.markers.remove_leftovers()
            if broken is not None:
                self.markers.set_aside_from(names, *broken)
            return self._execute(stop_after)

    def kept(self) -> str:
        """What a failed run leaves: its finished stages."""
        return self.markers.kept(stage_names())

    def _execute(self, stop_after: str | None) -> dict[str, Any]:
        ran, skipped = [], []
        for stage in STAGES:
            if self.done(stage.name):
                skipped.append(stage.name)
            else:
                start, before = time.perf_counter(), self.markers.files()
                self.log(f"stage {stage.name} ...")
                info = run_stage(self, stage)
                info = self.markers.write(stage.name, dict(info, seconds=round(time.perf_counter() - start, 2),
                                                           device=self.session.describe()), before)
                self.log(f"stage {stage.name} done in {info['seconds']:.1f} s")
                ran.append(stage.name)
            if stage.name == stop_after:
                break
        return dict(ran=ran, skipped=skipped, run_dir=str(self.dir), report=str(self.dir / "report.md"),
                    headline=self.headline() if self.done("evaluate") else None)


def run(config: RunConfig | None = None, directory: str | Path = "runs/easy", *, stop_after: str | None = None,
        progress: bool = True, model: HookedTransformer | None = None) -> dict[str, Any]:
    """Run (or resume) the whole pipeline; see :mod:`cca_tl.pipeline`."""
    return Run(config or RunConfig(), directory, progress=progress, model=model).execute(stop_after=stop_after)


def run_stage(run: Run, stage: Stage) -> dict:
    """One stage; running out of memory becomes an :class:`OutOfMemory` that says what to lower (the
    stage's artifacts are written atomically, so nothing half-written is left behind)."""
    try:
        return stage.run(run) or {}
    except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
        run.session.close()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        cfg = run.config
        raise OutOfMemory(
            f"Stage {stage.name} ran out of memory on {run.session.device} ({type(exc).__name__}). Every "
            f"finished stage in {run.dir} is kept; rerun the same command to resume after lowering "
            f"traces.gen_batch_size (now {cfg.traces.gen_batch_size}), update.batch_size ({cfg.update.batch_size})"
            f" or dcm.batch_size ({cfg.dcm.batch_size}) with --set, or run on a larger device (--device).") from exc
    except OSError as error:
        if error.filename is None and error.errno in WRITE_REFUSED:  # e.g. inside a library's save: name the stage
            raise OSError(error.errno, error.strerror, f"the {stage.name} stage's artifacts in {run.dir}") from error
        raise
    finally:
        release_freed_memory()
