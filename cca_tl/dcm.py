"""DCM: Desiderata-based Component Masking (docs/method.md §A3).

One trainable gain per registry component, applied through TransformerLens hooks at ``attn.hook_q``,
``attn.hook_k``, ``attn.hook_v`` (per kv head), optionally ``attn.hook_z``, and ``mlp.hook_post``. It
learns which components push the model towards the desired rather than the undesired next token:

    loss = −(logit_desired − logit_undesired) + λ · Σ m

Only the two needed logits are computed: the forward pass stops after the last block, the final norm is
applied to the last real position of each prefix, and the residual is multiplied by the two unembedding
columns (then the logit soft-cap, if the model has one). Prefixes are right-padded; causal attention
means the pads never influence the positions read, so no attention mask is needed.

Gain conventions (``form``):

* ``"paper"`` (default): ``h ← m·2h + (1−m)·h`` = ``(1+m)·h``; m=0 leaves h unchanged, m=1 doubles it.
* ``"code"``: the form in the authors' code, ``h ← 2m·h``; m=0.5 unchanged, m=1 doubled, m=0 ablated. (It
  was called ``"authors"``, which also names a weight set; that spelling is read for one version.)
"""

from __future__ import annotations

import json
import math
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

import pandas as pd
import torch
from torch import Tensor, nn
from cca_tl.backend import HookedTransformer, is_bridge

from cca_tl.components import DEFAULT_KINDS, Kind, registry_of
from cca_tl.component_mask import ComponentMask
from cca_tl import interventions
from cca_tl._io import atomic_write_bytes, atomic_write_text
from cca_tl.errors import NonFiniteLossError
from cca_tl.interventions import Positions, Scale
from cca_tl.params import trainable
from cca_tl.validated import Validated, bounded, positive
from cca_tl.contrast import ContrastSet, PrefixKV, pad_token_id, two_logit_diff

Form = Literal["paper", "code"]


# ----------------------------------------------------------------------------------------------------
# The mask as hooks
# ----------------------------------------------------------------------------------------------------


def __getattr__(name: str):
    """``DCMMask`` (now ``DCMGains``: "mask" is the binary ComponentMask) for one version."""
    if name == "DCMMask":
        import warnings

        warnings.warn("cca_tl.dcm.DCMMask is now DCMGains.", DeprecationWarning, stacklevel=2)
        return DCMGains
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def gain_form(form: str) -> Form:
    """``form`` checked, the old spelling ``"authors"`` read as ``"code"`` with a warning."""
    if form == "authors":
        import warnings

        warnings.warn("DCM's gain form 'authors' is now called 'code' ('authors' also names a weight set).",
                      DeprecationWarning, stacklevel=3)
        return "code"
    if form not in ("paper", "code"):
        raise ValueError(f"form must be 'paper' or 'code', not {form!r}")
    return form


class DCMGains(nn.Module):
    """Continuous gains, one per component of the chosen kinds, applied through TL hooks; :meth:`binarize`
    rounds them into the :class:`ComponentMask` (the mask is the binary selection, these are its gains)."""

    def __init__(self, model: HookedTransformer, kinds: Iterable[Kind | str] = DEFAULT_KINDS, *,
                 form: Form = "paper", positions: Positions | str = "last", init: float | None = None):
        super().__init__()
        form = gain_form(form)
        if positions not in ("last", "all"):
            raise ValueError(f"positions must be 'last' or 'all', not {positions!r}")
        self.registry = registry_of(model)
        self.kinds = tuple(Kind(k) for k in kinds if self.registry.n_units(k) > 0)
        self.form, self.positions = form, Positions(positions)
        init = 1.0 if init is None else init
        self.gains = nn.ParameterDict({
            k.value: nn.Parameter(torch.full((self.registry.n_layers, self.registry.n_units(k)), float(init),
                                             device=model.cfg.device))
            for k in self.kinds
        })

    @classmethod
    def from_values(cls, model: HookedTransformer, values: dict[Kind | str, Tensor], **kwargs) -> "DCMGains":
        mask = cls(model, kinds=list(values), **kwargs)
        with torch.no_grad():
            for k, v in values.items():
                mask.gains[Kind(k).value].copy_(v)
        return mask

    def gain_values(self) -> dict[Kind, Tensor]:
        """The multiplicative gain of every component (``1 + m`` or ``2m``), differentiable in the gains."""
        return {k: 1.0 + m if self.form == "paper" else 2.0 * m
                for k, m in ((k, self.gains[k.value]) for k in self.kinds)}

    def hooks(self, last_pos: Tensor | None = None) -> list[tuple[str, Callable]]:
        """(hook name, function) pairs for ``run_with_hooks``; ``last_pos`` is needed for positions='last'."""
        return interventions.hooks(self.registry, Scale(self.gain_values()), positions=self.positions,
                                   last_pos=last_pos)

    @torch.no_grad()
    def clamp_(self) -> None:
        for p in self.gains.values():
            p.clamp_(0.0, 1.0)

    def l1(self) -> Tensor:
        return sum(p.sum() for p in self.gains.values())

    @torch.no_grad()
    def binarize(self, threshold: float = 0.5) -> ComponentMask:
        """Selected = gain parameter rounded to 1 (m ≥ 0.5)."""
        return ComponentMask(self.registry.identity, {k: self.gains[k.value].detach().cpu() >= threshold
                                                      for k in self.kinds})

    @torch.no_grad()
    def count_selected(self) -> dict[str, int]:
        return {k.value: int((self.gains[k.value] >= 0.5).sum()) for k in self.kinds}


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


