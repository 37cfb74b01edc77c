"""Stage ``update``: the targeted update of the DCM-selected components (CCA), and the same update on a
control's components (used by ``evaluate``)."""

from __future__ import annotations

import json
from typing import Callable

from cca_tl.backend import HookedTransformer

from cca_tl._io import atomic_directory, atomic_write_text
from cca_tl.edits import WeightEdit
from cca_tl.pipeline.stage import Stage


def update_variant(run, variant: str):
    """Run one targeted update (``"cca"``: the DCM mask, ``"random"``, ``"all"``) from the unedited model; the
    session protects what it touches, so the run's model is left edited and :meth:`restore` undoes it."""
    from cca_tl.update import targeted_update

    cfg = run.config
    train = run.contrast("train")
    model = run.session.restore()
    return targeted_update(model, train, run.dcm().mask, variant=variant, **cfg.update.train_kwargs(),
                           val_metric=val_metric(run), seed=cfg.seed, progress=run.progress,
                           protect=run.session.protect)


def selection_metric(run) -> str:
    """What picks the update's best step: ``"accuracy"`` (greedy accuracy on the val questions, the paper's
    rule), ``"reference"`` (reference-path accuracy on the val questions) or ``"logit_diff"`` (mean pivot
    logit difference on the val records, else the train records — also the fallback without val questions)."""
    chosen = run.config.update.val_metric
    return chosen if chosen in ("accuracy", "reference") and run.problems().val else "logit_diff"


def val_metric(run) -> Callable[[HookedTransformer], float]:
    """The update's step-selection metric (higher is better; see :func:`selection_metric`). The unedited
    model's value is measured once per run and reused: every update (CCA's, each control's) starts from it,
    and the session knows when the model is unedited (no parameter version moved since it was restored)."""
    from cca_tl.answers import AnswerSet, reference_path_scores
    from cca_tl.contrast import record_logit_diffs
    from cca_tl.evaluate import accuracy

    cfg = run.config
    kind = selection_metric(run)
    records = run.contrast("val") or run.contrast("train")

    def measure(model: HookedTransformer) -> float:
        if kind == "accuracy":
            return accuracy(model, run.problems().val, run.prompt_fn(), max_new_tokens=cfg.traces.max_new_tokens,
                            batch_size=cfg.traces.gen_batch_size, stops=run.stops(), progress=False)[0]
        if kind == "reference":
            answers = AnswerSet.from_problems(model, run.problems().val, run.prompt_fn())
            return float(reference_path_scores(model, answers, cfg.update.batch_size)["on_path"].float().mean())
        return float(record_logit_diffs(model, records, cfg.update.batch_size).sum()) / len(records)

    def metric(model: HookedTransformer) -> float:
        if not run.session.is_base():
            return measure(model)
        if kind not in run.base_metrics:
            run.base_metrics[kind] = measure(model)
        return run.base_metrics[kind]

    return metric


def update_summary(result, run) -> dict:
    """The update's record in the run: its size, the selected step, and the logit differences it measured
    on the way (``start_metric``/``best_metric`` on the val records when ``val_metric`` is ``logit_diff``;
    the mean train logit difference of the unedited model and of the selected step where a step's forward
    pass saw those weights), which ``evaluate`` reuses instead of measuring them again."""
    history = result.history.set_index("step")
    train_at = lambda step: float(history.loc[step + 1, "train_logit_diff"]) if step + 1 in history.index else None  # noqa: E731
    return dict(variant=result.variant, lr=result.lr, best_step=result.best_step, best_metric=result.best_metric,
                val_metric=selection_metric(run), n_params=result.n_params, fraction_params=result.fraction_params,
                fraction_components=result.fraction_components, val_is_train=run.contrast("val") is None,
                start_metric=float(history.loc[0, "val_metric"]), start_train_logit_diff=train_at(0),
                best_train_logit_diff=train_at(result.best_step))


def run(run) -> dict:
    result = update_variant(run, "cca")
    edit = WeightEdit.capture(run.model, result.mask, run.config.update.weight_set)
    summary = update_summary(result, run)
    with atomic_directory(run.dir / "update", overwrite=True) as staging:
        edit.save(staging)
        atomic_write_text(staging / "history.csv", result.history.to_csv(index=False))
        atomic_write_text(staging / "result.json", json.dumps(summary, indent=1))
    run.session.restore()
    return summary


STAGE = Stage("update", ("update",), run)
