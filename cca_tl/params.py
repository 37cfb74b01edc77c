"""Which parameters train, and copies of weights to go back to: two context managers and a snapshot.

``trainable`` is how DCM, node pruning and bridges freeze the model they read through (their own gains,
gates or bridges train), and how the targeted update lets only the touched matrices take gradients.
``WeightSnapshot`` copies parameters whole; the targeted update keeps its own copies of the selected entries
only (a DCM mask touches ~1 % of the entries of every matrix it reaches), and a pipeline run's
:class:`cca_tl.pipeline.ModelSession` keeps only the regions an edit protected.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Collection, Iterator, Mapping

import torch
from torch import Tensor, nn


@contextmanager
def projected_gradients(params: Mapping[str, Tensor], project: Callable[[str, Tensor], None]) -> Iterator[None]:
    """Within the block, as soon as backward has written a parameter's gradient, ``project(name, grad)``
    takes it and the parameter's own ``.grad`` is dropped (a post-accumulate hook). How reparametrised
    updates (LoRA factors, head offsets) receive their gradients without a full-size gradient per weight
    piling up."""
    def hook(name: str):
        def take(p: Tensor) -> None:
            project(name, p.grad)
            p.grad = None
        return take

    handles = [p.register_post_accumulate_grad_hook(hook(n)) for n, p in params.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for p in params.values():
            p.grad = None


@contextmanager
def trainable(*modules: nn.Module, names: Collection[str] = ()) -> Iterator[None]:
    """Within the block, of ``modules``' parameters only those named in ``names`` (names in the first
    module) require gradients. Afterwards every parameter's flag is what it was, and the named ones hold no
    ``.grad`` (the block's gradients are read inside it)."""
    before = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    named = set(names)
    unknown = named - {n for n, _ in modules[0].named_parameters()} if modules else named
    if unknown:
        raise KeyError(f"No parameter named {sorted(unknown)[:3]} in the model.")
    for p, _ in before:
        p.requires_grad_(False)
    chosen = [modules[0].get_parameter(n) for n in sorted(named)]
    for p in chosen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in chosen:
            p.grad = None
        for p, flag in before:
            p.requires_grad_(flag)


class WeightSnapshot:
    """Copies of a module's parameters (all, or those named), to restore bit for bit or compare against."""

    def __init__(self, module: nn.Module, names: Collection[str] | None = None):
        self.module = module
        self.values = {n: p.detach().clone() for n, p in module.named_parameters() if names is None or n in names}
        missing = set(names or ()) - set(self.values)
        if missing:
            raise KeyError(f"No parameter named {sorted(missing)[:3]} in the model.")

    @torch.no_grad()
    def restore(self) -> None:
        """Write the copied values back (in place: views and optimizers keep pointing at the same tensors)."""
        for name, value in self.values.items():
            self.module.get_parameter(name).copy_(value)

    def changed(self) -> list[str]:
        """Names of the copied parameters whose current values differ from the copy in any bit."""
        return [n for n, v in self.values.items() if not torch.equal(self.module.get_parameter(n), v)]


@contextmanager
def restored_after(module: nn.Module, names: Collection[str] | None = None) -> Iterator[WeightSnapshot]:
    """Try an edit inside the block; the parameters (all, or those named) are put back when it ends."""
    snapshot = WeightSnapshot(module, names)
    try:
        yield snapshot
    finally:
        snapshot.restore()
