"""Batched, KV-cached text generation on the HookedTransformer itself (no HF twin).

Traces, validation accuracy and test accuracy all generate from the model *as it is now*, so an edit is
visible to the next generation without any copy to keep fresh. Three things make this fast enough to
replace ``transformers.generate`` on an HF copy of the weights (``analyses/bench_generation.md``):

* **the shared prompt runs once**: rows of a batch that start with the same tokens (a few-shot prompt is
  most of every row) share one key/value computation at batch size 1, expanded to the batch;
* **logits only where needed**: the forward pass stops after the last block and only the last position
  goes through the final norm and the unembedding — TransformerLens' own ``Unembed`` copies the transposed
  unembedding on every call (26 s of 48 s in the profile of ``HookedTransformer.generate``);
* **finished rows leave the batch**, and the key/value cache is a preallocated buffer written in place
  (TransformerLens' own cache concatenates, copying the whole cache every token);
* **keys are rotated once**: TransformerLens caches unrotated keys and applies the rotary embedding to the
  whole cache again at every token and layer (a quarter of a decoding step on Gemma-3-270M); the buffer
  keeps rotated keys and only the new ones are rotated (:func:`cca_tl.fast_paths.rotate_new_keys_only`);
* **the unembedding as ``W_U^T @ h^T``**: MKL runs the ``[vocab, d_model] @ [d_model, rows]`` product about
  1.7x faster than ``F.linear(h, W_U^T)`` for 16–32 rows on this CPU (:func:`cca_tl.fast_paths.unembed`).

Rows are assembled as ``[shared prompt] [pads] [own prompt tail]``: the attention mask hides the pads and
TransformerLens derives rotary positions from the mask's cumulative sum, so every row sees exactly its
unpadded positions (checked against unbatched greedy decoding in the tests).
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from cca_tl.backend import HookedTransformer, is_bridge

from cca_tl.fast_paths import BufferEntry, grouped_attention_without_copies, rotate_new_keys_only, unembed
from cca_tl.prompt_cache import SharedPrompt, common_prefix_length, shared_length

DEFAULT_STOPS = ("\nQ:", "\n\n")


@dataclass
class Generation:
    token_ids: list[int]
    text: str


def argmax_rows(logits: Float[Tensor, "rows vocab"], block: int = 512) -> Int[Tensor, "rows"]:
    """``logits.argmax(-1)`` (the first maximum of each row), in two levels: the maximum of every block of
    ``block`` ids (a vectorised reduction), then the argmax inside each row's best block.

    torch's argmax over a 262k vocabulary took 29 ms for 32 rows on this CPU (8 % of a decoding step);
    this takes 2 ms, for logits stored either way round (:func:`unembed` returns a transposed view).
    """
    rows, vocab = logits.shape
    blocks = vocab // block
    if blocks < 2:
        return logits.argmax(-1)
    if logits.T.is_contiguous():  # stored [vocab, rows]: reduce along the contiguous blocks of that layout
        maxima = logits.T[:blocks * block].unflatten(0, (blocks, block)).amax(1).T
    else:
        maxima = logits[:, :blocks * block].unflatten(1, (blocks, block)).amax(-1)
    if blocks * block < vocab:
        maxima = torch.cat([maxima, logits[:, blocks * block:].amax(-1, keepdim=True)], 1)
    starts = maxima.argmax(-1, keepdim=True) * block
    # ids past the vocabulary (a short last block) repeat the last id, whose first occurrence is real
    ids = (starts + torch.arange(block, device=logits.device)).clamp_max(vocab - 1)
    return starts[:, 0] + logits.gather(1, ids).argmax(-1)


def sample_rows(logits: Float[Tensor, "rows vocab"], temperatures: Float[Tensor, "rows"], generator: torch.Generator,
                *, block: int = 512) -> Int[Tensor, "rows"]:
    """One token id per row: sampled from ``softmax(logits / t)``, or the argmax where ``t == 0``.

    Exact categorical sampling in two levels — pick a block of ``block`` ids by its total probability,
    then an id inside it — because ``torch.multinomial`` over a 262k vocabulary costs ~0.5 s per step for
    a batch of 64 on this CPU (more than the model's forward pass); this costs a softmax and two small
    cumulative sums.
    """
    rows, vocab = logits.shape
    t = temperatures.to(logits.device, torch.float32)
    choice = argmax_rows(logits)
    hot = (t > 0).nonzero().flatten()
    if len(hot) == 0:
        return choice
    probs = torch.softmax(logits[hot].float() / t[hot, None], dim=-1).cpu()
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
    choice[hot] = (b * block + j).flatten().clamp_max(vocab - 1).to(choice.device, choice.dtype)
    return choice


def _temperatures(temperature: float | Sequence[float], n: int) -> Tensor:
    """One temperature per prompt (a single value is repeated); all must be >= 0."""
    temps = torch.tensor([float(temperature)] * n if isinstance(temperature, (int, float))
                         else [float(t) for t in temperature])
    if len(temps) != n:
        raise ValueError(f"{len(temps)} temperatures for {n} prompts")
    if (temps < 0).any():
        raise ValueError("Temperatures must be >= 0 (0 = greedy).")
    return temps


def balanced_chunks(n: int, batch_size: int) -> list[range]:
    """``ceil(n / batch_size)`` chunks of near-equal size (17 prompts at batch 16: 9 + 8, not 16 + 1)."""
    if n == 0:
        return []
    n_chunks = -(-n // batch_size)
    size = -(-n // n_chunks)
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


class Decoder:
    """One batch of rows decoding together over a shared key/value buffer."""

    def __init__(self, model: HookedTransformer, prompts: Sequence[Sequence[int]], capacity: int, pad_id: int,
                 *, rotate_once: bool = True, prompt: SharedPrompt | None = None):
        """``rotate_once=False``: TransformerLens' own rotary path (the whole cache rotated at every token),
        kept to test that rotating once gives the same logits bit for bit. ``prompt``: the keys and values of
        a prefix every row starts with, already computed (else the rows' common prefix is computed here)."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        cfg = model.cfg
        self.model, device = model, cfg.device
        self.rotate_once = rotate_once and cfg.positional_embedding_type == "rotary"
        shared = common_prefix_length(prompts)
        if prompt is not None and (prompt.length > shared or prompt.rotated != self.rotate_once):
            raise ValueError("The shared prompt is not a prefix of every row, or is rotated differently.")
        if prompt is None and shared:
            prompt = SharedPrompt.compute(model, prompts[0][:shared], rotate=self.rotate_once)
        shared = prompt.length if prompt is not None else 0
        rows = len(prompts)
        tails = [list(p[shared:]) for p in prompts]
        width = max(len(t) for t in tails)
        kv_heads = cfg.n_key_value_heads or cfg.n_heads
        shape = (rows, kv_heads, shared + width + capacity, cfg.d_head)
        entries = []
        for layer in range(cfg.n_layers):
            layer_device = model.blocks[layer].attn.W_Q.device
            entries.append(BufferEntry(torch.empty(shape, dtype=cfg.dtype, device=layer_device),
                                        torch.empty(shape, dtype=cfg.dtype, device=layer_device), 0))
        self.cache = TransformerLensKeyValueCache(entries=entries,  # type: ignore[arg-type]
                                                  previous_attention_mask=torch.ones(rows, 0, dtype=torch.long,
                                                                                     device=device))
        if prompt is not None:
            for entry, keys, values in zip(entries, prompt.keys, prompt.values):
                entry.keys[:, :, :shared] = keys
                entry.values[:, :, :shared] = values
                entry.length = shared
            self.cache.previous_attention_mask = torch.ones(rows, shared, dtype=torch.long, device=device)
        tokens = torch.full((rows, width), pad_id, dtype=torch.long)
        attention = torch.zeros(rows, width, dtype=torch.long)
        for row, tail in enumerate(tails):
            tokens[row, width - len(tail):] = torch.tensor(tail, dtype=torch.long)
            attention[row, width - len(tail):] = 1
        self.first_step = (tokens.to(device), attention.to(device))

    def logits(self, tokens: Int[Tensor, "rows pos"], attention: Int[Tensor, "rows pos"]) -> Float[Tensor, "rows vocab"]:
        """Next-token logits (float32) after feeding ``tokens``; only the last position is unembedded."""
        model, cfg = self.model, self.model.cfg
        with rotate_new_keys_only() if self.rotate_once else nullcontext():
            resid = model(tokens, past_kv_cache=self.cache, attention_mask=attention, stop_at_layer=cfg.n_layers)
        final = resid[:, -1:]
        if cfg.normalization_type is not None:
            final = model.ln_final(final)
        return unembed(model, final[:, 0])

    def keep(self, rows: Tensor) -> None:
        for entry in self.cache.entries:
            entry.keep(rows.to(entry.keys.device))  # type: ignore[attr-defined]
        self.cache.previous_attention_mask = self.cache.previous_attention_mask[rows]


class _StopCheck:
    """Whether a row's generated text contains a stop string, decoding only its newest tokens.

    (``transformers``' own ``stop_strings`` builds a table over the whole vocabulary per call: 6.6 s for
    Gemma's 262k vocabulary.)
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str]):
        self.tokenizer, self.stops = tokenizer, tuple(stops)
        self.tail = max((len(s) for s in stops), default=0) + 8

    def __call__(self, ids: list[int]) -> bool:
        return bool(self.stops) and any(s in self.tokenizer.decode(ids[-self.tail:]) for s in self.stops)


class BridgeDecoder:
    """:class:`Decoder`'s interface on a TransformerLens 4 bridge: the HF model the bridge runs, fed left-padded
    rows with transformers' own key/value cache (the bridge's hooks fire inside it as in any forward), so that
    sampling, stops and compaction are :func:`_decode_rows`' on either backend."""

    def __init__(self, model: Any, prompts: Sequence[Sequence[int]], pad_id: int):
        from transformers import DynamicCache

        from cca_tl.bridge import hf_of

        self.model, self.hf, device = model, hf_of(model), model.cfg.device
        self.cache = DynamicCache(config=self.hf.config)
        # transformers 5.25 calls it ``cache`` (``past_key_values`` deprecated); earlier 5.x ``past_key_values``
        self.cache_kwarg = "cache" if "cache" in inspect.signature(self.hf.forward).parameters else "past_key_values"
        width = max(len(p) for p in prompts)
        tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            attention[row, width - len(prompt):] = 1
        self.seen = torch.zeros(len(prompts), 0, dtype=torch.long, device=device)  # the cache's attention mask
        self.first_step = (tokens.to(device), attention.to(device))

    def logits(self, tokens: Int[Tensor, "rows pos"], attention: Int[Tensor, "rows pos"]) -> Float[Tensor, "rows vocab"]:
        """Next-token logits (float32) after feeding ``tokens``."""
        self.seen = torch.cat([self.seen, attention], dim=1)
        positions = (self.seen.cumsum(-1) - 1).clamp(min=0)[:, -tokens.shape[1]:]
        from cca_tl.bridge import attention_sees_the_cache

        with attention_sees_the_cache(self.model):
            out = self.hf(input_ids=tokens, attention_mask=self.seen, position_ids=positions, use_cache=True,
                          logits_to_keep=1, **{self.cache_kwarg: self.cache})
        return out.logits[:, -1].float()

    def keep(self, rows: Tensor) -> None:
        for layer in self.cache.layers:
            layer.batch_select_indices(rows)
        self.seen = self.seen[rows]


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


@torch.no_grad()
def generate(model: HookedTransformer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 256,
             temperature: float | Sequence[float] = 0.0, seed: int = 0, batch_size: int = 32,
             stops: Sequence[str] = DEFAULT_STOPS, progress: bool = False) -> list[Generation]:
    """Generate from token-id prompts with ``model``'s current weights; greedy where ``temperature`` is 0.

    ``temperature`` may be one value per prompt (0 = greedy for that prompt). Batches are balanced in size;
    a row stops at a special token (end of turn, EOS) or when its text contains a stop string (default: a
    new "Q:" or a blank line), and its output is cut before that token. Sampling is seeded per batch.
    """
    from tqdm.auto import tqdm

    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("Generation needs a tokenizer on the model (model.tokenizer is None).")
    temps = _temperatures(temperature, len(prompts))
    if any(len(p) == 0 for p in prompts):
        raise ValueError("Every prompt needs at least one token.")
    longest = max((len(p) for p in prompts), default=0)
    if longest + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(f"A prompt has {longest} tokens; with {max_new_tokens} new tokens that exceeds the "
                         f"model's context of {model.cfg.n_ctx}.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    special = set(tokenizer.all_special_ids)
    stop_check = _StopCheck(tokenizer, stops)
    out: list[Generation | None] = [None] * len(prompts)
    shared = 0 if is_bridge(model) else shared_length(prompts, min_shared=1, min_rows=1)  # any shared token pays
    with grouped_attention_without_copies():
        prompt = SharedPrompt.compute(model, prompts[0][:shared]) if shared else None
    for chunk in tqdm(_chunks(model, prompts, batch_size, max_new_tokens), desc="generate", disable=not progress,
                      leave=False):
        generator = torch.Generator().manual_seed(seed + chunk[0])
        rows = [list(prompts[i]) for i in chunk]
        with grouped_attention_without_copies():
            # The prompt computed once, unless this batch shares much more than every row does (then its own)
            reuse = prompt is not None and common_prefix_length(rows) - prompt.length < 16
            new = _decode_rows(model, rows, temps[chunk], generator, max_new_tokens, pad, special, stop_check,
                               prompt if reuse else None)
        for i, ids in zip(chunk, new):
            kept = _cut_at_stop(ids, tokenizer, stops, special)
            out[i] = Generation(kept, tokenizer.decode(kept))
    return out  # type: ignore[return-value]


def _chunks(model: HookedTransformer, prompts: Sequence[Sequence[int]], batch_size: int,
            max_new_tokens: int) -> list[list[int]]:
    """Batches of prompt indices. Balanced in size; padding-free (equal prompt lengths) when the model has
    sliding-window layers whose window the rows could outgrow, because TransformerLens counts the window
    in columns, so pads would take real tokens' places in it."""
    cfg = model.cfg
    windowed = (not is_bridge(model)  # transformers counts the window in real tokens (attention mask)
                and any(t == "local" for t in (cfg.attn_types or [])) and cfg.window_size is not None)
    longest = max((len(p) for p in prompts), default=0)
    if not (windowed and longest + max_new_tokens > cfg.window_size):
        return [list(r) for r in balanced_chunks(len(prompts), batch_size)]
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    return [[group[i] for i in r] for group in by_length.values() for r in balanced_chunks(len(group), batch_size)]


def _decode_rows(model: HookedTransformer, prompts: list[list[int]], temps: Tensor, generator: torch.Generator,
                 max_new_tokens: int, pad: int, special: set[int], stop_check: _StopCheck,
                 prompt: SharedPrompt | None = None) -> list[list[int]]:
    """New token ids per row (up to and including the token that finished it).

    Finished rows leave the batch once they are a quarter of it: compacting copies the whole cache, so
    doing it for every finished row would cost more than decoding a few idle rows.
    """
    device = model.cfg.device
    decoder = BridgeDecoder(model, prompts, pad) if is_bridge(model) else Decoder(model, prompts, max_new_tokens,
                                                                                  pad, prompt=prompt)
    generated: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))  # the prompt index of each row still in the batch
    done: set[int] = set()
    tokens, attention = decoder.first_step
    for step in range(max_new_tokens):
        chosen = sample_rows(decoder.logits(tokens, attention), temps[live], generator).tolist()
        for row, tok in zip(live, chosen):
            if row in done:
                continue
            generated[row].append(tok)
            if tok in special or stop_check(generated[row]):
                done.add(row)
        if len(done) == len(prompts) or step + 1 == max_new_tokens:
            break
        idle = [slot for slot, row in enumerate(live) if row in done]
        if idle and len(idle) * 4 >= len(live):
            keep = [slot for slot, row in enumerate(live) if row not in done]
            decoder.keep(torch.tensor(keep, device=device))
            live, chosen = [live[s] for s in keep], [chosen[s] for s in keep]
        tokens = torch.tensor([[tok] for tok in chosen], device=device)
        attention = torch.ones_like(tokens)
    return generated


