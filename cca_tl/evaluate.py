"""Evaluation: task accuracy (macro over templates), logit difference on localization data, retention.

Retention is the next-token KL between the original and the edited model on general text that ships
offline with CPython (``pydoc_data.topics``: the language reference's help topics), plus accuracy on
templates not used for training (``accuracy`` on those problems).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from cca_tl.backend import HookedTransformer, is_bridge

from cca_tl.tasks import Problem, macro_accuracy


def accuracy(model: HookedTransformer, problems: Sequence[Problem], prompt_fn: Callable[[str], str], *,
             max_new_tokens: int = 256, batch_size: int = 32, hf_model: Any = None,
             stops: Sequence[str] | None = None, progress: bool = True) -> tuple[float, pd.DataFrame, pd.DataFrame]:
    """Greedy accuracy: (macro over templates, per-template table, per-problem records).

    ``stops``: strings that end an answer (default: a new "Q:" or a blank line, for few-shot prompts; pass
    ``()`` for chat prompts, which end at the end-of-turn token). ``hf_model`` (deprecated with the peft path,
    :mod:`cca_tl.baselines`): generate with this ``transformers`` model instead; ``model`` then only tokenises.
    """
    from cca_tl.generation import DEFAULT_STOPS, generate, generate_hf
    from cca_tl.traces import grade

    if not problems:
        raise ValueError("The split is empty: no problems to evaluate.")
    prompt_ids = [model.to_tokens(prompt_fn(p.question), prepend_bos=True)[0].tolist() for p in problems]
    longest = max(len(p) for p in prompt_ids)
    if longest + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(f"A prompt has {longest} tokens; with {max_new_tokens} new tokens that exceeds the "
                         f"model's context of {model.cfg.n_ctx}.")
    stops = DEFAULT_STOPS if stops is None else stops
    if hf_model is not None:
        import warnings

        warnings.warn("accuracy(hf_model=...) is deprecated with the peft path (cca_tl.baselines); evaluate the "
                      "HookedTransformer itself.", DeprecationWarning, stacklevel=2)
        outs = generate_hf(hf_model, model.tokenizer, prompt_ids, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, stops=stops, progress=progress)
    else:
        outs = generate(model, prompt_ids, max_new_tokens=max_new_tokens, batch_size=batch_size, stops=stops,
                        progress=progress)
    records = []
    for p, o in zip(problems, outs):
        pred, ok = grade(o.text, p)
        records.append(dict(template_id=p.template_id, instance_id=p.instance_id, gold=p.answer, pred=pred,
                            correct=ok, output=o.text))
    records_df = pd.DataFrame(records)
    macro, table = macro_accuracy(records_df)
    return macro, table, records_df


def localization_logit_diff(model: HookedTransformer, localization, *, batch_size: int = 8) -> float:
    """Mean logit[desired] − logit[undesired] over an error-localization dataset."""
    from cca_tl.contrast import ContrastSet
    from cca_tl.contrast import mean_logit_diff

    data = ContrastSet.from_dataset(localization)
    data.validate(model)
    return mean_logit_diff(model, data, batch_size)  # shares each batch's common prompt prefix (exact)


def pivot_scores(model: HookedTransformer, localization, *, batch_size: int = 8) -> dict[str, Any]:
    """Held-out pivot metrics: ``pivot_accuracy`` (share of records where the desired token's logit beats the
    undesired one's), ``pivot_logit_diff`` (mean difference), ``n_pivots``, and the per-record differences
    (``diffs``, for paired intervals). Forward passes only: on Gemma-3-270M ~0.1 s per record on 2 cores,
    where one more answer-level question costs a ~25-token generation."""
    from cca_tl.contrast import ContrastSet
    from cca_tl.contrast import record_logit_diffs

    if not len(localization):
        return dict(pivot_accuracy=None, pivot_logit_diff=None, n_pivots=0, diffs=[])
    data = ContrastSet.from_dataset(localization)
    data.validate(model)
    diffs = record_logit_diffs(model, data, batch_size)
    return dict(pivot_accuracy=float((diffs > 0).float().mean()), pivot_logit_diff=float(diffs.mean()),
                n_pivots=len(diffs), diffs=diffs.tolist())


def general_text(n_chunks: int = 16, chars: int = 600) -> list[str]:
    """Offline general English text: the first ``n_chunks`` help topics of CPython's ``pydoc_data``."""
    from pydoc_data.topics import topics

    texts = [topics[k][:chars] for k in sorted(topics) if len(topics[k]) >= chars]
    return texts[:n_chunks]


def final_residual(model: HookedTransformer, tokens: Int[torch.Tensor, "1 pos"]) -> Float[torch.Tensor, "pos d_model"]:
    """The residual stream after the final norm: what the unembedding reads."""
    if is_bridge(model):  # the bridge has no stop_at_layer: read the final norm's output hook
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == "ln_final.hook_out")
        return cache["ln_final.hook_out"][0]
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    return resid[0]


