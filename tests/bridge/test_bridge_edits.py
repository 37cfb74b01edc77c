"""Edits on a TransformerLens 4 bridge (issue 29): the registry names the HF slices each component owns, a
targeted update writes exactly those (every other entry keeps its bits), an edit saved from one bridge
applies to another, and export writes the HF model's own parameters, reloading in plain transformers with
the edited model's logits. GPT-2 (the bridge splits its fused ``c_attn``) is read-only, with the reason."""

from __future__ import annotations

import pytest
import torch

from cca_tl.backend import parameter_owner
from cca_tl.component_mask import ComponentMask
from cca_tl.components import Component, registry_of
from cca_tl.errors import BackendError
from cca_tl.models import load_model
from cca_tl.testing import TINY_ARCHITECTURES
from tests.helpers import contrast

EDITABLE = [a for a in TINY_ARCHITECTURES if a not in ("tiny-pythia", "tiny-gpt2")]
TEXT = "Q: Tom has 3 apples and buys 4 more. How many? A:"
HOOK_AXIS = {"q": 2, "k": 2, "v": 2, "z": 2, "neuron": 2}  # the unit axis of each kind's hook tensor


@pytest.fixture(scope="module", params=EDITABLE)
def bridge(request):
    return load_model(request.param, backend="bridge")


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in parameter_owner(model).named_parameters()}


def small_mask(model) -> ComponentMask:
    reg = registry_of(model)
    last = reg.n_layers - 1
    return ComponentMask.from_components(model, [
        Component("q", 0, 1), Component("k", last, reg.n_units("k") - 1), Component("v", 0, 0),
        Component("neuron", 0, 3), Component("neuron", last, 5)])


@pytest.mark.parametrize("kind", ["q", "k", "v", "z", "neuron"])
def test_zeroing_a_units_hf_slices_is_zero_ablating_it_at_its_hook(bridge, kind):
    """What the registry says a unit owns on the bridge is what computes it: zeroing the unit's HF slices
    (authors' set) gives the logits of zeroing the unit at its hook (q/k/v/z heads and MLP neurons)."""
    reg = registry_of(bridge)
    unit = Component(kind, reg.n_layers - 1, reg.n_units(kind) - 1)
    tokens = bridge.to_tokens(TEXT)

    def ablate(act, hook):
        act.select(HOOK_AXIS[kind], unit.index).zero_()
        return act

    with torch.no_grad():
        plain = bridge(tokens)
        ablated = bridge.run_with_hooks(tokens, fwd_hooks=[(unit.hook_name, ablate)])
        before = weights(bridge)
        for s in reg.slices(unit):
            s.view(bridge).zero_()
        zeroed = bridge(tokens)
        for name, value in before.items():  # put the weights back for the other tests
            parameter_owner(bridge).get_parameter(name).copy_(value)
    assert (ablated - plain).abs().max() > 1e-6  # the unit matters at all
    torch.testing.assert_close(zeroed, ablated, rtol=0, atol=1e-5)


def test_the_registry_counts_the_hf_slices(bridge):
    """Per unit: d_model·d_head for a q/k/v head (plus its biases where the HF model has them) and an output
    head, d_model for a neuron (authors' set) and 3·d_model with gate and down rows (extended)."""
    reg, cfg = registry_of(bridge), bridge.cfg
    has_qkv_bias = "bias" in "".join(s.param for s in reg.slice_specs("q"))
    assert reg.params_per_unit("q") == cfg.d_model * cfg.d_head + (cfg.d_head if has_qkv_bias else 0)
    assert reg.params_per_unit("z") == cfg.d_model * cfg.d_head
    assert reg.params_per_unit("neuron") == cfg.d_model + ("bias" in "".join(s.param for s in reg.slice_specs("neuron")))
    assert reg.params_per_unit("neuron", "extended") - reg.params_per_unit("neuron") == 2 * cfg.d_model


@pytest.mark.parametrize("variant", ["cca", "random"])
def test_a_targeted_update_writes_exactly_the_selected_hf_slices(bridge, variant):
    from cca_tl.entries import element_masks
    from cca_tl.update import targeted_update

    before = weights(bridge)
    mask = small_mask(bridge)
    result = targeted_update(bridge, contrast(n=6), mask, variant=variant, lr=0.5, steps=3, eval_steps=[],
                             seed=0, progress=False)
    after = weights(bridge)
    emasks = element_masks(bridge, result.mask)
    try:
        assert result.n_params == sum(int(m.sum()) for m in emasks.values())
        assert result.config["shared_prefix"] is False
        for name, value in after.items():
            m = emasks.get(name)
            if m is None:
                assert torch.equal(value, before[name]), name
            else:
                assert torch.equal(value[~m], before[name][~m]), name
        assert any(not torch.equal(after[n][m], before[n][m]) for n, m in emasks.items())
    finally:
        with torch.no_grad():
            for name, value in before.items():
                parameter_owner(bridge).get_parameter(name).copy_(value)


