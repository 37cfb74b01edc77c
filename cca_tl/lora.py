"""LoRA on a HookedTransformer's own weights, so that a low-rank update and a masked update train through
the same model, objective and loop (:func:`cca_tl.update.train_update`).

Each target matrix ``W`` (TransformerLens layout) becomes ``W0 + (α/r)·B A`` in the layout of its HF twin's
``nn.Linear`` (``[out, in]``: ``q_proj`` is ``W_Q`` as ``[(head d_head), d_model]``, ``up_proj`` is ``W_inᵀ``,
...), so a rank here is the rank peft gives the same projection, and the merged result is what
``peft``'s ``merge_and_unload`` writes (tested against peft on the HF twin). Initialisation as peft's:
``A`` Kaiming-uniform, ``B`` zero (the update starts at the unedited model).

Why not peft itself: peft wraps ``nn.Linear`` modules, and TransformerLens holds its weights as einsum
tensors. Instead of re-parametrising the forward pass, the gradient of ``W`` that backward computes anyway
is projected onto the factors, exactly: ``∂L/∂B = (α/r)·G Aᵀ`` and ``∂L/∂A = (α/r)·Bᵀ G`` with ``G`` the
gradient of ``W`` in the ``[out, in]`` view, computed in a post-accumulate hook (only one full ``G`` exists
at a time). After each optimiser step the merged weight is written. Not modelled: LoRA dropout (it acts on
the layer's input, which a weight-level update does not see); the authors' baselines use 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor
from cca_tl.backend import HookedTransformer

from cca_tl.params import projected_gradients

#: peft's target names (the authors' LoRA baselines: all seven projections of every layer).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Layout = Literal["heads_in", "heads_out", "transposed"]

#: HF projection -> (TransformerLens parameter names it may have, how the TL tensor maps to ``[out, in]``).
_TL_WEIGHTS: dict[str, tuple[tuple[str, ...], Layout]] = {
    "q_proj": (("attn.W_Q",), "heads_in"),
    "k_proj": (("attn._W_K", "attn.W_K"), "heads_in"),
    "v_proj": (("attn._W_V", "attn.W_V"), "heads_in"),
    "o_proj": (("attn.W_O",), "heads_out"),
    "gate_proj": (("mlp.W_gate",), "transposed"),
    "up_proj": (("mlp.W_in",), "transposed"),
    "down_proj": (("mlp.W_out",), "transposed"),
}


def to_linear(w: Tensor, layout: Layout) -> Tensor:
    """A TL weight as its HF ``nn.Linear.weight`` (``[out, in]``; a view where the layout allows)."""
    if layout == "heads_in":  # [head, d_model, d_head] -> [(head d_head), d_model]
        return w.permute(0, 2, 1).reshape(w.shape[0] * w.shape[2], w.shape[1])
    if layout == "heads_out":  # [head, d_head, d_model] -> [d_model, (head d_head)]
        return w.reshape(w.shape[0] * w.shape[1], w.shape[2]).T
    return w.T


def from_linear(d: Tensor, layout: Layout, shape: torch.Size) -> Tensor:
    """The inverse of :func:`to_linear`: a ``[out, in]`` matrix in the TL weight's ``shape``."""
    if layout == "heads_in":
        return d.reshape(shape[0], shape[2], shape[1]).permute(0, 2, 1)
    if layout == "heads_out":
        return d.T.reshape(shape)
    return d.T


@dataclass
class LoRATarget:
    name: str          # the TL parameter, e.g. "blocks.0.attn.W_Q"
    projection: str    # its HF projection, e.g. "q_proj"
    layer: int
    layout: Layout
    shape: torch.Size  # TL shape
    out_features: int
    in_features: int


def lora_targets(model: HookedTransformer, projections: Sequence[str] = LORA_TARGETS) -> list[LoRATarget]:
    """The TL weights behind ``projections`` in every layer (those this architecture has)."""
    unknown = set(projections) - set(_TL_WEIGHTS)
    if unknown:
        raise ValueError(f"Unknown LoRA targets {sorted(unknown)}; known: {list(_TL_WEIGHTS)}")
    params = dict(model.named_parameters())
    out = []
    for layer in range(model.cfg.n_layers):
        for projection in projections:
            names, layout = _TL_WEIGHTS[projection]
            name = next((f"blocks.{layer}.{n}" for n in names if f"blocks.{layer}.{n}" in params), None)
            if name is None:
                continue
            view = to_linear(params[name].detach(), layout)
            out.append(LoRATarget(name, projection, layer, layout, params[name].shape, view.shape[0], view.shape[1]))
    if not out:
        raise ValueError(f"None of the LoRA targets {list(projections)} exists in this model.")
    return out


