"""Stage ``evaluate``: test accuracy, logit differences and retention of the base model, the CCA edit
and each control (the same update on a random mask of equal size, or on every parameter)."""

from __future__ import annotations

import json
import shutil

from cca_tl._io import atomic_write_text, release_freed_memory
from cca_tl.pipeline.stages import Stage
from cca_tl.pipeline.stages.update import update_summary, update_variant


def variants(cfg) -> list[str]:
    return ["base", "cca", *[f"control-{c}" for c in cfg.controls]]


def prepare(run, variant: str) -> dict:
    """Put the run's model in the variant's state; returns the control's update summary (if any)."""
    if variant == "base":
        run.session.restore()
        return {}
    if variant == "cca":
        run.edited_model()
        return {}
    result = update_variant(run, variant.removeprefix("control-"))
    return update_summary(result, run.contrast("val"))


def run(run) -> dict:
    from cca_tl.evaluate import accuracy, localization_logit_diff, retention_scores

    cfg, splits = run.config, run.problems()
    out_dir = run.dir / "evaluate"
    out_dir.mkdir(exist_ok=True)
    val, train = run.localization("val"), run.localization("train")
    trained_templates = sorted(set(train["template_id"]))
    for variant in variants(cfg):
        path = out_dir / f"{variant}.json"
        if path.exists():  # per-variant resume
            continue
        update_info = prepare(run, variant)
        kept_base = variant == "cca" and run.stage_info("update").get("best_step") == 0
        if variant != "base" and (kept_base or update_info.get("best_step") == 0):
            # The update kept step 0: these are the base weights, bit for bit, and greedy decoding is
            # deterministic, so the base's evaluation is this variant's too (saves ~55 s per variant).
            info = dict(json.loads((out_dir / "base.json").read_text()), variant=variant, update=update_info,
                        same_weights_as="base")
            shutil.copyfile(out_dir / "base_records.csv", out_dir / f"{variant}_records.csv")
            atomic_write_text(path, json.dumps(info, indent=1))
            continue
        model = run.model
        run.log(f"evaluating {variant} on {len(splits.test)} test questions")
        macro, table, records = accuracy(model, splits.test, run.prompt_fn(), max_new_tokens=cfg.max_new_tokens,
                                         batch_size=cfg.gen_batch_size, stops=run.stops(), progress=run.progress)
        info = dict(variant=variant, macro_accuracy=macro, n_test=len(records),
                    per_template=table["accuracy"].to_dict(), trained_templates=trained_templates,
                    **retention_scores(model, None if variant == "base" else run.session.base_weights),
                    val_logit_diff=localization_logit_diff(model, val) if len(val) else None,
                    train_logit_diff=localization_logit_diff(model, train), update=update_info)
        atomic_write_text(out_dir / f"{variant}_records.csv", records.to_csv(index=False))
        atomic_write_text(path, json.dumps(info, indent=1))
        release_freed_memory()  # generation buffers, before the next variant's update allocates its own
    atomic_write_text(out_dir / "accuracy.csv", run.accuracy_table().to_csv())
    run.session.restore()
    return run.headline()


STAGE = Stage("evaluate", ("controls",), run)
