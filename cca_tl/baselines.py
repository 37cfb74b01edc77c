"""Deprecated: the peft path. :func:`cca_tl.update.train_update` covers it on the TransformerLens model —
``objective="answer"`` with ``params="lora"`` (rank-r factors in the HF layout, equal to peft's merged LoRA on the
HF copy: ``tests/test_lora.py``) or ``params="all"``, ``optimizer="adamw"`` — without LoRA dropout, and
with the same validation selection as every other update. This module stays for one version; its one user
in the repository is ``analyses/controls.py``, whose committed baselines it trained.

Baselines for CCA through the same API: LoRA (``peft``) and full fine-tuning, supervised on reference answers.

The authors' baselines (docs/method.md §A5): LoRA r 16, α 32, dropout 0.1 on q, k, v, o, gate, up, down; learning rate
1e-5, 2 epochs; full fine-tuning at lr 1e-5 — supervised on the reference solutions of the training
questions, loss on the answer tokens only. :func:`cca_tl.lora.rank_for_budget` sizes a LoRA to the number
of parameters a CCA edit changed (the budget-matched variant).

Training runs on the model's HF twin (``transformers`` + ``peft``, the way users fine-tune); the result is
merged and brought back as a HookedTransformer, so every evaluation, retention and analysis function of
the toolkit applies to it unchanged. Like the CCA update, the kept checkpoint is the best by a validation
metric over the epochs, the unedited model (epoch 0) included.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import pandas as pd
import torch
from torch import Tensor
from cca_tl.backend import HookedTransformer

from cca_tl.lora import LORA_TARGETS
from cca_tl.params import WeightSnapshot
from cca_tl.tasks import Problem

DEPRECATED = ("cca_tl.baselines (the peft path) is deprecated and goes in the next version; use "
              "cca_tl.train_update(model, AnswerSet.from_problems(...), objective='answer', params='lora' or 'all', "
              "optimizer='adamw').")


@dataclass
class SFTExample:
    """Prompt and answer token ids of one supervised example (the loss covers the answer only)."""

    prompt_ids: list[int]
    answer_ids: list[int]


def sft_examples(model: HookedTransformer, problems: Sequence[Problem], prompt_fn: Callable[[str], str], *,
                 answer_suffix: str = "\n\n") -> list[SFTExample]:
    """Each problem's prompt followed by its reference solution (``" " + solution + answer_suffix``; for chat
    prompts pass the end-of-turn text as ``answer_suffix``)."""
    warnings.warn(DEPRECATED, DeprecationWarning, stacklevel=2)
    if not problems:
        raise ValueError("No training problems for fine-tuning.")
    missing = [p for p in problems if not p.solution]
    if missing:
        raise ValueError(f"{len(missing)} problems have no reference solution (e.g. {missing[0].template_id} "
                         f"#{missing[0].instance_id}); supervised baselines need one.")
    tok = model.tokenizer
    out = []
    for p in problems:
        prompt = model.to_tokens(prompt_fn(p.question), prepend_bos=True)[0].tolist()
        answer = tok.encode(" " + p.solution.strip() + answer_suffix, add_special_tokens=False)
        out.append(SFTExample(prompt, answer))
    return out


def collate_answers(batch: Sequence[SFTExample], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ids, attention mask, and a boolean mask of the positions whose *next* token is an answer
    token (where the loss is taken)."""
    seqs = [e.prompt_ids + e.answer_ids for e in batch]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    predict = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (e, s) in enumerate(zip(batch, seqs)):
        ids[i, :len(s)] = torch.tensor(s)
        attn[i, :len(s)] = 1
        predict[i, len(e.prompt_ids) - 1: len(s) - 1] = True
    return ids, attn, predict


def answer_loss(causal_lm: Any, ids: Tensor, attn: Tensor, predict: Tensor) -> Tensor:
    """Mean cross-entropy of the answer tokens; logits only at those positions (not ``pos × vocab``)."""
    base = causal_lm.get_base_model() if hasattr(causal_lm, "get_base_model") else causal_lm
    hidden = base.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state
    rows, cols = predict.nonzero(as_tuple=True)
    logits = base.get_output_embeddings()(hidden[rows, cols]).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return torch.nn.functional.cross_entropy(logits, ids[rows, cols + 1])


@dataclass
class FinetuneResult:
    """The fine-tuned model (a HookedTransformer), the per-epoch history and what was trained."""

    model: HookedTransformer
    history: pd.DataFrame
    method: str
    trainable_params: int
    total_params: int
    best_epoch: int
    config: dict = field(default_factory=dict)

    @property
    def fraction_params(self) -> float:
        return self.trainable_params / self.total_params


