"""Per-head output offsets (LoFiT-style): a learned vector added to the output of each selected attention
head at every position — the localized fine-tuning a user would pick instead of a sparse weight update.

LoFiT (Yin et al., 2024) selects a few percent of the heads and learns a bias offset (and a scaling) on
each head's output; it reports LoRA-level accuracy with 20-200x fewer parameters. Here the offset is the
bias part, which is the one that carries LoFiT's gains in its ablations, and it is trained through the
model's own weights, the way :mod:`cca_tl.lora` trains low-rank factors: a head's output ``z_h`` enters the
residual stream as ``z_h W_O[h] + b_O``, so ``z_h → z_h + o_h`` is exactly ``b_O → b_O + Σ_h o_h W_O[h]``.
The update loop, the session's protect/restore, evaluation and generation then need nothing new, and the
edited model is an ordinary HookedTransformer (its ``b_O`` changed).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor
from cca_tl.backend import HookedTransformer

from cca_tl.params import projected_gradients


class HeadOffsets:
    """Offsets ``o_h`` (``d_head`` each, zero at the start) for the selected heads, written into each layer's
    ``attn.b_O`` (module doc). The interface the update loop uses: ``count``, ``regions()``, ``leaves()``,
    ``write()``, ``gradients()``, ``snapshot()``, ``restore()`` (as :class:`cca_tl.lora.LoRAParams`)."""

    def __init__(self, model: HookedTransformer, heads: Mapping[int, Sequence[int]]):
        cfg = model.cfg
        chosen = {layer: sorted(set(hs)) for layer, hs in heads.items() if hs}
        if not chosen:
            raise ValueError("HeadOffsets needs at least one head.")
        for layer, hs in chosen.items():
            if not 0 <= layer < cfg.n_layers or not all(0 <= h < cfg.n_heads for h in hs):
                raise ValueError(f"Head {layer}.{hs} is outside the model ({cfg.n_layers} layers × {cfg.n_heads} heads).")
        self.heads = chosen
        self.params = {self.name(layer): model.get_parameter(self.name(layer)) for layer in chosen}
        self.base = {n: p.detach().clone() for n, p in self.params.items()}
        self.W = {self.name(layer): model.blocks[layer].attn.W_O.detach()[hs].float().clone()  # [heads, d_head, d_model]
                  for layer, hs in chosen.items()}
        self.offsets = {n: torch.zeros(w.shape[:2], device=w.device) for n, w in self.W.items()}

    @staticmethod
    def name(layer: int) -> str:
        return f"blocks.{layer}.attn.b_O"

    @property
    def count(self) -> int:
        return sum(o.numel() for o in self.offsets.values())

    def regions(self) -> dict[str, None]:
        """What an update writes: each touched layer's output bias, whole (``d_model`` entries)."""
        return {n: None for n in self.params}

    def leaves(self) -> list[Tensor]:
        return list(self.offsets.values())

    @torch.no_grad()
    def write(self) -> None:
        """``b_O ← b_O0 + Σ_h o_h W_O[h]`` (``b_O0`` bit for bit while the offsets are zero)."""
        for name, param in self.params.items():
            o = self.offsets[name]
            if not bool(o.any()):
                param.copy_(self.base[name])
            else:
                param.copy_((self.base[name].float() + torch.einsum("hd,hdm->m", o, self.W[name])).to(param.dtype))

    def gradients(self):
        """Within the block, backward passes add ``∂L/∂o_h = W_O[h] ∂L/∂b_O`` to the offsets' ``.grad`` and
        drop the bias's own gradient."""
        def project(name: str, grad: Tensor) -> None:
            g = torch.einsum("hdm,m->hd", self.W[name], grad.float())
            o = self.offsets[name]
            o.grad = g if o.grad is None else o.grad.add_(g)

        return projected_gradients(self.params, project)

    def snapshot(self) -> dict[str, Tensor]:
        return {n: o.clone() for n, o in self.offsets.items()}

    @torch.no_grad()
    def restore(self, snapshot: dict[str, Tensor]) -> None:
        for name, value in snapshot.items():
            self.offsets[name].copy_(value)
        self.write()


def heads_for_budget(model: HookedTransformer, n_params: int) -> int:
    """Heads whose offsets hold about ``n_params`` parameters (``d_head`` each), between 1 and every head."""
    cfg = model.cfg
    return max(1, min(cfg.n_layers * cfg.n_heads, round(n_params / cfg.d_head)))


def top_heads(scores: Tensor, k: int) -> dict[int, list[int]]:
    """The ``k`` heads with the largest ``scores`` (``[n_layers, n_heads]``; ties by position), per layer."""
    order = torch.sort(scores.flatten().float(), descending=True, stable=True).indices[:k].tolist()
    n_heads = scores.shape[1]
    out: dict[int, list[int]] = {}
    for index in order:
        out.setdefault(index // n_heads, []).append(index % n_heads)
    return {layer: sorted(hs) for layer, hs in sorted(out.items())}


__all__ = ["HeadOffsets", "heads_for_budget", "top_heads"]
