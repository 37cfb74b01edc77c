"""Every supported HF family end to end on a tiny random model: load → DCM → update → export.

The tiny models randomise norms and biases (HF initialises them to constants, which would hide a wrong
mapping). Per family: TL matches HF, a zero DCM mask is exact, a one-component-per-kind update touches
nothing else, and the edited model exports, reloads in plain transformers with the same logits, and
differs from the original checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from cca_tl import Component, ComponentMask, ComponentRegistry, Kind, ModelLoadError, export_hf, load_model
from cca_tl.contrast import Batch, ContrastSet
from cca_tl.dcm import DCMGains
from cca_tl.arch import FAMILIES, hf_slices, load_hf_config, published_config_names, tl_config_dict
from cca_tl.testing import TINY_ARCHITECTURES, char_tokenizer, tiny_hf_model
from cca_tl.entries import element_masks
from cca_tl.update import targeted_update

NEW_FAMILIES = ("tiny-gemma2", "tiny-olmo2", "tiny-gpt2", "tiny-pythia", "tiny-qwen3")
IDS = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(11))


def contrast(n: int = 6, seed: int = 0) -> ContrastSet:
    g = torch.Generator().manual_seed(seed)
    prefixes = [torch.randint(4, 256, (int(torch.randint(5, 12, (1,), generator=g)),), generator=g).tolist()
                for _ in range(n)]
    return ContrastSet(prefixes, [17] * n, [42] * n)


def one_of_every_kind(model) -> list[Component]:
    reg = ComponentRegistry.from_model(model)
    return [Component(kind, layer=kind_index % reg.n_layers, index=reg.n_units(kind) - 1)
            for kind_index, kind in enumerate(reg.kinds())]


def test_every_tiny_architecture_is_a_family():
    built = {tiny_hf_model(name).config.architectures[0] for name in TINY_ARCHITECTURES}
    assert built == set(FAMILIES)


@pytest.mark.parametrize("name", TINY_ARCHITECTURES)
def test_tl_matches_hf(name):
    hf = tiny_hf_model(name, seed=2)
    model = load_model(name, seed=2)
    with torch.no_grad():
        diff = (hf(IDS).logits - model(IDS)).abs().max().item()
    assert diff <= 1e-4, f"{name}: max |Δlogit| {diff:.3g}"


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_zero_mask_is_bit_identical(name):
    model = load_model(name)
    batch = Batch.collate(contrast(n=3))
    plain = model(batch.tokens)
    dcm = DCMGains(model, [*Kind], init=0.0)
    assert torch.equal(model.run_with_hooks(batch.tokens, fwd_hooks=dcm.hooks(batch.last_pos)), plain)


@pytest.mark.parametrize("name", NEW_FAMILIES)
@pytest.mark.parametrize("weight_set", ["authors", "extended"])
def test_update_of_one_component_per_kind_touches_nothing_else(name, weight_set):
    model = load_model(name)
    components = one_of_every_kind(model)
    mask = ComponentMask.from_components(model, components, kinds=[*Kind])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    targeted_update(model, contrast(), mask, weight_set=weight_set, lr=0.5, steps=2, eval_steps=[],
                    progress=False)
    emasks = element_masks(model, mask, weight_set)
    for param_name, p in model.named_parameters():
        unselected = ~emasks[param_name] if param_name in emasks else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p[unselected], before[param_name][unselected]), f"{param_name} changed outside the mask"
    reg = ComponentRegistry.from_model(model)
    for comp in components:
        changed = [not torch.equal(s.view(model), before[s.param].select(s.axis, s.index))
                   for s in reg.slices(comp, weight_set)]
        assert any(changed), f"{name}: {comp} was not updated"


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_edited_export_reloads_with_the_same_logits(tmp_path, name):
    original = tiny_hf_model(name, seed=0)
    model = load_model(name, seed=0)
    reg = ComponentRegistry.from_model(model)
    with torch.no_grad():
        for comp in one_of_every_kind(model):
            for s in reg.slices(comp, "extended"):
                s.view(model).add_(0.3)
    report = export_hf(model, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
    with torch.no_grad():
        tl_logits, hf_logits, original_logits = model(IDS), reloaded(IDS).logits, original(IDS).logits
    assert (hf_logits - tl_logits).abs().max() <= 1e-4
    assert (hf_logits - original_logits).abs().max() > 1e-3, "the edit did not reach the export"
    assert report.architecture == original.config.architectures[0]


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_unedited_export_is_the_original_checkpoint(tmp_path, name):
    original = tiny_hf_model(name, seed=0)
    export_hf(load_model(name, seed=0), tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32)
    theirs = reloaded.state_dict()
    for key, tensor in original.state_dict().items():
        assert torch.allclose(theirs[key], tensor, atol=1e-6, rtol=0), key


def test_fused_qkv_head_is_a_block_of_rows(tmp_path):
    """Pythia's q head h is rows [3h·d, (3h+1)·d) of query_key_value: edit one TL head, see those rows move."""
    model = load_model("tiny-pythia")
    d = model.cfg.d_head
    with torch.no_grad():
        model.blocks[1].attn.W_Q[2].add_(1.0)
    export_hf(model, tmp_path / "out")
    before = tiny_hf_model("tiny-pythia").gpt_neox.layers[1].attention.query_key_value.weight
    after = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).gpt_neox.layers[1].attention.query_key_value.weight
    moved = (after - before).abs().sum(dim=1) > 0
    expected = torch.zeros_like(moved)
    expected[3 * 2 * d:(3 * 2 + 1) * d] = True
    assert torch.equal(moved, expected)
    assert "rows [3h·d, (3h+1)·d)" in hf_slices("GPTNeoXForCausalLM", "q")


