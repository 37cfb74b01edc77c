"""Stage ``evaluate``: test accuracy, logit differences and retention of the base model, the CCA edit
and each control (the same update on a random mask of equal size, or on every parameter)."""

from __future__ import annotations

import json
import shutil
import pandas as pd

from cca_tl._io import atomic_directory, atomic_write_text, release_freed_memory
from cca_tl.pipeline.stage import Stage
from cca_tl.pipeline.stages.update import update_summary, update_variant


def variants(cfg) -> list[str]:
    return ["base", "cca", *cfg.evaluate.controls]


def prepare(run, variant: str) -> dict:
    """Put the run's model in the variant's state; returns the control's update summary (if any)."""
    if variant == "base":
        run.session.restore()
        return {}
    if variant == "cca":
        run.edited_model()
        return {}
    result = update_variant(run, variant)
    return update_summary(result, run)


def save_test_pivots(run, records) -> int:
    """Held-out test pivots from the *base* model's wrong test answers (reference localization): the
    records every variant is scored on. Written once, atomically, before any variant is scored on them."""
    from cca_tl.localize import localize_reference

    model, splits, prompt = run.model, run.problems(), run.prompt_fn()
    prompt_ids = [model.to_tokens(prompt(p.question), prepend_bos=True)[0].tolist() for p in splits.test]
    pivots = localize_reference(splits.test, prompt_ids, list(records["output"]), list(records["correct"]),
                                model.tokenizer)
    with atomic_directory(run.dir / "evaluate" / "test_pivots", overwrite=True) as staging:
        pivots.save_to_disk(str(staging))
    return len(pivots)


def measured_logit_diffs(run, variant: str, update_info: dict) -> dict[str, float | None]:
    """The mean val and train logit differences the update already measured on this variant's weights
    (the same function of the same weights; None where it did not): the unedited model's at step 0, an
    edit's at its selected step. Saves ~3 s per variant and difference on Gemma-3-270M (2 cores)."""
    info = run.stage_info("update") if variant in ("base", "cca") else update_info
    on_val = info.get("val_metric") == "logit_diff" and not info.get("val_is_train", True)
    if variant == "base":
        return dict(val=info.get("start_metric") if on_val else None, train=info.get("start_train_logit_diff"))
    return dict(val=info.get("best_metric") if on_val else None, train=info.get("best_train_logit_diff"))


def retention_reference(run):
    """The unedited model's final residuals on the retention texts (computed once per process and kept on
    the run): every variant's KL to the base model reads them instead of running the base model again."""
    from cca_tl.evaluate import final_residuals, general_text

    if "retention_reference" not in run.base_metrics:
        with run.session.base_weights():
            run.base_metrics["retention_reference"] = final_residuals(
                run.model, general_text(run.config.evaluate.retention_texts))
    return run.base_metrics["retention_reference"]


def measure_retention(run) -> dict[str, float]:
    """KL to the base model (0 without measuring, where the model is unedited), NLL and top-1 on the run's
    general text, of the run's model as it is now. The one place retention is measured: :func:`score` and
    the sweep's KL search both call it."""
    from cca_tl.evaluate import general_text, retention_scores

    return retention_scores(run.model, None if run.session.is_base() else run.session.base_weights,
                            general_text(run.config.evaluate.retention_texts), reference=retention_reference(run))


def score(run, name: str, out_dir, *, known: dict[str, float | None] | None = None,
          logit_diffs: bool = True, retention: dict[str, float] | None = None) -> tuple[dict, pd.DataFrame]:
    """Score the run's model *as it is now* under ``name``: greedy macro accuracy on the test questions,
    held-out test pivots (written first, from the base model's answers, when ``name`` is ``"base"``),
    retention against the unedited weights and (``logit_diffs``) the val and train pivot logit differences
    (``known`` ones are reused; ``retention``: these weights' retention scores where the caller measured
    them). Writes ``<name>_records.csv`` and ``<name>_pivots.csv`` into ``out_dir`` and returns the info
    (the caller writes it) and the per-question records. The evaluate stage and ``cca_tl.sweep`` score
    through this."""
    from cca_tl.evaluate import accuracy, localization_logit_diff, pivot_scores

    cfg, splits, model = run.config, run.problems(), run.model
    run.log(f"evaluating {name} on {len(splits.test)} test questions")
    macro, table, records = accuracy(model, splits.test, run.prompt_fn(), max_new_tokens=cfg.traces.max_new_tokens,
                                     batch_size=cfg.traces.gen_batch_size, stops=run.stops(), progress=run.progress)
    release_freed_memory()  # the key/value buffers, before retention's 134 MB logits (mmap'd, not reused)
    if name == "base" or not (run.dir / "evaluate" / "test_pivots").exists():
        save_test_pivots(run, records)
    pivots = pivot_scores(model, run.test_pivots())
    diffs = pivots.pop("diffs")
    info = dict(variant=name, macro_accuracy=macro, n_test=len(records), **pivots,
                per_template=table["accuracy"].to_dict(), **(retention or measure_retention(run)))
    if logit_diffs:
        known = known or {}
        val, train, batch = run.localization("val"), run.localization("train"), cfg.update.batch_size
        info.update(val_logit_diff=known.get("val") if known.get("val") is not None else
                    localization_logit_diff(model, val, batch_size=batch) if len(val) else None,
                    train_logit_diff=known.get("train") if known.get("train") is not None else
                    localization_logit_diff(model, train, batch_size=batch))
    atomic_write_text(out_dir / f"{name}_records.csv", records.to_csv(index=False))
    atomic_write_text(out_dir / f"{name}_pivots.csv", pd.DataFrame(dict(logit_diff=diffs)).to_csv(index=False))
    release_freed_memory()  # generation buffers, before the next variant's update allocates its own
    return info, records


def run(run) -> dict:
    cfg = run.config
    out_dir = run.dir / "evaluate"
    out_dir.mkdir(exist_ok=True)
    trained_templates = sorted(set(run.localization("train")["template_id"]))
    for variant in variants(cfg):
        path = out_dir / f"{variant}.json"
        if path.exists():  # per-variant resume
            continue
        update_info = prepare(run, variant)
        release_freed_memory()  # the control's update: its activations are free, give them back before generating
        kept_base = variant == "cca" and run.stage_info("update").get("best_step") == 0
        if variant != "base" and (kept_base or update_info.get("best_step") == 0):
            # The update kept step 0: these are the base weights, bit for bit, and greedy decoding is
            # deterministic, so the base's evaluation is this variant's too (saves ~55 s per variant).
            info = dict(json.loads((out_dir / "base.json").read_text()), variant=variant, update=update_info,
                        same_weights_as="base")
            for suffix in ("records", "pivots"):
                shutil.copyfile(out_dir / f"base_{suffix}.csv", out_dir / f"{variant}_{suffix}.csv")
            atomic_write_text(path, json.dumps(info, indent=1))
            continue
        info, _ = score(run, variant, out_dir, known=measured_logit_diffs(run, variant, update_info))
        info.update(trained_templates=trained_templates, update=update_info)
        atomic_write_text(path, json.dumps(info, indent=1))
    atomic_write_text(out_dir / "accuracy.csv", run.accuracy_table().to_csv())
    run.session.restore()
    return run.headline()


STAGE = Stage("evaluate", ("evaluate",), run)