def text_logits(model: HookedTransformer, tokens: Int[torch.Tensor, "1 pos"]) -> Float[torch.Tensor, "1 pos vocab"]:
    """``model(tokens)`` (float32) with the unembedding of :func:`cca_tl.fast_paths.unembed`: on Gemma-3-270M,
    2 CPU cores, a 128-token text's unembedding takes 0.40 s instead of TL's 0.51 s."""
    from cca_tl.fast_paths import unembed

    return unembed(model, final_residual(model, tokens))[None]


def text_tokens(model: HookedTransformer, texts: Sequence[str] | Sequence[torch.Tensor], max_tokens: int = 128) -> list[torch.Tensor]:
    """Each text as ``[1, pos]`` token ids (strings tokenised with a BOS), cut to ``max_tokens``."""
    return [(t.reshape(1, -1) if isinstance(t, torch.Tensor) else model.to_tokens(t, prepend_bos=True))[:, :max_tokens]
            for t in texts]


@torch.no_grad()
def final_residuals(model: HookedTransformer, texts: Sequence[str] | Sequence[torch.Tensor] | None = None, *,
                    max_tokens: int = 128) -> list[Float[torch.Tensor, "pos d_model"]]:
    """The final-normed residuals of ``model`` on each text: :func:`retention_scores`' ``reference`` (a few
    MB, where the unedited model's logits on 8 texts are 1 GB)."""
    texts = list(texts) if texts is not None else general_text()
    return [final_residual(model, tokens) for tokens in text_tokens(model, texts, max_tokens)]


def _kl_sum(logp: Float[torch.Tensor, "pos vocab"], logq: Float[torch.Tensor, "pos vocab"]) -> float:
    """sum over positions of KL(p ‖ q), from log-probabilities; 16 positions at a time (the temporaries of
    a 262k vocabulary). ``kl_div`` does it in one pass: 0.055 s per 128 positions where exp, subtract and
    multiply took 0.2 s, with the same sum."""
    return sum(torch.nn.functional.kl_div(logq[rows], logp[rows], log_target=True, reduction="sum").item()
               for rows in torch.split(torch.arange(logp.shape[0]), 16))


