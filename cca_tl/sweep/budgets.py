"""Component sets at a budget: the top-k of a DCM run's stored gains, and the random sets they are
compared with (layer-matched, uniform over layers, or disjoint: the layer profile without the set's own units).

Why the gains need a tie-break: at the default λ the DCM gains saturate. On the power experiment's seed 0
(Gemma-3-270M, 36,972 maskable components) 1,066 gains sit at exactly 1.0, so "the top 90" by gain alone
would be the first 90 of those by position — layer 0 first. Among equal gains we rank by the gradient of
the DCM objective (the mean pivot logit difference) with respect to each gain at the stored gains: how much
turning that component further up would still raise the objective. That is one forward and backward pass
over the training pivots, stored beside the gains.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from cca_tl.backend import HookedTransformer

from cca_tl.components import Kind, registry_of
from cca_tl.component_mask import ComponentMask, top_k_select


def gain_attribution(model: HookedTransformer, data, gains: dict[str, Tensor], *, form: str = "paper",
                     batch_size: int = 8) -> dict[str, Tensor]:
    """∂ mean logit difference / ∂ gain at the stored ``gains`` (per kind, the gains' shapes), over the
    training pivots ``data`` (a :class:`cca_tl.contrast.ContrastSet`); the model is only read."""
    from cca_tl.contrast import PrefixKV, pad_token_id, two_logit_diff
    from cca_tl.dcm import DCMGains
    from cca_tl.params import trainable

    dcm = DCMGains.from_values(model, {k: v.to(model.cfg.device) for k, v in gains.items()}, form=form, positions="last")
    pad = pad_token_id(model)
    # The gains act at the last position only, so nothing before it depends on them: DCM's own prefix cache
    # makes this a last-token pass (on the budget sweep's seed 0, the full-prefix pass took ~10 min of CPU).
    prefix_kv = PrefixKV(model, data, batch_size=batch_size)
    with trainable(model):
        for batch in data.batches(batch_size, pad_id=pad, device=model.cfg.device, prefix_kv=prefix_kv):
            (two_logit_diff(model, batch, dcm.hooks(batch.last_pos)).sum() / len(data)).backward()
    return {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu().clone()
            for k, p in dcm.gains.items()}


def ranking_scores(gains: dict[str, Tensor], attribution: dict[str, Tensor]) -> dict[str, Tensor]:
    """One score per component whose order is: gain first, attribution among equal gains, position last.
    The scores are the negated ranks (all distinct), so :func:`top_k_select` takes them as they are."""
    kinds = list(gains)
    gain = torch.cat([gains[k].flatten().float() for k in kinds]).numpy()
    attr = torch.cat([attribution[k].flatten().float() for k in kinds]).numpy()
    position = np.arange(len(gain))
    order = np.lexsort((position, -attr, -gain))  # the last key sorts first
    rank = np.empty(len(gain))
    rank[order] = np.arange(len(gain))
    scores, start = {}, 0
    for k in kinds:
        n = gains[k].numel()
        scores[k] = torch.from_numpy(-rank[start:start + n]).reshape(gains[k].shape)
        start += n
    return scores


def budget_size(model_or_registry, share: float, kinds) -> int:
    """Components at a budget: ``share`` of the maskable components of ``kinds``, at least one."""
    reg = registry_of(model_or_registry)
    return max(1, round(share * reg.n_components(kinds)))


def budget_mask(model_or_registry, scores: dict[str, Tensor], share: float) -> ComponentMask:
    """The top ``share`` of the components by :func:`ranking_scores`."""
    reg = registry_of(model_or_registry)
    k = budget_size(reg, share, list(scores))
    return ComponentMask(reg.identity, {Kind(kind): m for kind, m in top_k_select(scores, k).items()})


def layer_matched(mask: ComponentMask, draw_seed: int) -> ComponentMask:
    """A seeded random set with ``mask``'s count per kind *and* layer (the control that keeps its layer
    profile)."""
    return mask.random_like(seed=draw_seed)


def uniform_like(mask: ComponentMask, draw_seed: int) -> ComponentMask:
    """A seeded random set with ``mask``'s count per kind, uniform over every layer and unit (the control
    that does not know where the circuit sits)."""
    generator = torch.Generator().manual_seed(draw_seed)
    out = {}
    for kind in mask.kinds:
        flat = torch.zeros(mask.masks[kind].numel(), dtype=torch.bool)
        flat[torch.randperm(flat.numel(), generator=generator)[:int(mask.masks[kind].sum())]] = True
        out[kind] = flat.reshape(mask.masks[kind].shape)
    return ComponentMask(mask.identity, out)


def disjoint_matched(mask: ComponentMask, draw_seed: int) -> ComponentMask:
    """A seeded random set with ``mask``'s count per kind that shares none of its units: each layer's count is
    drawn from that layer's other units, and what a layer cannot hold goes to the nearest layers that can
    (the nearer first, the two sides of a tie in random order). A kind with fewer free units than selected
    ones (10 of Gemma-3-270M's 18 v heads at the 8 % budget) takes every free unit and the rest at random
    from the set's own: it shares as few as that kind allows.

    The control the layer-matched draw cannot be on a model with few heads per layer: Gemma-3-270M has one
    kv head per layer, so a layer-matched draw keeps every k/v head of the DCM set, and at budgets up to 1 %
    the budget sweep's draws share 42–94 % of its parameters (``analyses/results/budget/overlap.csv``). This
    one keeps the kinds and, as far as free units allow, the layers, and shares nothing there."""
    generator = torch.Generator().manual_seed(draw_seed)
    out = {}
    for kind in mask.kinds:
        own = mask.masks[kind].flatten(1)                      # [layers, units]
        taken = torch.zeros_like(own)
        short = [n - _draw_free(own, taken, layer, n, generator) for layer, n in enumerate(own.sum(1).tolist())]
        left = 0
        for layer, n in enumerate(short):
            for near in _nearest_layers(layer, own.shape[0], generator) if n else []:
                n -= _draw_free(own, taken, near, n, generator)
                if n == 0:
                    break
            left += n
        if left:  # every free unit is taken: the rest from the set's own
            kept = own.nonzero()
            kept = kept[torch.randperm(len(kept), generator=generator)[:left]]
            taken[kept[:, 0], kept[:, 1]] = True
        out[kind] = taken.reshape(mask.masks[kind].shape)
    return ComponentMask(mask.identity, out)


def _draw_free(own: Tensor, taken: Tensor, layer: int, n: int, generator: torch.Generator) -> int:
    """Take up to ``n`` random units of ``layer`` that are neither ``own`` nor ``taken`` (marked in ``taken``
    in place); how many it took."""
    free = (~own[layer] & ~taken[layer]).nonzero().flatten()
    pick = free[torch.randperm(len(free), generator=generator)[:n]]
    taken[layer, pick] = True
    return len(pick)


def _nearest_layers(layer: int, n_layers: int, generator: torch.Generator) -> list[int]:
    """The other layers by distance from ``layer``; the two at one distance in random order."""
    out = []
    for distance in range(1, n_layers):
        pair = [near for near in (layer - distance, layer + distance) if 0 <= near < n_layers]
        out += [pair[i] for i in torch.randperm(len(pair), generator=generator).tolist()]
    return out


#: The random sets a DCM set is compared with, by the sweep's selection name.
RANDOM_SETS = {"layer-matched": layer_matched, "uniform": uniform_like, "disjoint": disjoint_matched}
#: Added to a draw's seed per control, so that two controls of one draw are different draws (the sweep's
#: committed cells were drawn with these).
_SEED_OFFSET = {"layer-matched": 0, "uniform": 7, "disjoint": 13}


def control_mask(top: ComponentMask, selection: str, *, seed: int, budget: float, draw: int) -> ComponentMask:
    """The random set a sweep cell (run ``seed``, ``budget``, random draw ``draw``) compares ``top`` with.
    Every place that rebuilds a cell's set (the cell itself, ``analyses/budget_overlap.py``) comes here, so
    they draw the same one."""
    draw_seed = 1_000_003 * seed + 1_009 * draw + round(budget * 1e6) + _SEED_OFFSET[selection]
    return RANDOM_SETS[selection](top, draw_seed)


def shared_with(top: ComponentMask, control: ComponentMask, model_or_registry) -> dict[str, float]:
    """What a control set shares with the DCM set: components and parameters (authors' slices), the
    parameters' share in percent, and how many of its components sit outside the DCM set's count for their
    kind and layer (0 for a layer-matched draw). A layer-matched draw on a model with few heads per layer
    keeps most of a small DCM set's heads, and heads hold most of its parameters
    (``analyses/budget_overlap.py``)."""
    reg = registry_of(model_or_registry)
    both = ComponentMask(reg.identity, {k: top.masks[k] & control.masks[k] for k in top.kinds})
    total = top.n_params(reg)
    off_layer = sum(int((control.masks[k].flatten(1).sum(1) - top.masks[k].flatten(1).sum(1)).clamp(min=0).sum())
                    for k in top.kinds)
    return dict(shared_components=both.count(), shared_params=both.n_params(reg),
                pct_params_shared=round(100 * both.n_params(reg) / total, 1) if total else 0.0,
                components_off_layer=off_layer)
