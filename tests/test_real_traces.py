"""Traces and localization on the real Gemma-3-270M with the easy task (slow)."""

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
