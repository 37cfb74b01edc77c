"""Synthetic arithmetic families: the arithmetic task (short multi-step word problems), the terse two-step
task (the band the base model half-solves), and test sets whose arithmetic facts never occur in training."""

from __future__ import annotations

import random
from typing import Callable, Iterable

from cca_tl.tasks.problems import Problem, template_seed

_NAMES = ("Tom", "Anna", "Liam", "Mia", "Noah", "Emma", "Lucas", "Sofia", "Ben", "Zoe")
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells")


def _arith_add_sub(rng: random.Random, hi: int) -> tuple[str, str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(2, hi), rng.randint(2, hi)
    c = rng.randint(1, a + b - 1)
    q = f"{name} has {a} {item}. {name} gets {b} more {item} and then gives away {c}. How many {item} does {name} have now?"
    s = f"{name} starts with {a} {item}. {a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}. The final answer is {a + b - c}."
    return q, s, a + b - c


def _arith_mul_add(rng: random.Random, hi: int) -> tuple[str, str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    boxes, per, extra = rng.randint(2, 5), rng.randint(2, max(3, hi // 3)), rng.randint(1, hi)
    q = (f"{name} has {boxes} boxes with {per} {item} in each box, and {extra} loose {item}. "
         f"How many {item} does {name} have in total?")
    s = f"{boxes} boxes with {per} {item} each is {boxes} * {per} = {boxes * per}. {boxes * per} + {extra} = {boxes * per + extra}. The final answer is {boxes * per + extra}."
    return q, s, boxes * per + extra


def _arith_two_people(rng: random.Random, hi: int) -> tuple[str, str, int]:
    n1, n2 = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    a, b = rng.randint(2, hi), rng.randint(2, hi)
    q = f"{n1} has {a} {item} and {n2} has {b} {item}. How many {item} do they have together?"
    s = f"{n1} has {a} and {n2} has {b}. {a} + {b} = {a + b}. The final answer is {a + b}."
    return q, s, a + b


def _arith_sub_twice(rng: random.Random, hi: int) -> tuple[str, str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a = rng.randint(10, hi + 10)
    b = rng.randint(1, a // 2)
    c = rng.randint(1, a - b - 1)
    q = f"{name} had {a} {item}. {name} lost {b} {item} on Monday and {c} {item} on Tuesday. How many {item} are left?"
    s = f"{name} had {a}. {a} - {b} = {a - b}. {a - b} - {c} = {a - b - c}. The final answer is {a - b - c}."
    return q, s, a - b - c


ARITHMETIC_TEMPLATES: dict[str, Callable[[random.Random, int], tuple[str, str, int]]] = {
    "arith-add-sub": _arith_add_sub,
    "arith-mul-add": _arith_mul_add,
    "arith-two-people": _arith_two_people,
    "arith-sub-twice": _arith_sub_twice,
}


def arithmetic_problems(n_per_template: int = 50, *, seed: int = 0, max_value: int = 9,
                        templates: Iterable[str] | None = None) -> list[Problem]:
    """Short two-step arithmetic word problems in four templates; ``max_value`` sets the difficulty.

    Gemma-3-270M (4-shot, greedy) scored 25 % macro at the default ``max_value=9``, 12.5 % at 20 and 5 % at 5
    (10 questions per template; ``analyses/tasks_baseline.md``).
    """
    return _instantiate("arithmetic", ARITHMETIC_TEMPLATES, n_per_template, seed, max_value, templates)


#: Four worked examples of the arithmetic task (fixed; not drawn from any split).
ARITHMETIC_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("Sam has 4 pears. Sam gets 5 more pears and then gives away 3. How many pears does Sam have now?",
     "Sam starts with 4 pears. 4 + 5 = 9. 9 - 3 = 6. The final answer is 6."),
    ("Eva has 3 boxes with 4 cups in each box, and 2 loose cups. How many cups does Eva have in total?",
     "3 boxes with 4 cups each is 3 * 4 = 12. 12 + 2 = 14. The final answer is 14."),
    ("Max has 7 stamps and Ivy has 8 stamps. How many stamps do they have together?",
     "Max has 7 and Ivy has 8. 7 + 8 = 15. The final answer is 15."),
    ("Leo had 19 nuts. Leo lost 4 nuts on Monday and 6 nuts on Tuesday. How many nuts are left?",
     "Leo had 19. 19 - 4 = 15. 15 - 6 = 9. The final answer is 9."),
)


# ----------------------------------------------------------------------------------------------------
# The two-step task: terse two-operation problems with small numbers (the band the base model half-solves)
# ----------------------------------------------------------------------------------------------------


def _two_add_sub(rng: random.Random, hi: int) -> tuple[str, str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(2, hi), rng.randint(1, hi)
    c = rng.randint(1, min(hi, a + b - 1))
    q = f"{name} has {a} {item}, gets {b} more and gives away {c}. How many {item} does {name} have?"
    return q, f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}. The final answer is {a + b - c}.", a + b - c


def _two_mul_add(rng: random.Random, hi: int) -> tuple[str, str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    boxes, per, extra = rng.randint(2, hi), rng.randint(2, hi), rng.randint(1, hi)
    q = f"{name} has {boxes} bags of {per} {item} and {extra} more {item}. How many {item} does {name} have?"
    return q, f"{boxes} * {per} = {boxes * per}. {boxes * per} + {extra} = {boxes * per + extra}. " \
              f"The final answer is {boxes * per + extra}.", boxes * per + extra


def _two_add_add(rng: random.Random, hi: int) -> tuple[str, str, int]:
    n1, n2, n3 = rng.sample(_NAMES, 3)
    item = rng.choice(_ITEMS)
    a, b, c = rng.randint(1, hi), rng.randint(1, hi), rng.randint(1, hi)
    q = f"{n1} has {a} {item}, {n2} has {b} and {n3} has {c}. How many {item} do they have together?"
    return q, f"{a} + {b} = {a + b}. {a + b} + {c} = {a + b + c}. The final answer is {a + b + c}.", a + b + c


def _two_sub_sub(rng: random.Random, hi: int) -> tuple[str, str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    b, c = rng.randint(1, hi), rng.randint(1, hi)
    a = b + c + rng.randint(1, hi)
    q = f"{name} has {a} {item}, loses {b} and then gives away {c}. How many {item} are left?"
    return q, f"{a} - {b} = {a - b}. {a - b} - {c} = {a - b - c}. The final answer is {a - b - c}.", a - b - c


TWO_STEP_TEMPLATES: dict[str, Callable[[random.Random, int], tuple[str, str, int]]] = {
    "two-add-sub": _two_add_sub,
    "two-mul-add": _two_mul_add,
    "two-add-add": _two_add_add,
    "two-sub-sub": _two_sub_sub,
}

#: One worked example per two-step template (fixed names and items that the generators never draw).
TWO_STEP_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("Sam has 4 pears, gets 3 more and gives away 2. How many pears does Sam have?",
     "4 + 3 = 7. 7 - 2 = 5. The final answer is 5."),
    ("Eva has 3 bags of 2 cups and 4 more cups. How many cups does Eva have?",
     "3 * 2 = 6. 6 + 4 = 10. The final answer is 10."),
    ("Max has 2 stamps, Ivy has 5 and Leo has 3. How many stamps do they have together?",
     "2 + 5 = 7. 7 + 3 = 10. The final answer is 10."),
    ("Ada has 9 nuts, loses 3 and then gives away 4. How many nuts are left?",
     "9 - 3 = 6. 6 - 4 = 2. The final answer is 2."),
)


def two_step_problems(n_per_template: int = 50, *, seed: int = 0, max_value: int = 5,
                      templates: Iterable[str] | None = None) -> list[Problem]:
    """Terse two-operation word problems (four templates, every operand in ``1..max_value``); each answer is
    two equations and "The final answer is N.", about 20 tokens, so a trace has two steps where it can slip.

    Chosen from the candidates in ``analyses/task_screen.md`` because Gemma-3-270M half-solves it (greedy
    accuracy in the 35-70 % band the paper's models start from) with traces half as long as the arithmetic task's.
    """
    return _instantiate("two-step", TWO_STEP_TEMPLATES, n_per_template, seed, max_value, templates)


def _instantiate(task: str, table: dict[str, Callable[[random.Random, int], tuple[str, str, int]]], n_per_template: int,
                 seed: int, max_value: int, templates: Iterable[str] | None) -> list[Problem]:
    ids = list(templates) if templates is not None else list(table)
    unknown = [t for t in ids if t not in table]
    if unknown:
        raise KeyError(f"Unknown {task} template ids {unknown}; known: {list(table)}")
    problems = []
    for tid in ids:
        rng = random.Random(template_seed(seed, tid))
        for i in range(n_per_template):
            q, s, a = table[tid](rng, max_value)
            problems.append(Problem(tid, i, q, float(a), s))
    return problems


def new_fact_problems(task: str, n_per_template: int = 25, *, seed: int = 0, max_value: int = 3,
                      new_max_value: int | None = None, templates: Iterable[str] | None = None,
                      draws: int = 4000) -> list[Problem]:
    """Questions whose arithmetic the task at ``max_value`` can never produce: a test of generalisation
    beyond memorised facts.

    Drawn from the same templates with operands up to ``new_max_value`` (default ``max_value + 2``), kept only
    when their reference solution — the whole chain of equations, which the operands fix — is not among the
    solutions the template makes at ``max_value`` (enumerated by ``draws`` seeded draws per template; with
    at most 27 operand combinations per two-step template at ``max_value`` 3, 4,000 draws miss one with
    probability below 1e-60). So none of them shares its arithmetic with any training, validation or test
    question of a run at ``max_value``, whatever its names and items. Instance ids start at 1,000,000.
    """
    table = {"two-step": TWO_STEP_TEMPLATES, "arithmetic": ARITHMETIC_TEMPLATES}.get(task)
    if table is None:
        raise ValueError(f"New-fact questions are defined for the two-step and arithmetic tasks, not {task!r}.")
    new_max_value = max_value + 2 if new_max_value is None else new_max_value
    if new_max_value <= max_value:
        raise ValueError(f"new_max_value ({new_max_value}) must exceed max_value ({max_value}).")
    ids = list(templates) if templates is not None else list(table)
    problems = []
    for tid in ids:
        known_rng = random.Random(template_seed(seed, tid) + 17)
        known = {table[tid](known_rng, max_value)[1] for _ in range(draws)}
        rng, seen = random.Random(template_seed(seed, tid) + 29), set()
        for _ in range(200 * n_per_template):
            if len(seen) == n_per_template:
                break
            q, solution, answer = table[tid](rng, new_max_value)
            if solution in known or q in seen:
                continue
            seen.add(q)
            problems.append(Problem(tid, 1_000_000 + len(seen) - 1, q, float(answer), solution))
        if len(seen) < n_per_template:
            raise ValueError(f"Template {tid} gave only {len(seen)} new-fact questions at operands up to "
                             f"{new_max_value}; raise new_max_value.")
    return problems
