"""Targeted updates: only the selected slices change, the random control, masks from other models, the prompt run once."""

from __future__ import annotations

import pytest
import torch

from cca_tl import Component, ComponentMask, ComponentRegistry, MaskMismatchError, load_model
from cca_tl.contrast import ContrastSet
from cca_tl.update import element_masks, targeted_update
from tests.conftest import contrast, records_behind_a_prompt


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
    torch.testing.assert_close(hist_shared["train_logit_diff"].to_numpy(), hist_plain["train_logit_diff"].to_numpy(),
                               atol=1e-4, rtol=0, equal_nan=True)
    for name in edited_plain:
        torch.testing.assert_close(edited_shared[name], edited_plain[name], atol=1e-5, rtol=1e-4)
