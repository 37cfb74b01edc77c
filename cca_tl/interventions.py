"""One way to intervene on a model: *where* × *what*, compiled to TransformerLens hooks here and only here.

**Where** is a set of registry components (:mod:`cca_tl.components`: kind, layer, unit, at the granularity
of whole heads/neurons or of single channels) and the positions they are touched at — each row's last
position (the pivot, where CCA acts) or every position. **What** is one of three intervention types:

* :class:`Scale` — ``a ← g·a`` with one gain per entry (DCM's gains, docs/method.md §A3);
* :class:`Replace` — ``a ← value`` on the selected entries, exactly (``torch.where``), with zero, a named
  mean (:class:`Baseline`) or any value (ablation checks and faithfulness curves);
* :class:`Gate` — ``a ← g·a + (1 − g)·baseline``, differentiable in ``g`` (node pruning, docs/method.md §B).

:func:`hooks` turns a (what, positions) pair into ``(hook name, function)`` pairs for ``run_with_hooks``.
Each entry's value broadcasts over the trailing axes of the component's activation (a head's gain over
its ``d_head`` channels). The residual-stream edits of the bridges (:func:`replace_at`, :func:`add_at`),
reading activations (:func:`capture_at`, :func:`sum_at`) and the activation sparsity of weight-sparse
models (:func:`keep_top_k`) are written here as well, so no other module writes a hook function.

Ablation baselines are the values of one enum: zero, the task's mean at the pivot, and the mean over every
position of general text (the sparse-circuit paper's mean ablation). They are different things and must
not share the word "mean": a pivot-position task mean keeps the prompt-specific context, a general-text
mean does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterable, Mapping, Sequence, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from cca_tl.backend import HookedTransformer

from cca_tl.components import ComponentRegistry, Kind, registry_of

HookFn = Callable[[Tensor, object], Union[Tensor, None]]
HookPair = tuple[str, HookFn]


class Positions(str, Enum):
    """Which positions an intervention touches."""

    LAST = "last"  # each row's last real position (the pivot of a contrast record)
    ALL = "all"    # every position


class Baseline(str, Enum):
    """What an ablated component is set to."""

    ZERO = "zero"
    TASK_MEAN = "task-mean"  # its mean at the pivot over a contrast set (:func:`task_means`)
    TEXT_MEAN = "text-mean"  # its mean over every position of general text (:func:`text_means`)


# ----------------------------------------------------------------------------------------------------
# What: the three intervention types
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """``a ← g·a``; ``gains[kind]`` is ``[n_layers, *entry shape]``. The product is taken in float32 and
    cast back to the activation's dtype, so gains of exactly 1 leave the activation bit for bit."""

    gains: Mapping[Kind, Tensor]

    def kinds(self) -> Iterable[Kind]:
        return self.gains

    def touches(self, kind: Kind, layer: int) -> bool:
        return True  # every gain takes part (DCM needs the gradient of each)

    def apply(self, a: Tensor, kind: Kind, layer: int) -> Tensor:
        gain = _like(self.gains[kind][layer], kind)
        return (a.float() * gain).to(a.dtype)


@dataclass(frozen=True)
class Replace:
    """``a ← value`` on ``selected`` entries, the rest untouched (exactly, through ``torch.where``).
    ``values[kind]`` is ``[n_layers, *activation shape]``; ``None`` replaces with zero."""

    selected: Mapping[Kind, Bool[Tensor, "layer ..."]]
    values: Mapping[Kind, Tensor] | None = None

    def kinds(self) -> Iterable[Kind]:
        return self.selected

    def touches(self, kind: Kind, layer: int) -> bool:
        return bool(self.selected[kind][layer].any())

    def apply(self, a: Tensor, kind: Kind, layer: int) -> Tensor:
        selected = _like(self.selected[kind][layer].to(a.device), kind)
        fill = (torch.zeros_like(a) if self.values is None
                else self.values[kind][layer].to(a.device, a.dtype).expand_as(a))
        return torch.where(selected, fill, a)


