"""Token localization: where a wrong trace departs from a right one (docs/method.md §A2).

Both variants return an error-localization ``datasets.Dataset`` with ``prefix_ids`` (prompt + shared
reasoning before the pivotal token), ``prefix_text``, ``desired_id``, ``undesired_id``, ``template_id``,
``instance_id``, ``method`` and ``position`` (index of the pivotal token in the generated text) — the
input :class:`cca_tl.contrast.ContrastSet.from_dataset` takes.

* **Prefix**: the first position where the greedy and the sampled trace differ.
* **Reference** (held-out pivots, this toolkit's addition): the first position where a wrong greedy answer
  leaves the task's reference solution. Needs no sampling, so every wrong answer of a greedy evaluation
  yields a pivot for free; on tasks whose right traces all follow one format (the two-step task: a model's
  right answer *is* the reference text) it is the Prefix record a right sample would give.
* **Branching**: walk along the sampled trace; at each position k complete greedily from its first k
  tokens; the first k where the completion's correctness differs from the greedy trace's is pivotal.
  Made cheap by an exact shortcut: where the sampled token equals the current greedy continuation's next
  token, the completion one step later is that continuation minus one token, so completions are only
  generated at the sampled trace's *deviation points* — batched across questions, stopping at the first
  flip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where ``a`` and ``b`` differ (None if one is a prefix of the other)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None


def prefix_records(prompt_ids: Sequence[int], greedy_ids: Sequence[int], sampled_ids: Sequence[int],
                   greedy_correct: bool) -> dict | None:
    """The Prefix variant for one pair of traces; None when no position differs."""
    k = first_difference(greedy_ids, sampled_ids)
    if k is None:
        return None
    correct, wrong = (greedy_ids, sampled_ids) if greedy_correct else (sampled_ids, greedy_ids)
    return dict(prefix_ids=list(prompt_ids) + list(greedy_ids[:k]), desired_id=int(correct[k]),
                undesired_id=int(wrong[k]), position=k)


def _dataset(rows: list[dict], tokenizer: Any):
    from datasets import Dataset, Features, Sequence as Seq, Value

    for r in rows:
        r["prefix_text"] = tokenizer.decode(r["prefix_ids"]) if tokenizer is not None else ""
    features = Features(dict(prefix_ids=Seq(Value("int64")), desired_id=Value("int64"), undesired_id=Value("int64"),
                             position=Value("int64"), template_id=Value("string"), instance_id=Value("int64"),
                             method=Value("string"), prefix_text=Value("string")))
    if not rows:  # from_list cannot infer an empty table, even with features
        return Dataset.from_dict({name: [] for name in features}, features=features)
    return Dataset.from_list(rows, features=features)


def localize_prefix(traces, tokenizer: Any = None):
    """Prefix localization over a traces dataset (rows without a flipped sample are skipped)."""
    rows = []
    for t in traces:
        if not t["flipped"]:
            continue
        rec = prefix_records(t["prompt_ids"], t["greedy_ids"], t["sampled_ids"], t["greedy_correct"])
        if rec is not None:
            rows.append(dict(rec, template_id=t["template_id"], instance_id=t["instance_id"], method="prefix"))
    return _dataset(rows, tokenizer)


def localize_reference(problems: Sequence[Any], prompt_ids: Sequence[Sequence[int]], outputs: Sequence[str],
                       correct: Sequence[bool], tokenizer: Any):
    """Reference localization for greedy answers: one record per wrong answer whose text leaves the
    reference solution (``problem.solution``, read after the prompt's trailing space) at some token.

    Both texts are tokenised the same way, so the first differing token is where the answer went wrong;
    desired = the reference's token, undesired = the answer's. Right answers and problems without a
    solution give no record.
    """
    if not (len(problems) == len(prompt_ids) == len(outputs) == len(correct)):
        raise ValueError("problems, prompt_ids, outputs and correct must have one entry per question.")
    rows = []
    for problem, prompt, output, ok in zip(problems, prompt_ids, outputs, correct):
        if ok or not problem.solution:
            continue
        space = " " if output.startswith(" ") else ""
        answer = tokenizer.encode(output, add_special_tokens=False)
        reference = tokenizer.encode(space + problem.solution, add_special_tokens=False)
        rec = prefix_records(prompt, reference, answer, greedy_correct=True)
        if rec is not None:
            rows.append(dict(rec, template_id=problem.template_id, instance_id=problem.instance_id,
                             method="reference"))
    return _dataset(rows, tokenizer)


@dataclass
class _Walk:
    """Branching state for one pair: position k in the sampled trace and the greedy completion from there."""

    prompt: list[int]
    sampled: list[int]
    base_correct: bool
    k: int
    continuation: list[int]
    result: dict | None = None
    done: bool = False

    def advance(self) -> list[int] | None:
        """Skip positions where the sampled token is the greedy one; return the next prefix to complete."""
        while self.k < len(self.sampled):
            if self.continuation and self.continuation[0] == self.sampled[self.k]:
                self.continuation = self.continuation[1:]
                self.k += 1
                continue
            return self.prompt + self.sampled[: self.k + 1]
        self.done = True  # walked the whole sampled trace without a flip
        return None


def branching_records(
    pairs: Sequence[dict],
    complete: Callable[[list[list[int]], list[int]], list[list[int]]],
    is_correct: Callable[[int, list[int]], bool],
    max_new_tokens: int,
) -> list[dict | None]:
    """Branching for many pairs at once.

    ``pairs[i]`` has ``prompt_ids``, ``greedy_ids``, ``sampled_ids``, ``greedy_correct``. ``complete(prefixes,
    budgets)`` returns greedy continuations (batched); ``is_correct(i, generated_ids)`` grades pair i's
    generated text. Returns per pair a record or None (no flip found).
    """
    walks = [_Walk(list(p["prompt_ids"]), list(p["sampled_ids"]), bool(p["greedy_correct"]), 0, list(p["greedy_ids"]))
             for p in pairs]
    while True:
        pending = []
        for i, w in enumerate(walks):
            if w.done:
                continue
            prefix = w.advance()
            if prefix is not None:
                pending.append((i, prefix))
        if not pending:
            break
        budgets = [max(1, max_new_tokens - (walks[i].k + 1)) for i, _ in pending]
        outs = complete([p for _, p in pending], budgets)
        for (i, _), new in zip(pending, outs):
            w = walks[i]
            generated = w.sampled[: w.k + 1] + list(new)
            flipped = is_correct(i, generated)
            if flipped != w.base_correct:
                greedy_token = w.continuation[0] if w.continuation else None
                if greedy_token is not None:
                    sampled_token = w.sampled[w.k]
                    desired, undesired = (sampled_token, greedy_token) if flipped else (greedy_token, sampled_token)
                    w.result = dict(prefix_ids=w.prompt + w.sampled[: w.k], desired_id=int(desired),
                                    undesired_id=int(undesired), position=w.k)
                w.done = True
            else:
                w.continuation = list(new)
                w.k += 1
    return [w.result for w in walks]


def localize_branching(traces, model, *, max_new_tokens: int = 256, batch_size: int = 32):
    """Branching localization over a traces dataset with the model's greedy completions."""
    from cca_tl.tasks import extract_answer, is_correct as correct_answer
    from cca_tl.generation import generate

    tokenizer = model.tokenizer
    rows_in = [t for t in traces if t["flipped"]]

    def complete(prefixes: list[list[int]], budgets: list[int]) -> list[list[int]]:
        outs = generate(model, prefixes, max_new_tokens=max(budgets), batch_size=batch_size)
        return [o.token_ids[:b] for o, b in zip(outs, budgets)]

    def grade(i: int, ids: list[int]) -> bool:
        return correct_answer(extract_answer(tokenizer.decode(ids)), rows_in[i]["gold"])

    records = branching_records(rows_in, complete, grade, max_new_tokens)
    rows = [dict(rec, template_id=t["template_id"], instance_id=t["instance_id"], method="branching")
            for rec, t in zip(records, rows_in) if rec is not None]
    return _dataset(rows, tokenizer)
