"""Reasoning traces: one greedy and up to ten sampled traces per question, graded (docs/method.md §A1).

Generation runs on the HookedTransformer itself (:func:`cca_tl.generation.generate`: shared-prompt
key/value cache, last-position unembedding, finished rows leave the batch), so traces always come from
the model's current weights with no copy to keep in sync. (A ``transformers`` copy of the weights,
for tools that need one, is :func:`cca_tl.export.hf_copy`.)
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

from cca_tl.backend import HookedTransformer

from cca_tl.export import hf_copy
from cca_tl.generation import DEFAULT_STOPS, Generation, generate, sample_rows  # noqa: F401  (re-exported)
from cca_tl.tasks import Problem, extract_answer, is_correct


def hf_twin(model: HookedTransformer) -> Any:
    """Deprecated: :func:`cca_tl.export.hf_copy` (the same function; it has nothing to do with traces)."""
    warnings.warn("cca_tl.traces.hf_twin is deprecated; use cca_tl.export.hf_copy.", DeprecationWarning, stacklevel=2)
    return hf_copy(model)


def grade(text: str, problem: Problem) -> tuple[float, bool]:
    pred = extract_answer(text)
    return pred, is_correct(pred, problem.answer)


def generate_traces(
    model: HookedTransformer,
    problems: Sequence[Problem],
    prompt_fn: Callable[[str], str],
    *,
    n_samples: int = 10,
    temperature_if_correct: float = 1.2,
    temperature_if_wrong: float = 0.8,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    stops: Sequence[str] = DEFAULT_STOPS,
    progress: bool = True,
):
    """Greedy trace per problem, then sampling rounds (one sample per unresolved problem per round, batched
    across problems) until a trace of the opposite correctness appears, up to ``n_samples``.

    Returns a ``datasets.Dataset``: ids, prompt, greedy/sampled token ids, texts, predictions, correctness.
    """
    from datasets import Dataset

    if not problems:
        raise ValueError("No problems to generate traces for.")
    prompts = [prompt_fn(p.question) for p in problems]
    prompt_ids = [model.to_tokens(t, prepend_bos=True)[0].tolist() for t in prompts]
    too_long = [i for i, p in enumerate(prompt_ids) if len(p) + max_new_tokens > model.cfg.n_ctx]
    if too_long:
        raise ValueError(f"{len(too_long)} prompts plus {max_new_tokens} new tokens exceed the model's context "
                         f"({model.cfg.n_ctx}); e.g. problem {problems[too_long[0]].template_id}/"
                         f"{problems[too_long[0]].instance_id} has {len(prompt_ids[too_long[0]])} prompt tokens.")
    greedy = generate(model, prompt_ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      stops=stops, progress=progress)
    graded = [grade(g.text, p) for g, p in zip(greedy, problems)]
    sampled: list[Generation | None] = [None] * len(problems)
    sampled_grade: list[tuple[float, bool] | None] = [None] * len(problems)
    tried = [0] * len(problems)
    rnd = 0
    while True:
        pending = [i for i in range(len(problems)) if sampled[i] is None and tried[i] < n_samples]
        if not pending:
            break
        # Fill the batch: several samples of each pending question in one call (samples are i.i.d., so the
        # first success in order is what one-at-a-time sampling would keep; generation is memory-bound, so
        # a fuller batch costs little more per step).
        copies = max(1, batch_size // len(pending))
        jobs = [(i, c) for i in pending for c in range(min(copies, n_samples - tried[i]))]
        temps = [temperature_if_correct if graded[i][1] else temperature_if_wrong for i, _ in jobs]
        outs = generate(model, [prompt_ids[i] for i, _ in jobs], max_new_tokens=max_new_tokens,
                        temperature=temps, seed=seed * 100_003 + rnd * 1009, batch_size=batch_size, stops=stops,
                        progress=False)
        for (i, _), g in zip(jobs, outs):
            if sampled[i] is not None:
                continue  # an earlier copy already succeeded: later copies are not counted as tried
            tried[i] += 1
            pred, ok = grade(g.text, problems[i])
            if ok != graded[i][1]:  # the opposite correctness of the greedy trace
                sampled[i], sampled_grade[i] = g, (pred, ok)
        rnd += 1
        if progress:
            print(f"sampling round {rnd} ({len(jobs)} samples): {sum(s is not None for s in sampled)} of "
                  f"{len(problems)} questions have a trace of opposite correctness")
    rows = []
    for i, p in enumerate(problems):
        s, sg = sampled[i], sampled_grade[i]
        rows.append(dict(
            template_id=p.template_id, instance_id=p.instance_id, question=p.question, gold=p.answer,
            prompt=prompts[i], prompt_ids=prompt_ids[i],
            greedy_ids=greedy[i].token_ids, greedy_text=greedy[i].text, greedy_pred=graded[i][0],
            greedy_correct=graded[i][1], flipped=s is not None, n_sampled=tried[i],
            sample_temperature=temperature_if_correct if graded[i][1] else temperature_if_wrong,
            sampled_ids=s.token_ids if s else [], sampled_text=s.text if s else "",
            sampled_pred=sg[0] if sg else float("nan"), sampled_correct=bool(sg[1]) if sg else False,
        ))
    return Dataset.from_list(rows)