@dataclass(frozen=True)
class Gate:
    """``a ← g·a + (1 − g)·baseline`` per entry; ``gates[kind]`` ``[n_layers, *entry shape]`` in [0, 1] (may
    carry a gradient), ``baseline[kind]`` ``[n_layers, *activation shape]``."""

    gates: Mapping[Kind, Tensor]
    baseline: Mapping[Kind, Tensor]

    def kinds(self) -> Iterable[Kind]:
        return self.gates

    def touches(self, kind: Kind, layer: int) -> bool:
        return True

    def apply(self, a: Tensor, kind: Kind, layer: int) -> Tensor:
        g = _like(self.gates[kind][layer], kind).to(a.device, a.dtype)
        return a * g + (1 - g) * self.baseline[kind][layer].to(a.device, a.dtype)


Intervention = Union[Scale, Replace, Gate]


def _like(value: Tensor, kind: Kind) -> Tensor:
    """One layer's entries (``[units]`` or ``[units, d_head]``) with trailing singleton axes, so that they
    broadcast over the activation's unit axes (a head's gain over its ``d_head`` channels)."""
    unit_axes = 1 if kind is Kind.NEURON else 2
    return value.reshape(*value.shape, *([1] * (unit_axes - value.ndim)))


# ----------------------------------------------------------------------------------------------------
# Where × what → hooks
# ----------------------------------------------------------------------------------------------------


def hooks(model_or_registry: HookedTransformer | ComponentRegistry, what: Intervention, *,
          positions: Positions | str = Positions.ALL, last_pos: Int[Tensor, "batch"] | None = None) -> list[HookPair]:
    """``(hook name, function)`` pairs applying ``what`` at ``positions`` (``last`` needs each row's
    ``last_pos``), one per (kind, layer) the intervention touches."""
    registry = registry_of(model_or_registry)
    positions = Positions(positions)
    if positions is Positions.LAST and last_pos is None:
        raise ValueError("positions='last' needs each row's last position (last_pos)")
    out = []
    for kind in what.kinds():
        kind = Kind(kind)
        for layer in range(registry.n_layers):
            if what.touches(kind, layer):
                out.append((registry.hook_name(kind, layer), _hook(what, kind, layer, positions, last_pos)))
    return out


def _hook(what: Intervention, kind: Kind, layer: int, positions: Positions, last_pos: Tensor | None) -> HookFn:
    if positions is Positions.ALL:
        return lambda activation, hook: what.apply(activation, kind, layer)

    def at_last(activation: Tensor, hook) -> Tensor:
        rows = torch.arange(activation.shape[0], device=activation.device)
        picked = activation[rows, last_pos]  # [batch, units(, d_head)]
        return activation.index_put((rows, last_pos), what.apply(picked, kind, layer))
    return at_last


# ----------------------------------------------------------------------------------------------------
# Hooks at any named activation (residual stream, sparsity)
# ----------------------------------------------------------------------------------------------------


def replace_at(name: str, value: Tensor) -> HookPair:
    """Replace the whole activation ``name`` by ``value`` (a bridge's encoded or decoded residual)."""
    return name, lambda activation, hook: value.to(activation.dtype)


def add_at(name: str, delta: Tensor) -> HookPair:
    """Add ``delta`` to the activation ``name`` (a bridged intervention on the dense model)."""
    return name, lambda activation, hook: activation + delta.to(activation.dtype)


def capture_at(name: str, store: dict[str, Tensor], key: str | None = None) -> HookPair:
    """Store a detached copy of the activation ``name`` in ``store[key or name]``; the activation is unchanged."""
    def capture(activation: Tensor, hook) -> None:
        store[key or name] = activation.detach().clone()
    return name, capture


