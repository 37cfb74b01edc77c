"""Contrast data and how it runs through a model: prefixes with a desired and an undesired next token
(:class:`ContrastSet`), their batches, the prompt they share run once (:func:`shared_prompt`,
:class:`PrefixKV`), and the two-logit readout ``logit[desired] − logit[undesired]`` at the pivot.

DCM, the targeted update, evaluation, the analysis and the sparse system all read their data through this
module. Prefixes are right-padded; causal attention means the pads never influence the positions read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from cca_tl.backend import HookedTransformer, is_bridge
from cca_tl.errors import BackendError

from cca_tl.prompt_cache import cache_over_prompt, prompt_keys_values, shared_length

def pad_token_id(model: HookedTransformer) -> int:
    """The id batches pad with: the tokenizer's pad token, else 0 (pads are never read)."""
    tok = model.tokenizer
    if tok is not None and tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    return 0


# ----------------------------------------------------------------------------------------------------
# Contrast data: prefix, desired next token, undesired next token
# ----------------------------------------------------------------------------------------------------


@dataclass
class ContrastSet:
    """Prefixes with a desired and an undesired single-token continuation (an error-localization set)."""

    prefix_ids: list[list[int]]
    desired: list[int]
    undesired: list[int]

    def __post_init__(self) -> None:
        if not (len(self.prefix_ids) == len(self.desired) == len(self.undesired)):
            raise ValueError(
                f"prefix_ids, desired and undesired differ in length: "
                f"{len(self.prefix_ids)}, {len(self.desired)}, {len(self.undesired)}"
            )
        for name, ids in (("desired", self.desired), ("undesired", self.undesired)):
            for i, tok in enumerate(ids):
                if isinstance(tok, bool) or not isinstance(tok, int):
                    raise ValueError(
                        f"{name}[{i}] = {tok!r} is not a single token id; each target must be one "
                        "vocabulary id (use ContrastSet.from_texts to tokenise strings)."
                    )
        if any(len(p) == 0 for p in self.prefix_ids):
            raise ValueError("Every prefix needs at least one token.")

    def __len__(self) -> int:
        return len(self.prefix_ids)

    @classmethod
    def from_texts(cls, model: HookedTransformer, prefixes: Sequence[str], desired: Sequence[str],
                   undesired: Sequence[str], *, prepend_bos: bool = True) -> "ContrastSet":
        """Tokenise prefixes and targets; each target string must be exactly one token."""
        if model.tokenizer is None:
            raise ValueError("This model has no tokenizer; build the ContrastSet from token ids.")

        def single(text: str, role: str) -> int:
            ids = model.tokenizer.encode(text, add_special_tokens=False)
            if len(ids) != 1:
                pieces = [model.tokenizer.decode([i]) for i in ids]
                raise ValueError(f"The {role} target {text!r} is {len(ids)} tokens {pieces}, not one.")
            return ids[0]

        prefix_ids = [model.to_tokens(p, prepend_bos=prepend_bos)[0].tolist() for p in prefixes]
        return cls(prefix_ids, [single(t, "desired") for t in desired], [single(t, "undesired") for t in undesired])

    @classmethod
    def from_dataset(cls, dataset) -> "ContrastSet":
        """From a ``datasets.Dataset`` (or list of dicts) with prefix_ids, desired_id, undesired_id."""
        rows = list(dataset)
        return cls([list(r["prefix_ids"]) for r in rows], [int(r["desired_id"]) for r in rows],
                   [int(r["undesired_id"]) for r in rows])

    def validate(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` if empty, an id is outside the vocabulary, or a prefix exceeds n_ctx."""
        if len(self) == 0:
            raise ValueError("The contrast set is empty: nothing to learn a mask from.")
        vocab = model.cfg.d_vocab_out
        for name, ids in (("desired", self.desired), ("undesired", self.undesired)):
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"{name} ids {bad[:5]} are outside the model's vocabulary (size {vocab}).")
        same = sum(d == u for d, u in zip(self.desired, self.undesired))
        if same:
            raise ValueError(f"{same} records have desired == undesired; their logit difference is always 0.")
        longest = max(len(p) for p in self.prefix_ids)
        if longest > model.cfg.n_ctx:
            raise ValueError(f"A prefix has {longest} tokens; the model's context is {model.cfg.n_ctx}.")

    def subset(self, indices: Iterable[int]) -> "ContrastSet":
        idx = list(indices)
        return ContrastSet([self.prefix_ids[i] for i in idx], [self.desired[i] for i in idx],
                           [self.undesired[i] for i in idx])

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                pad_id: int = 0, device: str | torch.device = "cpu",
                prefix_kv: "PrefixKV | None" = None) -> Iterator["Batch"]:
        """Mini-batches; with ``prefix_kv`` each holds only the last tokens plus the cached prefix."""
        order = torch.randperm(len(self), generator=generator).tolist() if shuffle else list(range(len(self)))
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            if prefix_kv is None:
                yield Batch.collate(self.subset(indices), pad_id=pad_id, device=device)
            else:
                yield prefix_kv.batch(self, indices)


@dataclass
class Batch:
    """Right-padded tokens and, per row, the last real position and the two target ids."""

    tokens: Int[Tensor, "batch pos"]
    last_pos: Int[Tensor, "batch"]
    desired: Int[Tensor, "batch"]
    undesired: Int[Tensor, "batch"]
    past_kv: object = None  # a frozen TL key/value cache of everything before ``tokens`` (see PrefixKV)

    @classmethod
    def collate(cls, data: ContrastSet, *, pad_id: int = 0, device: str | torch.device = "cpu") -> "Batch":
        lengths = torch.tensor([len(p) for p in data.prefix_ids])
        tokens = torch.full((len(data), int(lengths.max())), pad_id, dtype=torch.long)
        for row, ids in enumerate(data.prefix_ids):
            tokens[row, : len(ids)] = torch.tensor(ids)
        return cls(tokens.to(device), (lengths - 1).to(device), torch.tensor(data.desired, device=device),
                   torch.tensor(data.undesired, device=device))

    def __len__(self) -> int:
        return self.tokens.shape[0]


def prefix_cache_for(model: HookedTransformer, data: "ContrastSet", batch_size: int = 8) -> "PrefixKV | None":
    """A :class:`PrefixKV` of ``data`` for readouts at the last position, or None on a TransformerLens 4 bridge
    (whose readouts run over the whole prefix: the cache is a HookedTransformer path)."""
    return None if is_bridge(model) else PrefixKV(model, data, batch_size=batch_size)


class PrefixKV:
    """Keys and values of every prefix except its last token, computed once, without gradients.

    With ``positions="last"`` the mask acts only at the last token, so nothing before it depends on the
    mask: a DCM step then needs only the last token's forward and backward pass over this frozen cache
    (exact — checked against the full pass in the tests). Built in left-padded batches; stored per example
    without padding, in the attention's layout, with rotary keys already rotated; assembled per mini-batch
    into key/value buffers with one free slot for the last token (:meth:`batch`).

    Why buffers and not TransformerLens' own cache: TL concatenates a copy of the whole cache and rotates
    every cached key again at each forward. On Gemma-3-270M (30 two-step records behind a 290-token
    prompt, 2 cores), the last-token pass over TL's cache spent ~45 % of its time there (0.7–1.2 s per
    pass over the 30 records); over these buffers only the new token is written and rotated.
    """

    def __init__(self, model: HookedTransformer, data: ContrastSet, *, batch_size: int = 8, progress: bool = False):
        if is_bridge(model):
            raise BackendError("PrefixKV caches TransformerLens 3 keys and values: a HookedTransformer path. On "
                               "a bridge, train DCM with prefix_cache=False.")
        from tqdm.auto import tqdm
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        from cca_tl.fast_paths import grouped_attention_without_copies

        self.model = model
        cfg, pad = model.cfg, pad_token_id(model)
        # The part every prefix shares (a few-shot prompt: ~290 of ~305 tokens on the two-step task) is run
        # once at batch 1 and stored once; before, each example stored its own copy (0.32 GB for 30 records
        # on Gemma-3-270M, 0.64 GB of RSS after fragmentation) — now ~20 MB.
        contexts = [p[:-1] for p in data.prefix_ids]
        self.shared = shared_length(contexts)
        windowed = any(t == "local" for t in (cfg.attn_types or [])) and cfg.window_size is not None
        if windowed and max(len(c) for c in contexts) > cfg.window_size:
            self.shared = 0  # TL counts a sliding window in columns, so mid-row pads would take real places
        kv_heads, d_head = self._kv_shape()
        empty = torch.zeros(cfg.n_layers, kv_heads, 0, d_head, device=cfg.device, dtype=cfg.dtype)
        # [n_layers, kv_head, pos, d_head]: the layout of the buffers built from them
        self.shared_keys, self.shared_values = empty, empty
        head_cache = None
        if self.shared:
            head_cache = TransformerLensKeyValueCache.init_cache(cfg, cfg.device, 1)
            head = torch.tensor([contexts[0][:self.shared]], device=cfg.device)
            with torch.no_grad():
                model(head, past_kv_cache=head_cache, attention_mask=torch.ones_like(head),
                      stop_at_layer=cfg.n_layers)
                ones = torch.ones_like(head)
                self.shared_keys = torch.stack([self._rotated(layer, e.past_keys, 0, ones)[0].transpose(0, 1)
                                                for layer, e in enumerate(head_cache.entries)]).contiguous()
            self.shared_values = torch.stack([e.past_values[0].transpose(0, 1) for e in head_cache.entries]).contiguous()
        self.keys: list[Tensor] = []  # per example, after the shared part: [n_layers, kv_head, own, d_head]
        self.values: list[Tensor] = []
        starts = range(0, len(data), batch_size)
        for start in tqdm(starts, desc="prefix KV cache", disable=not progress, leave=False):
            chunk = [c[self.shared:] for c in contexts[start:start + batch_size]]
            width = max(len(c) for c in chunk)
            if width == 0:
                self.keys += [empty] * len(chunk)
                self.values += [empty] * len(chunk)
                continue
            # Rows are [shared] [pads] [own tokens]: the mask hides the pads and TL derives rotary positions
            # from its cumulative sum, so every row sees its unpadded positions (as in generation).
            tokens = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, ids in enumerate(chunk):
                if ids:
                    tokens[row, width - len(ids):] = torch.tensor(ids)
                    attention[row, width - len(ids):] = 1
            cache = TransformerLensKeyValueCache.init_cache(cfg, cfg.device, len(chunk))
            if self.shared:
                for entry, computed in zip(cache.entries, head_cache.entries):
                    entry.past_keys = computed.past_keys.expand(len(chunk), -1, -1, -1)
                    entry.past_values = computed.past_values.expand(len(chunk), -1, -1, -1)
                cache.previous_attention_mask = torch.ones(len(chunk), self.shared, dtype=torch.long,
                                                           device=cfg.device)
            attention = attention.to(cfg.device)
            with torch.no_grad(), grouped_attention_without_copies():  # TL's GQA copied 0.6 GB more here
                model(tokens.to(cfg.device), past_kv_cache=cache, attention_mask=attention,
                      stop_at_layer=cfg.n_layers)
                seen = torch.cat([torch.ones(len(chunk), self.shared, dtype=torch.long, device=cfg.device), attention], 1)
                keys = [self._rotated(layer, e.past_keys[:, self.shared:], self.shared, seen)
                        for layer, e in enumerate(cache.entries)]
            for row, ids in enumerate(chunk):
                own = slice(width - len(ids), width)
                self.keys.append(torch.stack([k[row, own].transpose(0, 1) for k in keys]).contiguous())
                self.values.append(torch.stack([e.past_values[row, self.shared:][own].transpose(0, 1)
                                                for e in cache.entries]).contiguous())

    def _rotated(self, layer: int, keys: Float[Tensor, "batch pos kv_head d_head"], offset: int,
                 attention: Int[Tensor, "batch seen"]) -> Float[Tensor, "batch pos kv_head d_head"]:
        """``keys`` (TL caches them unrotated) as the attention sees them: rotated at the positions the mask
        gives columns ``offset:`` (TL's own ``apply_rotary``); unchanged for models without rotary."""
        if self.model.cfg.positional_embedding_type != "rotary":
            return keys
        return self.model.blocks[layer].attn.apply_rotary(keys, offset, attention)

    def _kv_shape(self) -> tuple[int, int]:
        cfg = self.model.cfg
        return (cfg.n_key_value_heads or cfg.n_heads, cfg.d_head)

    @staticmethod
    def estimate_bytes(model: HookedTransformer, data: ContrastSet) -> int:
        cfg = model.cfg
        per_token = cfg.n_layers * 2 * (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
        return sum(len(p) - 1 for p in data.prefix_ids) * per_token * torch.finfo(cfg.dtype).bits // 8

    @property
    def nbytes(self) -> int:
        own = sum(k.numel() * k.element_size() * 2 for k in self.keys)
        return own + self.shared_keys.numel() * self.shared_keys.element_size() * 2

    def batch(self, data: ContrastSet, indices: Sequence[int]) -> Batch:
        """A Batch of the last tokens of ``indices`` over padded key/value buffers of their prefixes
        (frozen: every forward over it writes its last token to the same free slot, so it can be reused)."""
        from cca_tl.fast_paths import BufferEntry

        cfg = self.model.cfg
        shared = self.shared
        width = shared + max(self.keys[i].shape[2] for i in indices)
        kv_heads, d_head = self._kv_shape()
        # One tensor per layer: autograd counts in-place writes per tensor, and each layer writes its own
        # last token; +1 position: the slot of the last token.
        keys = [torch.empty(len(indices), kv_heads, width + 1, d_head, device=cfg.device, dtype=cfg.dtype)
                for _ in range(cfg.n_layers)]
        values = [torch.empty_like(k) for k in keys]
        attention = torch.zeros(len(indices), width, dtype=torch.long, device=cfg.device)
        attention[:, :shared] = 1
        for buffers, common in ((keys, self.shared_keys), (values, self.shared_values)):
            for layer, buffer in enumerate(buffers):
                buffer[:, :, :shared] = common[layer]
        for row, i in enumerate(indices):
            start = width - self.keys[i].shape[2]  # [shared] [pads] [own], as the cache was built
            for buffers, own in ((keys, self.keys[i]), (values, self.values[i])):
                for layer, buffer in enumerate(buffers):
                    buffer[row, :, shared:start] = 0  # hidden by the mask, but must be finite (0 x NaN is NaN)
                    buffer[row, :, start:width] = own[layer]
            attention[row, start:] = 1
        cache = BufferEntry.cache(keys, values, width, attention)
        cache.freeze()
        last = torch.tensor([[data.prefix_ids[i][-1]] for i in indices], device=cfg.device)
        return Batch(last, torch.zeros(len(indices), dtype=torch.long, device=cfg.device),
                     torch.tensor([data.desired[i] for i in indices], device=cfg.device),
                     torch.tensor([data.undesired[i] for i in indices], device=cfg.device), past_kv=cache)


def shared_prefix_batch(model: HookedTransformer, data: "ContrastSet", indices: Sequence[int], *,
                        pad_id: int = 0, min_shared: int = 8) -> Batch:
    """A Batch whose common prefix (e.g. a few-shot prompt) is run **once**, with gradients, and shared.

    The rows' common prefix goes through the model at batch size 1, filling a key/value cache; the cache is
    expanded (a view, so gradients from every row flow back into the one computation) and each row's own
    suffix runs over it. Exact: the same function of the weights as the full right-padded batch, at a
    fraction of the cost when the prompt dominates (few-shot prompts: most of every record). Falls back to
    :meth:`Batch.collate` when the shared part is shorter than ``min_shared`` tokens.
    """
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    from cca_tl.fast_paths import grouped_attention_without_copies

    subset = data.subset(indices)
    shared = shared_length(subset.prefix_ids, min_shared=min_shared, min_rows=1)
    cfg = model.cfg
    if not shared:
        return Batch.collate(subset, pad_id=pad_id, device=cfg.device)
    cache = TransformerLensKeyValueCache.init_cache(cfg, cfg.device, 1)
    head = torch.tensor([subset.prefix_ids[0][:shared]], device=cfg.device)
    with grouped_attention_without_copies():
        model(head, past_kv_cache=cache, attention_mask=torch.ones_like(head), stop_at_layer=cfg.n_layers)
    rows = len(subset)
    for entry in cache.entries:
        entry.past_keys = entry.past_keys.expand(rows, *entry.past_keys.shape[1:])
        entry.past_values = entry.past_values.expand(rows, *entry.past_values.shape[1:])
    cache.previous_attention_mask = cache.previous_attention_mask.expand(rows, -1)
    tails = ContrastSet([p[shared:] for p in subset.prefix_ids], subset.desired, subset.undesired)
    batch = Batch.collate(tails, pad_id=pad_id, device=cfg.device)
    batch.past_kv = cache
    return batch


# ----------------------------------------------------------------------------------------------------
# The two-logit readout
# ----------------------------------------------------------------------------------------------------


def two_logit_diff(model: HookedTransformer, batch: Batch,
                   fwd_hooks: Sequence[tuple[str, Callable]] = ()) -> Float[Tensor, "batch"]:
    """logit[desired] − logit[undesired] at each row's last real position, without full-vocab logits (on a
    TransformerLens 4 bridge: read off the full logits, which the HF model computes anyway)."""
    from cca_tl.fast_paths import tl_fast_paths

    if is_bridge(model):
        if batch.past_kv is not None:
            raise BackendError("Cached prefixes are a HookedTransformer path; on the bridge run without them.")
        logits = model.run_with_hooks(batch.tokens, fwd_hooks=list(fwd_hooks))
        rows = torch.arange(len(batch), device=logits.device)
        last = logits[rows, batch.last_pos].float()
        return last[rows, batch.desired] - last[rows, batch.undesired]

    with tl_fast_paths(rotated_cache=True):  # rotated: PrefixKV's buffers hold rotated keys
        if batch.past_kv is not None:
            resid = model.run_with_hooks(batch.tokens, stop_at_layer=model.cfg.n_layers,
                                         fwd_hooks=list(fwd_hooks), past_kv_cache=batch.past_kv,
                                         attention_mask=torch.ones_like(batch.tokens))
        else:
            resid = model.run_with_hooks(batch.tokens, stop_at_layer=model.cfg.n_layers, fwd_hooks=list(fwd_hooks))
    rows = torch.arange(len(batch), device=resid.device)
    final = resid[rows, batch.last_pos]  # [batch, d_model]
    if model.cfg.normalization_type is not None:
        final = model.ln_final(final[:, None, :])[:, 0]
    targets = torch.stack([batch.desired, batch.undesired], dim=1)  # [batch, 2]
    columns = model.W_U[:, targets].float()  # [d_model, batch, 2]; the readout is float32 in any model dtype
    logits = torch.einsum("bm,mbk->bk", final.float(), columns) + model.b_U[targets].float()
    cap = model.cfg.output_logits_soft_cap
    if cap and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits[:, 0] - logits[:, 1]


def full_logit_diff(model: HookedTransformer, batch: Batch,
                    fwd_hooks: Sequence[tuple[str, Callable]] = ()) -> Float[Tensor, "batch"]:
    """The same quantity from the full logits (reference and benchmark baseline; slow on big vocabularies)."""
    logits = model.run_with_hooks(batch.tokens, fwd_hooks=list(fwd_hooks))
    rows = torch.arange(len(batch), device=logits.device)
    last = logits[rows, batch.last_pos]
    return last[rows, batch.desired] - last[rows, batch.undesired]


# ----------------------------------------------------------------------------------------------------
# Many records behind one prompt
# ----------------------------------------------------------------------------------------------------


def prefix_batches(model: HookedTransformer, data: ContrastSet, batch_size: int, shared_prefix: bool) -> Iterator[Batch]:
    """Mini-batches in order; with ``shared_prefix`` each runs its rows' common prefix once (exact; on the
    bridge, whose key/value cache is not TransformerLens 3's, every row runs whole)."""
    pad = pad_token_id(model)
    if not shared_prefix or is_bridge(model):
        yield from data.batches(batch_size, pad_id=pad, device=model.cfg.device)
        return
    for start in range(0, len(data), batch_size):
        yield shared_prefix_batch(model, data, range(start, min(start + batch_size, len(data))), pad_id=pad)


def shared_prompt(model: HookedTransformer, data: ContrastSet, min_shared: int = 8) -> tuple[int, list[Tensor]]:
    """The prompt common to *all* records, run once: its length and each layer's keys and values
    (``[k0, v0, k1, v1, ...]``, batch 1). Length 0 and no tensors when it is shorter than ``min_shared``, or
    on the bridge (the cache is TransformerLens 3's)."""
    shared = 0 if is_bridge(model) else shared_length(data.prefix_ids, min_shared=min_shared, min_rows=1)
    if not shared:
        return 0, []
    return shared, prompt_keys_values(model, data.prefix_ids[0][:shared])


def batches_over_prompt(model: HookedTransformer, data: ContrastSet, batch_size: int, shared: int,
                         keys_values: Sequence[Tensor]) -> Iterator[Batch]:
    """Mini-batches of the records' tails, each attending to the shared prompt's ``keys_values`` (see
    :func:`cca_tl.prompt_cache.cache_over_prompt`). Records in the order of :func:`by_tail_length` (the caller's order is the
    data's)."""
    tails = ContrastSet([p[shared:] for p in data.prefix_ids], data.desired, data.undesired)
    for start in range(0, len(data), batch_size):
        subset = tails.subset(range(start, min(start + batch_size, len(data))))
        batch = Batch.collate(subset, pad_id=pad_token_id(model), device=model.cfg.device)
        batch.past_kv = cache_over_prompt(model, len(subset), keys_values)
        yield batch


def by_tail_length(data: ContrastSet) -> tuple[ContrastSet, list[int]]:
    """The records sorted by length (and the order: ``sorted[i] = data[order[i]]``), so that mini-batches
    pad little: on the two-step task's 30 train pivots at batch 4, 1,440 padded tail tokens for 1,285
    real ones in the given order, 1,318 sorted (66 test pivots: 3,078 -> 2,786 for 2,769)."""
    order = sorted(range(len(data)), key=lambda i: len(data.prefix_ids[i]))
    return data.subset(order), order


def record_logit_diffs(model: HookedTransformer, data: ContrastSet, batch_size: int = 8,
                       shared_prefix: bool = True) -> Float[Tensor, "record"]:
    """logit[desired] − logit[undesired] at the pivot of every record (forward passes only, float32, CPU).

    ``shared_prefix``: the prompt common to all records runs once and every mini-batch attends to it (on
    Gemma-3-270M, 66 two-step pivots behind a 270-token prompt: 9.3–11 s instead of 13.7 s with the prompt
    rerun per mini-batch); when records share less than 8 tokens, each mini-batch shares its own prefix."""
    with torch.no_grad():
        shared, keys_values = shared_prompt(model, data) if shared_prefix else (0, [])
        if not shared:
            return torch.cat([two_logit_diff(model, batch).float().cpu()
                              for batch in prefix_batches(model, data, batch_size, shared_prefix)])
        ordered, order = by_tail_length(data)
        diffs = torch.cat([two_logit_diff(model, batch).float().cpu()
                           for batch in batches_over_prompt(model, ordered, batch_size, shared, keys_values)])
        return torch.empty_like(diffs).index_copy_(0, torch.tensor(order), diffs)  # back in the data's order


def mean_logit_diff(model: HookedTransformer, data: ContrastSet, batch_size: int, shared_prefix: bool = True) -> float:
    return float(record_logit_diffs(model, data, batch_size, shared_prefix).sum()) / len(data)
