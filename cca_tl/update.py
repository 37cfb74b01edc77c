"""Targeted (sparse) update: strengthen only the selected components (docs/method.md §A4).

Loss: the negative logit difference averaged over the whole training set (full-batch gradient,
accumulated over mini-batches), plain SGD ``W ← W − lr·g`` for ``steps`` steps. Only the parameter slices
the component registry assigns to selected components change; every other entry is left bit-identical
(the step writes the selected entries by flat index, never by adding a masked gradient, and the gradient
is kept only at those entries).
Validation at steps 2, 4, 6, 8, 10, then every 5; the best step's slices (only those, not model copies)
are restored at the end.

Variants: ``"cca"`` (the DCM mask), ``"all"`` (CCA w/o mask: every real parameter), ``"random"`` (a seeded mask
with the same count per kind and layer as the given one).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from cca_tl.components import ComponentMask, WeightSet, registry_of, real_parameter_names
from cca_tl.answers import AnswerSet, answer_losses_over_prompt, reference_path_scores, shared_prompt_length
from cca_tl.contrast import (ContrastSet, batches_over_prompt, by_tail_length, mean_logit_diff, prefix_batches,
                             prompt_keys_values, shared_prompt, two_logit_diff)
from cca_tl._io import atomic_write_bytes
from cca_tl.errors import MaskMismatchError, NonFiniteLossError
from cca_tl.lora import LoRAParams
from cca_tl.offsets import HeadOffsets
from cca_tl.params import trainable

Objective = Literal["pivot", "answer"]
Params = Literal["mask", "random", "all", "lora", "offsets"]
Optimizer = Literal["sgd", "adamw"]
OBJECTIVES: tuple[Objective, ...] = ("pivot", "answer")
PARAMS: tuple[Params, ...] = ("mask", "random", "all", "lora", "offsets")

#: The updates by name: (objective, parameters). The first three are CCA and its controls (the pipeline's
#: variants); the others complete the objective x parameters table of ``analyses/power.py``.
VARIANTS: dict[str, tuple[Objective, Params]] = {
    "cca": ("pivot", "mask"), "random": ("pivot", "random"), "all": ("pivot", "all"), "pivot-lora": ("pivot", "lora"),
    "masked-ft": ("answer", "mask"), "random-ft": ("answer", "random"), "full-ft": ("answer", "all"),
    "lora": ("answer", "lora"),
}
Variant = Literal["cca", "all", "random"]  # the pipeline's names for CCA and its controls


def default_eval_steps(steps: int) -> list[int]:
    """2, 4, 6, 8, 10, then every 5 (the paper validates every 10)."""
    return [s for s in [2, 4, 6, 8, 10, *range(15, steps + 1, 5)] if s <= steps]


def element_masks(model: HookedTransformer, mask: ComponentMask,
                  weight_set: WeightSet = "authors") -> dict[str, Tensor]:
    """Per touched parameter, a boolean tensor of its shape marking the selected components' slices."""
    reg = registry_of(model)
    mask.validate(reg)
    out: dict[str, Tensor] = {}
    for comp in mask.components():
        for s in reg.slices(comp, weight_set):
            if s.param not in out:
                out[s.param] = torch.zeros_like(model.get_parameter(s.param), dtype=torch.bool)
            out[s.param].select(s.axis, s.index).fill_(True)
    return out


Index = tuple[Tensor, ...] | None  # coordinates of the selected entries (``mask.nonzero(as_tuple=True)``); None: all


def _entries(p: Tensor, index: Index) -> Tensor:
    """The selected entries of ``p`` (1-d), or all of it in its shape for ``index=None``."""
    return p.detach()[index] if index is not None else p.detach()


def _set_entries(p: Tensor, index: Index, values: Tensor) -> None:
    """Write ``values`` to the selected entries of ``p`` in place; every other entry keeps its bits."""
    if index is None:
        p.detach().copy_(values)
    else:
        p.detach()[index] = values