def _log_softmax_in_place(logits: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last axis, written into ``logits`` (a 128-token text on a 262k vocabulary is
    134 MB of float32 per copy; the KL otherwise held five of them)."""
    return logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))


@torch.no_grad()
def retention_kl(original: HookedTransformer, edited: HookedTransformer,
                 texts: Sequence[str] | Sequence[torch.Tensor] | None = None, *, max_tokens: int = 128) -> float:
    """Mean next-token KL(original ‖ edited) over every position of general text (nats per token).

    ``texts``: strings (tokenised with the original's tokenizer; default: CPython's pydoc topics) or
    token-id tensors.
    """
    texts = list(texts) if texts is not None else general_text()
    if not texts:
        raise ValueError("No text to measure retention on.")
    total, count = 0.0, 0
    for tokens in text_tokens(original, texts, max_tokens):
        logp = _log_softmax_in_place(text_logits(original, tokens))
        logq = _log_softmax_in_place(text_logits(edited, tokens))
        total += _kl_sum(logp[0], logq[0])
        count += tokens.shape[1]
    return total / count


@torch.no_grad()
def general_text_scores(model: HookedTransformer, texts: Sequence[str] | Sequence[torch.Tensor] | None = None, *,
                        max_tokens: int = 128) -> dict[str, float]:
    """Language-modelling health on general text (default: CPython's pydoc topics): mean next-token NLL
    (nats) and top-1 next-token accuracy over every position — the offline "general benchmark" of retention."""
    texts = list(texts) if texts is not None else general_text()
    if not texts:
        raise ValueError("No text to score.")
    nll, hits, count = 0.0, 0, 0
    for tokens in text_tokens(model, texts, max_tokens):
        logits = text_logits(model, tokens)[0, :-1]
        target = tokens[0, 1:]
        nll += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        hits += int((logits.argmax(-1) == target).sum())
        count += target.numel()
    return dict(general_nll=nll / count, general_top1=hits / count)


@torch.no_grad()
def retention_scores(model: HookedTransformer, base_weights: Callable[[], Any] | None,
                     texts: Sequence[str] | Sequence[torch.Tensor] | None = None, *,
                     max_tokens: int = 128, reference: Sequence[torch.Tensor] | None = None) -> dict[str, float]:
    """Retention of an edited model against its own unedited weights, without a second model in memory.

    ``base_weights()`` is a context manager under which ``model`` holds the unedited weights (e.g.
    :meth:`cca_tl.pipeline.ModelSession.base_weights`, which swaps only the edited regions). Returns the
    mean next-token KL(base ‖ edited) (``retention_kl``, nats per token) and the edited model's
    general-text NLL and top-1 accuracy — the same numbers as :func:`retention_kl` and
    :func:`general_text_scores`, one text at a time. ``base_weights=None``: ``model`` is unedited, so the
    KL is 0 and the second forward per text is skipped (half of the 31 s this takes on Gemma-3-270M).

    ``reference``: the unedited model's :func:`final_residuals` on these texts. The unedited logits are then
    its unembedding (under ``base_weights``, in case the edit reached the unembedding) and the unedited
    model's forward pass is not run again: on Gemma-3-270M, 8 texts, 2.5 s saved per call.
    """
    from cca_tl.fast_paths import unembed

    texts = list(texts) if texts is not None else general_text()
    if not texts:
        raise ValueError("No text to measure retention on.")
    if reference is not None and len(reference) != len(texts):
        raise ValueError(f"reference has residuals for {len(reference)} texts, not {len(texts)}")
    kl, nll, hits, positions, targets = 0.0, 0.0, 0, 0, 0
    for i, tokens in enumerate(text_tokens(model, texts, max_tokens)):
        if base_weights is None and reference is not None:  # model is unedited: its residuals are the reference
            logq = _log_softmax_in_place(unembed(model, reference[i])[None])
        else:
            logq = _log_softmax_in_place(text_logits(model, tokens))
        if base_weights is not None:
            with base_weights():
                logp = _log_softmax_in_place(text_logits(model, tokens) if reference is None
                                             else unembed(model, reference[i])[None])
            kl += _kl_sum(logp[0], logq[0])
            del logp
        positions += tokens.shape[1]
        target = tokens[0, 1:].to(logq.device)
        nll -= logq[0, :-1].gather(-1, target[:, None]).sum().item()
        hits += int((logq[0, :-1].argmax(-1) == target).sum())
        targets += target.numel()
    return dict(retention_kl=kl / positions, general_nll=nll / targets, general_top1=hits / targets)
