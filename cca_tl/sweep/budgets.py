"""Component sets at a budget: the top-k of a DCM run's stored gains, and the random sets they are
compared with (layer-matched, or uniform over layers).

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


def shared_with(top: ComponentMask, control: ComponentMask, model_or_registry) -> dict[str, float]:
    """What a control set shares with the DCM set: components and parameters (authors' slices), and the
    parameters' share in percent. A layer-matched draw on a model with few heads per layer keeps most of a
    small DCM set's heads, and heads hold most of its parameters (``analyses/budget_overlap.py``)."""
    reg = registry_of(model_or_registry)
    both = ComponentMask(reg.identity, {k: top.masks[k] & control.masks[k] for k in top.kinds})
    total = top.n_params(reg)
    return dict(shared_components=both.count(), shared_params=both.n_params(reg),
                pct_params_shared=round(100 * both.n_params(reg) / total, 1) if total else 0.0)
