"""The component registry and the component mask."""

from __future__ import annotations

import json

import pytest
import torch

from cca_tl import (
    ALL_KINDS,
    Component,
    ComponentMask,
    ComponentRegistry,
    Kind,
    MaskMismatchError,
    component_table,
    load_model,
)
from cca_tl.testing import tiny_tl_model
from tests.helpers import tl_config


# -- counts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # grouped-query attention (4 heads, 2 kv heads), gated MLP
        dict(n_key_value_heads=None, gated_mlp=False, act_fn="gelu"),  # plain attention, non-gated MLP
        dict(n_key_value_heads=1, gated_mlp=False, act_fn="relu", n_layers=3),  # multi-query
    ],
)
def test_counts_equal_the_config(overrides):
    model = tiny_tl_model(tl_config(**overrides))
    cfg = model.cfg
    reg = ComponentRegistry.from_model(model)
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    assert reg.n_units(Kind.Q) == cfg.n_heads
    assert reg.n_units(Kind.K) == reg.n_units(Kind.V) == n_kv
    assert reg.n_units(Kind.Z) == cfg.n_heads
    assert reg.n_units(Kind.NEURON) == cfg.d_mlp
    table = component_table(model)
    assert list(table.columns) == [k.value for k in ALL_KINDS]
    assert table.loc["total"].to_dict() == {
        "q": cfg.n_layers * cfg.n_heads, "k": cfg.n_layers * n_kv, "v": cfg.n_layers * n_kv,
        "z": cfg.n_layers * cfg.n_heads, "neuron": cfg.n_layers * cfg.d_mlp,
    }
    assert reg.n_components() == cfg.n_layers * (cfg.n_heads + 2 * n_kv + cfg.d_mlp)
    assert len(list(reg.components(ALL_KINDS))) == reg.n_components(ALL_KINDS)


def test_counts_of_tiny_hf_models(tiny_hf_name):
    model = load_model(tiny_hf_name)
    reg = ComponentRegistry.from_model(model)
    hf = model.cca_provenance.hf_config
    assert reg.n_units("q") == hf.num_attention_heads
    assert reg.n_units("k") == (getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads)
    assert reg.n_units("neuron") == (getattr(hf, "intermediate_size", None) or 4 * hf.hidden_size)


# -- slices point at the right rows and columns --------------------------------------------------------


def _hook_outputs(model, tokens, names):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {n: cache[n].clone() for n in names}


def _unit_axis(kind: Kind) -> int:
    return -1 if kind is Kind.NEURON else -2


@pytest.mark.parametrize("weight_set", ["authors", "extended"])
@pytest.mark.parametrize("kind", [Kind.Q, Kind.K, Kind.V, Kind.NEURON])
@pytest.mark.parametrize("model_fixture", ["tl_gqa_gated", "tl_mha_plain"])
def test_editing_a_slice_changes_only_that_components_hook_output(request, model_fixture, kind, weight_set, tokens):
    model = request.getfixturevalue(model_fixture)
    reg = ComponentRegistry.from_model(model)
    layer, index = 1, reg.n_units(kind) - 1
    hook = reg.hook_name(kind, layer)
    before = _hook_outputs(model, tokens, [hook])[hook]
    with torch.no_grad():
        for s in reg.slices(Component(kind, layer, index), weight_set):
            if s.param.endswith("W_out"):
                continue  # acts after hook_post; checked separately
            s.view(model).add_(0.5)
    after = _hook_outputs(model, tokens, [hook])[hook]
    axis = _unit_axis(kind)
    changed = (after != before).movedim(axis, 0).flatten(1).any(dim=1)
    assert changed.tolist() == [i == index for i in range(reg.n_units(kind))]


