"""Learned node pruning with mean ablation (docs/method.md §B), on any HookedTransformer.

Nodes are single channels: every query/key/value channel (``attn.hook_q/k/v``, per head or kv head and
``d_head`` index) and every MLP neuron (``mlp.hook_post``). Each node has a score τ ∈ [−1, 1]; its gate is
``H(τ)`` — a Heaviside step forward, the derivative of a sigmoid backward (straight-through) — and a closed
gate **mean-ablates** the node: ``a ← g·a + (1 − g)·mean(a)`` with means over general text, at every
position (:class:`cca_tl.interventions.Gate` with :attr:`~cca_tl.interventions.Baseline.TEXT_MEAN`). Training minimises the task loss plus ``k·(live nodes)``; then the nodes are ranked by τ and the
number kept is **bisected** to the smallest circuit whose task loss reaches a target, and a scale and shift
of the final logit difference are calibrated (LBFGS). Faithfulness: *sufficiency* (only the circuit, all
else mean-ablated) and *necessity* (the circuit mean-ablated, all else kept).

The task loss is the binary cross-entropy of the contrast (target vs alt logit difference at the last
position) — the tasks are binary, and it needs two unembedding columns, not the vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor, nn
from cca_tl.backend import HookedTransformer

from cca_tl import interventions
from cca_tl.components import Kind, registry_of
from cca_tl.component_mask import ComponentMask
from cca_tl.contrast import ContrastSet, pad_token_id, two_logit_diff
from cca_tl.interventions import Gate, Positions, text_means
from cca_tl.params import trainable

NODE_KINDS = (Kind.Q, Kind.K, Kind.V, Kind.NEURON)


class _HeavisideSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tau: Tensor, beta: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(tau)
        ctx.beta = beta
        return (tau > 0).to(tau.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (tau,) = ctx.saved_tensors
        s = torch.sigmoid(tau / ctx.beta)
        return grad * s * (1 - s) / ctx.beta, None


def heaviside_ste(tau: Tensor, beta: float = 0.5) -> Tensor:
    """``(τ > 0)`` forward; ``σ'(τ/β)/β`` backward (the surrogate gradient of the paper's node masks)."""
    return _HeavisideSTE.apply(tau, beta)


def circuit_gates(mask: ComponentMask) -> dict[Kind, Tensor]:
    """A channel mask as gates (1 = kept, 0 = set to the baseline)."""
    return {k: m.float() for k, m in mask.masks.items()}


def gated(model: HookedTransformer, gates: Mapping[Kind, Tensor], means: Mapping[Kind, Tensor]) -> list:
    """Hooks for ``a ← g·a + (1 − g)·mean`` at every position (:class:`cca_tl.interventions.Gate`)."""
    return interventions.hooks(model, Gate(gates, means), positions=Positions.ALL)


def _diffs(model: HookedTransformer, data: ContrastSet, hooks_fn: Callable[[], list], batch_size: int) -> Tensor:
    out = []
    for batch in data.batches(batch_size, pad_id=pad_token_id(model), device=model.cfg.device):
        out.append(two_logit_diff(model, batch, hooks_fn()))
    return torch.cat(out)


def binary_loss(diff: Tensor, scale: float | Tensor = 1.0, shift: float | Tensor = 0.0) -> Tensor:
    """Mean binary cross-entropy of the contrast: ``softplus(−(a·d + b))`` (target wins when ``d > 0``)."""
    return torch.nn.functional.softplus(-(scale * diff + shift)).mean()


@torch.no_grad()
def circuit_diffs(model: HookedTransformer, data: ContrastSet, keep: ComponentMask | None,
                  means: Mapping[Kind, Tensor], *, batch_size: int = 16) -> Float[Tensor, "record"]:
    """Logit differences with every node outside ``keep`` mean-ablated (``None``: the full model)."""
    if keep is None:
        return _diffs(model, data, lambda: [], batch_size).float().cpu()
    gates = circuit_gates(keep)
    return _diffs(model, data, lambda: gated(model, gates, means), batch_size).float().cpu()


def bisect_smallest(loss_at: Callable[[int], float], lo: int, hi: int, target: float) -> tuple[int, dict[int, float]]:
    """Smallest ``k`` in ``[lo, hi]`` with ``loss_at(k) <= target``, assuming the loss falls as ``k`` grows.

    Returns ``(k, evaluated)``; ``k = hi`` if even ``hi`` misses the target (check ``evaluated[hi]``).
    """
    seen: dict[int, float] = {}

    def f(k: int) -> float:
        if k not in seen:
            seen[k] = float(loss_at(k))
        return seen[k]

    if f(hi) > target:
        return hi, seen
    while lo < hi:
        mid = (lo + hi) // 2
        if f(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return hi, seen


def calibrate_logits(diffs: Tensor, *, steps: int = 16) -> tuple[float, float, float]:
    """Scale ``a`` and shift ``b`` of the logit difference minimising the binary loss (LBFGS, ``steps``);
    returns ``(a, b, calibrated loss)``."""
    diffs = diffs.detach().double()
    a = torch.ones((), dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = binary_loss(diffs, a, b)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(a), float(b), float(binary_loss(diffs, a, b))


@dataclass
class PruneResult:
    """The pruned circuit, its scores, the bisection curve and the losses that matter."""

    mask: ComponentMask          # kept nodes, channel granularity
    scores: dict[Kind, Tensor]
    curve: pd.DataFrame          # k, loss (every circuit size the bisection evaluated)
    history: pd.DataFrame        # per step: task loss, live nodes
    full_loss: float
    circuit_loss: float
    calibrated_loss: float
    calibration: tuple[float, float]
    target_loss: float
    reached: bool
    config: dict = field(default_factory=dict)


def prune_nodes(model: HookedTransformer, data: ContrastSet, means: Mapping[Kind, Tensor] | None = None, *,
                kinds: Iterable[Kind | str] = NODE_KINDS, k_coef: float = 1e-4, steps: int = 200, lr: float = 0.05,
                beta: float = 0.5, target_loss: float = 0.15, tau_init: float = 1.0, batch_size: int = 16,
                seed: int = 0, progress: bool = True) -> PruneResult:
    """Learn node scores (see module doc), then bisect to the smallest top-k circuit reaching ``target_loss``.

    The model's weights are untouched. ``means``: the general-text means of :func:`cca_tl.interventions.text_means`
    (computed if None).
    """
    from tqdm.auto import tqdm

    data.validate(model)
    kinds = [Kind(k) for k in kinds]
    means = means if means is not None else text_means(model, kinds=kinds)
    reg = registry_of(model)
    taus = nn.ParameterDict({k.value: nn.Parameter(torch.full((reg.n_layers, *reg.entry_shape(k, "channel")),
                                                              float(tau_init),
                                                              device=model.cfg.device)) for k in kinds})
    opt = torch.optim.Adam(taus.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    with trainable(model):  # the model is read through; only the gates' thresholds train
        for step in tqdm(range(steps), desc="node pruning", disable=not progress, leave=False):
            idx = torch.randperm(len(data), generator=generator)[:batch_size].tolist()
            batch_data = data.subset(idx)
            gates = {k: heaviside_ste(taus[k.value], beta) for k in kinds}
            diff = _diffs(model, batch_data, lambda: gated(model, gates, means), batch_size)
            live = sum(g.sum() for g in gates.values())
            task = binary_loss(diff)
            loss = task + k_coef * live
            if not torch.isfinite(loss):
                raise FloatingPointError(f"node-pruning loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for p in taus.values():
                    p.clamp_(-1.0, 1.0)
            history.append(dict(step=step, task_loss=task.item(), live=int(live.item())))
    scores = {k: taus[k.value].detach().cpu() for k in kinds}
    total = sum(v.numel() for v in scores.values())

    def loss_at(k: int) -> float:
        return float(binary_loss(circuit_diffs(model, data, ComponentMask.top_k(model, scores, k), means,
                                               batch_size=batch_size)))

    k, seen = bisect_smallest(loss_at, 0, total, target_loss)
    mask = ComponentMask.top_k(model, scores, k)
    diffs = circuit_diffs(model, data, mask, means, batch_size=batch_size)
    a, b, calibrated = calibrate_logits(diffs)
    full = float(binary_loss(circuit_diffs(model, data, None, means, batch_size=batch_size)))
    return PruneResult(
        mask=mask, scores=scores, curve=pd.DataFrame(sorted(seen.items()), columns=["k", "loss"]),
        history=pd.DataFrame(history), full_loss=full, circuit_loss=float(binary_loss(diffs)),
        calibrated_loss=calibrated, calibration=(a, b), target_loss=target_loss, reached=seen.get(k, math.inf) <= target_loss,
        config=dict(kinds=[k.value for k in kinds], k_coef=k_coef, steps=steps, lr=lr, beta=beta,
                    tau_init=tau_init, batch_size=batch_size, seed=seed),
    )


def faithfulness(model: HookedTransformer, data: ContrastSet, mask: ComponentMask, means: Mapping[Kind, Tensor], *,
                 batch_size: int = 16) -> pd.DataFrame:
    """Binary loss and accuracy of: the full model; the circuit alone (sufficiency); the model with the
    circuit mean-ablated (necessity); everything mean-ablated."""
    empty = mask & ~mask
    rows = []
    for label, keep in (("full model", None), ("circuit only (sufficiency)", mask),
                        ("circuit ablated (necessity)", ~mask), ("everything ablated", empty)):
        d = circuit_diffs(model, data, keep, means, batch_size=batch_size)
        rows.append(dict(setting=label, nodes_kept=keep.count() if keep is not None else mask.size(),
                         loss=float(binary_loss(d)), accuracy=float((d > 0).float().mean()),
                         logit_diff=float(d.mean())))
    return pd.DataFrame(rows).set_index("setting")


def plot_circuit(mask: ComponentMask, title: str = ""):
    """The kept nodes as dots: one row per layer, one column block per kind (position = channel index)."""
    import matplotlib.pyplot as plt  # the current backend: inline in Jupyter, Agg when headless

    kinds = list(mask.kinds)
    colours = {"q": "tab:blue", "k": "tab:green", "v": "tab:purple", "neuron": "tab:orange"}
    fig, ax = plt.subplots(figsize=(11, 5))
    for col, kind in enumerate(kinds):
        keep = mask.masks[kind].flatten(1)  # [layer, nodes]
        layers, idx = keep.nonzero(as_tuple=True)
        ax.scatter(col + idx.float() / keep.shape[1] * 0.9, layers, s=18, color=colours.get(kind.value, "grey"),
                   label=f"{kind.value}: {int(keep.sum())} of {keep.numel():,}")
    ax.set_xticks([c + 0.45 for c in range(len(kinds))],
                  [k.value + (" channels" if k is not Kind.NEURON else "s") for k in kinds])
    ax.set_ylabel("layer")
    ax.set_ylim(-0.5, mask.identity.n_layers - 0.5)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncols=4)
    ax.set_title(title or f"circuit: {mask.count()} nodes")
    fig.tight_layout()
    return fig


def _writers(model: HookedTransformer, mask: ComponentMask) -> list[tuple[float, Tensor]]:
    """Kept writing nodes as ``(sublayer order, nonzero pattern over residual channels)``: a value channel
    writes through its row of ``W_O`` (attention of layer l: order 2l), a neuron through its row of ``W_out``
    (order 2l + 1)."""
    out = []
    reg = registry_of(model)
    group = model.cfg.n_heads // reg.n_units(Kind.V)
    if Kind.V in mask.masks:
        for layer, g, i in mask.masks[Kind.V].nonzero().tolist():
            rows = model.W_O[layer, g * group:(g + 1) * group, i]  # [heads sharing the kv head, d_model]
            out.append((2 * layer, (rows != 0).any(0)))
    if Kind.NEURON in mask.masks:
        for layer, n in mask.masks[Kind.NEURON].nonzero().tolist():
            out.append((2 * layer + 1, model.W_out[layer, n] != 0))
    return out


def _readers(model: HookedTransformer, mask: ComponentMask, logit_tokens: Sequence[int]) -> list[tuple[float, Tensor]]:
    """Kept reading nodes as ``(sublayer order, nonzero pattern over residual channels)``: q/k/v channels
    read through their column of ``W_Q/W_K/W_V`` (order 2l), neurons through ``W_in`` (2l + 1), the task's
    logits through ``W_U`` columns (after every layer)."""
    out = []
    weights = {Kind.Q: model.W_Q, Kind.K: model.W_K, Kind.V: model.W_V}
    reg = registry_of(model)
    for kind, w in weights.items():
        if kind not in mask.masks:
            continue
        group = 1 if kind is Kind.Q else model.cfg.n_heads // reg.n_units(kind)
        for layer, h, i in mask.masks[kind].nonzero().tolist():
            cols = w[layer, h * group:(h + 1) * group, :, i]  # [heads, d_model]
            out.append((2 * layer, (cols != 0).any(0)))
    if Kind.NEURON in mask.masks:
        for layer, n in mask.masks[Kind.NEURON].nonzero().tolist():
            out.append((2 * layer + 1, model.W_in[layer, :, n] != 0))
    for token in logit_tokens:
        out.append((math.inf, model.W_U[:, token] != 0))
    return out


@torch.no_grad()
def circuit_edges(model: HookedTransformer, mask: ComponentMask, logit_tokens: Sequence[int] = ()) -> dict[str, int]:
    """Edges of a circuit: pairs of kept nodes joined by a nonzero path of weights.

    - **residual edges**: a writer (value channel via ``W_O``, neuron via ``W_out``) and a later reader (q/k/v
      channel, neuron, or one of ``logit_tokens``' unembedding columns) that touch a common residual channel
      with nonzero weights on both sides;
    - **attention edges**: a kept query channel and the kept key channel with the same index in its (kv)
      head (their product is one term of the attention score).

    In a dense model every ordered pair is an edge; weight sparsity is what makes this count small.
    """
    writers, readers = _writers(model, mask), _readers(model, mask, logit_tokens)
    residual = 0
    if writers and readers:
        w_order = torch.tensor([o for o, _ in writers])
        r_order = torch.tensor([o for o, _ in readers], dtype=torch.float64)
        w_pat = torch.stack([p for _, p in writers]).float()  # [writers, d_model]
        r_pat = torch.stack([p for _, p in readers]).float()  # [readers, d_model]
        touches = (w_pat @ r_pat.T) > 0
        later = w_order[:, None].double() < r_order[None, :]
        residual = int((touches & later).sum())
    attention = 0
    if Kind.Q in mask.masks and Kind.K in mask.masks:
        group = model.cfg.n_heads // registry_of(model).n_units(Kind.K)
        q, k = mask.masks[Kind.Q], mask.masks[Kind.K]  # [layer, heads, d_head], [layer, kv heads, d_head]
        k_per_q = k.repeat_interleave(group, dim=1)
        attention = int((q & k_per_q).sum())
    return dict(residual_edges=residual, attention_edges=attention, edges=residual + attention)
