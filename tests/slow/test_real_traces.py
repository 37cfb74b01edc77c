"""Traces and localization on the real Gemma-3-270M (slow)."""

from __future__ import annotations

import functools

import pytest

from cca_tl.localize import localize_branching, localize_prefix
from cca_tl.tasks import ARITHMETIC_EXEMPLARS, arithmetic_problems, few_shot_prompt
from cca_tl.traces import generate_traces

pytestmark = pytest.mark.slow

PROMPT = functools.partial(few_shot_prompt, exemplars=ARITHMETIC_EXEMPLARS)


def test_traces_and_localization_on_gemma(gemma):
    problems = arithmetic_problems(2, seed=0, max_value=9)[:6]
    traces = generate_traces(gemma, problems, PROMPT, n_samples=2, max_new_tokens=40, progress=False)
    assert len(traces) == 6
    assert {"greedy_ids", "greedy_correct", "sampled_ids", "flipped", "prompt_ids"} <= set(traces.column_names)
    for t in traces:
        assert t["greedy_text"] and (t["flipped"] == bool(t["sampled_ids"]))
        if t["flipped"]:
            assert t["sampled_correct"] != t["greedy_correct"]
    prefix = localize_prefix(traces, gemma.tokenizer)
    branching = localize_branching(traces, gemma, max_new_tokens=40)
    for ds in (prefix, branching):
        assert set(ds.column_names) >= {"prefix_ids", "prefix_text", "desired_id", "undesired_id", "method"}
        for r in ds:
            assert r["desired_id"] != r["undesired_id"]
    assert len(prefix) == sum(traces["flipped"])  # every flipped pair differs somewhere


def test_prompt_longer_than_the_context_is_refused(gemma):
    problems = arithmetic_problems(1, seed=0)[:1]
    long_prompt = lambda q: "word " * (gemma.cfg.n_ctx + 10) + q  # noqa: E731
    with pytest.raises(ValueError, match="exceed the model's context"):
        generate_traces(gemma, problems, long_prompt, progress=False)
    with pytest.raises(ValueError, match="empty"):
        from cca_tl.evaluate import accuracy

        accuracy(gemma, [], PROMPT)


def test_reference_pivots_on_gemma_are_lost_by_the_greedy_model(gemma):
    """Gemma's tokenizer re-tokenises its own answers the way it generated them, so at every reference pivot
    of a wrong greedy answer the undesired token is the greedy one: the base model's pivot accuracy is 0."""
    from cca_tl.evaluate import accuracy, pivot_scores
    from cca_tl.localize import localize_reference
    from cca_tl.tasks import TWO_STEP_EXEMPLARS, two_step_problems

    prompt = functools.partial(few_shot_prompt, exemplars=TWO_STEP_EXEMPLARS)
    problems = two_step_problems(4, seed=0, max_value=5)
    _, _, records = accuracy(gemma, problems, prompt, max_new_tokens=32, progress=False)
    prompt_ids = [gemma.to_tokens(prompt(p.question), prepend_bos=True)[0].tolist() for p in problems]
    pivots = localize_reference(problems, prompt_ids, list(records["output"]), list(records["correct"]),
                                gemma.tokenizer)
    assert 0 < len(pivots) <= int((~records["correct"]).sum())
    scores = pivot_scores(gemma, pivots)
    assert scores["n_pivots"] == len(pivots) and scores["pivot_accuracy"] == 0.0
