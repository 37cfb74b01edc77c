"""Grading: the final number of a model's answer, correctness, and accuracy as the mean over templates
(per-template accuracy first, so a template with more questions does not weigh more; docs/method.md §A1).
"""

from __future__ import annotations

import re
from typing import Iterable

import pandas as pd

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


def parse_number(text: str) -> float:
    """The last number in ``text`` (commas dropped); NaN when there is none."""
    found = re.findall(_NUMBER, text.replace("$", ""))
    return float(found[-1].replace(",", "")) if found else float("nan")


def extract_answer(text: str) -> float:
    """The model's final answer, or NaN.

    docs/method.md §A1 cuts at the first ``answer is[^.]*\\.`` and takes the last number; that truncates decimals
    ("answer is 3.5." → 3), so the number right after "answer is" is read first. Also understood:
    ``\\boxed{N}`` and GSM8K's ``#### N``; otherwise the last number in the text.
    """
    match = re.search(r"answer is\s*:?\s*\$?\s*(" + _NUMBER + r")", text)
    if match:
        return float(match.group(1).replace(",", ""))
    boxed = re.search(r"\\boxed\{([^}]*)\}", text)
    if boxed:
        return parse_number(boxed.group(1))
    hashes = re.search(r"####\s*(" + _NUMBER + r")", text)
    if hashes:
        return float(hashes.group(1).replace(",", ""))
    cut = re.search(r"answer is[^.]*\.", text)
    return parse_number(text[: cut.end()] if cut else text)


def is_correct(prediction: float, gold: float) -> bool:
    return prediction == prediction and abs(prediction - gold) <= 1e-6 * max(1.0, abs(gold))


def macro_accuracy(records: pd.DataFrame | Iterable[dict], *, template_col: str = "template_id",
                   correct_col: str = "correct") -> tuple[float, pd.DataFrame]:
    """Mean over templates of per-template accuracy, and the per-template table."""
    df = pd.DataFrame(list(records)) if not isinstance(records, pd.DataFrame) else records
    if df.empty:
        raise ValueError("No records to score.")
    table = df.groupby(template_col)[correct_col].agg(accuracy="mean", n="size")
    return float(table["accuracy"].mean()), table


def weak_templates(per_template: pd.DataFrame, threshold: float = 0.8) -> list[str]:
    """Templates whose accuracy is below ``threshold`` (the authors train only on those; docs/method.md §A1)."""
    return sorted(per_template.index[per_template["accuracy"] < threshold])
