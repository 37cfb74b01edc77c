"""The entries an update may change, and the one way a step writes them.

An update trains one of: the slices of a component mask (the DCM mask, a random mask of the same size, or
every real parameter) — :class:`SelectedEntries`, which steps by flat index so that every other entry keeps
its bits — or low-rank factors / per-head offsets (:class:`LoRAEntries`). :func:`trainable_entries` picks
one from the update's ``params``; the loop in :mod:`cca_tl.update` sees only their common interface
(``regions``, ``count``, ``snapshot``, ``restore``, ``gradients``, ``step``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Literal

import torch
from torch import Tensor
from cca_tl.backend import HookedTransformer, parameter_owner

from cca_tl.component_mask import ComponentMask
from cca_tl.components import WeightSet, real_parameter_names, registry_of
from cca_tl.lora import LoRAParams
from cca_tl.offsets import HeadOffsets

#: Which parameters an update trains (its ``params=``): the DCM mask's slices, a random mask's, every real
#: parameter, LoRA factors, head offsets.
ParamSet = Literal["mask", "random", "all", "lora", "offsets"]
Optimizer = Literal["sgd", "adamw"]
PARAM_SETS: tuple[ParamSet, ...] = ("mask", "random", "all", "lora", "offsets")
_RENAMED = {"Params": "ParamSet", "PARAMS": "PARAM_SETS"}


def __getattr__(name: str):
    """The old names ``Params`` and ``PARAMS`` (``params`` also names a module) for one version."""
    if name in _RENAMED:
        import warnings

        warnings.warn(f"cca_tl.entries.{name} is now {_RENAMED[name]}.", DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def element_masks(model: HookedTransformer, mask: ComponentMask,
                  weight_set: WeightSet = "authors") -> dict[str, Tensor]:
    """Per touched parameter, a boolean tensor of its shape marking the selected components' slices."""
    reg = registry_of(model)
    mask.validate(reg)
    reg.check_editable()
    owner = parameter_owner(model)
    out: dict[str, Tensor] = {}
    for comp in mask.components():
        for s in reg.slices(comp, weight_set):
            if s.param not in out:
                out[s.param] = torch.zeros_like(owner.get_parameter(s.param), dtype=torch.bool)
            s.of(out[s.param]).fill_(True)
    return out


Index = tuple[Tensor, ...] | None  # coordinates of the selected entries (``mask.nonzero(as_tuple=True)``); None: all


def entries_of(p: Tensor, index: Index) -> Tensor:
    """The selected entries of ``p`` (1-d), or all of it in its shape for ``index=None``."""
    return p.detach()[index] if index is not None else p.detach()


def set_entries(p: Tensor, index: Index, values: Tensor) -> None:
    """Write ``values`` to the selected entries of ``p`` in place; every other entry keeps its bits."""
    if index is None:
        p.detach().copy_(values)
    else:
        p.detach()[index] = values


@contextmanager
def compact_gradients(params: dict[str, Tensor], where: dict[str, Index]) -> Iterator[dict[str, Tensor | None]]:
    """Accumulate each parameter's gradient only at its selected entries, dropping the full gradient as soon
    as backward has written it (a post-accumulate hook).

    Without this every touched matrix holds a full-size ``.grad`` through the step: on Gemma-3-270M a DCM
    mask touches all 18 layers' attention and MLP matrices, ~400 MB of float32 gradients for the ~1 % of
    entries the step reads. Here only one parameter's full gradient exists at a time.
    """
    grads: dict[str, Tensor | None] = {n: None for n in params}

    def hook(name: str) -> Callable[[Tensor], None]:
        def keep(p: Tensor) -> None:
            g = p.grad if where[name] is None else p.grad[where[name]]
            grads[name] = g if grads[name] is None else grads[name].add_(g)
            p.grad = None
        return keep

    handles = [p.register_post_accumulate_grad_hook(hook(n)) for n, p in params.items()]
    try:
        yield grads
    finally:
        for h in handles:
            h.remove()
        for p in params.values():
            p.grad = None


def update_selection(model: HookedTransformer, mask: ComponentMask | None, params: ParamSet, weight_set: WeightSet,
                     seed: int) -> tuple[ComponentMask | None, dict[str, Tensor | None], float]:
    """Which entries a masked update changes: the mask used (None for ``"all"``), per touched parameter its
    element mask (None: every entry), and the fraction of components selected."""
    if params in ("mask", "random"):
        if mask is None:
            raise ValueError(f"params={params!r} needs a DCM mask")
        mask.validate(registry_of(model))
        used = mask if params == "mask" else mask.random_like(seed)
        return used, dict(element_masks(model, used, weight_set)), used.fraction_components()
    if params == "all":
        return None, {name: None for name in real_parameter_names(model)}, 1.0
    raise ValueError(f"params must be one of {list(PARAM_SETS)} for a masked update, not {params!r}")


