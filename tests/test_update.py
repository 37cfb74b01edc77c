"""Targeted updates: only the selected slices change, the random control, masks from other models, the prompt run once."""

from __future__ import annotations

import pytest
import torch

from cca_tl import Component, ComponentMask, ComponentRegistry, MaskMismatchError, load_model
from cca_tl.components import real_parameter_names
from cca_tl.contrast import ContrastSet
from cca_tl.lora import LoRAParams, rank_for_budget
from cca_tl.entries import element_masks
from cca_tl.update import VARIANTS, targeted_update, train_update
from tests.helpers import contrast, records_behind_a_prompt


@pytest.fixture
def model():
    return load_model("tiny-llama")


def test_masked_update_touches_only_the_selected_slices(model):
    mask = ComponentMask.from_components(model, [Component("q", 1, 0), Component("k", 0, 2),
                                                 Component("neuron", 1, 7), Component("neuron", 0, 100)])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = targeted_update(model, contrast(), mask, lr=0.1, steps=4, eval_steps=[], progress=False)
    emasks = element_masks(model, mask)
    for name, p in model.named_parameters():
        if name in emasks:
            m = emasks[name]
            assert torch.equal(p[~m], before[name][~m]), f"unselected entries of {name} changed"
        else:
            assert torch.equal(p, before[name]), f"{name} changed"
    reg = ComponentRegistry.from_model(model)
    for comp in mask.components():
        for s in reg.slices(comp):
            assert not torch.equal(s.view(model), before[s.param].select(s.axis, s.index)), f"{comp} unchanged"
    assert result.n_params == mask.n_params(model)


def test_random_variant_matches_counts_per_kind_and_layer(model):
    mask = ComponentMask.from_components(model, [Component("q", 1, 0), Component("q", 1, 3), Component("v", 0, 1),
                                                 Component("neuron", 0, 4), Component("neuron", 1, 5)])
    rand = mask.random_like(seed=3)
    assert rand.counts_by_layer().equals(mask.counts_by_layer())
    assert rand == mask.random_like(seed=3)
    assert rand != mask.random_like(seed=4)
    result = targeted_update(model, contrast(n=4), mask, variant="random", seed=3, steps=2, eval_steps=[],
                             progress=False)
    assert result.mask == rand


def test_update_refuses_a_mask_from_another_model(model):
    other = load_model("tiny-qwen2")
    with pytest.raises(MaskMismatchError):
        targeted_update(model, contrast(n=4), ComponentMask.empty(other), progress=False)


@pytest.mark.parametrize("arch", ["tiny-gemma3", "tiny-qwen2"])
def test_update_with_the_prefix_run_once_per_step_matches_plain_batches(arch):
    """The update runs the prefix common to all records once per step and sends the summed key/value
    gradients of its mini-batches back through it: the same step as plain right-padded mini-batches."""
    prefixes = records_behind_a_prompt(seed=1, prompt=20, longest_tail=8, n=7)
    data = ContrastSet(prefixes, [17] * 7, [42] * 7)
    states = []
    for shared in (True, False):
        model = load_model(arch)
        result = targeted_update(model, data, None, variant="all", lr=1e-2, steps=2, batch_size=3, eval_steps=[],
                                 shared_prefix=shared, progress=False)
        states.append(({n: p.detach().clone() for n, p in model.named_parameters()}, result.history))
    (edited_shared, hist_shared), (edited_plain, hist_plain) = states
    torch.testing.assert_close(hist_shared["train_logit_diff"].to_numpy(copy=True),
                               hist_plain["train_logit_diff"].to_numpy(copy=True),
                               atol=1e-4, rtol=0, equal_nan=True)
    for name in edited_plain:
        torch.testing.assert_close(edited_shared[name], edited_plain[name], atol=1e-5, rtol=1e-4)


# -- objective x parameters: train_update ----------------------------------------------------------------

