"""Stage ``update``: the targeted update of the DCM-selected components (CCA), and the same update on a
control's components (used by ``evaluate``)."""

from __future__ import annotations

import json
from typing import Callable

from transformer_lens import HookedTransformer

from cca_tl._io import atomic_directory, atomic_write_text
from cca_tl.pipeline.artifacts import WeightEdit
from cca_tl.pipeline.stages import Stage


def update_variant(run, variant: str):
    """Run one targeted update (``"mask"`` = CCA, ``"random"``, ``"all"``) from the unedited model; the
    session protects what it touches, so the run's model is left edited and :meth:`restore` undoes it."""
    from cca_tl.update import targeted_update

    cfg = run.config
    train, val = run.contrast("train"), run.contrast("val")
    model = run.session.restore()
    return targeted_update(model, train, run.dcm().mask, variant=variant, weight_set=cfg.weight_set,
                           lr=cfg.update_lr, steps=cfg.update_steps, batch_size=cfg.update_batch_size,
                           val_metric=val_accuracy_metric(run), val_data=val if val is not None else train,
                           eval_steps=cfg.update_eval_steps, seed=cfg.seed, progress=run.progress,
                           protect=run.session.protect)


def val_accuracy_metric(run) -> Callable[[HookedTransformer], float] | None:
    """Greedy macro accuracy on the val questions (the paper's selection rule), or None for the logit
    difference. The unedited model's value is computed once per run and reused (the session knows when
    the model is unedited: no parameter version moved since it was restored)."""
    from cca_tl.evaluate import accuracy

    cfg, val = run.config, run.problems().val
    if cfg.val_metric != "accuracy" or not val:
        return None

    def metric(model: HookedTransformer) -> float:
        is_base = run.session.is_base()
        if is_base and run.base_val_accuracy is not None:
            return run.base_val_accuracy
        macro, _, _ = accuracy(model, val, run.prompt_fn(), max_new_tokens=cfg.max_new_tokens,
                               batch_size=cfg.gen_batch_size, stops=run.stops(), progress=False)
        if is_base:
            run.base_val_accuracy = macro
        return macro

    return metric


def update_summary(result, val) -> dict:
    return dict(variant=result.variant, lr=result.lr, best_step=result.best_step, best_metric=result.best_metric,
                val_metric="accuracy" if result.config.get("val_metric") == "custom" else "logit_diff",
                n_params=result.n_params, fraction_params=result.fraction_params,
                fraction_components=result.fraction_components, val_is_train=val is None,
                start_metric=float(result.history["val_metric"].iloc[0]))


def run(run) -> dict:
    result = update_variant(run, "mask")
    edit = WeightEdit.capture(run.model, result.mask, run.config.weight_set)
    summary = update_summary(result, run.contrast("val"))
    with atomic_directory(run.dir / "update", overwrite=True) as staging:
        edit.save(staging)
        atomic_write_text(staging / "history.csv", result.history.to_csv(index=False))
        atomic_write_text(staging / "result.json", json.dumps(summary, indent=1))
    run.session.restore()
    return summary


STAGE = Stage("update", ("weight_set", "update_lr", "update_steps", "update_eval_steps", "update_batch_size",
                         "val_metric"), run)