class SelectedEntries:
    """The entries an update may change, as coordinates per parameter: the step, snapshots and restores
    touch only those, and the gradient is kept only there (see :func:`compact_gradients`). Low-precision
    parameters get a float32 master copy of their selected entries, so that small steps are not lost to
    bfloat16 rounding (the copy is ~1 % of a matrix's entries for a DCM mask, not a second model); an
    AdamW update keeps one for every parameter (its moments are float32 too)."""

    def __init__(self, model: HookedTransformer, element_masks: dict[str, Tensor | None], optimizer: Optimizer = "sgd"):
        self.params = {name: parameter_owner(model).get_parameter(name) for name in element_masks}
        self.where: dict[str, Index] = {n: (m.nonzero(as_tuple=True) if m is not None else None)
                                        for n, m in element_masks.items()}
        self.regions = dict(element_masks)
        self.count = sum(int(m.sum()) if m is not None else self.params[n].numel() for n, m in element_masks.items())
        self.master = {n: entries_of(self.params[n], i).float().clone() for n, i in self.where.items()
                       if optimizer == "adamw" or self.params[n].dtype in (torch.bfloat16, torch.float16)}
        self.optimizer = optimizer
        self._adamw: torch.optim.Optimizer | None = None

    def snapshot(self) -> dict[str, Tensor]:
        return {n: entries_of(self.params[n], i).clone() for n, i in self.where.items()}

    @torch.no_grad()
    def restore(self, snapshot: dict[str, Tensor]) -> None:
        for n, i in self.where.items():
            set_entries(self.params[n], i, snapshot[n])
            if n in self.master:
                self.master[n].copy_(snapshot[n].float())

    @contextmanager
    def gradients(self) -> Iterator[dict[str, Tensor | None]]:
        with compact_gradients(self.params, self.where) as grads:
            yield grads

    @torch.no_grad()
    def step(self, grads: dict[str, Tensor | None], lr: float) -> None:
        """``W ← W − lr·g`` (SGD) or an AdamW step at the selected entries; every other entry keeps its bits."""
        if self.optimizer == "adamw":
            self._adamw_step(grads, lr)
            return
        for n, i in self.where.items():
            p, g = self.params[n], grads[n]
            if g is None:  # the loss does not reach this parameter
                continue
            if n in self.master:
                self.master[n].sub_(lr * g.float())
                set_entries(p, i, self.master[n].to(p.dtype))
            else:  # the same arithmetic per entry as torch.where(m, p - lr * g, p): bit-identical
                set_entries(p, i, entries_of(p, i) - lr * g)

    def _adamw_step(self, grads: dict[str, Tensor | None], lr: float) -> None:
        if self._adamw is None:
            self._adamw = torch.optim.AdamW(list(self.master.values()), lr=lr, weight_decay=0.0)
        for n, master in self.master.items():
            master.grad = None if grads[n] is None else grads[n].float()
        self._adamw.step()
        for n, i in self.where.items():
            if grads[n] is not None:
                set_entries(self.params[n], i, self.master[n].to(self.params[n].dtype))


class LoRAEntries:
    """:class:`cca_tl.lora.LoRAParams` (or :class:`cca_tl.offsets.HeadOffsets`, which has the same interface)
    behind the interface the update loop uses (the gradient reaches the
    factors through the weights' own gradients; SGD or AdamW on the factors)."""

    def __init__(self, lora: LoRAParams, optimizer: Optimizer, lr: float):
        self.lora = lora
        self.regions = lora.regions()
        self.params = lora.params
        self.count = lora.count
        leaves = lora.leaves()
        self._opt = (torch.optim.AdamW(leaves, lr=lr, weight_decay=0.0) if optimizer == "adamw"
                     else torch.optim.SGD(leaves, lr=lr))

    def snapshot(self) -> dict[str, Tensor]:
        return self.lora.snapshot()

    def restore(self, snapshot: dict[str, Tensor]) -> None:
        self.lora.restore(snapshot)

    @contextmanager
    def gradients(self) -> Iterator[dict[str, Tensor | None]]:
        with self.lora.gradients():
            yield {}

    @torch.no_grad()
    def step(self, grads: dict[str, Tensor | None], lr: float) -> None:
        self._opt.step()
        self._opt.zero_grad(set_to_none=True)
        self.lora.write()


def trainable_entries(model: HookedTransformer, mask: ComponentMask | None, params: ParamSet, weight_set: WeightSet,
                       optimizer: Optimizer, lr: float, seed: int, lora_rank: int | None,
                       heads: dict[int, list[int]] | None):
    """What an update trains, behind the loop's interface: (entries, the mask used or None, the fraction of
    components selected)."""
    if params == "offsets":
        if not heads:
            raise ValueError("params='offsets' needs heads ({layer: [head, ...]}; cca_tl.offsets.top_heads picks them).")
        return LoRAEntries(HeadOffsets(model, heads), optimizer, lr), None, 0.0
    if params == "lora":
        if lora_rank is None:
            raise ValueError("params='lora' needs lora_rank (cca_tl.lora.rank_for_budget sizes it to a mask).")
        return LoRAEntries(LoRAParams(model, lora_rank, seed=seed), optimizer, lr), None, 0.0
    used, emasks, fraction_components = update_selection(model, mask, params, weight_set, seed)
    entries = SelectedEntries(model, emasks, optimizer)
    if entries.count == 0:
        raise ValueError("The mask selects no weight entry (an empty DCM mask?): there is nothing to update. "
                         "Lower DCM's lam to keep some components.")
    return entries, used, fraction_components
