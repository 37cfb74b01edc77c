"""Prefix, Branching and Reference localization on hand-built pairs and tiny models."""

from __future__ import annotations

import pytest
import torch

from cca_tl import load_model
from cca_tl.localize import branching_records, first_difference, prefix_records
from cca_tl.export import hf_copy


class Completer:
    """Greedy completions from a tiny model's HF twin, counting calls."""

    def __init__(self, arch="tiny-llama"):
        self.twin = hf_copy(load_model(arch, seed=2))
        self.calls = 0

    def __call__(self, prefixes, budgets):
        self.calls += len(prefixes)
        out = []
        for p, b in zip(prefixes, budgets):
            ids = torch.tensor([p])
            gen = self.twin.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=b,
                                     do_sample=False, pad_token_id=0)
            out.append(gen[0, len(p):].tolist())
        return out


def brute_force_branching(prompt, sampled, greedy_correct, complete, grade, budget):
    """docs/method.md §A2 literally: complete at every position; the first k whose correctness flips."""
    for k in range(1, len(sampled) + 1):
        generated = sampled[:k] + complete([prompt + sampled[:k]], [budget - k])[0]
        if grade(generated) != greedy_correct:
            return k - 1
    return None


def test_prefix_on_hand_built_pairs():
    rec = prefix_records([1, 2], greedy_ids=[5, 6, 7, 8], sampled_ids=[5, 6, 9, 10], greedy_correct=True)
    assert rec == dict(prefix_ids=[1, 2, 5, 6], desired_id=7, undesired_id=9, position=2)
    rec = prefix_records([1, 2], greedy_ids=[5, 6, 7, 8], sampled_ids=[5, 6, 9, 10], greedy_correct=False)
    assert (rec["desired_id"], rec["undesired_id"]) == (9, 7)
    assert prefix_records([1], [5, 6], [5, 6, 7], True) is None  # one is a prefix of the other
    assert first_difference([3], [4]) == 0


def test_reference_localization_finds_where_a_wrong_answer_leaves_the_solution():
    from cca_tl.localize import localize_reference
    from cca_tl.tasks import Problem

    tok = load_model("tiny-gemma3").tokenizer  # one token per character
    solved = Problem("t", 0, "q", 5.0, "2 + 4 = 6. 6 - 1 = 5. The final answer is 5.")
    plain = Problem("t", 1, "q", 5.0, "")  # no reference: no record
    outputs = [" 2 + 4 = 7. 7 - 1 = 6. The final answer is 6.", " 2 + 4 = 6. 6 - 1 = 5. The final answer is 5.",
               " 2 + 4 = 7."]
    records = localize_reference([solved, solved, plain], [[1, 2], [1, 2], [1, 2]], outputs, [False, True, False],
                                 tok)
    assert len(records) == 1  # the right answer and the problem without a solution give none
    r = records[0]
    k = len(" 2 + 4 = ")
    assert r["position"] == k and r["method"] == "reference" and r["instance_id"] == 0
    assert r["prefix_ids"] == [1, 2] + tok.encode(outputs[0][:k], add_special_tokens=False)
    assert tok.decode([r["desired_id"]]) == "6" and tok.decode([r["undesired_id"]]) == "7"
    with pytest.raises(ValueError, match="one entry per question"):
        localize_reference([solved], [[1]], outputs, [False], tok)


def test_branching_on_a_tiny_model_with_a_scripted_grader():
    complete = Completer()
    prompt, budget = [3, 14, 15, 92], 12
    greedy = complete([prompt], [budget])[0]
    seen = set(greedy)
    marker = next(t for t in range(200, 256) if t not in seen)  # "correct" iff the marker token appears
    detour = next(t for t in range(100, 200) if t not in seen and t != greedy[1])
    after_detour = complete([prompt + greedy[:1] + [detour]], [budget - 2])[0]
    assert marker not in after_detour
    sampled = greedy[:1] + [detour] + after_detour[:2] + [marker] + [7, 7]
    grade = lambda ids: marker in ids  # noqa: E731
    pair = dict(prompt_ids=prompt, greedy_ids=greedy, sampled_ids=sampled, greedy_correct=False)
    complete.calls = 0
    (rec,) = branching_records([pair], complete, lambda i, ids: grade(ids), budget)
    assert rec == dict(prefix_ids=prompt + sampled[:4], desired_id=marker, undesired_id=after_detour[2], position=4)
    assert complete.calls == 2, "only the two deviation points need a completion"
    assert brute_force_branching(prompt, sampled, False, complete, grade, budget) == rec["position"]


def test_branching_without_a_flip_gives_none():
    complete = Completer()
    prompt = [3, 14, 15, 92]
    greedy = complete([prompt], [8])[0]
    pair = dict(prompt_ids=prompt, greedy_ids=greedy, sampled_ids=greedy[:3] + [101, 102], greedy_correct=True)
    assert branching_records([pair], complete, lambda i, ids: True, 8) == [None]
