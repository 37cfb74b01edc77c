"""cca_tl on a TransformerLens 4 bridge (issue 29): every tiny family the bridge serves loads with the HF
model's logits, the hook points DCM uses are live, a zero DCM mask changes no bit, DCM trains, and what is
not built yet on the bridge (or cannot be) is refused with the reason. Edits and export:
``test_bridge_edits.py``."""

from __future__ import annotations

import pytest
import torch

from cca_tl.backend import BRIDGE_REFUSED
from cca_tl.errors import BackendError
from cca_tl.models import load_model
from cca_tl.testing import TINY_ARCHITECTURES, tiny_hf_model
from tests.helpers import contrast

SERVED = [a for a in TINY_ARCHITECTURES if a != "tiny-pythia"]  # GPT-NeoX: BRIDGE_REFUSED
TEXT = "Q: Tom has 3 apples and buys 4 more. How many? A:"


@pytest.fixture(scope="module", params=SERVED)
def bridge(request):
    return load_model(request.param, backend="bridge")


def test_the_bridge_computes_the_hf_models_logits(bridge):
    """Against a fresh copy of the same seeded HF model with eager attention (the bridge forces eager; HF's
    default kernel differs by float noise)."""
    hf = tiny_hf_model(bridge.cfg.model_name)
    hf.config._attn_implementation = "eager"
    tokens = bridge.to_tokens(TEXT)
    with torch.no_grad():
        ours, theirs = bridge(tokens), hf(tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert ours.std() > 0.01  # a model that says something


def test_the_model_carries_its_provenance_and_a_registry(bridge):
    from cca_tl.components import registry_of

    assert bridge.cca_provenance.details["backend"] == "bridge"
    reg = registry_of(bridge)
    assert reg.n_units("q") == bridge.cfg.n_heads and reg.n_units("neuron") == bridge.cfg.d_mlp
    assert reg.total_model_params == sum(p.numel() for p in bridge.original_model.parameters())


def test_a_zero_dcm_mask_changes_no_bit_and_a_gain_changes_the_logits(bridge):
    from cca_tl.dcm import DCMGains

    tokens = bridge.to_tokens(TEXT)
    gains = DCMGains(bridge, init=0.0, positions="all")  # paper form: (1 + m)·h, m = 0 is the identity
    with torch.no_grad():
        plain = bridge(tokens)
        zero = bridge.run_with_hooks(tokens, fwd_hooks=gains.hooks())
        assert torch.equal(zero, plain)
        gains.gains["neuron"][0, :8] = 1.0
        moved = bridge.run_with_hooks(tokens, fwd_hooks=gains.hooks())
    assert (moved - plain).abs().max() > 1e-4


def test_dcm_trains_on_the_bridge_and_leaves_the_model_unchanged(bridge):
    from cca_tl.dcm import train_dcm

    before = {n: p.detach().clone() for n, p in bridge.original_model.named_parameters()}
    result = train_dcm(bridge, contrast(n=6), lam=1e-2, lr=0.1, max_epochs=3, seed=0, progress=False)
    assert result.history["loss"].notna().all() and result.config["prefix_cache"] is False
    assert 0 < result.mask.count() <= result.mask.size()
    assert all(torch.equal(p, before[n]) for n, p in bridge.original_model.named_parameters())
    with pytest.raises(BackendError, match="prefix_cache=False"):
        train_dcm(bridge, contrast(n=4), max_epochs=1, progress=False, prefix_cache=True)


def test_ablation_checks_run_on_the_bridge(bridge):
    """Zero and task-mean ablation of a mask, equal-size random sets and the complement, over the whole
    prefix (no key/value cache on the bridge); ablating every component moves the logit difference."""
    from cca_tl.analysis import ablation_checks
    from cca_tl.component_mask import ComponentMask
    from cca_tl.components import Component

    data = contrast(n=6)
    mask = ComponentMask.from_components(bridge, [Component("q", 0, 1), Component("neuron", 1, 3)])
    table = ablation_checks(bridge, data, mask, n_random=2).reset_index()
    assert set(table["ablation"]) == {"zero", "task-mean"} and len(table) == 8
    zero = table[table["ablation"] == "zero"].set_index("set")
    assert zero.loc["circuit (selected)", "n_ablated"] == 2
    assert abs(zero.loc["complement", "delta_logit_diff"]) > 1e-3  # ablating nearly everything moves it


def test_gpt_neox_is_refused_with_the_reason():
    assert "GPTNeoXForCausalLM" in BRIDGE_REFUSED
    with pytest.raises(BackendError, match="query_key_value"):
        load_model("tiny-pythia", backend="bridge")


def test_generation_on_the_bridge_is_transformers_greedy_decoding(bridge):
    """Rows of different lengths decoded together (left-padded, rows leaving the batch as they finish) give
    what transformers' own greedy ``generate`` gives each prompt alone, on a fresh copy of the HF model."""
    from cca_tl.generation import generate

    hf = tiny_hf_model(bridge.cfg.model_name)
    hf.config._attn_implementation = "eager"
    prompts = [bridge.to_tokens(t)[0].tolist() for t in (TEXT, "Q: 2 + 2? A:", TEXT + " 7. Q: and 5 more?")]
    ours = generate(bridge, prompts, max_new_tokens=6, stops=(), batch_size=3)
    for prompt, got in zip(prompts, ours):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 pad_token_id=0)[0, len(prompt):].tolist()
        special = set(bridge.tokenizer.all_special_ids)
        cut = next((i for i, t in enumerate(theirs) if t in special), len(theirs))
        assert got.token_ids == theirs[:cut]


def test_the_hooked_backend_is_refused_here_with_what_to_do():
    with pytest.raises(BackendError, match="setup.sh"):
        load_model("tiny-llama")
