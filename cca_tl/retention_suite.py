"""The authors' retention suite through ``lm-eval`` (optional extra: ``pip install -e '.[lm-eval]'``).

The paper's "minimal impact on other abilities" rests on lm-eval benchmarks of the base and the edited model
(the authors' ``run_lm_eval.py``): MMLU 5-shot, TriviaQA, TruthfulQA and GSM8K. :func:`compare` runs them on
a model before and after an edit, through the *exported* HF directory (the model users take away, checked
against the HookedTransformer's logits when it is written), and returns one row per task and metric with the
difference. ``cca-tl lm-eval SOURCE`` is the command.

The benchmarks' datasets come from the HF hub. Offline, every run stops at once with an error that names
the tasks and what they need; local task files (``include_path``: lm-eval YAML, e.g. over a JSON file) work
offline, which is how the wiring is tested. The per-run retention of :mod:`cca_tl.evaluate` (KL to the base
model and NLL on general text) needs no download and is what every run reports.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pandas as pd

from cca_tl.errors import CCAError

#: Task → few-shot examples, as the paper reports them (MMLU 5-shot; GSM8K with lm-eval's 5-shot default).
AUTHORS_SUITE: dict[str, int] = {"mmlu": 5, "triviaqa": 0, "truthfulqa_mc2": 0, "gsm8k": 5}
INSTALL = "pip install -e '.[lm-eval]'"


def _lm_eval():
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise CCAError(f"The retention suite needs lm-eval, an optional extra: {INSTALL}") from exc
    return simple_evaluate, HFLM, TaskManager


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the HF hub answers (False at once when ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", ""):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None):
    """lm-eval's task index, built once per include path: indexing its task tree takes 5-10 s, and a
    comparison needs it three times (the reachability check, the base and the edited model)."""
    _, _, TaskManager = _lm_eval()
    return TaskManager(include_path=include_path)


def check_reachable(tasks: Mapping[str, int], include_path: str | Path | None) -> None:
    """Offline, refuse at once the tasks that are not defined under ``include_path`` (lm-eval's own tasks
    download their datasets from the hub), naming them and what would make them run."""
    _lm_eval()  # the extra's clear error when it is missing, even where the task index is already cached
    manager = _task_manager(str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise CCAError(f"lm-eval knows no task {unknown}; check the names, or the include path {include_path}.")
    local_root = Path(include_path).resolve() if include_path else None

    def defined_locally(task: str) -> bool:
        yaml_path = getattr(manager.task_index[task], "yaml_path", None)
        return local_root is not None and yaml_path is not None and local_root in Path(yaml_path).resolve().parents

    hub_tasks = [t for t in tasks if not defined_locally(t)]
    if hub_tasks and not hub_reachable():
        raise CCAError(
            f"The tasks {hub_tasks} download their datasets from the HF hub, which is not reachable from here "
            "(or HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set). Run the suite where the hub is reachable, or give "
            "local lm-eval task files with --include-path (a YAML over a JSON file works offline). Nothing was "
            "loaded or exported.")


def evaluate_hf_dir(model_dir: str | Path, tasks: Mapping[str, int], *, limit: int | None = None,
                    batch_size: int = 8, device: str = "cpu", include_path: str | Path | None = None) -> pd.DataFrame:
    """lm-eval on an HF model directory: one row per task and metric (``value``, ``stderr``, ``n``)."""
    simple_evaluate, HFLM, _ = _lm_eval()
    manager = _task_manager(str(include_path) if include_path else None)
    lm = HFLM(pretrained=str(model_dir), device=device, batch_size=batch_size)
    rows = []
    for task, shots in tasks.items():
        try:
            out = simple_evaluate(model=lm, tasks=[task], num_fewshot=shots, limit=limit, task_manager=manager,
                                  log_samples=False)
        except (ConnectionError, OSError) as exc:  # datasets' offline and network failures are OSErrors
            raise CCAError(
                f"lm-eval could not load the data of task {task!r} ({type(exc).__name__}: {exc}). The suite's "
                "benchmarks (MMLU, TriviaQA, TruthfulQA, GSM8K) download their datasets from the HF hub"
                f"{'' if hub_reachable() else ', which is not reachable from here'}. Run it where the hub is "
                "reachable (or with the datasets in the HF cache and HF_DATASETS_OFFLINE=1), or give local task "
                "files with --include-path.") from exc
        for name, metrics in out["results"].items():
            for key, value in metrics.items():
                metric, _, _ = key.partition(",")
                if metric in ("alias", "name", "sample_len") or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                    continue
                stderr = metrics.get(key.replace(metric, f"{metric}_stderr", 1))
                rows.append(dict(task=name, metric=metric, shots=shots, value=float(value),
                                 stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
                                 n=out.get("n-samples", {}).get(name, {}).get("effective")))
    return pd.DataFrame(rows)


@contextlib.contextmanager
def exported(model, directory: str | Path | None = None) -> Iterator[Path]:
    """``model`` as a verified HF directory (a temporary one unless ``directory`` is given)."""
    from cca_tl.export import export_hf

    with tempfile.TemporaryDirectory(prefix="cca_tl_suite_") as scratch:
        target = Path(directory) if directory else Path(scratch) / "model"
        export_hf(model, target, overwrite=directory is not None)
        yield target


def compare(source: str | Path, tasks: Mapping[str, int] | Sequence[str] = AUTHORS_SUITE, *,
            limit: int | None = None, batch_size: int = 8, device: str = "cpu",
            include_path: str | Path | None = None) -> pd.DataFrame:
    """The suite on a run's base and edited model (``source`` = a run directory, one row per task and
    metric with ``base``, ``edited`` and ``diff``), or on one model (an HF directory or a model name:
    ``value`` only). Names without a shot count take lm-eval's default (0 here)."""
    tasks = dict(tasks) if isinstance(tasks, Mapping) else {t: AUTHORS_SUITE.get(t, 0) for t in tasks}
    check_reachable(tasks, include_path)  # before any model is loaded or exported

    def _evaluate(model_dir: Path) -> pd.DataFrame:
        return evaluate_hf_dir(model_dir, tasks, limit=limit, batch_size=batch_size, device=device,
                               include_path=include_path)

    path = Path(source)
    if (path / "stages").is_dir() and (path / "config.json").exists():
        from cca_tl.pipeline import Run

        run = Run.open(path, progress=False)
        if not run.done("update"):
            raise CCAError(f"{path} has no finished update stage: nothing to compare yet.")
        with exported(run.session.restore()) as base_dir:
            base = _evaluate(base_dir)
        with exported(run.edited_model()) as edited_dir:
            edited = _evaluate(edited_dir)
        keys = ["task", "metric", "shots", "n"]
        table = base.rename(columns={"value": "base", "stderr": "base_stderr"}).merge(
            edited.rename(columns={"value": "edited", "stderr": "edited_stderr"}), on=keys)
        table["diff"] = table["edited"] - table["base"]
        return table
    if (path / "config.json").exists():
        return _evaluate(path)
    from cca_tl.models import load_model

    with exported(load_model(str(source), device=device)) as model_dir:
        return _evaluate(model_dir)
