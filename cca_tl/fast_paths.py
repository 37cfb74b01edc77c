"""TransformerLens fast paths: the class-level patches and helpers that make cca_tl's forwards cheap.

Each leaves the computed function unchanged (checked against TransformerLens' own in the tests) and only
removes copies TransformerLens makes: grouped-query attention without repeating keys and values per query
head, rotary embedding applied to new keys only over a preallocated key/value buffer
(:class:`BufferEntry`), and the unembedding as ``W_U^T @ h^T``. They are entered through
:func:`tl_fast_paths` (or each context manager alone); the patches are undone on exit, also on error.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from cca_tl.backend import TL_MAJOR, HookedTransformer, is_bridge


class BufferEntry:
    """A TransformerLens key/value cache entry over a preallocated buffer, appended in place.

    Duck-types ``TransformerLensKeyValueCacheEntry`` (``past_keys``, ``past_values``, ``append``, ``frozen``).
    The buffer is stored ``[batch, kv_head, pos, d_head]`` and handed out as a permuted view in TL's
    ``[batch, pos, kv_head, d_head]`` layout, so the attention matmuls read it as a plain transpose (no copy).
    """

    def __init__(self, keys: Tensor, values: Tensor, length: int):
        self.keys, self.values, self.length, self.frozen = keys, values, length, False

    @property
    def past_keys(self) -> Tensor:
        return self.keys[:, :, :self.length].transpose(1, 2)

    @property
    def past_values(self) -> Tensor:
        return self.values[:, :, :self.length].transpose(1, 2)

    def append(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new keys and values after the cached ones (a frozen entry writes them to the same
        place every time and keeps its length). The keys returned carry ``_rotate_from``: under
        :func:`rotate_new_keys_only` the attention's rotary embedding then rotates only the new positions
        and writes them back, so the buffer holds rotated keys."""
        start, end = self.length, self.length + new_keys.shape[1]
        self.keys[:, :, start:end] = new_keys.transpose(1, 2)
        self.values[:, :, start:end] = new_values.transpose(1, 2)
        if not self.frozen:
            self.length = end
        keys = self.keys[:, :, :end].transpose(1, 2)
        keys._rotate_from = (self, start, end)  # type: ignore[attr-defined]
        return keys, self.values[:, :, :end].transpose(1, 2)

    def keep(self, rows: Tensor) -> None:
        self.keys, self.values = self.keys[rows], self.values[rows]

    @classmethod
    def cache(cls, keys: Sequence[Float[Tensor, "batch kv_head pos d_head"]],
              values: Sequence[Float[Tensor, "batch kv_head pos d_head"]], length: int,
              attention: Int[Tensor, "batch length"]) -> Any:
        """A TL key/value cache over per-layer buffers whose first ``length`` positions hold keys (rotated,
        for rotary models) and values; forwards over it must run under :func:`rotate_new_keys_only`."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        entries = [cls(k, v, length) for k, v in zip(keys, values)]
        return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=attention)  # type: ignore[arg-type]


def _grouped_scores(self: Any, q: Float[Tensor, "batch qpos head d_head"],
                    k: Float[Tensor, "batch kpos kv_head d_head"]) -> Float[Tensor, "batch head qpos kpos"]:
    """Grouped-query attention scores without repeating the keys per query head (TransformerLens'
    ``repeat_interleave`` copies the whole cache four times per layer and token on Gemma-3)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    batch, qpos, heads, d_head = q.shape
    kv = k.shape[2]
    group = heads // kv
    q_ = q.reshape(batch, qpos, kv, group, d_head).permute(0, 2, 3, 1, 4).reshape(batch, kv, group * qpos, d_head)
    scores = (q_ @ k.permute(0, 2, 3, 1)) / self.attn_scale  # query head h reads kv head h // group
    scores = scores.reshape(batch, heads, qpos, k.shape[1])
    return apply_softcap(scores, self.cfg.attn_scores_soft_cap)


