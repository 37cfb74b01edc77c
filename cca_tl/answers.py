"""Reference answers through the model: the answer-level objective and its cheap validation.

An :class:`AnswerSet` holds, per question, the prompt and the tokens of its reference solution. Two
readouts, both teacher-forced (the model reads the reference, one forward pass, no generation):

* :func:`answer_token_losses` — cross-entropy of every answer token: the **reference-answer fine-tuning**
  objective (what the authors' LoRA and full fine-tuning baselines train on, here through the same
  TransformerLens model that CCA edits, so that both objectives reach the same parameters).
* :func:`reference_path_scores` — per question whether the greedy choice agrees with the reference at every
  answer token (``on_path``) and the answer's NLL. When the reference is on the greedy path, greedy decoding
  writes the reference solution, so ``on_path`` is a forward-only lower bound of greedy accuracy; on the
  two-step task it is nearly equal to it (right answers are the reference text; measured in
  ``analyses/results/power/``). It is the power experiment's validation rule.

Like the pivot records (:mod:`cca_tl.contrast`) the few-shot prompt every question shares is run once per
call and each mini-batch attends to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from cca_tl.backend import HookedTransformer, is_bridge
from cca_tl.errors import BackendError

from cca_tl.contrast import pad_token_id
from cca_tl.fast_paths import grouped_attention_without_copies, unembed
from cca_tl.prompt_cache import cache_over_prompt, prompt_keys_values, shared_length
from cca_tl.tasks import Problem


@dataclass
class AnswerSet:
    """Per question: the prompt's token ids (with BOS) and the reference solution's token ids."""

    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]

    def __post_init__(self) -> None:
        if len(self.prompt_ids) != len(self.answer_ids):
            raise ValueError(f"prompt_ids and answer_ids differ in length: {len(self.prompt_ids)}, "
                             f"{len(self.answer_ids)}")
        if any(not a for a in self.answer_ids) or any(not p for p in self.prompt_ids):
            raise ValueError("Every question needs a prompt and at least one answer token.")

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @classmethod
    def from_problems(cls, model: HookedTransformer, problems: Sequence[Problem],
                      prompt_fn: Callable[[str], str]) -> "AnswerSet":
        """Each problem's prompt and ``" " + solution`` (the text a right greedy answer starts with after the
        prompt's "step by step."), tokenised as :func:`cca_tl.localize.localize_reference` does."""
        missing = [p for p in problems if not p.solution]
        if missing:
            raise ValueError(f"{len(missing)} problems have no reference solution (e.g. {missing[0].template_id} "
                             f"#{missing[0].instance_id}); the answer objective needs one.")
        prompts = [model.to_tokens(prompt_fn(p.question), prepend_bos=True)[0].tolist() for p in problems]
        answers = [model.tokenizer.encode(" " + p.solution.strip(), add_special_tokens=False) for p in problems]
        return cls(prompts, answers)

    def subset(self, indices: Sequence[int]) -> "AnswerSet":
        return AnswerSet([self.prompt_ids[i] for i in indices], [self.answer_ids[i] for i in indices])

    def validate(self, model: HookedTransformer) -> None:
        if len(self) == 0:
            raise ValueError("The answer set is empty.")
        longest = max(len(p) + len(a) for p, a in zip(self.prompt_ids, self.answer_ids))
        if longest > model.cfg.n_ctx:
            raise ValueError(f"A prompt and its answer have {longest} tokens; the model's context is {model.cfg.n_ctx}.")

    @property
    def n_tokens(self) -> int:
        return sum(map(len, self.answer_ids))


