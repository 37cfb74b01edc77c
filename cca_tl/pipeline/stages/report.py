"""Stage ``report``: everything above tied together in ``report.md``, with a plain verdict."""

from __future__ import annotations

import json

import pandas as pd

from cca_tl._io import atomic_write_text
from cca_tl.pipeline.stages import Stage, stage_names


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


def render_report(run) -> str:
    """A markdown report of a finished run: config, traces, mask, accuracy with controls, ablations."""
    cfg = run.config
    info = {s: run.stage_info(s) for s in stage_names()}
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
        f"Run directory `{run.dir}`; total stage time {seconds:.0f} s on {_device_name(run)} "
        f"({cfg.dtype}). Config: `{json.dumps(cfg.to_dict())}`",
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


def _device_name(run) -> str:
    import torch

    device = run.session.device
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} ({torch.get_num_threads()} threads)"


def run(run) -> dict:
    atomic_write_text(run.dir / "report.md", render_report(run))
    return dict(report=str(run.dir / "report.md"))


STAGE = Stage("report", (), run)
