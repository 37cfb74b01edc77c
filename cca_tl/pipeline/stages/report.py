"""Stage ``report``: everything above tied together in ``report.md``, with a plain verdict."""

from __future__ import annotations

import json

import pandas as pd

from cca_tl._io import atomic_write_text
from cca_tl.pipeline.stages import Stage, stage_names


def verdict(run, table: pd.DataFrame) -> str:
    """What CCA did, against the base model and each control, with paired bootstrap 95 % intervals on test
    accuracy (per question) and on held-out pivot accuracy (per test pivot: the base model's wrong answers)."""
    from cca_tl import stats

    n = int(table["n_test"].iloc[0])
    lines = [f"With {n} test questions one question is {100 / max(n, 1):.1f} points; the held-out pivots are the "
             f"{int(table['n_pivots_test'].iloc[0] or 0)} places where the base model's wrong test answers leave "
             "the reference solution (the base model is wrong at every one of them by construction). Verdicts: an "
             "effect when the interval excludes 0, no effect when it lies within "
             f"±{100 * stats.MARGINS['accuracy']:.0f} points (answers) or ±{100 * stats.MARGINS['pivot_accuracy']:.0f} (pivots), "
             "cannot tell otherwise; one seed — `analyses/results/power/summary.md` has three, with LoRA and "
             "masked fine-tuning beside CCA."]
    if "cca" not in table.index:
        return lines[0]
    for other in [v for v in table.index if v != "cca"]:
        step = table.loc["cca", "best_step"]
        if step == 0:
            lines.append("- **cca**: validation kept the unedited model (no update step improved it), so nothing "
                         "changed.")
            break
        try:
            d = run.paired("cca", other)
        except (FileNotFoundError, KeyError):  # a run directory written before pivots were recorded
            continue
        lines.append(
            f"- **CCA − {other}**: test accuracy {100 * d['accuracy_diff']:+.1f} points "
            f"[{100 * d['accuracy_low']:+.1f}, {100 * d['accuracy_high']:+.1f}] → "
            f"{stats.verdict(d['accuracy_low'], d['accuracy_high'], stats.MARGINS['accuracy'])}; "
            f"pivot accuracy {100 * d['pivot_accuracy_diff']:+.1f} points "
            f"[{100 * d['pivot_accuracy_low']:+.1f}, {100 * d['pivot_accuracy_high']:+.1f}] → "
            f"{stats.verdict(d['pivot_accuracy_low'], d['pivot_accuracy_high'], stats.MARGINS['pivot_accuracy'])}.")
    return "\n".join(lines)


def render_report(run) -> str:
    """A markdown report of a finished run: config, traces, mask, accuracy with controls, ablations."""
    cfg = run.config
    info = {s: run.stage_info(s) for s in stage_names()}
    table = run.accuracy_table()
    dcm = run.dcm()
    analysis = run.dir / "analysis"
    checks = pd.read_csv(analysis / "ablation.csv").set_index(["ablation", "set"])
    accuracy_cols = ["macro_accuracy", "n_test", "pivot_accuracy", "pivot_logit_diff", "n_pivots_test",
                     "train_logit_diff", "val_logit_diff", "pct_components", "pct_params", "best_step"]
    per_template = table[[c for c in table.columns if c.startswith("acc[")]]
    seconds = sum(i.get("seconds", 0) for i in info.values())
    lines = [
        f"# CCA run: {cfg.model} on the {cfg.data.task} task",
        "",
        f"Run directory `{run.dir}`; total stage time {seconds:.0f} s on {_device_name(run)} "
        f"({cfg.dtype}). Config: `{json.dumps(cfg.to_dict())}`",
        "",
        "## Traces and localization",
        f"- {info['traces'].get('questions')} train+val questions traced: {info['traces'].get('greedy_correct')} "
        f"greedy-correct, {info['traces'].get('pairs')} with a trace of opposite correctness.",
        f"- {cfg.traces.localization} localization: {info['localize'].get('train')} train and {info['localize'].get('val')} "
        f"val records; weak templates (greedy train accuracy < {cfg.traces.weak_threshold}): "
        f"{', '.join(info['localize'].get('weak_templates', []))}.",
        "",
        "## DCM mask",
        f"λ = {cfg.dcm.lam:g}, {cfg.dcm.epochs} epochs at most ({dcm.stopped}): **{dcm.mask.count()} of {dcm.mask.size()} "
        f"components ({100 * dcm.mask.fraction_components():.2f} %)**.",
        "",
        dcm.mask.summary().astype({"selected": int, "of": int}).to_markdown(floatfmt=".2f"),
        "",
        "![mask](analysis/mask.png)",
        "",
        "## Held-out test questions and pivots",
        "Accuracy: greedy, macro over templates. Pivot accuracy: the share of held-out test pivots (where the base "
        "model's wrong answers leave the reference solution) at which the desired token now beats the undesired "
        "one — forward passes only, so it has power where answer accuracy on a few questions does not.",
        f"Base model, CCA (update of the selected components only), and controls: `random` = the same update on a "
        f"random mask with the same count per kind and layer; `all` = the same update on every parameter (CCA w/o "
        f"mask). lr {cfg.update.lr:g}, {cfg.update.steps} steps, best step by validation "
        f"{'accuracy' if cfg.update.val_metric == 'accuracy' else 'logit difference'} (step 0, the unedited model, is a "
        "candidate: an update that never helps on validation changes nothing).",
        "",
        # counts as integers (a float format would print 96 questions as 96.000)
        table[accuracy_cols].astype({c: "Int64" for c in ("n_test", "n_pivots_test", "best_step")})
        .to_markdown(floatfmt=".3f"),
        "",
        "Per template:",
        "",
        per_template.to_markdown(floatfmt=".3f"),
        "",
        verdict(run, table),
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


def _device_name(run) -> str:
    import torch

    device = run.session.device
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} ({torch.get_num_threads()} threads)"


def run(run) -> dict:
    atomic_write_text(run.dir / "report.md", render_report(run))
    return dict(report=str(run.dir / "report.md"))


STAGE = Stage("report", (), run)