def test_an_edit_saved_from_one_bridge_applies_to_another(bridge, tmp_path):
    from cca_tl.edits import WeightEdit
    from cca_tl.update import targeted_update

    name = bridge.cfg.model_name
    edited = load_model(name, backend="bridge")
    targeted_update(edited, contrast(n=6), small_mask(edited), lr=0.5, steps=2, eval_steps=[], progress=False)
    WeightEdit.capture(edited, small_mask(edited), "authors").save(tmp_path)
    fresh = load_model(name, backend="bridge")
    WeightEdit.load(tmp_path).apply(fresh)
    tokens = fresh.to_tokens(TEXT)
    with torch.no_grad():
        assert torch.equal(fresh(tokens), edited(tokens))
    assert all(torch.equal(p, weights(edited)[n]) for n, p in weights(fresh).items())


def test_export_writes_the_edited_hf_weights_and_reloads_in_transformers(bridge, tmp_path):
    from transformers import AutoModelForCausalLM

    from cca_tl.export import export_hf
    from cca_tl.update import targeted_update

    edited = load_model(bridge.cfg.model_name, backend="bridge")
    base = weights(edited)
    targeted_update(edited, contrast(n=6), small_mask(edited), lr=0.5, steps=2, eval_steps=[], progress=False)
    report = export_hf(edited, tmp_path / "out")
    assert report.max_abs_logit_diff is not None and report.max_abs_logit_diff <= 1e-4
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32)
    theirs = dict(reloaded.named_parameters())
    changed = [n for n, p in weights(edited).items() if not torch.equal(p, base[n])]
    assert changed  # the edit is carried
    for name, value in weights(edited).items():
        assert torch.equal(theirs[name].detach(), value), name


def test_gpt2_is_read_only_on_the_bridge_with_the_reason():
    from cca_tl.update import targeted_update

    gpt2 = load_model("tiny-gpt2", backend="bridge")
    mask = ComponentMask.from_components(gpt2, [Component("neuron", 0, 1)])
    with pytest.raises(BackendError, match="HF_UNITS"):
        targeted_update(gpt2, contrast(n=4), mask, progress=False)


def test_lora_and_head_offsets_are_refused_on_the_bridge_with_the_reason(bridge):
    from cca_tl.update import train_update

    with pytest.raises(BackendError, match="LoRA factors and head offsets"):
        train_update(bridge, contrast(n=4), params="lora", lora_rank=2, progress=False)
    with pytest.raises(BackendError, match="LoRA factors and head offsets"):
        train_update(bridge, contrast(n=4), params="offsets", heads={0: [0]}, progress=False)


def test_the_answer_objective_on_the_bridge_is_transformers_labels_loss(bridge):
    """The same reference as the hooked backend's (tests/test_answers.py): the mean cross-entropy of the answer
    tokens is what transformers computes on a fresh copy of the HF model with the prompt's labels at -100."""
    from cca_tl.answers import answer_token_losses
    from cca_tl.testing import tiny_hf_model
    from tests.helpers import answers_behind_a_prompt

    data = answers_behind_a_prompt(n=5, seed=3)
    ours = torch.cat([losses.detach() for losses in answer_token_losses(bridge, data, batch_size=2)]).sum() / data.n_tokens
    twin, total = tiny_hf_model(bridge.cfg.model_name), 0.0
    twin.config._attn_implementation = "eager"
    with torch.no_grad():
        for prompt, answer in zip(data.prompt_ids, data.answer_ids):
            ids = torch.tensor([prompt + answer])
            labels = torch.tensor([[-100] * len(prompt) + answer])
            total += float(twin(input_ids=ids, labels=labels).loss) * len(answer)
    assert abs(float(ours) - total / data.n_tokens) < 1e-4 and float(ours) > 1.0


def test_masked_fine_tuning_on_the_bridge_writes_only_the_mask_and_lowers_the_loss(bridge):
    """The answer objective (AdamW, the authors' masked fine-tuning) on the DCM-style mask's HF slices."""
    from cca_tl.entries import element_masks
    from cca_tl.update import train_update
    from tests.helpers import answers_behind_a_prompt

    model = load_model(bridge.cfg.model_name, backend="bridge")
    before, mask = weights(model), small_mask(model)
    result = train_update(model, answers_behind_a_prompt(n=6, seed=1), mask, objective="answer", params="mask",
                          optimizer="adamw", lr=1e-2, steps=4, batch_size=3, progress=False)
    emasks = element_masks(model, mask)
    for name, value in weights(model).items():
        m = emasks.get(name)
        assert torch.equal(value, before[name]) if m is None else torch.equal(value[~m], before[name][~m]), name
    history = result.history
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[1]


def test_the_same_update_gives_the_same_hf_weights_on_both_backends(bridge):
    """The fixed update of :func:`tests.helpers.cross_backend_edit` from the same seed, here on the bridge and
    on the hooked backend (committed from ``.venv``; ``tests/test_backend.py`` keeps the file current)."""
    from safetensors.torch import load_file

    from tests.helpers import CROSS_BACKEND, cross_backend_edit

    name = bridge.cfg.model_name
    hooked = load_file(str(CROSS_BACKEND / f"{name}.safetensors"))
    ours = cross_backend_edit(load_model(name, backend="bridge"))
    assert set(ours) == set(hooked) and ours
    for n, value in ours.items():
        torch.testing.assert_close(value, hooked[n], rtol=0, atol=1e-5, msg=n)