def test_biases_are_components_only_where_the_family_has_them():
    def slice_names(name):
        reg = ComponentRegistry.from_model(load_model(name))
        return {s.param.rsplit(".", 1)[-1] for kind in reg.kinds() for s in reg.slice_specs(kind, "extended")}

    assert {"b_Q", "b_K", "b_V", "b_in"} <= slice_names("tiny-gpt2")
    assert {"b_Q", "b_K", "b_V", "b_in"} <= slice_names("tiny-pythia")
    for name in ("tiny-gemma2", "tiny-olmo2", "tiny-qwen3"):
        assert not {"b_Q", "b_K", "_b_K", "b_V", "_b_V", "b_in"} & slice_names(name), name
    # norms are never component weights
    assert not any("norm" in n or n.startswith("ln") for n in slice_names("tiny-olmo2"))


def test_olmo2_with_grouped_query_attention_loads_masks_and_exports(tmp_path):
    """OLMo-2-0325-32B's layout (kv heads < query heads), which TL 3.9's own OLMo-2 converter cannot take."""
    from cca_tl.convert import hooked_from_hf

    hf = tiny_hf_model("tiny-olmo2", num_key_value_heads=2)
    model = hooked_from_hf(hf, name="tiny-olmo2-gqa")
    with torch.no_grad():
        assert (hf(IDS).logits - model(IDS)).abs().max() <= 1e-4
    reg = ComponentRegistry.from_model(model)
    assert (reg.n_units("q"), reg.n_units("k")) == (4, 2)
    with torch.no_grad():
        for comp in one_of_every_kind(model):
            for s in reg.slices(comp, "extended"):
                s.view(model).add_(0.3)
    export_hf(model, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    with torch.no_grad():
        assert (reloaded(IDS).logits - model(IDS)).abs().max() <= 1e-4
        assert (reloaded(IDS).logits - hf(IDS).logits).abs().max() > 1e-3


def test_unknown_architecture_names_the_supported_ones():
    from transformers import GPTJConfig

    config = GPTJConfig(n_embd=64, n_head=4, n_layer=2, vocab_size=256, rotary_dim=8)
    config.architectures = ["GPTJForCausalLM"]
    with pytest.raises(ModelLoadError, match="'GPTJForCausalLM' is not supported.*Gemma2ForCausalLM"):
        tl_config_dict(config)


def test_gemma3_derivation_matches_transformerlens_official_config():
    """Our HF→TL derivation reproduces TL's hard-coded gemma-3-270m entry for the real config."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformers import Gemma3TextConfig

    real = Gemma3TextConfig(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                            num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                            vocab_size=262144, max_position_embeddings=32768,
                            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                                             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}})
    real.architectures = ["Gemma3ForCausalLM"]
    ours, theirs = tl_config_dict(real), convert_hf_model_config("google/gemma-3-270m")
    for key in ("d_model", "d_head", "n_heads", "n_key_value_heads", "d_mlp", "n_layers", "d_vocab", "act_fn",
                "window_size", "attn_types", "rotary_base", "rotary_base_local", "use_qk_norm",
                "use_normalization_before_and_after", "normalization_type", "gated_mlp"):
        assert ours[key] == theirs[key], key


def test_gemma2_derivation_matches_transformerlens_official_config():
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    ours, theirs = tl_config_dict(load_hf_config("gemma-2-2b-it")), convert_hf_model_config("google/gemma-2-2b-it")
    for key, value in theirs.items():
        if key in ("n_ctx", "original_architecture", "tokenizer_name", "model_name"):
            continue
        assert ours.get(key, value) == value, key


def test_olmo2_derivation_matches_transformerlens_official_config(monkeypatch):
    import transformer_lens.loading_from_pretrained as tl_loading

    shipped = load_hf_config("olmo-2-1124-7b-instruct")
    # TL reads the hub config for this name (offline here): hand it the shipped one
    monkeypatch.setattr(tl_loading.AutoConfig, "from_pretrained", lambda *args, **kwargs: shipped)
    ours = tl_config_dict(shipped)
    theirs = tl_loading.convert_hf_model_config("allenai/OLMo-2-1124-7B")
    for key, value in theirs.items():
        if key in ("original_architecture", "tokenizer_name", "model_name", "initializer_range"):
            continue
        assert ours.get(key, value) == value, key


# ----------------------------------------------------------------------------------------------------
# Real checkpoints' component counts from their configs alone
# ----------------------------------------------------------------------------------------------------

#: q heads, kv heads, neurons per layer, layers — straight from the published configs.
PUBLISHED = {
    "gemma-2-2b-it": (8, 4, 9216, 26), "gemma-2-9b-it": (16, 8, 14336, 42),
    "olmo-2-1124-7b-instruct": (32, 32, 11008, 32), "olmo-2-1124-13b-instruct": (40, 40, 13824, 40),
    "gpt2": (12, 12, 3072, 12), "pythia-160m": (12, 12, 3072, 12),
    "qwen2.5-0.5b-instruct": (14, 2, 4864, 24), "qwen3-0.6b": (16, 8, 3072, 28),
}


def test_every_published_config_is_shipped():
    assert set(published_config_names()) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_component_counts_from_the_config_alone(name):
    from cca_tl.components import config_registry

    reg = config_registry(name)
    heads, kv_heads, neurons, layers = PUBLISHED[name]
    assert (reg.n_units("q"), reg.n_units("k"), reg.n_units("neuron"), reg.n_layers) == (heads, kv_heads, neurons, layers)


def test_real_parameter_counts_match_the_published_sizes():
    """The denominators of "% of parameters": HF parameter counts as the model cards state them."""
    from cca_tl.components import config_registry

    assert config_registry("gpt2").total_model_params == 124_439_808
    assert config_registry("pythia-160m").total_model_params == 162_322_944
    assert config_registry("qwen2.5-0.5b-instruct").total_model_params == 494_032_768
    assert config_registry("gemma-2-2b-it").total_model_params == 2_614_341_888


def test_components_cli_reads_a_shipped_config_offline():
    out = subprocess.run([sys.executable, "-m", "cca_tl.cli", "components", "--config", "gemma-2-9b-it"],
                         capture_output=True, text=True, check=True).stdout
    assert "Gemma2ForCausalLM" in out and "model.layers.{L}.self_attn.q_proj.weight rows" in out
    assert "0.17 %" in out  # what the paper's share of components means for this model


# ----------------------------------------------------------------------------------------------------
# The tiny pipeline from saved directories (as a user with a checkpoint would run it)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-olmo2"])
def test_tiny_pipeline_runs_from_a_saved_directory_and_exports(tmp_path, name):
    """A user's checkpoint directory (weights + tokenizer): the whole pipeline, then the edited model out."""
    model_dir, out, exported = tmp_path / name, tmp_path / "run", tmp_path / "edited"
    tiny_hf_model(name).save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    cli = [sys.executable, "-m", "cca_tl.cli"]
    subprocess.run([*cli, "run", "--preset", "tiny", "--set", f"model={model_dir}", "--out", str(out), "--quiet"],
                   check=True, capture_output=True, text=True)
    assert json.loads((out / "config.json").read_text())["model"] == str(model_dir)
    assert (out / "report.md").exists() and json.loads((out / "stages" / "dcm.json").read_text())["selected"] > 0
    subprocess.run([*cli, "export", str(out), "--out", str(exported)], check=True, capture_output=True, text=True)
    reloaded = AutoModelForCausalLM.from_pretrained(str(exported))
    assert reloaded.config.architectures == tiny_hf_model(name).config.architectures
