"""Which task does Gemma-3-270M half-solve? Greedy accuracy of candidate task families; writes
analyses/task_screen.md and analyses/task_screen.csv.

    .venv/bin/python analyses/screen_tasks.py [--per-template 80]

Every candidate is scored on the first ``--per-template`` instances of each template's seeded test split (4
templates: 320 questions at the default, a 95 % interval of about ±5 points at 50 %), 4-shot, greedy, with
the pipeline's own generation and grading. The band the paper's models start from is 35-70 %.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time
from pathlib import Path

import pandas as pd

from cca_tl import load_model
from cca_tl.evaluate import accuracy
from cca_tl.stats import bootstrap_ci
from cca_tl.tasks import (ARITHMETIC_EXEMPLARS, TWO_STEP_EXEMPLARS, arithmetic_problems, few_shot_prompt,
                          split_problems, two_step_problems)

HERE = Path(__file__).resolve().parent

#: (name, problem generator, exemplars, max_new_tokens)
CANDIDATES = {
    "two-step, operands <= 3": (functools.partial(two_step_problems, max_value=3), TWO_STEP_EXEMPLARS, 32),
    "two-step, operands <= 5": (functools.partial(two_step_problems, max_value=5), TWO_STEP_EXEMPLARS, 32),
    "two-step, operands <= 7": (functools.partial(two_step_problems, max_value=7), TWO_STEP_EXEMPLARS, 32),
    "two-step, operands <= 9": (functools.partial(two_step_problems, max_value=9), TWO_STEP_EXEMPLARS, 32),
    "easy arithmetic (old main job), max 9": (functools.partial(arithmetic_problems, max_value=9),
                                              ARITHMETIC_EXEMPLARS, 40),
}


def first_of_each_template(problems: list, n: int) -> list:
    by_template: dict[str, list] = {}
    for p in problems:
        by_template.setdefault(p.template_id, []).append(p)
    return [p for items in by_template.values() for p in items[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-template", type=int, default=80)
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    args = parser.parse_args()
    model = load_model("gemma-3-270m")
    out_csv, out_templates = HERE / "task_screen.csv", HERE / "task_screen_per_template.csv"
    for name, (make, exemplars, max_new) in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        n_all = -(-args.per_template * 10 // 4)  # enough instances that the 40 % test split holds per_template
        problems = first_of_each_template(split_problems(make(n_all, seed=0))["test"], args.per_template)
        start = time.perf_counter()
        macro, table, records = accuracy(model, problems, functools.partial(few_shot_prompt, exemplars=exemplars),
                                         max_new_tokens=max_new, batch_size=64, progress=True)
        seconds = time.perf_counter() - start
        low, high = bootstrap_ci(records["correct"].astype(float).to_numpy())
        new_tokens = [len(model.tokenizer.encode(t, add_special_tokens=False)) for t in records["output"]]
        row = dict(candidate=name, questions=len(problems), macro_accuracy=round(macro, 3),
                   ci95=f"[{low:.2f}, {high:.2f}]", mean_new_tokens=round(sum(new_tokens) / len(new_tokens), 1),
                   seconds=round(seconds))
        print(row, flush=True)
        per_template = pd.DataFrame([dict(candidate=name, template=t, accuracy=round(a, 3), n=int(n))
                                     for t, (a, n) in table[["accuracy", "n"]].iterrows()])
        _merge(out_csv, pd.DataFrame([row]))  # after every candidate: a killed screen keeps what it measured
        _merge(out_templates, per_template)
        write_markdown(args.per_template)


def _merge(path: Path, new: pd.DataFrame) -> None:
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=new.columns)
    pd.concat([old[~old["candidate"].isin(new["candidate"])], new]).to_csv(path, index=False)


def write_markdown(per_template: int) -> None:
    table = pd.read_csv(HERE / "task_screen.csv")
    templates = HERE / "task_screen_per_template.csv"
    lines = ["# Task screen: which task does Gemma-3-270M half-solve?", "",
             f"Command: `.venv/bin/python analyses/screen_tasks.py --per-template {per_template}` "
             f"({platform.machine()}, 2 CPU cores, float32). 4-shot prompt (one worked example per template), greedy, "
             "graded on \"The final answer is N\"; the interval is a bootstrap 95 % interval over questions; "
             "seconds include the host's noise (other work shared the cores for some rows).", "",
             table.to_markdown(index=False)]
    if templates.exists():
        lines += ["", "Per template:", "", pd.read_csv(templates).to_markdown(index=False)]
    (HERE / "task_screen.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