def _with_adapters(twin: Any, r: int, alpha: int, dropout: float, targets: Sequence[str]) -> Any:
    """``twin`` with peft LoRA adapters on the ``targets`` projections this architecture has."""
    from peft import LoraConfig, get_peft_model

    present = sorted({n.rsplit(".", 1)[-1] for n, m in twin.named_modules()
                      if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets})
    if not present:
        raise ValueError(f"None of the LoRA targets {list(targets)} exists in this architecture.")
    return get_peft_model(twin, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=present,
                                           bias="none", task_type="CAUSAL_LM"))


def finetune(model: HookedTransformer, examples: Sequence[SFTExample], *, method: Literal["lora", "full"] = "lora",
             r: int = 16, alpha: int = 32, dropout: float = 0.1, targets: Sequence[str] = LORA_TARGETS,
             lr: float = 1e-5, epochs: int = 2, batch_size: int = 4, weight_decay: float = 0.0,
             validate: Callable[[Any], float] | None = None, seed: int = 0, progress: bool = True) -> FinetuneResult:
    """Supervised fine-tuning of ``model``'s HF twin on ``examples`` (answer tokens only), AdamW.

    ``method="lora"``: ``peft`` LoRA (``r``, ``alpha``, ``dropout`` on ``targets``), merged at the end;
    ``"full"``: every parameter. ``validate(hf_model) -> float`` (higher is better) is called on the unedited
    model and after every epoch; the best epoch is kept (without it: the last). ``model`` itself is untouched;
    the result holds a new HookedTransformer.
    """
    warnings.warn(DEPRECATED, DeprecationWarning, stacklevel=2)
    from tqdm.auto import tqdm

    from cca_tl.convert import hooked_from_hf
    from cca_tl.export import hf_copy

    if not examples:
        raise ValueError("No training examples for fine-tuning.")
    if method not in ("lora", "full"):
        raise ValueError(f"method must be 'lora' or 'full', not {method!r}")
    torch.manual_seed(seed)
    twin = hf_copy(model)
    total = sum(p.numel() for p in twin.parameters())
    trained = _with_adapters(twin, r, alpha, dropout, targets) if method == "lora" else twin
    params = [p for p in trained.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    generator = torch.Generator().manual_seed(seed)

    def evaluate() -> float | None:
        if validate is None:
            return None
        trained.eval()
        with torch.no_grad():
            return float(validate(trained))

    def snapshot() -> WeightSnapshot:
        return WeightSnapshot(trained, {n for n, p in trained.named_parameters() if p.requires_grad})

    history = [dict(epoch=0, train_loss=math.nan, val=evaluate())]
    best = (history[0]["val"], 0, snapshot() if validate is not None else None)
    for epoch in range(1, epochs + 1):
        trained.train()
        order = torch.randperm(len(examples), generator=generator).tolist()
        losses = []
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for idx in tqdm(batches, desc=f"{method} epoch {epoch}", disable=not progress, leave=False):
            ids, attn, predict = collate_answers([examples[i] for i in idx], pad)
            loss = answer_loss(trained, ids, attn, predict)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{method} fine-tuning loss is {loss.item()} in epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        val = evaluate()
        history.append(dict(epoch=epoch, train_loss=sum(losses) / len(losses), val=val))
        if validate is not None and val > best[0]:
            best = (val, epoch, snapshot())
    if validate is not None:
        best[2].restore()
    best_epoch = best[1] if validate is not None else epochs
    trained.eval()
    merged = trained.merge_and_unload() if method == "lora" else trained
    provenance = getattr(model, "cca_provenance", None)
    edited = hooked_from_hf(merged, model.tokenizer, name=f"{provenance.name if provenance else 'model'}+{method}",
                            source="finetuned", details=dict(method=method, lr=lr, epochs=epochs, best_epoch=best_epoch))
    return FinetuneResult(edited, pd.DataFrame(history), method, n_trainable, total, best_epoch,
                          config=dict(method=method, r=r if method == "lora" else None, alpha=alpha, dropout=dropout,
                                      lr=lr, epochs=epochs, batch_size=batch_size, seed=seed))


def same_weights(a: HookedTransformer, b: HookedTransformer) -> bool:
    """Whether two models hold bit-identical parameters (the epoch-0 / no-op check)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


__all__ = ["FinetuneResult", "LORA_TARGETS", "SFTExample", "answer_loss", "finetune", "same_weights", "sft_examples"]

