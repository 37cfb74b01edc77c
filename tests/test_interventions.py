"""The one intervention layer: where (kinds, layers, entries, positions) × what (scale, replace, gate)."""

from __future__ import annotations

import pytest
import torch

from cca_tl import ComponentMask, ContrastSet, load_model
from cca_tl.components import Kind, registry_of
from cca_tl.contrast import PrefixKV
from cca_tl.interventions import (Baseline, Gate, Positions, Replace, Scale, add_at, capture_at, hooks, replace_at,
                                  task_means, text_means)
from cca_tl.analysis import ablated_logit_diffs

KINDS = (Kind.Q, Kind.K, Kind.V, Kind.Z, Kind.NEURON)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-qwen2")  # grouped-query attention: k/v have fewer units than q


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(4, 256, (3, 9), generator=torch.Generator().manual_seed(0))


def captured(model, tokens, fwd_hooks, names):
    """Activations at ``names`` as the model sees them after ``fwd_hooks`` (captures run after them)."""
    store = {}
    model.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, *(capture_at(n, store) for n in names)])
    return store


def ones(model, granularity="component"):
    reg = registry_of(model)
    return {k: torch.ones(reg.n_layers, *reg.entry_shape(k, granularity)) for k in KINDS}


def test_unit_scale_and_open_gates_are_bit_identical(model, tokens):
    clean = model(tokens)
    last = torch.tensor([8, 4, 6])
    for positions, last_pos in ((Positions.ALL, None), (Positions.LAST, last)):
        out = model.run_with_hooks(tokens, fwd_hooks=hooks(model, Scale(ones(model)), positions=positions,
                                                          last_pos=last_pos))
        assert torch.equal(out, clean)
    means = text_means(model, [tokens[0]], KINDS)
    for granularity in ("component", "channel"):
        out = model.run_with_hooks(tokens, fwd_hooks=hooks(model, Gate(ones(model, granularity), means)))
        assert torch.equal(out, clean)


def test_scale_reaches_only_the_chosen_entries_and_positions(model, tokens):
    reg = registry_of(model)
    gains = ones(model)
    gains[Kind.K][1, 1] = 3.0  # one kv head of layer 1
    last = torch.tensor([8, 4, 6])
    name = reg.hook_name(Kind.K, 1)
    clean = captured(model, tokens, [], [name])[name]
    scaled = captured(model, tokens, hooks(model, Scale(gains), positions="last", last_pos=last), [name])[name]
    rows = torch.arange(3)
    torch.testing.assert_close(scaled[rows, last, 1], 3.0 * clean[rows, last, 1])  # the whole head, every channel
    scaled[rows, last, 1] = clean[rows, last, 1]
    assert torch.equal(scaled, clean)  # every other head and position untouched


def test_replace_sets_selected_entries_exactly_and_leaves_the_rest(model, tokens):
    reg = registry_of(model)
    selected = ComponentMask.empty(model, KINDS, "channel")
    selected.masks[Kind.Q][0, 2, 5] = True  # one query channel
    selected.masks[Kind.NEURON][1, 7] = True
    values = {k: torch.full((reg.n_layers, *reg.entry_shape(k, "channel")), 0.25) for k in KINDS}
    fwd = hooks(model, Replace(selected.masks, values))
    assert [n for n, _ in fwd] == [reg.hook_name(Kind.Q, 0), reg.hook_name(Kind.NEURON, 1)]  # untouched layers: no hook
    names = [n for n, _ in fwd]
    clean = captured(model, tokens, [], names[:1])[names[0]]
    edited = captured(model, tokens, fwd, names[:1])[names[0]]
    assert (edited[..., 2, 5] == 0.25).all()
    edited[..., 2, 5] = clean[..., 2, 5]
    assert torch.equal(edited, clean)
    zeroed = captured(model, tokens, hooks(model, Replace(selected.masks)), names[1:])[names[1]]
    assert (zeroed[..., 7] == 0).all() and torch.count_nonzero(zeroed[..., :7]) > 0


