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

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from cca_tl.backend import HookedTransformer, is_bridge, parameter_owner

from cca_tl.components import WeightSet, registry_of
from cca_tl.component_mask import ComponentMask
from cca_tl.answers import AnswerSet, answer_losses_over_prompt, reference_path_scores, shared_prompt_length
from cca_tl.contrast import (ContrastSet, batches_over_prompt, by_tail_length, mean_logit_diff, prefix_batches,
                             shared_prompt, two_logit_diff)
from cca_tl.edits import RegionEdit, WeightEdit
from cca_tl.entries import PARAM_SETS, Optimizer, ParamSet, element_masks, trainable_entries
from cca_tl.errors import BackendError, NonFiniteLossError
from cca_tl.params import trainable
from cca_tl.validated import Validated, bounded, positive
from cca_tl.prompt_cache import backward_through_prompt, cache_leaves, prompt_keys_values

#: ``RegionEdit``, ``WeightEdit`` (:mod:`cca_tl.edits`) and ``element_masks``, ``PARAM_SETS`` (:mod:`cca_tl.entries`)
#: are re-exported where they lived before the update loop was split from the entries and the edits.
__all__ = ["OBJECTIVES", "PARAM_SETS", "VARIANTS", "RegionEdit", "UpdateResult", "WeightEdit", "default_eval_steps",
           "element_masks", "targeted_update", "train_update", "UpdateConfig"]

Objective = Literal["pivot", "answer"]
OBJECTIVES: tuple[Objective, ...] = ("pivot", "answer")

#: The updates by name: (objective, parameters). The first three are CCA and its controls (the pipeline's
#: variants); the others complete the objective x parameters table of ``analyses/power.py``.
VARIANTS: dict[str, tuple[Objective, ParamSet]] = {
    "cca": ("pivot", "mask"), "random": ("pivot", "random"), "all": ("pivot", "all"), "pivot-lora": ("pivot", "lora"),
    "masked-ft": ("answer", "mask"), "random-ft": ("answer", "random"), "full-ft": ("answer", "all"),
    "lora": ("answer", "lora"),
}
Variant = Literal["cca", "all", "random"]  # the pipeline's names for CCA and its controls


def __getattr__(name: str):
    """``PARAMS`` (now ``PARAM_SETS``) for one version."""
    if name == "PARAMS":
        import warnings

        warnings.warn("cca_tl.update.PARAMS is now PARAM_SETS.", DeprecationWarning, stacklevel=2)
        return PARAM_SETS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_eval_steps(steps: int) -> list[int]:
    """2, 4, 6, 8, 10, then every 5 (the paper validates every 10)."""
    return [s for s in [2, 4, 6, 8, 10, *range(15, steps + 1, 5)] if s <= steps]


@dataclass
class UpdateConfig(Validated):
    """The targeted update's settings: the run's ``update`` section and the defaults of :func:`train_update`
    and :func:`targeted_update`, in one place."""

    weight_set: Literal["authors", "extended"] = "authors"
    lr: float = bounded(1e-4, above=0)  # 5e-4 raised Gemma's train logit diff by ~4 per step and broke generation
    # With val_metric="logit_diff" the held-out pivot logit difference rose at every one of 8 steps at lr 1e-4
    # (so the last step is always chosen) while CCA's test accuracy fell from 0.31 to 0.14: the step count
    # is the edit's size. 4 steps: a smaller edit, and half the update's time (analyses/bench_main_job.md).
    steps: int = positive(4)
    eval_steps: list[int] | None = bounded(None, min=1)  # None: 2, 4, 6, 8, 10, then every 5
    # The gradient is accumulated over the whole train set whatever this is; it trades time for memory.
    # Gemma-3-270M, 30 two-step pivots, one step (2 CPU cores; analyses/bench_update_memory.md): batch 4 ->
    # 23 s, 3.42 GB peak; 8 -> 20 s, 3.90 GB; 16 -> 20 s, 4.76 GB.
    batch_size: int = positive(4)
    # Picks the update's best step (in a run; the functions take a callable). logit_diff: mean pivot logit
    # difference on the held-out val records — forward passes only; accuracy (the paper's): greedy accuracy
    # on the val questions, one generation each; reference: the share of val questions whose reference
    # solution is the greedy path (teacher-forced, forward passes only; cca_tl.answers.reference_path_scores).
    val_metric: Literal["accuracy", "logit_diff", "reference"] = "logit_diff"

    def train_kwargs(self) -> dict:
        """The fields :func:`targeted_update` and :func:`train_update` take, as keyword arguments."""
        return dict(weight_set=self.weight_set, lr=self.lr, steps=self.steps, batch_size=self.batch_size,
                    eval_steps=None if self.eval_steps is None else list(self.eval_steps))


_DEFAULTS = UpdateConfig()


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
        owner = parameter_owner(model)
        return {n: (owner.get_parameter(n).detach()[r] if r is not None else owner.get_parameter(n).detach()).clone()
                for n, r in self.regions.items()}


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
    leaves = cache_leaves(computed)
    for batch in batches_over_prompt(model, data, batch_size, shared, leaves):
        diff = two_logit_diff(model, batch)
        (-diff.sum() / len(data)).backward()
        yield diff.detach()
    backward_through_prompt(computed, leaves)