@dataclass
class DCMResult:
    """A learned binary mask, the continuous gains it came from, and the per-epoch history."""

    mask: ComponentMask
    gains: dict[str, Tensor]
    history: pd.DataFrame
    lam: float
    stopped: str
    config: dict = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        """Mask (``.safetensors`` and human-readable ``.json``), gains, history and ``result.json`` in
        ``directory``, each file written atomically."""
        from safetensors.torch import save

        directory = Path(directory)
        self.mask.save(directory / "mask.safetensors")
        self.mask.save(directory / "mask.json")
        atomic_write_bytes(directory / "gains.safetensors", save({k: v.contiguous() for k, v in self.gains.items()}))
        atomic_write_text(directory / "history.csv", self.history.to_csv(index=False))
        atomic_write_text(directory / "result.json", json.dumps(dict(lam=self.lam, stopped=self.stopped,
                                                                     config=self.config), indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "DCMResult":
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = json.loads((directory / "result.json").read_text())
        return cls(ComponentMask.load(directory / "mask.safetensors"), load_file(str(directory / "gains.safetensors")),
                   pd.read_csv(directory / "history.csv"), meta["lam"], meta["stopped"], meta["config"])


KindName = Literal["q", "k", "v", "z", "neuron"]


@dataclass
class DCMConfig(Validated):
    """DCM's hyper-parameters: the run's ``dcm`` section and :func:`train_dcm`'s defaults, in one place.

    The defaults are the values the main job, the notebooks and the sweeps use (λ 1e-2, Adam at 0.1, 10
    epochs, batch 8); :meth:`paper` gives the paper's (docs/method.md §A3: λ 1e-3, Adam at 5e-3, up to 50
    epochs). Either converges to a mask; on Gemma-3-270M the paper's run up to five times as many epochs.
    """

    kinds: list[KindName] = field(default_factory=lambda: ["q", "k", "v", "neuron"])
    form: Literal["paper", "code"] = "paper"
    lam: float = bounded(1e-2, min=0)  # the sparsity weight; 0: no penalty
    lr: float = bounded(0.1, above=0)
    epochs: int = positive(10)  # at most; training stops early once the selected count settles
    batch_size: int = positive(8)

    @classmethod
    def paper(cls) -> "DCMConfig":
        """The paper's hyper-parameters (docs/method.md §A3)."""
        return cls(lam=1e-3, lr=5e-3, epochs=50)

    def train_kwargs(self) -> dict:
        """These fields as :func:`train_dcm`'s keyword arguments."""
        return dict(kinds=list(self.kinds), form=self.form, lam=self.lam, lr=self.lr, max_epochs=self.epochs,
                    batch_size=self.batch_size)


_DEFAULTS = DCMConfig()


def _dcm_step(model: HookedTransformer, dcm: DCMGains, batch, optimizer: torch.optim.Optimizer, lam: float,
              step: int, where: str, history: list[dict]) -> tuple[Tensor, Tensor]:
    """One Adam step on ``−mean logit diff + λ·Σ gains``, gains clamped to [0, 1]; (loss, per-row diffs).
    A non-finite loss raises with the gains from before the step."""
    last_good = {k: v.detach().clone() for k, v in dcm.gains.items()}
    diff = two_logit_diff(model, batch, dcm.hooks(batch.last_pos))
    loss = -diff.mean() + lam * dcm.l1()
    if not torch.isfinite(loss):
        good_mask = DCMGains.from_values(model, last_good, form=dcm.form, positions=dcm.positions).binarize()
        raise NonFiniteLossError(
            f"DCM loss is {loss.item()} at step {step} ({where}); the gains before that step are kept in "
            ".last_good.", step,
            DCMResult(good_mask, last_good, pd.DataFrame(history), lam, f"non-finite loss at step {step}"))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    dcm.clamp_()
    return loss, diff


def train_dcm(
    model: HookedTransformer,
    data: ContrastSet,
    *,
    lam: float = _DEFAULTS.lam,
    kinds: Iterable[Kind | str] = DEFAULT_KINDS,
    form: Form = _DEFAULTS.form,
    positions: Positions | str = "last",
    init: float | None = None,
    lr: float = _DEFAULTS.lr,
    step_size: int = 5,
    gamma: float = 0.9,
    batch_size: int = _DEFAULTS.batch_size,
    max_epochs: int = _DEFAULTS.epochs,
    patience_frac: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    prefix_cache: bool | None = None,
    cache_budget_bytes: int = 4 * 2**30,
) -> DCMResult:
    """Learn a DCM mask on ``data``; the model is left unchanged. The defaults are :class:`DCMConfig`'s
    (``train_dcm(model, data, **DCMConfig.paper().train_kwargs())`` runs the paper's).

    Adam(lr) with StepLR(step_size epochs, gamma), gains clamped to [0, 1] after every step. Early stop:
    once the selected count (gains ≥ 0.5) has started to move, stop when it stays the same for
    ``patience_frac`` of an epoch's batches (at least one). Deterministic for a ``seed``.

    ``prefix_cache`` (default: on for ``positions="last"`` when the keys/values fit ``cache_budget_bytes``)
    computes every prefix's keys and values once, so each step costs one token per example instead of
    the whole prefix (see :class:`PrefixKV`).
    """
    from tqdm.auto import tqdm

    data.validate(model)
    generator = torch.Generator().manual_seed(seed)
    dcm = DCMGains(model, kinds, form=form, positions=positions, init=init)
    optimizer = torch.optim.Adam(dcm.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    batches_per_epoch = math.ceil(len(data) / batch_size)
    patience = max(1, math.ceil(patience_frac * batches_per_epoch))
    pad = pad_token_id(model)
    if prefix_cache is None:  # a HookedTransformer path (TransformerLens 3's key/value cache)
        prefix_cache = (positions == "last" and not is_bridge(model)
                        and PrefixKV.estimate_bytes(model, data) <= cache_budget_bytes)
    if prefix_cache and positions != "last":
        raise ValueError("prefix_cache needs positions='last' (with 'all' the mask changes every position)")
    prefix_kv = PrefixKV(model, data, batch_size=batch_size, progress=progress) if prefix_cache else None
    history, step, unchanged, moved, stopped = [], 0, 0, False, "max_epochs"
    last_count = sum(dcm.count_selected().values())
    bar = tqdm(total=max_epochs, desc=f"DCM λ={lam:g}", disable=not progress, leave=False)
    with trainable(model), closing(bar):  # the model is read through, only the gains train
        for epoch in range(max_epochs):
            losses, diffs = [], []
            for batch in data.batches(batch_size, shuffle=True, generator=generator, pad_id=pad,
                                      device=model.cfg.device, prefix_kv=prefix_kv):
                step += 1
                loss, diff = _dcm_step(model, dcm, batch, optimizer, lam, step, f"epoch {epoch}", history)
                losses.append(loss.item())
                diffs.append(diff.mean().item())
                count = sum(dcm.count_selected().values())
                moved = moved or count != last_count
                unchanged = unchanged + 1 if count == last_count else 0
                last_count = count
                if moved and unchanged >= patience:
                    stopped = f"selected count unchanged for {unchanged} batches (epoch {epoch})"
                    break
            scheduler.step()
            history.append(dict(epoch=epoch, loss=sum(losses) / len(losses),
                                logit_diff=sum(diffs) / len(diffs), lr=optimizer.param_groups[0]["lr"],
                                **{f"n_{k}": v for k, v in dcm.count_selected().items()}))
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", selected=last_count)
            if stopped != "max_epochs":
                break
    gains = {k: v.detach().cpu().clone() for k, v in dcm.gains.items()}
    config = dict(lam=lam, kinds=[k.value for k in dcm.kinds], form=form, positions=dcm.positions.value, lr=lr,
                  step_size=step_size, gamma=gamma, batch_size=batch_size, max_epochs=max_epochs,
                  patience_frac=patience_frac, seed=seed, init=1.0 if init is None else init,
                  prefix_cache=bool(prefix_cache))
    return DCMResult(dcm.binarize(), gains, pd.DataFrame(history), lam, stopped, config)


def lambda_sweep(model: HookedTransformer, data: ContrastSet,
                 lams: Sequence[float] = (1e-2, 5e-3, 1e-3, 1e-4), **kwargs) -> tuple[dict[float, DCMResult], pd.DataFrame]:
    """Train one mask per λ; returns the results and a table (λ, selected per kind, %, final logit diff)."""
    results, rows = {}, []
    for lam in lams:
        res = train_dcm(model, data, lam=lam, **kwargs)
        results[lam] = res
        last = res.history.iloc[-1] if len(res.history) else {}
        rows.append(dict(lam=lam, selected=res.mask.count(), pct_components=100 * res.mask.fraction_components(),
                         **{f"n_{k}": v for k, v in res.mask.counts_by_kind().items()},
                         final_logit_diff=float(last.get("logit_diff", float("nan"))), stopped=res.stopped))
    return results, pd.DataFrame(rows).set_index("lam")