def test_closed_gates_give_the_baseline_everywhere(model, tokens):
    reg = registry_of(model)
    means = text_means(model, [tokens[1]], [Kind.V])
    gates = {Kind.V: torch.zeros(reg.n_layers, *reg.entry_shape(Kind.V, "channel"))}
    name = reg.hook_name(Kind.V, 0)
    gated = captured(model, tokens, hooks(model, Gate(gates, means)), [name])[name]
    assert torch.equal(gated, means[Kind.V][0].expand_as(gated))


def test_last_positions_need_last_pos(model):
    with pytest.raises(ValueError, match="last_pos"):
        hooks(model, Scale(ones(model)), positions="last")


def test_residual_stream_edits(model, tokens):
    name = "blocks.1.hook_resid_pre"
    clean = captured(model, tokens, [], [name])[name]
    assert torch.equal(captured(model, tokens, [replace_at(name, clean * 0 + 1)], [name])[name], torch.ones_like(clean))
    torch.testing.assert_close(captured(model, tokens, [add_at(name, torch.ones_like(clean))], [name])[name], clean + 1)


def test_means_are_the_means_of_the_activations(model, tokens):
    reg = registry_of(model)
    _, cache = model.run_with_cache(tokens)
    means = text_means(model, list(tokens), [Kind.Q, Kind.NEURON])
    for kind in (Kind.Q, Kind.NEURON):
        expected = torch.stack([cache[reg.hook_name(kind, layer)].flatten(0, 1).mean(0) for layer in range(reg.n_layers)])
        torch.testing.assert_close(means[kind], expected)
    data = ContrastSet([tokens[0, :5].tolist(), tokens[1, :8].tolist()], [17, 17], [42, 42])
    pivot = task_means(model, data, [Kind.K])
    _, c0 = model.run_with_cache(tokens[0:1, :5])
    _, c1 = model.run_with_cache(tokens[1:2, :8])
    name = reg.hook_name(Kind.K, 1)
    torch.testing.assert_close(pivot[Kind.K][1], (c0[name][0, 4] + c1[name][0, 7]) / 2, atol=1e-5, rtol=1e-5)


def test_pivot_ablation_takes_zero_or_the_task_mean(model):
    data = ContrastSet([[5, 6, 7], [8, 9, 10, 11]], [17, 17], [42, 42])
    mask = ComponentMask.full(model)
    with pytest.raises(ValueError, match="'zero' or 'task-mean'"):
        ablated_logit_diffs(model, data, mask, baseline=Baseline.TEXT_MEAN)
    kv = PrefixKV(model, data)
    zero = ablated_logit_diffs(model, data, mask, baseline="zero", prefix_kv=kv)
    assert not torch.allclose(zero, ablated_logit_diffs(model, data, None, prefix_kv=kv))


# ----------------------------------------------------------------------------------------------------
# One mask type at both granularities
# ----------------------------------------------------------------------------------------------------


def test_channel_masks_count_sample_and_save_like_component_masks(model, tmp_path):
    reg = registry_of(model)
    scores = {k: torch.rand(reg.n_layers, *reg.entry_shape(k, "channel"), generator=torch.Generator().manual_seed(1))
              for k in (Kind.Q, Kind.K, Kind.NEURON)}
    mask = ComponentMask.top_k(model, scores, 40)
    assert mask.granularity == "channel" and mask.count() == 40 and mask.size() == sum(s.numel() for s in scores.values())
    mask.validate(model)
    assert mask.counts_by_layer().loc["total"].sum() == 40
    control = mask.random_like(3)
    for kind in mask.kinds:
        assert torch.equal(control.masks[kind].flatten(1).sum(1), mask.masks[kind].flatten(1).sum(1))
    assert control != mask
    per_channel = reg.params_per_unit(Kind.Q) // reg.identity.d_head
    only_q = ComponentMask(mask.identity, {Kind.Q: mask.masks[Kind.Q]})
    assert only_q.n_params(model) == int(mask.masks[Kind.Q].sum()) * per_channel
    for suffix in (".json", ".safetensors"):
        assert ComponentMask.load(mask.save(tmp_path / f"m{suffix}")) == mask
    with pytest.raises(ValueError, match="selects channels"):
        mask.components()
    assert ComponentMask.top_k(model, {k: s[..., 0] if k is not Kind.NEURON else s for k, s in scores.items()},
                               5).granularity == "component"
