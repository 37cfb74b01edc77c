"""Stage ``report``: everything above tied together in ``report.md``, with a plain verdict, and the same as
one self-contained ``report.html`` (plots and the attention view inline; it opens offline, from an e-mail or
a course page, with no files beside it)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pandas as pd

from cca_tl._io import atomic_write_text
from cca_tl.pipeline.stage import Stage
from cca_tl.pipeline.stage import STAGE_NAMES


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
             "cannot tell otherwise (the rule `cca_tl.stats.verdict_over_seeds` applies over seeds; here one seed, "
             "whose interval carries question noise only, not run-to-run variation) — "
             "`analyses/results/power/summary.md` has three seeds, with LoRA and masked fine-tuning beside CCA, and "
             "`cca-tl sweep` runs such grids."]
    if "cca" not in table.index:
        return lines[0]
    one_seed = lambda low, high, margin: stats.verdict_over_seeds([(low, high)], None, margin)  # noqa: E731
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
            f"{one_seed(d['accuracy_low'], d['accuracy_high'], stats.MARGINS['accuracy'])}; "
            f"pivot accuracy {100 * d['pivot_accuracy_diff']:+.1f} points "
            f"[{100 * d['pivot_accuracy_low']:+.1f}, {100 * d['pivot_accuracy_high']:+.1f}] → "
            f"{one_seed(d['pivot_accuracy_low'], d['pivot_accuracy_high'], stats.MARGINS['pivot_accuracy'])}.")
    return "\n".join(lines)


def render_report(run) -> str:
    """A markdown report of a finished run: config, traces, mask, accuracy with controls, ablations."""
    cfg = run.config
    info = {s: run.stage_info(s) for s in STAGE_NAMES}
    table = run.accuracy_table()
    dcm = run.dcm()
    analysis = run.dir / "analysis"
    checks = pd.read_csv(analysis / "ablation.csv").set_index(["ablation", "set"])
    accuracy_cols = ["macro_accuracy", "n_test", "pivot_accuracy", "pivot_logit_diff", "n_pivots_test",
                     "train_logit_diff", "val_logit_diff", "pct_components", "pct_params", "best_step"]
    per_template = table[[c for c in table.columns if c.startswith("acc[")]]
    seconds = sum(i.get("seconds", 0) for stage, i in info.items() if stage != "report")  # the same when rewritten
    lines = [
        f"# CCA run: {cfg.model} on the {cfg.data.task} task",
        "",
        f"Run directory `{run.dir}`; total stage time {seconds:.0f} s on {_devices(run, info)} "
        f"({cfg.dtype}); the config is at the end.",
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
        dcm.mask.summary().astype({"selected": "Int64", "of": "Int64"}).to_markdown(floatfmt=".2f"),
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
        "## Config",
        "",
        f"```json\n{json.dumps(cfg.to_dict(), indent=1)}\n```",
        "",
    ]
    return "\n".join(lines)


def _devices(run, info: dict[str, dict]) -> str:
    """Where the stages ran, as their markers recorded it (a run resumed elsewhere names both)."""
    devices = sorted({i["device"] for i in info.values() if i.get("device")})
    return " and ".join(devices) if devices else run.session.describe()


_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: 1em 0; font-size: .88em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
tr:nth-child(even) td { background: #f6f8fa; }
code { background: #f3f3f3; padding: 0 .2em; font-size: .85em; word-break: break-all; }
img { max-width: 100%; border: 1px solid #eee; }
iframe { width: 100%; height: 820px; border: 1px solid #ddd; }
"""


def render_html(markdown_text: str, root: Path, *, title: str) -> str:
    """``markdown_text`` as one HTML page with every local PNG it shows inlined as a data URI and every local
    ``.html`` page it links (the circuitsvis attention view) embedded below the link in an ``iframe srcdoc``:
    nothing is fetched, from disk or the network, when the page opens."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)

    def inline_image(match: re.Match) -> str:
        path = root / html.unescape(match.group(1))
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img src="data:image/png;base64,{data}"'

    def embed_page(match: re.Match) -> str:
        path = root / html.unescape(match.group(1))
        if not path.is_file():
            return match.group(0)
        return f'{match.group(0)}\n<iframe title="{match.group(1)}" srcdoc="{html.escape(path.read_text())}"></iframe>'

    body = re.sub(r'<img src="([^"]+\.png)"', inline_image, body)
    body = re.sub(r'<p>(?:(?!</p>).)*?<a href="([^"]+\.html)">(?:(?!</p>).)*?</p>', embed_page, body,
                  flags=re.S)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>{html.escape(title)}</title>"
            f"\n<style>{_STYLE}</style></head>\n<body>\n{body}</body></html>\n")


def write_reports(run) -> dict[str, str]:
    """``report.md`` and ``report.html`` of a run whose analysis is done (``cca-tl report RUN`` calls this
    too, so a report can be rewritten after its code changed without rerunning anything)."""
    text = render_report(run)
    title = f"CCA run {run.dir.name}: {run.config.model}, {run.config.data.task}"
    atomic_write_text(run.dir / "report.md", text)
    atomic_write_text(run.dir / "report.html", render_html(text, run.dir, title=title))
    return dict(report=str(run.dir / "report.md"), html=str(run.dir / "report.html"))


STAGE = Stage("report", (), write_reports)