def params_per_rank(model: HookedTransformer, projections: Sequence[str] = LORA_TARGETS) -> int:
    """Trainable parameters one rank adds: Σ (in + out) over the targets."""
    return sum(t.in_features + t.out_features for t in lora_targets(model, projections))


def rank_for_budget(model: HookedTransformer, n_params: int, projections: Sequence[str] = LORA_TARGETS) -> int:
    """The rank whose trainable parameter count is closest to ``n_params`` (at least 1)."""
    return max(1, round(n_params / params_per_rank(model, projections)))


class LoRAParams:
    """Low-rank factors for every target weight, trained through the model's own weights (module doc).

    ``alpha``: the scale is ``alpha / rank`` (peft's); None keeps the authors' ratio ``α = 2r``.
    """

    def __init__(self, model: HookedTransformer, rank: int, *, alpha: float | None = None,
                 projections: Sequence[str] = LORA_TARGETS, seed: int = 0):
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, not {rank}")
        self.model, self.rank = model, rank
        self.scale = (2.0 * rank if alpha is None else alpha) / rank
        self.targets = lora_targets(model, projections)
        self.params = {t.name: model.get_parameter(t.name) for t in self.targets}
        self.base = {n: p.detach().clone() for n, p in self.params.items()}  # W0
        g = torch.Generator().manual_seed(seed)
        self.A: dict[str, Tensor] = {}
        self.B: dict[str, Tensor] = {}
        for t in self.targets:
            a = torch.empty(rank, t.in_features)
            bound = math.sqrt(6.0 / ((1 + 5.0) * t.in_features))  # kaiming_uniform_(a=sqrt(5)), as peft's
            a.uniform_(-bound, bound, generator=g)
            device = self.params[t.name].device
            self.A[t.name] = a.to(device)
            self.B[t.name] = torch.zeros(t.out_features, rank, device=device)

    @property
    def count(self) -> int:
        return sum(a.numel() + self.B[n].numel() for n, a in self.A.items())

    def regions(self) -> dict[str, None]:
        """What an update writes: each target weight, whole."""
        return {n: None for n in self.params}

    def leaves(self) -> list[Tensor]:
        return [t for n in self.params for t in (self.A[n], self.B[n])]

    def delta(self, name: str) -> Tensor:
        """``(α/r)·B A`` in the TL weight's layout (float32)."""
        target = next(t for t in self.targets if t.name == name)
        return from_linear(self.scale * self.B[name] @ self.A[name], target.layout, target.shape)

    @torch.no_grad()
    def write(self) -> None:
        """``W ← W0 + (α/r)·B A`` for every target (``W0`` itself, bit for bit, while ``B`` is zero)."""
        for name, param in self.params.items():
            if not bool(self.B[name].any()):
                param.copy_(self.base[name])
            else:
                param.copy_((self.base[name].float() + self.delta(name)).to(param.dtype))

    def gradients(self):
        """Within the block, backward passes add ``∂L/∂A`` and ``∂L/∂B`` to the factors' ``.grad`` and drop
        each weight's own gradient as soon as it is projected."""
        by_name = {t.name: t for t in self.targets}

        def project(name: str, grad: Tensor) -> None:
            g = to_linear(grad.float(), by_name[name].layout)
            a, b = self.A[name], self.B[name]
            grad_b, grad_a = self.scale * (g @ a.T), self.scale * (b.T @ g)
            a.grad = grad_a if a.grad is None else a.grad.add_(grad_a)
            b.grad = grad_b if b.grad is None else b.grad.add_(grad_b)

        return projected_gradients(self.params, project)

    def snapshot(self) -> dict[str, Tensor]:
        return {f"{k}:{n}": t.clone() for k, d in (("A", self.A), ("B", self.B)) for n, t in d.items()}

    @torch.no_grad()
    def restore(self, snapshot: dict[str, Tensor]) -> None:
        for key, value in snapshot.items():
            kind, name = key.split(":", 1)
            (self.A if kind == "A" else self.B)[name].copy_(value)
        self.write()


__all__ = ["LORA_TARGETS", "LoRAParams", "LoRATarget", "from_linear", "lora_targets", "params_per_rank",
           "rank_for_budget", "to_linear"]
