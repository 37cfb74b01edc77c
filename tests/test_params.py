"""cca_tl.params: which parameters train inside a block, and weight snapshots restored bit for bit."""

from __future__ import annotations

import pytest
import torch

from cca_tl.models import load_model
from cca_tl.params import WeightSnapshot, restored_after, trainable


def test_trainable_lets_only_the_named_parameters_take_gradients_and_puts_every_flag_back():
    model = load_model("tiny-qwen2")
    model.blocks[0].attn.W_Q.requires_grad_(False)  # a flag that was already off stays off
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    named = {"blocks.1.mlp.W_in", "unembed.W_U"}
    with trainable(model, names=named):
        assert {n for n, p in model.named_parameters() if p.requires_grad} == named
        model(torch.tensor([[1, 2, 3]])).sum().backward()
        assert all(model.get_parameter(n).grad is not None for n in named)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(KeyError, match="blocks.9"):
        with trainable(model, names={"blocks.9.mlp.W_in"}):
            pass
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_trainable_freezes_every_module_given_and_restores_after_an_error():
    a, b = load_model("tiny-qwen2"), load_model("tiny-llama")
    with pytest.raises(RuntimeError):
        with trainable(a, b):
            assert not any(p.requires_grad for m in (a, b) for p in m.parameters())
            raise RuntimeError("inside")
    assert all(p.requires_grad for m in (a, b) for p in m.parameters())


def test_a_weight_snapshot_restores_bit_for_bit_and_names_what_changed():
    model = load_model("tiny-gemma3")
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    snapshot = WeightSnapshot(model)
    with torch.no_grad():
        model.blocks[0].mlp.W_out[3] += 1e-3
    assert snapshot.changed() == ["blocks.0.mlp.W_out"]
    snapshot.restore()
    assert snapshot.changed() == [] and all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError):
        with restored_after(model, {"blocks.1.mlp.W_in"}) as inside:
            with torch.no_grad():
                model.blocks[1].mlp.W_in.mul_(2)
            assert inside.changed() == ["blocks.1.mlp.W_in"]
            raise ValueError("the edit failed half way")
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    with pytest.raises(KeyError, match="blocks.7"):
        WeightSnapshot(model, {"blocks.7.mlp.W_in"})