def test_z_slice_is_the_heads_rows_of_W_O(tl_gqa_gated, tokens):
    model = tl_gqa_gated
    reg = ComponentRegistry.from_model(model)
    layer, head = 0, 2
    names = [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out"]
    before = _hook_outputs(model, tokens, names)
    delta = 0.1 * torch.randn(model.cfg.d_head, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (s,) = reg.slices(Component("z", layer, head))
        s.view(model).add_(delta)
    after = _hook_outputs(model, tokens, names)
    assert torch.equal(after[names[0]], before[names[0]])
    expected = before[names[0]][:, :, head] @ delta
    torch.testing.assert_close(after[names[1]] - before[names[1]], expected, atol=1e-5, rtol=1e-4)


def test_neuron_W_out_slice_is_that_neurons_output_row(tl_gqa_gated, tokens):
    model = tl_gqa_gated
    reg = ComponentRegistry.from_model(model)
    layer, neuron = 1, 7
    names = [f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out"]
    before = _hook_outputs(model, tokens, names)
    delta = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    slices = {s.param.rsplit(".", 1)[-1]: s for s in reg.slices(Component("neuron", layer, neuron), "extended")}
    with torch.no_grad():
        slices["W_out"].view(model).add_(delta)
    after = _hook_outputs(model, tokens, names)
    expected = before[names[0]][..., neuron, None] * delta
    torch.testing.assert_close(after[names[1]] - before[names[1]], expected, atol=1e-5, rtol=1e-4)


def test_slice_sets_follow_the_hf_architecture():
    gemma = ComponentRegistry.from_model(load_model("tiny-gemma3"))
    qwen = ComponentRegistry.from_model(load_model("tiny-qwen2"))
    leaves = lambda reg, kind, ws="authors": [s.param.rsplit(".", 1)[-1] for s in reg.slice_specs(kind, ws)]
    assert leaves(gemma, "q") == ["W_Q"]  # Gemma has no q bias: TL's zero placeholder is not a slice
    assert leaves(qwen, "q") == ["W_Q", "b_Q"]
    assert leaves(qwen, "k") == ["_W_K", "_b_K"]
    assert leaves(qwen, "neuron") == ["W_in"]  # the authors' set: up_proj row only
    assert leaves(qwen, "neuron", "extended") == ["W_in", "W_gate", "W_out"]
    tl = ComponentRegistry.from_model(tiny_tl_model(tl_config(gated_mlp=False, act_fn="gelu")))
    assert leaves(tl, "neuron", "extended") == ["W_in", "b_in", "W_out"]  # pure TL: biases are real


def test_params_per_unit_counts_the_slices(tl_gqa_gated):
    reg = ComponentRegistry.from_model(tl_gqa_gated)
    cfg = tl_gqa_gated.cfg
    for kind in ALL_KINDS:
        for ws in ("authors", "extended"):
            comp = Component(kind, 0, 0)
            assert reg.params_per_unit(kind, ws) == sum(s.view(tl_gqa_gated).numel() for s in reg.slices(comp, ws))
    assert reg.params_per_unit("q") == cfg.d_model * cfg.d_head + cfg.d_head


def test_a_component_outside_the_model_is_refused(tl_gqa_gated):
    reg = ComponentRegistry.from_model(tl_gqa_gated)
    with pytest.raises(MaskMismatchError, match="does not exist"):
        reg.slices(Component("k", 0, 2))  # only 2 kv heads
    with pytest.raises(ValueError):
        Component("mlp", 0, 0)  # not a kind


# -- the mask ---------------------------------------------------------------------------------------------


@pytest.fixture
def mask(tl_gqa_gated) -> ComponentMask:
    comps = [Component("q", 0, 1), Component("k", 1, 0), Component("neuron", 0, 3), Component("neuron", 1, 40)]
    return ComponentMask.from_components(tl_gqa_gated, comps)


def test_mask_counts_and_fractions(tl_gqa_gated, mask):
    reg = ComponentRegistry.from_model(tl_gqa_gated)
    assert mask.count() == 4 and len(mask) == 4
    assert mask.kinds == (Kind.Q, Kind.K, Kind.V, Kind.NEURON)  # z is opt-in
    assert mask.counts_by_kind() == {"q": 1, "k": 1, "v": 0, "neuron": 2}
    assert mask.size() == reg.n_components()
    assert mask.fraction_components() == pytest.approx(4 / reg.n_components())
    expected_params = reg.params_per_unit("q") + reg.params_per_unit("k") + 2 * reg.params_per_unit("neuron")
    assert mask.n_params(tl_gqa_gated) == expected_params
    assert mask.fraction_params(tl_gqa_gated) == pytest.approx(expected_params / reg.total_model_params)
    by_layer = mask.counts_by_layer()
    assert by_layer.loc[0].to_dict() == {"q": 1, "k": 0, "v": 0, "neuron": 1}
    assert by_layer.loc["total"].sum() == 4
    assert component_table(mask).equals(by_layer)
    assert Component("neuron", 1, 40) in mask and Component("neuron", 1, 41) not in mask
    summary = mask.summary(tl_gqa_gated)
    assert summary.loc["all", "selected"] == 4 and summary.loc["all", "params"] == expected_params


def test_mask_set_operations(tl_gqa_gated, mask):
    other = ComponentMask.from_components(tl_gqa_gated, [Component("q", 0, 1), Component("v", 0, 0)])
    assert (mask | other).count() == 5
    assert (mask & other).components() == [Component("q", 0, 1)]
    assert (mask - other).count() == 3
    assert (mask ^ other).count() == 4
    assert (~mask).count() == mask.size() - 4
    assert mask.jaccard(other) == pytest.approx(1 / 5)
    assert (mask | ComponentMask.empty(tl_gqa_gated)) == mask
    assert ComponentMask.full(tl_gqa_gated).count() == mask.size()


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_mask_save_load_round_trip(tmp_path, tl_gqa_gated, mask, suffix):
    path = mask.save(tmp_path / f"mask{suffix}")
    loaded = ComponentMask.load(path)
    assert loaded == mask
    loaded.validate(tl_gqa_gated)
    assert loaded.identity.name == "tiny-tl"


def test_mask_from_another_model_is_refused(tl_gqa_gated, mask):
    other_shape = tiny_tl_model(tl_config(d_mlp=64, model_name="bigger"))
    with pytest.raises(MaskMismatchError, match=r"made for 'tiny-tl' and does not fit 'bigger'.*d_mlp: 48 vs 64"):
        mask.validate(other_shape)
    same_shape = tiny_tl_model(tl_config(model_name="twin"))
    with pytest.raises(MaskMismatchError, match="strict_name=False"):
        mask.validate(same_shape)
    mask.validate(same_shape, strict_name=False)
    with pytest.raises(MaskMismatchError):
        mask | ComponentMask.empty(other_shape)


def test_a_tampered_mask_file_is_refused(tmp_path, tl_gqa_gated, mask):
    path = mask.save(tmp_path / "mask.json")
    doc = json.loads(path.read_text())
    doc["identity"]["n_heads"] = 8
    path.write_text(json.dumps(doc))
    with pytest.raises(MaskMismatchError, match="n_heads: 8 vs 4"):
        ComponentMask.load(path).validate(tl_gqa_gated)
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(MaskMismatchError, match="not a cca_tl component mask"):
        ComponentMask.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match=".json or .safetensors"):
        mask.save(tmp_path / "mask.pt")
