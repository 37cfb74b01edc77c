"""DCM masks: exactness invariants, determinism, the prefix cache, λ sweeps, a learnable planted target."""

from __future__ import annotations

import pytest
import torch

from cca_tl import Component, ComponentMask, ComponentRegistry, Kind
from cca_tl.contrast import Batch, two_logit_diff
from cca_tl.dcm import DCMGains, train_dcm
from cca_tl.errors import NonFiniteLossError
from cca_tl.update import targeted_update
from tests.helpers import contrast


def test_zero_mask_is_bit_identical(model, batch):
    plain = model(batch.tokens)
    for positions in ("last", "all"):
        dcm = DCMGains(model, [*Kind], init=0.0, positions=positions)
        hooked = model.run_with_hooks(batch.tokens, fwd_hooks=dcm.hooks(batch.last_pos))
        assert torch.equal(hooked, plain)


def test_authors_form_half_is_bit_identical(model, batch):
    dcm = DCMGains(model, [*Kind], form="code", init=0.5)
    assert torch.equal(model.run_with_hooks(batch.tokens, fwd_hooks=dcm.hooks(batch.last_pos)), model(batch.tokens))


@pytest.mark.parametrize("kind,layer,unit", [("q", 1, 2), ("k", 0, 3), ("v", 1, 0), ("z", 0, 1), ("neuron", 1, 9)])
def test_gain_one_doubles_exactly_that_component(model, batch, kind, layer, unit):
    dcm = DCMGains(model, [*Kind], init=0.0)
    with torch.no_grad():
        dcm.gains[kind][layer, unit] = 1.0
    hook_name = ComponentRegistry.from_model(model).hook_name(kind, layer)
    seen = {}
    record = lambda act, hook: seen.__setitem__("after", act.detach().clone())  # noqa: E731
    model.run_with_hooks(batch.tokens, fwd_hooks=dcm.hooks(batch.last_pos) + [(hook_name, record)])
    # the activation entering the hook, with every earlier layer unmasked (gains are 0 elsewhere)
    _, cache = model.run_with_cache(batch.tokens, names_filter=hook_name)
    before, after = cache[hook_name], seen["after"]
    rows = torch.arange(len(batch))
    expected = before.clone()
    idx = (rows, batch.last_pos, unit)
    expected[idx] = 2 * before[idx]
    assert torch.equal(after, expected)
    assert not torch.equal(after, before)


def test_non_finite_loss_stops_and_keeps_the_last_good_state(model):
    with pytest.raises(NonFiniteLossError, match="step 1") as err:
        train_dcm(model, contrast(n=4), lam=float("nan"), progress=False)
    assert err.value.step == 1 and err.value.last_good.mask.count() == err.value.last_good.mask.size()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.blocks[1].mlp.W_out[0, 0] = float("nan")  # poison: every loss is NaN from step 1
    before["blocks.1.mlp.W_out"][0, 0] = float("nan")
    mask = ComponentMask.from_components(model, [Component("neuron", 0, 3)])
    with pytest.raises(NonFiniteLossError, match="step 1"):
        targeted_update(model, contrast(n=4), mask, progress=False)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) or torch.isnan(p).any(), n


def test_dcm_is_deterministic_for_a_seed(model):
    data = contrast(n=10)
    a = train_dcm(model, data, lam=1e-2, max_epochs=3, seed=5, progress=False)
    b = train_dcm(model, data, lam=1e-2, max_epochs=3, seed=5, progress=False)
    assert a.mask == b.mask
    assert a.history.equals(b.history)
    assert all(torch.equal(a.gains[k], b.gains[k]) for k in a.gains)


def test_planted_target_dcm_then_update_raise_the_logit_difference():
    """A neuron that is always on and writes along W_U[:, d] − W_U[:, u] (no final norm to absorb it)."""
    from cca_tl.testing import tiny_tl_model
    from tests.helpers import tl_config

    model = tiny_tl_model(tl_config(normalization_type=None, gated_mlp=False, act_fn="gelu"), seed=1)
    d, u, planted = 17, 42, Component("neuron", 1, 7)
    with torch.no_grad():
        direction = model.W_U[:, d] - model.W_U[:, u]
        model.blocks[1].mlp.b_in[planted.index] = 3.0
        model.blocks[1].mlp.W_out[planted.index] = 0.5 * direction / direction.norm() ** 2
    train, val = contrast(n=16, seed=0, vocab=64, desired=d, undesired=u), contrast(n=8, seed=1, vocab=64, desired=d, undesired=u)
    vb = Batch.collate(val)
    base = two_logit_diff(model, vb).mean().item()
    res = train_dcm(model, train, lam=2e-3, lr=5e-2, max_epochs=30, seed=0, progress=False)
    assert planted in res.mask
    assert 0 < res.mask.count() < res.mask.size()
    binary = DCMGains.from_values(model, {k: m.float() for k, m in res.mask.masks.items()})
    masked = two_logit_diff(model, vb, binary.hooks(vb.last_pos)).mean().item()
    assert masked > base + 0.5, (base, masked)
    upd = targeted_update(model, train, res.mask, lr=0.01, steps=10, val_data=val, progress=False)
    after = two_logit_diff(model, vb).mean().item()
    assert upd.best_step > 0 and after > base + 0.5, (base, after)
    assert upd.fraction_components == res.mask.fraction_components() < 1


def test_dcm_with_and_without_prefix_cache_agree(model):
    data = contrast(n=10)
    a = train_dcm(model, data, lam=1e-2, max_epochs=3, seed=5, progress=False, prefix_cache=True)
    b = train_dcm(model, data, lam=1e-2, max_epochs=3, seed=5, progress=False, prefix_cache=False)
    assert a.mask == b.mask
    for k in a.gains:
        torch.testing.assert_close(a.gains[k], b.gains[k], atol=1e-5, rtol=0)


def test_lambda_sweep_shrinks_the_mask_as_lambda_grows(model):
    from cca_tl.dcm import lambda_sweep

    results, table = lambda_sweep(model, contrast(n=8), lams=(1e-1, 1e-4), lr=5e-2, max_epochs=20, progress=False)
    assert list(table.index) == [1e-1, 1e-4]
    assert table.loc[1e-1, "selected"] < table.loc[1e-4, "selected"]
    assert {"n_q", "n_k", "n_v", "n_neuron", "pct_components", "final_logit_diff"} <= set(table.columns)
