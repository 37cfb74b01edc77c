"""LoFiT-style head output offsets: written through b_O, equal to adding the offset to the head's output."""

from __future__ import annotations

import pytest
import torch

from cca_tl.offsets import HeadOffsets, heads_for_budget, top_heads


def test_offsets_through_b_O_equal_an_offset_on_the_head_output(model, tokens):
    heads = {0: [1], 1: [0, 2]}
    offsets = HeadOffsets(model, heads)
    gen = torch.Generator().manual_seed(0)
    for o in offsets.offsets.values():
        o.copy_(torch.randn(o.shape, generator=gen))
    values = {layer: offsets.offsets[HeadOffsets.name(layer)] for layer in heads}

    def add(layer):
        def hook(z, hook):
            z = z.clone()
            z[:, :, heads[layer]] += values[layer].to(z.dtype)
            return z
        return hook

    with torch.no_grad():
        expected = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{l}.attn.hook_z", add(l)) for l in heads])
        offsets.write()
        got = model(tokens)
        offsets.restore({n: torch.zeros_like(o) for n, o in offsets.offsets.items()})
        assert torch.equal(model.blocks[1].attn.b_O, offsets.base[HeadOffsets.name(1)])  # zero offsets: bit for bit
    assert torch.allclose(got, expected, atol=1e-4)
    assert offsets.count == 3 * model.cfg.d_head


def test_an_offsets_update_changes_only_the_selected_layers_b_O(model):
    from cca_tl.contrast import ContrastSet
    from cca_tl.update import train_update

    gen = torch.Generator().manual_seed(1)
    data = ContrastSet([torch.randint(0, 64, (6,), generator=gen).tolist() for _ in range(8)], [17] * 8, [42] * 8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_update(model, data, objective="pivot", params="offsets", heads={1: [0]},
                          optimizer="adamw", lr=1e-2, steps=2, batch_size=4, eval_steps=[], progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"blocks.1.attn.b_O"} and result.n_params == model.cfg.d_head
    with pytest.raises(ValueError, match="needs heads"):
        train_update(model, data, params="offsets", steps=1, progress=False)


def test_heads_for_a_budget_and_the_top_heads(model):
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.7]])
    assert top_heads(scores, 3) == {0: [1], 1: [0, 1]}
    cfg = model.cfg
    assert heads_for_budget(model, 3 * cfg.d_head) == 3 and heads_for_budget(model, 1) == 1
    assert heads_for_budget(model, 10**9) == cfg.n_layers * cfg.n_heads
    with pytest.raises(ValueError, match="at least one head"):
        HeadOffsets(model, {})
    with pytest.raises(ValueError, match="outside the model"):
        HeadOffsets(model, {0: [cfg.n_heads]})