def _pivots_and_answers():
    from tests.helpers import answers_behind_a_prompt

    answers = answers_behind_a_prompt(n=8)
    return ContrastSet(answers.prompt_ids, [17] * 8, [42] * 8), answers


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_changes_only_its_parameters(model, variant):
    objective, params = VARIANTS[variant]
    pivots, answers = _pivots_and_answers()
    mask = ComponentMask.from_components(model, [Component("q", 0, 1), Component("neuron", 1, 3), Component("v", 1, 0)])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_update(model, pivots if objective == "pivot" else answers, mask, objective=objective, params=params,
                          optimizer="sgd" if objective == "pivot" else "adamw", lr=1e-2, steps=3, batch_size=4,
                          lora_rank=rank_for_budget(model, mask.n_params(model)), eval_steps=[], progress=False)
    if params in ("mask", "random"):
        emasks = element_masks(model, result.mask)
        for name, p in model.named_parameters():
            m = emasks.get(name, torch.zeros_like(p, dtype=torch.bool))
            assert torch.equal(p[~m], before[name][~m]), f"an unselected entry of {name} changed"
            if name in emasks:
                assert not torch.equal(p[m], before[name][m]), f"{name}'s selected entries did not move"
        assert result.mask == (mask if params == "mask" else mask.random_like(0))
    elif params == "lora":
        targets = set(LoRAParams(model, 1).params)
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed and changed <= targets
    else:
        assert sum(not torch.equal(p, before[n]) for n, p in model.named_parameters()) > 10
    assert result.n_params > 0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_variant_that_never_helps_leaves_the_model_bit_identical(model, variant):
    objective, params = VARIANTS[variant]
    pivots, answers = _pivots_and_answers()
    mask = ComponentMask.from_components(model, [Component("k", 1, 1), Component("neuron", 0, 9)])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_update(model, pivots if objective == "pivot" else answers, mask, objective=objective, params=params,
                          optimizer="adamw", lr=1e-2, steps=2, batch_size=4, lora_rank=2, eval_steps=[1, 2],
                          val_metric=lambda m: 0.0, progress=False)
    assert result.best_step == 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_the_answer_objective_lowers_the_answer_loss_and_pivot_sgd_is_targeted_update(model):
    pivots, answers = _pivots_and_answers()
    result = train_update(model, answers, objective="answer", params="all", optimizer="adamw", lr=3e-3, steps=6,
                          batch_size=8, eval_steps=[6], progress=False)
    assert result.best_step == 6 and result.best_metric > result.history["val_metric"][0]
    fresh = load_model("tiny-llama")
    mask = ComponentMask.from_components(fresh, [Component("q", 1, 0), Component("neuron", 1, 7)])
    a = targeted_update(fresh, pivots, mask, lr=0.1, steps=3, eval_steps=[], progress=False)
    other = load_model("tiny-llama")
    b = train_update(other, pivots, mask, objective="pivot", params="mask", lr=0.1, steps=3, eval_steps=[],
                     progress=False)
    assert all(torch.equal(p, other.get_parameter(n)) for n, p in fresh.named_parameters())
    assert a.history["train_logit_diff"].tolist()[1:] == b.history["train_logit_diff"].tolist()[1:]


def test_train_update_refuses_mismatched_data_and_missing_settings(model):
    pivots, answers = _pivots_and_answers()
    with pytest.raises(TypeError, match="AnswerSet"):
        train_update(model, pivots, objective="answer", params="all", progress=False)
    with pytest.raises(ValueError, match="lora_rank"):
        train_update(model, pivots, objective="pivot", params="lora", progress=False)
    with pytest.raises(ValueError, match="objective"):
        train_update(model, pivots, objective="logits", params="all", progress=False)
    with pytest.raises(ValueError, match="needs a DCM mask"):
        train_update(model, pivots, objective="pivot", params="mask", progress=False)


def test_an_answer_step_over_the_shared_prompt_is_the_plain_gradient_step():
    from tests.helpers import answers_behind_a_prompt

    answers = answers_behind_a_prompt(n=4)
    model, plain = load_model("tiny-llama"), load_model("tiny-llama")
    train_update(model, answers, objective="answer", params="all", optimizer="sgd", lr=0.5, steps=1, batch_size=4,
                 eval_steps=[], progress=False)
    losses = []
    for prompt, answer in zip(answers.prompt_ids, answers.answer_ids):
        logits = plain(torch.tensor([prompt + answer]))[0][len(prompt) - 1:len(prompt) + len(answer) - 1]
        losses.append(torch.nn.functional.cross_entropy(logits.float(), torch.tensor(answer), reduction="sum"))
    (torch.stack(losses).sum() / answers.n_tokens).backward()
    real = set(real_parameter_names(plain))  # "all": not TL's zero placeholders for biases Llama lacks
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if name in real:
                p -= 0.5 * p.grad
    worst = max((p - plain.get_parameter(n)).abs().max().item() for n, p in model.named_parameters())
    assert worst < 1e-5
