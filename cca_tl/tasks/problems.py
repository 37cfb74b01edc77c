"""A problem (one instance of one template) and the per-template train / validation / test split."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass(frozen=True)
class Problem:
    """One instance of one template: the question, its numeric answer and a reference solution."""

    template_id: str
    instance_id: int
    question: str
    answer: float
    solution: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def template_seed(seed: int, template_id: str) -> int:
    """A per-template seed derived from the run's seed, so templates draw independently of their order."""
    return seed * 1_000_003 + sum(ord(c) * 31 ** i for i, c in enumerate(template_id)) % 1_000_000


def split_problems(problems: Sequence[Problem], *, seed: int = 0,
                   fractions: Sequence[float] = (0.52, 0.08, 0.40)) -> dict[str, list[Problem]]:
    """Per template, a seeded shuffle cut into train / val / test (docs/method.md §A1: 52 / 8 / 40 %).

    A question whose text repeats an earlier instance of its template is dropped first (the lowest
    instance id is kept): small-number templates draw the same question again (the two-step task at
    operands <= 3 has ~1,000-2,000 distinct questions per template; 300 draws repeat ~10 %), and a repeat on
    both sides of a split would score a trained question as a held-out one.
    """
    if not problems:
        raise ValueError("No problems to split.")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative shares of train / val / test summing to 1, "
                         f"not {list(fractions)}")
    by_template: dict[str, dict[str, Problem]] = {}
    for p in sorted(problems, key=lambda p: (p.template_id, p.instance_id)):
        by_template.setdefault(p.template_id, {}).setdefault(p.question, p)
    out: dict[str, list[Problem]] = {"train": [], "val": [], "test": []}
    for tid, unique in sorted(by_template.items()):
        items = list(unique.values())
        random.Random(template_seed(seed, tid)).shuffle(items)
        n_train = round(fractions[0] * len(items))
        n_val = round(fractions[1] * len(items))
        out["train"] += items[:n_train]
        out["val"] += items[n_train:n_train + n_val]
        out["test"] += items[n_train + n_val:]
    return out
