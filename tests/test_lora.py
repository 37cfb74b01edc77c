"""LoRA on TransformerLens weights: the same function as peft's LoRA on the HF twin, a rank-r delta in the
HF layout, and nothing outside the target projections moves."""

from __future__ import annotations

import pytest
import torch

from cca_tl import load_model
from cca_tl.lora import LORA_TARGETS, LoRAParams, from_linear, lora_targets, params_per_rank, rank_for_budget, to_linear


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gemma3", "tiny-qwen2"])
def test_merged_lora_equals_peft_lora_on_the_hf_twin(arch):
    from peft import LoraConfig, get_peft_model

    from cca_tl.export import hf_copy

    model = load_model(arch)
    twin = hf_copy(model)  # the unedited weights
    lora = LoRAParams(model, rank=3, seed=1)
    g = torch.Generator().manual_seed(2)
    for name in lora.B:
        lora.B[name].normal_(0, 0.05, generator=g)
    lora.write()
    peft_model = get_peft_model(twin, LoraConfig(r=3, lora_alpha=6, lora_dropout=0.0, target_modules=list(LORA_TARGETS)))
    modules = dict(peft_model.named_modules())
    for t in lora.targets:
        layer = next(m for n, m in modules.items()
                     if n.endswith(f"layers.{t.layer}.{'self_attn' if t.projection.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{t.projection}"))
        layer.lora_A["default"].weight.data.copy_(lora.A[t.name])
        layer.lora_B["default"].weight.data.copy_(lora.B[t.name])
    assert lora.count == peft_model.get_nb_trainable_parameters()[0]  # the same budget as peft's
    tokens = torch.randint(0, 200, (2, 9), generator=g)
    with torch.no_grad():
        ours = model(tokens).float()
        theirs = peft_model(input_ids=tokens).logits.float()
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_layouts_round_trip_and_count_parameters():
    model = load_model("tiny-llama")
    for t in lora_targets(model):
        w = model.get_parameter(t.name).detach()
        view = to_linear(w, t.layout)
        assert view.shape == (t.out_features, t.in_features)
        assert torch.equal(from_linear(view, t.layout, w.shape), w)
    per_rank = params_per_rank(model)
    assert LoRAParams(model, 2).count == 2 * per_rank
    assert rank_for_budget(model, 5 * per_rank + 3) == 5
    assert rank_for_budget(model, 1) == 1


def test_gradients_reach_the_factors_and_the_update_has_rank_r():
    model = load_model("tiny-llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora = LoRAParams(model, rank=2, seed=0)
    for name in lora.B:
        lora.B[name].normal_(0, 0.1)
    lora.write()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in lora.params.values():
        p.requires_grad_(True)
    tokens = torch.randint(0, 200, (2, 7))
    with lora.gradients():
        model(tokens).float().pow(2).mean().backward()
    # against autograd through an explicit graph W0 + s·B·A (torch.func.functional_call)
    t = lora.targets[0]
    a = lora.A[t.name].clone().requires_grad_()
    b = lora.B[t.name].clone().requires_grad_()
    weight = before[t.name] + from_linear(lora.scale * b @ a, t.layout, before[t.name].shape)
    torch.func.functional_call(model, {t.name: weight}, (tokens,)).float().pow(2).mean().backward()
    assert torch.allclose(lora.B[t.name].grad, b.grad, atol=1e-5)
    assert torch.allclose(lora.A[t.name].grad, a.grad, atol=1e-5)
    # rank of every written delta, and non-targets untouched
    for name, p in model.named_parameters():
        target = next((x for x in lora.targets if x.name == name), None)
        if target is None:
            assert torch.equal(p, before[name]), name
        else:
            assert torch.linalg.matrix_rank(to_linear(p.detach() - before[name], target.layout)) <= 2


def test_zero_b_writes_the_base_weights_bit_for_bit():
    model = load_model("tiny-gemma3")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    LoRAParams(model, rank=4).write()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_bad_rank_and_targets_are_refused():
    model = load_model("tiny-llama")
    with pytest.raises(ValueError, match="rank"):
        LoRAParams(model, 0)
    with pytest.raises(ValueError, match="Unknown LoRA targets"):
        lora_targets(model, ["qkv"])