def sum_at(names: Sequence[str], sums: dict[str, Tensor], last_pos: Int[Tensor, "batch"] | None = None) -> list[HookPair]:
    """Add each activation's rows (at ``last_pos``, or summed over every position) into ``sums[name]``
    (float32)."""
    def add(activation: Tensor, hook) -> None:
        if last_pos is None:
            picked = activation.float().flatten(0, 1)
        else:
            picked = activation[torch.arange(activation.shape[0], device=activation.device), last_pos].float()
        sums[hook.name] = sums.get(hook.name, 0) + picked.sum(0)
    return [(name, add) for name in names]


def abstopk(x: Float[Tensor, "... d"], k: int) -> Float[Tensor, "... d"]:
    """Keep the ``k`` entries of largest magnitude along the last dimension, zero the rest."""
    if k >= x.shape[-1]:
        return x
    idx = x.abs().topk(k, dim=-1).indices
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))


def keep_top_k(keep_fraction: float, *, across_heads: bool) -> HookFn:
    """Activation sparsity (AbsTopK): keep the largest-magnitude ``keep_fraction`` of each position's
    entries; ``across_heads`` flattens ``[.., head, d_head]`` so all heads' channels compete together."""
    def sparsify(activation: Tensor, hook) -> Tensor:
        flat = activation.flatten(-2) if across_heads else activation
        k = max(1, round(keep_fraction * flat.shape[-1]))
        return abstopk(flat, k).reshape(activation.shape)
    return sparsify


# ----------------------------------------------------------------------------------------------------
# Baseline values
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def task_means(model: HookedTransformer, data, kinds: Iterable[Kind | str], *, prefix_kv=None,
               batch_size: int = 8) -> dict[Kind, Tensor]:
    """:attr:`Baseline.TASK_MEAN`: every component's mean activation at the last prefix position over a
    contrast set ``data``. Per kind ``[n_layers, units, d_head]`` (heads) or ``[n_layers, units]`` (neurons)."""
    from cca_tl.contrast import pad_token_id, prefix_cache_for, two_logit_diff

    reg = registry_of(model)
    kinds = [Kind(k) for k in kinds]
    names = [reg.hook_name(k, layer) for k in kinds for layer in range(reg.n_layers)]
    sums: dict[str, Tensor] = {}
    prefix_kv = prefix_kv if prefix_kv is not None else prefix_cache_for(model, data, batch_size)
    for batch in data.batches(batch_size, pad_id=pad_token_id(model), device=model.cfg.device, prefix_kv=prefix_kv):
        two_logit_diff(model, batch, sum_at(names, sums, batch.last_pos))
    return {k: torch.stack([sums[reg.hook_name(k, layer)] for layer in range(reg.n_layers)]) / len(data)
            for k in kinds}


@torch.no_grad()
def text_means(model: HookedTransformer, texts: Sequence[str] | Sequence[Tensor] | None = None,
               kinds: Iterable[Kind | str] = (Kind.Q, Kind.K, Kind.V, Kind.NEURON), *,
               max_tokens: int = 128) -> dict[Kind, Tensor]:
    """:attr:`Baseline.TEXT_MEAN`: every component's mean activation over every position of general text
    (default: CPython's pydoc topics, :func:`cca_tl.evaluate.general_text`), at most ``max_tokens`` per
    text. Per kind ``[n_layers, units, d_head]`` (heads) or ``[n_layers, units]`` (neurons)."""
    from cca_tl.evaluate import general_text

    reg = registry_of(model)
    kinds = [Kind(k) for k in kinds]
    texts = list(texts) if texts is not None else general_text()
    if not texts:
        raise ValueError("No text to take means over.")
    names = [reg.hook_name(k, layer) for k in kinds for layer in range(reg.n_layers)]
    sums: dict[str, Tensor] = {}
    count = 0
    for text in texts:
        tokens = (text.reshape(1, -1) if isinstance(text, Tensor) else model.to_tokens(text))[:, :max_tokens]
        model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=sum_at(names, sums),
                             stop_at_layer=model.cfg.n_layers)
        count += tokens.shape[1]
    return {k: torch.stack([sums[reg.hook_name(k, layer)] for layer in range(reg.n_layers)]) / count for k in kinds}