def _answer_logits(model: HookedTransformer, data: AnswerSet, shared: int,
                   keys_values: Sequence[Tensor]) -> tuple[Float[Tensor, "tokens vocab"], Int[Tensor, "tokens"], Int[Tensor, "tokens"]]:
    """Logits (float32) predicting every answer token of ``data``, their targets and each one's row."""
    cfg = model.cfg
    tails = [p[shared:] + a for p, a in zip(data.prompt_ids, data.answer_ids)]
    width = max(map(len, tails))
    tokens = torch.full((len(tails), width), pad_token_id(model), dtype=torch.long)
    rows, cols = [], []
    for row, (tail, answer) in enumerate(zip(tails, data.answer_ids)):
        tokens[row, :len(tail)] = torch.tensor(tail)
        start = len(tail) - len(answer) - 1  # the position whose next token is the first answer token
        rows += [row] * len(answer)
        cols += list(range(start, len(tail) - 1))
    tokens = tokens.to(cfg.device)
    rows_t, cols_t = torch.tensor(rows, device=cfg.device), torch.tensor(cols, device=cfg.device)
    if is_bridge(model):  # no TransformerLens 3 cache or stop_at_layer: the whole rows, the HF model's logits
        if shared:
            raise BackendError("A shared prompt's cache is a HookedTransformer path; on the bridge use shared=0.")
        return model(tokens)[rows_t, cols_t].float(), tokens[rows_t, cols_t + 1], rows_t
    with grouped_attention_without_copies():
        if shared:
            cache = cache_over_prompt(model, len(tails), keys_values)
            resid = model(tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens),
                          stop_at_layer=cfg.n_layers)
        else:
            resid = model(tokens, stop_at_layer=cfg.n_layers)
    final = resid[rows_t, cols_t]
    if cfg.normalization_type is not None:
        final = model.ln_final(final[:, None, :])[:, 0]
    return unembed(model, final), tokens[rows_t, cols_t + 1], rows_t


def shared_prompt_length(data: AnswerSet, min_shared: int = 8) -> int:
    """Tokens every question's prompt shares (a few-shot prompt), or 0 when fewer than ``min_shared``."""
    return shared_length(data.prompt_ids, min_shared=min_shared)


def answer_losses_over_prompt(model: HookedTransformer, data: AnswerSet, batch_size: int, shared: int,
                              keys_values: Sequence[Tensor]) -> Iterator[tuple[list[int], Float[Tensor, "tokens"]]]:
    """Per mini-batch its question indices and the cross-entropy of each answer token, every row attending
    to the shared prompt's ``keys_values`` (:func:`cca_tl.contrast.prompt_keys_values` of its first
    ``shared`` tokens; leaves that collect the prompt's gradient, in the update)."""
    for start in range(0, len(data), batch_size):
        indices = list(range(start, min(start + batch_size, len(data))))
        logits, targets, _ = _answer_logits(model, data.subset(indices), shared, keys_values)
        yield indices, torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def answer_batches(model: HookedTransformer, data: AnswerSet,
                   batch_size: int) -> Iterator[tuple[Sequence[int], Float[Tensor, "tokens vocab"], Int[Tensor, "tokens"], Int[Tensor, "tokens"]]]:
    """``(indices, logits, targets, rows)`` per mini-batch (rows index into ``indices``); the prompt the
    whole set shares runs once (with gradients when enabled) and every mini-batch attends to it."""
    data.validate(model)
    shared = 0 if is_bridge(model) else shared_prompt_length(data)
    keys_values = prompt_keys_values(model, data.prompt_ids[0][:shared]) if shared else []
    for start in range(0, len(data), batch_size):
        indices = list(range(start, min(start + batch_size, len(data))))
        yield (indices, *_answer_logits(model, data.subset(indices), shared, keys_values))


def answer_token_losses(model: HookedTransformer, data: AnswerSet,
                        batch_size: int = 8) -> Iterator[Float[Tensor, "tokens"]]:
    """Per mini-batch, the cross-entropy of each answer token (differentiable): the reference-answer objective
    is their mean over the set's :attr:`AnswerSet.n_tokens`."""
    for _, logits, targets, _ in answer_batches(model, data, batch_size):
        yield torch.nn.functional.cross_entropy(logits, targets, reduction="none")


@torch.no_grad()
def reference_path_scores(model: HookedTransformer, data: AnswerSet, batch_size: int = 8) -> dict[str, Tensor]:
    """Per question: ``on_path`` (the argmax equals the reference at every answer token) and ``nll`` (the
    answer's summed cross-entropy, nats). Forward passes only."""
    misses, nll = torch.zeros(len(data), dtype=torch.long), torch.zeros(len(data))
    for indices, logits, targets, rows in answer_batches(model, data, batch_size):
        index = torch.tensor(indices)[rows.cpu()]
        misses.index_add_(0, index, (logits.argmax(-1) != targets).long().cpu())
        nll.index_add_(0, index, torch.nn.functional.cross_entropy(logits, targets, reduction="none").cpu())
    return dict(on_path=misses == 0, nll=nll)


__all__ = ["AnswerSet", "answer_batches", "answer_losses_over_prompt", "answer_token_losses", "reference_path_scores",
           "shared_prompt_length"]