@contextmanager
def _compact_gradients(params: dict[str, Tensor], where: dict[str, Index]) -> Iterator[dict[str, Tensor | None]]:
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


@dataclass
class UpdateResult:
    variant: str
    lr: float
    history: pd.DataFrame
    best_step: int
    best_metric: float
    n_params: int
    fraction_params: float
    fraction_components: float
    mask: ComponentMask | None = None
    config: dict = field(default_factory=dict)
    regions: dict[str, Tensor | None] = field(default_factory=dict)  # what the update may have written

    def captured(self, model: HookedTransformer) -> dict[str, Tensor]:
        """The model's current values of :attr:`regions` (whole tensors where a region is None)."""
        return {n: (model.get_parameter(n).detach()[r] if r is not None else model.get_parameter(n).detach()).clone()
                for n, r in self.regions.items()}


def _cache_leaves(computed: list[Tensor]) -> list[Tensor]:
    """Detached copies of a shared prompt's keys/values for the rows to attend to, taking gradients only
    where the prompt reached a trainable parameter: elsewhere the backward then stops at the lowest edited
    layer instead of running down to the embedding (exact: such a leaf's gradient had nowhere to go; on
    Gemma-3-270M a pivot step at 37 components went from 43 to 30.5 s)."""
    return [t.detach().requires_grad_(t.requires_grad) for t in computed]


def _backward_over_batches(model: HookedTransformer, data: ContrastSet, batch_size: int,
                           shared_prefix: bool) -> Iterator[Float[Tensor, "batch"]]:
    """Backpropagate ``-sum(logit diff) / len(data)`` mini-batch by mini-batch (yielding each batch's diffs,
    detached) so that the gradients add up to the full-batch one.

    With ``shared_prefix`` the prefix common to *all* records (the few-shot prompt) runs once per step, with
    gradients: each mini-batch's rows attend to detached copies of its keys and values, whose gradients are
    summed over the mini-batches and sent back through the prefix once at the end. Exact, like
    :func:`cca_tl.contrast.shared_prefix_batch` (which reruns the prefix for every mini-batch). On Gemma-3-270M
    (30 records, a 290-token shared prompt, 2 cores) it is what makes batch 4 (1.0 GB of activations
    instead of 1.5 GB at batch 8) no slower than batch 8 was.
    """
    shared, computed = shared_prompt(model, data) if shared_prefix else (0, [])
    data = by_tail_length(data)[0] if shared else data  # a sum over records: their order is free
    if not shared:  # nothing worth sharing: plain (or per-batch shared) mini-batches
        for batch in prefix_batches(model, data, batch_size, shared_prefix):
            diff = two_logit_diff(model, batch)
            (-diff.sum() / len(data)).backward()
            yield diff.detach()
        return
    leaves = _cache_leaves(computed)
    for batch in batches_over_prompt(model, data, batch_size, shared, leaves):
        diff = two_logit_diff(model, batch)
        (-diff.sum() / len(data)).backward()
        yield diff.detach()
    reached = [(t, leaf.grad) for t, leaf in zip(computed, leaves) if leaf.grad is not None and t.requires_grad]
    if reached:
        torch.autograd.backward([t for t, _ in reached], grad_tensors=[g for _, g in reached])