# ----------------------------------------------------------------------------------------------------
# transformers models
# ----------------------------------------------------------------------------------------------------


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


class _RowSampler:
    """A ``transformers`` logits processor that samples each row at its own temperature (0 = greedy) and
    returns a one-hot score, so ``generate`` runs greedy decoding over the chosen tokens.

    Lets one call sample rows at different temperatures (docs/method.md §A1: 1.2 after a right greedy trace, 0.8 after
    a wrong one), with the fast exact sampler :func:`sample_rows`.
    """

    def __init__(self, temperatures: torch.Tensor, seed: int):
        self.t = temperatures
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = sample_rows(scores, self.t, self.generator)
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen[:, None], 0.0)


@torch.no_grad()
def generate_hf(hf_model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 256,
             temperature: float | Sequence[float] = 0.0, seed: int = 0, batch_size: int = 8,
             stops: Sequence[str] = DEFAULT_STOPS, progress: bool = False) -> list[Generation]:
    """The same as :func:`generate` for a ``transformers`` model (a ``peft`` model being fine-tuned, say):
    ``hf_model.generate`` with left padding, per-row temperatures and stop strings.

    ``temperature`` may be one value per prompt (0 = greedy for that prompt). Batches are balanced in size.
    Outputs are cut at the first stop string (default: a new "Q:" or a blank line) or special token.
    Deprecated with the peft path (:mod:`cca_tl.baselines`), its one user.
    """
    import warnings

    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList, StoppingCriteriaList

    warnings.warn("generate_hf is deprecated with the peft path (cca_tl.baselines); use generate on the "
                  "HookedTransformer.", DeprecationWarning, stacklevel=2)

    temps = _temperatures(temperature, len(prompts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    special = set(tokenizer.all_special_ids)
    out: list[Generation] = []
    for rows in tqdm(balanced_chunks(len(prompts), batch_size), desc="generate", disable=not progress, leave=False):
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
        result = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                               pad_token_id=pad, **kwargs)
        for row in range(len(chunk)):
            new = _cut_at_stop(result[row, width:].tolist(), tokenizer, stops, special)
            out.append(Generation(new, tokenizer.decode(new)))
    return out