def _pivot_step(model: HookedTransformer, data: ContrastSet, batch_size: int, shared_prefix: bool) -> float:
    """Backpropagate the full-batch pivot loss ``-mean(logit diff)``; returns the mean logit difference."""
    total = 0.0
    for diff in _backward_over_batches(model, data, batch_size, shared_prefix):
        total += diff.sum().item()
    return total / len(data)


def _answer_step(model: HookedTransformer, data: AnswerSet, micro_batch: int) -> float:
    """Backpropagate the mean cross-entropy over every answer token of ``data`` (the prompt all rows share
    runs once, like the pivot loss's); returns it."""
    shared = 0 if is_bridge(model) else shared_prompt_length(data)
    computed = prompt_keys_values(model, data.prompt_ids[0][:shared]) if shared else []
    leaves = cache_leaves(computed)
    total = 0.0
    for _, losses in answer_losses_over_prompt(model, data, micro_batch, shared, leaves):
        loss = losses.sum() / data.n_tokens
        loss.backward()
        total += loss.item()
    backward_through_prompt(computed, leaves)
    return total


def train_update(
    model: HookedTransformer,
    data: ContrastSet | AnswerSet,
    mask: ComponentMask | None = None,
    *,
    objective: Objective = "pivot",
    params: ParamSet = "mask",
    optimizer: Optimizer = "sgd",
    weight_set: WeightSet = _DEFAULTS.weight_set,
    lr: float = _DEFAULTS.lr,
    steps: int = _DEFAULTS.steps,
    batch_size: int = _DEFAULTS.batch_size,
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
    shared_prefix = _bridge_update_check(params) if is_bridge(model) else shared_prefix
    from tqdm.auto import tqdm

    _check_update_inputs(model, data, objective, optimizer)
    entries, used, fraction_components = trainable_entries(model, mask, params, weight_set, optimizer, lr, seed,
                                                            lora_rank, heads)
    val_kind = "custom" if val_metric is not None else "objective"
    val_metric = val_metric or _objective_metric(objective, data, batch_size, shared_prefix)
    if protect is not None:
        protect(dict(entries.regions))
    eval_at = set(eval_steps if eval_steps is not None else default_eval_steps(steps))
    order = _answer_order(len(data), batch_size, steps, seed) if objective == "answer" else None
    label = name or f"{objective}/{params}"
    with trainable(parameter_owner(model), names=entries.regions):  # only the touched matrices take gradients
        history = [dict(step=0, train_loss=float("nan"), val_metric=val_metric(model))]
        best_step, best_metric, best = 0, history[0]["val_metric"], entries.snapshot()
        for step in tqdm(range(1, steps + 1), desc=f"update[{label}] lr={lr:g}", disable=not progress, leave=False):
            with entries.gradients() as grads:
                loss = (-_pivot_step(model, data, batch_size, shared_prefix) if objective == "pivot" else
                        _answer_step(model, data.subset(order[step - 1]), micro_batch=min(batch_size, 4)))
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
    config = dict(objective=objective, params=params, optimizer=optimizer, weight_set=weight_set, steps=steps,
                  batch_size=batch_size, seed=seed, lora_rank=lora_rank, heads=heads, eval_steps=sorted(eval_at),
                  shared_prefix=shared_prefix, val_metric=val_kind)
    return UpdateResult(
        variant=label, lr=lr, history=_history_frame(history, objective), best_step=best_step, best_metric=best_metric, n_params=entries.count,
        # "all": every parameter. (TransformerLens holds a tied embedding twice, so n_params can exceed the
        # HF count; the update then unties them and export writes an untied lm_head.)
        fraction_params=1.0 if params == "all" else entries.count / registry_of(model).total_model_params,
        fraction_components=fraction_components, mask=used, config=config, regions=dict(entries.regions))


def _bridge_update_check(params: ParamSet) -> bool:
    """What the update does on the bridge so far: either objective on a mask's slices or every parameter,
    without the shared prompt (its key/value cache is TransformerLens 3's); returns ``shared_prefix`` (off)."""
    if params not in ("mask", "random", "all"):
        raise BackendError(f"On the bridge backend the update trains params 'mask', 'random' or 'all' so far, not "
                           f"{params!r}; use backend='hooked' (LoRA factors and head offsets are written to "
                           "TransformerLens 3 weights).")
    return False


def _history_frame(history: list[dict], objective: Objective) -> pd.DataFrame:
    """One row per step; the pivot loss is -(mean logit difference), so that readable column is added."""
    frame = pd.DataFrame(history)
    if objective == "pivot":
        frame["train_logit_diff"] = -frame["train_loss"]
    return frame


def _check_update_inputs(model: HookedTransformer, data: ContrastSet | AnswerSet, objective: Objective,
                         optimizer: Optimizer) -> None:
    """Refuse an unknown objective or optimizer, or data of the other objective's type, before any work."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, not {objective!r}")
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {optimizer!r}")
    expected = ContrastSet if objective == "pivot" else AnswerSet
    if not isinstance(data, expected):
        raise TypeError(f"The {objective!r} objective trains on a {expected.__name__}, not {type(data).__name__}.")
    data.validate(model)


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
    weight_set: WeightSet = _DEFAULTS.weight_set,
    lr: float = _DEFAULTS.lr,
    steps: int = _DEFAULTS.steps,
    batch_size: int = _DEFAULTS.batch_size,
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