def update_selection(model: HookedTransformer, mask: ComponentMask | None, params: Params, weight_set: WeightSet,
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
    raise ValueError(f"params must be one of {list(PARAMS)} for a masked update, not {params!r}")


class SelectedEntries:
    """The entries an update may change, as coordinates per parameter: the step, snapshots and restores
    touch only those, and the gradient is kept only there (see :func:`_compact_gradients`). Low-precision
    parameters get a float32 master copy of their selected entries, so that small steps are not lost to
    bfloat16 rounding (the copy is ~1 % of a matrix's entries for a DCM mask, not a second model); an
    AdamW update keeps one for every parameter (its moments are float32 too)."""

    def __init__(self, model: HookedTransformer, element_masks: dict[str, Tensor | None], optimizer: Optimizer = "sgd"):
        self.params = {name: model.get_parameter(name) for name in element_masks}
        self.where: dict[str, Index] = {n: (m.nonzero(as_tuple=True) if m is not None else None)
                                        for n, m in element_masks.items()}
        self.regions = dict(element_masks)
        self.count = sum(int(m.sum()) if m is not None else self.params[n].numel() for n, m in element_masks.items())
        self.master = {n: _entries(self.params[n], i).float().clone() for n, i in self.where.items()
                       if optimizer == "adamw" or self.params[n].dtype in (torch.bfloat16, torch.float16)}
        self.optimizer = optimizer
        self._adamw: torch.optim.Optimizer | None = None

    def snapshot(self) -> dict[str, Tensor]:
        return {n: _entries(self.params[n], i).clone() for n, i in self.where.items()}

    @torch.no_grad()
    def restore(self, snapshot: dict[str, Tensor]) -> None:
        for n, i in self.where.items():
            _set_entries(self.params[n], i, snapshot[n])
            if n in self.master:
                self.master[n].copy_(snapshot[n].float())

    @contextmanager
    def gradients(self) -> Iterator[dict[str, Tensor | None]]:
        with _compact_gradients(self.params, self.where) as grads:
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
                _set_entries(p, i, self.master[n].to(p.dtype))
            else:  # the same arithmetic per entry as torch.where(m, p - lr * g, p): bit-identical
                _set_entries(p, i, _entries(p, i) - lr * g)

    def _adamw_step(self, grads: dict[str, Tensor | None], lr: float) -> None:
        if self._adamw is None:
            self._adamw = torch.optim.AdamW(list(self.master.values()), lr=lr, weight_decay=0.0)
        for n, master in self.master.items():
            master.grad = None if grads[n] is None else grads[n].float()
        self._adamw.step()
        for n, i in self.where.items():
            if grads[n] is not None:
                _set_entries(self.params[n], i, self.master[n].to(self.params[n].dtype))


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


def _pivot_step(model: HookedTransformer, data: ContrastSet, batch_size: int, shared_prefix: bool) -> float:
    """Backpropagate the full-batch pivot loss ``-mean(logit diff)``; returns the mean logit difference."""
    total = 0.0
    for diff in _backward_over_batches(model, data, batch_size, shared_prefix):
        total += diff.sum().item()
    return total / len(data)


def _answer_step(model: HookedTransformer, data: AnswerSet, micro_batch: int) -> float:
    """Backpropagate the mean cross-entropy over every answer token of ``data`` (the prompt all rows share
    runs once, like the pivot loss's); returns it."""
    shared = shared_prompt_length(data)
    computed = prompt_keys_values(model, data.prompt_ids[0][:shared]) if shared else []
    leaves = _cache_leaves(computed)
    total = 0.0
    for _, losses in answer_losses_over_prompt(model, data, micro_batch, shared, leaves):
        loss = losses.sum() / data.n_tokens
        loss.backward()
        total += loss.item()
    reached = [(t, leaf.grad) for t, leaf in zip(computed, leaves) if leaf.grad is not None and t.requires_grad]
    if reached:
        torch.autograd.backward([t for t, _ in reached], grad_tensors=[g for _, g in reached])
    return total


def _trainable_entries(model: HookedTransformer, mask: ComponentMask | None, params: Params, weight_set: WeightSet,
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
    return SelectedEntries(model, emasks, optimizer), used, fraction_components


def train_update(
    model: HookedTransformer,
    data: ContrastSet | AnswerSet,
    mask: ComponentMask | None = None,
    *,
    objective: Objective = "pivot",
    params: Params = "mask",
    optimizer: Optimizer = "sgd",
    weight_set: WeightSet = "authors",
    lr: float = 1e-3,
    steps: int = 50,
    batch_size: int = 8,
    lora_rank: int | None = None,
    heads: dict[int, list[int]] | None = None,
    val_metric: Callable[[HookedTransformer], float] | None = None,
    eval_steps: Sequence[int] | None = None,
    seed: int = 0,
    shared_prefix: bool = True,
    progress: bool = True,
    protect: Callable[[dict[str, Tensor | None]], None] | None = None,
    name: str | None = None,
) -> UpdateResult:
    """One update of ``model`` in place — an objective on a set of parameters — left at its best validation
    step (step 0, the unedited model, is a candidate).

    ``objective``: ``"pivot"`` (``data`` a :class:`ContrastSet`; every step the full-batch gradient of
    ``−mean(logit[desired] − logit[undesired])``, accumulated over mini-batches of ``batch_size``) or
    ``"answer"`` (``data`` an :class:`AnswerSet`; every step one shuffled mini-batch of ``batch_size``
    questions, the mean cross-entropy of their reference answers' tokens, epoch after epoch).
    ``params``: ``"mask"`` (the DCM mask's slices), ``"random"`` (a seeded mask with the same count per kind
    and layer), ``"all"`` (every real parameter), ``"lora"`` (rank ``lora_rank`` factors of every
    projection, :mod:`cca_tl.lora`) or ``"offsets"`` (LoFiT-style output offsets of the ``heads``,
    :mod:`cca_tl.offsets`). ``optimizer``: ``"sgd"`` (``W ← W − lr·g``, the paper's update) or
    ``"adamw"`` (the authors' fine-tuning baselines). Whatever the parameters, every entry outside them keeps
    its bits. ``val_metric(model)``: higher is better (default: the objective on ``data`` itself).
    """
    from tqdm.auto import tqdm

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, not {objective!r}")
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {optimizer!r}")
    expected = ContrastSet if objective == "pivot" else AnswerSet
    if not isinstance(data, expected):
        raise TypeError(f"The {objective!r} objective trains on a {expected.__name__}, not {type(data).__name__}.")
    data.validate(model)
    entries, used, fraction_components = _trainable_entries(model, mask, params, weight_set, optimizer, lr, seed,
                                                            lora_rank, heads)
    if entries.count == 0:
        raise ValueError("The mask selects no weight entry (an empty DCM mask?): there is nothing to update. "
                         "Lower DCM's lam to keep some components.")
    val_kind = "custom" if val_metric is not None else "objective"
    if val_metric is None:
        val_metric = _objective_metric(objective, data, batch_size, shared_prefix)
    if protect is not None:
        protect(dict(entries.regions))
    eval_at = set(eval_steps if eval_steps is not None else default_eval_steps(steps))
    order = _answer_order(len(data), batch_size, steps, seed) if objective == "answer" else None
    with trainable(model, names=entries.regions):  # only the touched matrices take gradients
        history = [dict(step=0, train_loss=float("nan"), val_metric=val_metric(model))]
        best_step, best_metric, best = 0, history[0]["val_metric"], entries.snapshot()
        label = name or f"{objective}/{params}"
        for step in tqdm(range(1, steps + 1), desc=f"update[{label}] lr={lr:g}", disable=not progress, leave=False):
            with entries.gradients() as grads:
                if objective == "pivot":
                    loss = -_pivot_step(model, data, batch_size, shared_prefix)
                else:
                    loss = _answer_step(model, data.subset(order[step - 1]), micro_batch=min(batch_size, 4))
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"Update loss is {loss} at step {step}; the model keeps its state from before that step "
                        f"(best validation so far at step {best_step}).", step, best_step)
            entries.step(grads, lr)
            row = dict(step=step, train_loss=loss)
            if step in eval_at:
                row["val_metric"] = val_metric(model)
                if row["val_metric"] > best_metric:
                    best_step, best_metric, best = step, row["val_metric"], entries.snapshot()
            history.append(row)
    if eval_at:
        entries.restore(best)  # step 0 (unedited) is a candidate too: if no step helps, nothing is changed
    else:
        best_step, best_metric = steps, float("nan")  # nothing validated: keep the final state
    total = registry_of(model).total_model_params
    frame = pd.DataFrame(history)
    if objective == "pivot":  # the pivot loss is -(mean logit difference): keep the readable column
        frame["train_logit_diff"] = -frame["train_loss"]
    return UpdateResult(
        variant=name or f"{objective}/{params}", lr=lr, history=frame, best_step=best_step, best_metric=best_metric,
        n_params=entries.count,
        # "all": every parameter. (TransformerLens holds a tied embedding twice, so n_params can exceed the
        # HF count; the update then unties them and export writes an untied lm_head.)
        fraction_params=1.0 if params == "all" else entries.count / total,
        fraction_components=fraction_components, mask=used,
        config=dict(objective=objective, params=params, optimizer=optimizer, weight_set=weight_set, steps=steps,
                    batch_size=batch_size, seed=seed, lora_rank=lora_rank, heads=heads, eval_steps=sorted(eval_at),
                    shared_prefix=shared_prefix, val_metric=val_kind),
        regions=dict(entries.regions),
    )


def _objective_metric(objective: Objective, data, batch_size: int, shared_prefix: bool) -> Callable[[HookedTransformer], float]:
    """The default validation metric: the objective on the training data (higher is better)."""
    if objective == "pivot":
        return lambda m: mean_logit_diff(m, data, batch_size, shared_prefix)
    return lambda m: -float(reference_path_scores(m, data, batch_size)["nll"].sum()) / data.n_tokens


def _answer_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Mini-batches of ``batch_size`` question indices for ``steps`` steps: a fresh seeded shuffle per epoch."""
    generator = torch.Generator().manual_seed(seed)
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = torch.randperm(n, generator=generator).tolist()
        batches += [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return batches[:steps]


def targeted_update(
    model: HookedTransformer,
    train: ContrastSet,
    mask: ComponentMask | None = None,
    *,
    variant: Variant = "cca",
    weight_set: WeightSet = "authors",
    lr: float = 1e-3,
    steps: int = 50,
    batch_size: int = 8,
    val_metric: Callable[[HookedTransformer], float] | None = None,
    val_data: ContrastSet | None = None,
    eval_steps: Sequence[int] | None = None,
    seed: int = 0,
    shared_prefix: bool = True,
    progress: bool = True,
    protect: Callable[[dict[str, Tensor | None]], None] | None = None,
) -> UpdateResult:
    """CCA's update (see module doc): the pivot objective, plain SGD, on the DCM mask (``variant="cca"``), a
    random mask of the same size (``"random"``) or every parameter (``"all"``); ``model`` is left at the
    best-validation step.

    Validation metric (higher is better): ``val_metric(model)`` if given, else the mean logit difference
    on ``val_data``, else on ``train``. ``shared_prefix``: run the records' common prefix (a few-shot
    prompt) once per step and share it across the rows — the same loss and gradients, 2–3x less work on
    few-shot prompts (:func:`cca_tl.contrast.shared_prefix_batch`).
    """
    if variant not in ("cca", "random", "all"):
        raise ValueError(f"variant must be 'cca', 'all' or 'random', not {variant!r}")
    train.validate(model)
    source = val_data if val_data is not None else train
    metric = val_metric or (lambda m: mean_logit_diff(m, source, batch_size, shared_prefix))
    result = train_update(model, train, mask, objective="pivot", params=VARIANTS[variant][1], weight_set=weight_set,
                          lr=lr, steps=steps, batch_size=batch_size, val_metric=metric, eval_steps=eval_steps,
                          seed=seed, shared_prefix=shared_prefix, progress=progress, protect=protect, name=variant)
    result.config["val_metric"] = "custom" if val_metric is not None else "logit_diff"
    return result


@dataclass
class WeightEdit:
    """The new values of exactly the weight entries a targeted update may change (the selected components'
    slices), so an edited model is the base model plus this file."""

    mask: ComponentMask
    weight_set: str
    values: dict[str, torch.Tensor]

    @classmethod
    def capture(cls, model: HookedTransformer, mask: ComponentMask, weight_set: str) -> "WeightEdit":
        emasks = element_masks(model, mask, weight_set)
        return cls(mask, weight_set, {n: model.get_parameter(n).detach()[m].clone().cpu() for n, m in emasks.items()})

    @torch.no_grad()
    def apply(self, model: HookedTransformer) -> None:
        emasks = element_masks(model, self.mask, self.weight_set)
        if set(emasks) != set(self.values):
            raise MaskMismatchError(f"This edit touches {sorted(self.values)} but the mask maps to {sorted(emasks)}.")
        for name, m in emasks.items():
            param = model.get_parameter(name)
            if int(m.sum()) != self.values[name].numel():
                raise MaskMismatchError(f"Edit for {name} has {self.values[name].numel()} values; "
                                        f"the mask selects {int(m.sum())}.")
            param[m] = self.values[name].to(param.device, param.dtype)

    def touched(self, model: HookedTransformer) -> dict[str, Tensor]:
        """The regions :meth:`apply` writes (what a session protects first)."""
        return element_masks(model, self.mask, self.weight_set)

    def save(self, directory: str | Path) -> None:
        """``mask.safetensors`` and ``edit.safetensors`` in ``directory``, each written atomically."""
        from safetensors.torch import save

        directory = Path(directory)
        self.mask.save(directory / "mask.safetensors")
        blob = save({n: v.contiguous() for n, v in self.values.items()},
                    metadata={"cca_tl": json.dumps({"format": "cca_tl.WeightEdit/1", "weight_set": self.weight_set})})
        atomic_write_bytes(directory / "edit.safetensors", blob)

    @classmethod
    def load(cls, directory: str | Path) -> "WeightEdit":
        from safetensors import safe_open

        directory = Path(directory)
        with safe_open(str(directory / "edit.safetensors"), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("cca_tl", "{}"))
            values = {n: handle.get_tensor(n) for n in handle.keys()}
        return cls(ComponentMask.load(directory / "mask.safetensors"), meta["weight_set"], values)


@dataclass
class RegionEdit:
    """What any update wrote — the values of its regions (element masks, or whole tensors where a region is
    None) — as an edit a session can apply (:meth:`cca_tl.pipeline.ModelSession.apply`) and a sweep can
    scale. Masked updates, LoRA and head offsets alike: :attr:`UpdateResult.regions` says where."""

    regions: dict[str, Tensor | None]
    values: dict[str, Tensor]

    @classmethod
    def capture(cls, model: HookedTransformer, regions: dict[str, Tensor | None]) -> "RegionEdit":
        return cls(dict(regions), {n: (model.get_parameter(n).detach()[r] if r is not None
                                       else model.get_parameter(n).detach()).clone()
                                   for n, r in regions.items()})

    def touched(self, model: HookedTransformer) -> dict[str, Tensor | None]:
        return self.regions

    @torch.no_grad()
    def apply(self, model: HookedTransformer) -> None:
        for name, region in self.regions.items():
            _set_entries(model.get_parameter(name), region if region is None else region.nonzero(as_tuple=True),
                         self.values[name])

    def scaled(self, base: "RegionEdit", alpha: float) -> "RegionEdit":
        """The edit moved ``alpha`` of the way from ``base`` (the unedited values of the same regions):
        ``base + alpha·(self − base)``. ``alpha`` 0 is the unedited model, 1 this edit; a sweep scales an
        edit along its own direction to reach a fixed size (KL to the base model)."""
        if set(base.values) != set(self.values) or any(base.values[n].shape != v.shape for n, v in self.values.items()):
            raise MaskMismatchError("scaled() needs the unedited values of the same regions (RegionEdit.capture "
                                    "of the base model with this edit's regions).")
        return RegionEdit(self.regions, {n: base.values[n] + alpha * (v - base.values[n]) for n, v in self.values.items()})