def _grouped_z(self: Any, v: Float[Tensor, "batch kpos kv_head d_head"],
               pattern: Float[Tensor, "batch head qpos kpos"]) -> Float[Tensor, "batch qpos head d_head"]:
    batch, heads, qpos, kpos = pattern.shape
    kv = v.shape[2]
    z = pattern.reshape(batch, kv, (heads // kv) * qpos, kpos) @ v.permute(0, 2, 1, 3)
    return self.hook_z(z.reshape(batch, heads, qpos, -1).permute(0, 2, 1, 3))


@contextmanager
def rotate_new_keys_only() -> Iterator[None]:
    """Make TransformerLens' rotary embedding rotate only the new keys of a :class:`BufferEntry` (whose
    buffer then holds rotated keys); every other call is TL's own.

    TL rotates ``k`` after appending it to the cache, i.e. all cached positions again at every token. The
    new positions are rotated by TL's own ``apply_rotary`` with their offset and the same attention mask,
    so each key gets the same elementwise arithmetic as before: the logits are bit-identical (tested).
    """
    if TL_MAJOR >= 4:  # no TransformerLens attention class under 4.x (the bridge never uses BufferEntry)
        yield
        return
    from transformer_lens.components.abstract_attention import AbstractAttention

    original = AbstractAttention.apply_rotary

    def apply_rotary(self: Any, x: Tensor, past_kv_pos_offset: int = 0, attention_mask: Tensor | None = None) -> Tensor:
        pending = getattr(x, "_rotate_from", None)
        if pending is None:
            return original(self, x, past_kv_pos_offset, attention_mask)
        entry, start, end = pending
        entry.keys[:, :, start:end] = original(self, x[:, start:], start, attention_mask).transpose(1, 2)
        return entry.keys[:, :, :end].transpose(1, 2)

    AbstractAttention.apply_rotary = apply_rotary  # type: ignore[method-assign]
    try:
        yield
    finally:
        AbstractAttention.apply_rotary = original  # type: ignore[method-assign]


def unembed(model: HookedTransformer, final: Float[Tensor, "rows d_model"]) -> Float[Tensor, "rows vocab"]:
    """Logits (float32, soft-capped where the model does) of final-normed residuals.

    Computed as ``(W_U^T @ h^T)^T``: with the unembedding stored ``[vocab, d_model]`` (cca_tl's loaders
    relayout it), MKL runs this shape 1.7x faster than TL's ``F.linear(h, W_U^T)`` at 16–32 rows and 1.3x at
    128 rows on 2 CPU cores (Gemma-3-270M's 262k vocabulary), equal bit for bit at 12 rows or more in that
    measurement; below that the two kernels sum in different orders (|Δ| < 1e-4). On the bridge: the HF
    model's own head and soft cap (equal to the bridge's logits bit for bit on tiny-gemma3).
    """
    if is_bridge(model):
        hf = model.original_model
        logits = hf.lm_head(final).float()
        cap = getattr(hf.config, "final_logit_softcapping", None)
        return cap * torch.tanh(logits / cap) if cap else logits
    final = final.to(model.W_U.device)
    logits = (model.W_U.T @ final.T).T.float()
    if model.b_U is not None and bool(model.b_U.any()):
        logits = logits + model.b_U.float()
    cap = model.cfg.output_logits_soft_cap
    if cap and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


@contextmanager
def grouped_attention_without_copies() -> Iterator[None]:
    """Swap in :func:`_grouped_scores` / :func:`_grouped_z` for TransformerLens' grouped-query attention
    (same function: checked against TL's own in the tests; hooks still fire). Used while generating and in
    every two-logit forward (DCM, update): TL's ``repeat_interleave`` also keeps the repeated keys and
    values for the backward pass — on Gemma-3-270M, 247 MB of the 700 MB a batch of 8 few-shot rows saves."""
    if TL_MAJOR >= 4:  # the bridge runs the HF model's own attention: no TransformerLens class to patch
        yield
        return
    from transformer_lens.components.grouped_query_attention import GroupedQueryAttention as GQA

    saved = GQA.calculate_attention_scores, GQA.calculate_z_scores
    GQA.calculate_attention_scores, GQA.calculate_z_scores = _grouped_scores, _grouped_z
    try:
        yield
    finally:
        GQA.calculate_attention_scores, GQA.calculate_z_scores = saved


@contextmanager
def tl_fast_paths(*, rotated_cache: bool = False) -> Iterator[None]:
    """Grouped attention without copies and, with ``rotated_cache`` (forwards over a :class:`BufferEntry`
    cache holding rotated keys), rotary embedding of the new keys only: the one way in to both patches."""
    with ExitStack() as stack:
        stack.enter_context(grouped_attention_without_copies())
        if rotated_cache:
            stack.enter_context(rotate_new_keys_only())
        yield
