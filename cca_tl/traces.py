"""Reasoning traces: one greedy and up to ten sampled traces per question, graded (SPEC A1).

Generation runs through an **HF twin**: a transformers model built from the HookedTransformer's current
weights (via :func:`cca_tl.export.hf_state_dict`, so it holds exactly those values), batched with a KV
cache by ``generate``. HookedTransformer.generate was ~9x slower here (``analyses/bench_generation.md``
measures both); the twin is rebuilt after every edit (``hf_twin(model)``, seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from transformer_lens import HookedTransformer

from cca_tl.tasks import Problem, extract_answer, is_correct

DEFAULT_STOPS = ("\nQ:", "\n\n")


def hf_twin(model: HookedTransformer) -> Any:
    """A transformers model holding exactly ``model``'s current weights (fp32), for fast generation."""
    from transformers import AutoModelForCausalLM

    from cca_tl.export import hf_config_for, hf_state_dict

    state_dict, tied = hf_state_dict(model)
    config = hf_config_for(model)
    config.tie_word_embeddings = tied
    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:  # pragma: no cover - older transformers
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        twin = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = twin.load_state_dict(state_dict, strict=False)
    if unexpected or [k for k in missing if not (tied and k == "lm_head.weight")]:
        raise RuntimeError(f"HF twin does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if tied:
        twin.tie_weights()
    return twin.eval()


@torch.no_grad()
def sync_twin(twin: Any, model: HookedTransformer) -> Any:
    """Copy ``model``'s current weights into an existing HF twin (an edit changed them); rebuilds the twin
    only when the embedding tie changed. About 4x cheaper than :func:`hf_twin` on Gemma-3-270M."""
    from cca_tl.export import hf_state_dict

    state_dict, tied = hf_state_dict(model)
    twin_tied = twin.get_output_embeddings().weight.data_ptr() == twin.get_input_embeddings().weight.data_ptr()
    if tied != twin_tied:
        return hf_twin(model)
    params = dict(twin.named_parameters())
    for name, value in state_dict.items():
        if name in params:
            params[name].copy_(value)
    return twin


@dataclass
class Generation:
    token_ids: list[int]
    text: str


def _cut_at_stop(ids: list[int], tokenizer: Any, stops: Sequence[str], special: set[int]) -> list[int]:
    """Generated ids up to (not including) the first token that completes a stop string or is special."""
    text = ""
    for i, tok in enumerate(ids):
        if tok in special:
            return ids[:i]
        text += tokenizer.decode([tok])
        if any(s in text for s in stops):
            return ids[:i]
    return ids


class _StopStrings:
    """Per-row stop-string check on the decoded tail of each row (a ``transformers`` stopping criterion).

    ``transformers``' own ``stop_strings`` builds a table over the whole vocabulary at every ``generate``
    call (6.6 s for Gemma's 262k vocabulary, more than the generation itself at batch 8); this decodes only
    each row's newest tokens.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_width: int):
        self.tokenizer, self.stops, self.start = tokenizer, tuple(stops), prompt_width
        self.tail = max(len(s) for s in stops) + 8  # tokens: enough to contain any stop string

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        new = input_ids[:, self.start:]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in range(new.shape[0]):
            text = self.tokenizer.decode(new[row, -self.tail:].tolist())
            done[row] = any(s in text for s in self.stops)
        return done


def sample_rows(logits: torch.Tensor, temperatures: torch.Tensor, generator: torch.Generator,
                *, block: int = 512) -> torch.Tensor:
    """One token id per row: sampled from ``softmax(logits / t)``, or the argmax where ``t == 0``.

    Exact categorical sampling in two levels — pick a block of ``block`` ids by its total probability,
    then an id inside it — because ``torch.multinomial`` over a 262k vocabulary costs ~0.5 s per step for
    a batch of 64 on this CPU (more than the model's forward pass); this costs a softmax and two small
    cumulative sums.
    """
    rows, vocab = logits.shape
    t = temperatures.to(logits.device, torch.float32)
    choice = logits.argmax(-1)
    hot = (t > 0).nonzero().flatten()
    if len(hot) == 0:
        return choice
    probs = torch.softmax(logits[hot].float() / t[hot, None], dim=-1)
    pad = (-vocab) % block
    if pad:
        probs = torch.nn.functional.pad(probs, (0, pad))
    blocks = probs.view(len(hot), -1, block)
    block_mass = blocks.sum(-1, dtype=torch.float64)
    cdf = block_mass.cumsum(-1)
    u = torch.rand(len(hot), 1, generator=generator, dtype=torch.float64) * cdf[:, -1:]
    b = torch.searchsorted(cdf, u).clamp_max(cdf.shape[1] - 1)
    rest = u - (cdf.gather(1, b) - block_mass.gather(1, b))
    inner = blocks[torch.arange(len(hot)), b[:, 0]].double().cumsum(-1)
    j = torch.searchsorted(inner, rest).clamp_max(block - 1)
    choice[hot] = (b * block + j).flatten().clamp_max(vocab - 1).to(choice.dtype)
    return choice


class _RowSampler:
    """A ``transformers`` logits processor that samples each row at its own temperature (0 = greedy) and
    returns a one-hot score, so ``generate`` runs greedy decoding over the chosen tokens.

    Lets one call sample rows at different temperatures (SPEC A1: 1.2 after a right greedy trace, 0.8 after
    a wrong one), with the fast exact sampler :func:`sample_rows`.
    """

    def __init__(self, temperatures: torch.Tensor, seed: int):
        self.t = temperatures
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = sample_rows(scores, self.t, self.generator)
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen[:, None], 0.0)


def _balanced_chunks(n: int, batch_size: int) -> list[range]:
    """``ceil(n / batch_size)`` chunks of near-equal size (17 prompts at batch 16: 9 + 8, not 16 + 1)."""
    if n == 0:
        return []
    n_chunks = -(-n // batch_size)
    size = -(-n // n_chunks)
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


@torch.no_grad()
def generate(twin: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 256,
             temperature: float | Sequence[float] = 0.0, seed: int = 0, batch_size: int = 8,
             stops: Sequence[str] = DEFAULT_STOPS, progress: bool = False) -> list[Generation]:
    """Batched, KV-cached generation from token-id prompts; greedy when ``temperature`` is 0.

    ``temperature`` may be one value per prompt (0 = greedy for that prompt). Batches are balanced in size.
    Outputs are cut at the first stop string (default: a new "Q:" or a blank line) or special token.
    """
    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList, StoppingCriteriaList

    temps = torch.tensor([float(temperature)] * len(prompts) if isinstance(temperature, (int, float))
                         else [float(t) for t in temperature])
    if len(temps) != len(prompts):
        raise ValueError(f"{len(temps)} temperatures for {len(prompts)} prompts")
    if (temps < 0).any():
        raise ValueError("Temperatures must be >= 0 (0 = greedy).")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    special = set(tokenizer.all_special_ids)
    out: list[Generation] = []
    for rows in tqdm(_balanced_chunks(len(prompts), batch_size), desc="generate", disable=not progress, leave=False):
        chunk = [list(prompts[i]) for i in rows]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(chunk):  # left padding
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        chunk_temps = temps[rows.start:rows.stop]
        kwargs: dict[str, Any] = dict(do_sample=False)
        if bool((chunk_temps > 0).any()):
            kwargs.update(logits_processor=LogitsProcessorList([_RowSampler(chunk_temps, seed + rows.start)]))
        if stops:
            kwargs.update(stopping_criteria=StoppingCriteriaList([_StopStrings(tokenizer, stops, width)]))
        result = twin.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                               pad_token_id=pad, **kwargs)
        for row in range(len(chunk)):
            new = _cut_at_stop(result[row, width:].tolist(), tokenizer, stops, special)
            out.append(Generation(new, tokenizer.decode(new)))
    return out


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
    twin: Any = None,
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
    tokenizer = model.tokenizer
    twin = twin if twin is not None else hf_twin(model)
    prompts = [prompt_fn(p.question) for p in problems]
    prompt_ids = [model.to_tokens(t, prepend_bos=True)[0].tolist() for t in prompts]
    too_long = [i for i, p in enumerate(prompt_ids) if len(p) + max_new_tokens > model.cfg.n_ctx]
    if too_long:
        raise ValueError(f"{len(too_long)} prompts plus {max_new_tokens} new tokens exceed the model's context "
                         f"({model.cfg.n_ctx}); e.g. problem {problems[too_long[0]].template_id}/"
                         f"{problems[too_long[0]].instance_id} has {len(prompt_ids[too_long[0]])} prompt tokens.")
    greedy = generate(twin, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
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
        outs = generate(twin, tokenizer, [prompt_ids[i] for i, _ in jobs], max_new_tokens=max_new_tokens,
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
