"""HF export: round trips within 1e-4, tied embeddings kept tied, and every refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import cca_tl.export as export_mod
from cca_tl import Component, ComponentRegistry, ExportError, export_hf, load_model
from cca_tl.convert import untie_embedding
from cca_tl.testing import tiny_hf_model, tiny_tl_model
from tests.helpers import tl_config

EDITS = [Component("q", 0, 1), Component("k", 1, 0), Component("v", 0, 0), Component("z", 1, 2),
         Component("neuron", 0, 5), Component("neuron", 1, 100)]


def edit_components(model, components=EDITS, weight_set="extended", amount=0.05):
    reg = ComponentRegistry.from_model(model)
    with torch.no_grad():
        for comp in components:
            for s in reg.slices(comp, weight_set):
                s.view(model).add_(amount)


def hf_logits(path, ids):
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(ids).logits


IDS = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(7))


def test_round_trip_after_edits(tmp_path, tiny_hf_name):
    model = load_model(tiny_hf_name)
    edit_components(model)
    report = export_hf(model, tmp_path / "out")
    assert report.max_abs_logit_diff <= 1e-4
    with torch.no_grad():
        tl_logits = model(IDS)
    assert (hf_logits(tmp_path / "out", IDS) - tl_logits).abs().max() <= 1e-4
    record = json.loads((tmp_path / "out" / "cca_tl_export.json").read_text())
    assert record["source_model"] == tiny_hf_name and record["architecture"] == report.architecture


def test_unedited_export_reproduces_the_original_weights(tmp_path, tiny_hf_name):
    original = tiny_hf_model(tiny_hf_name, seed=0)
    export_hf(load_model(tiny_hf_name, seed=0), tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        exported = {k: f.get_tensor(k) for k in f.keys()}
    for name, tensor in original.state_dict().items():
        if name == "lm_head.weight" and original.config.tie_word_embeddings:
            assert name not in exported
            continue
        # matrices are permuted copies (bit-exact); Gemma norms go through +1 / -1 in fp32
        torch.testing.assert_close(exported[name], tensor, atol=1e-7, rtol=0)


def test_export_loads_without_cca_tl(tmp_path):
    model = load_model("tiny-qwen2")
    edit_components(model)
    export_hf(model, tmp_path / "out")
    with torch.no_grad():
        torch.save(model(IDS), tmp_path / "expected.pt")
    torch.save(IDS, tmp_path / "ids.pt")
    script = f"""
import sys, torch
sys.modules["cca_tl"] = None  # any import of cca_tl would now fail
from transformers import AutoModelForCausalLM
hf = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'out')!r}, dtype=torch.float32).eval()
with torch.no_grad():
    diff = (hf(torch.load({str(tmp_path / 'ids.pt')!r})).logits - torch.load({str(tmp_path / 'expected.pt')!r})).abs().max()
print(float(diff))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) <= 1e-4


def test_tied_embeddings_stay_tied_unless_edited(tmp_path):
    model = load_model("tiny-gemma3")
    assert model.cca_provenance.hf_config.tie_word_embeddings
    edit_components(model)
    assert export_hf(model, tmp_path / "tied").tied_embeddings
    config = json.loads((tmp_path / "tied" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    with safe_open(str(tmp_path / "tied" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()

    with torch.no_grad():
        model.W_U[:, 3] += 0.5  # one matrix in memory, as in HF: the embedding moves with it and stays tied
    assert export_hf(model, tmp_path / "still-tied").tied_embeddings

    untie_embedding(model)
    with torch.no_grad():
        model.W_U[:, 3] += 0.5  # an edit to the unembedding only: the two must now be stored apart
    report = export_hf(model, tmp_path / "untied")
    assert not report.tied_embeddings and report.max_abs_logit_diff <= 1e-4
    assert json.loads((tmp_path / "untied" / "config.json").read_text())["tie_word_embeddings"] is False


def test_processed_model_is_refused(tmp_path):
    model = load_model("tiny-qwen2")
    model.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=False)
    with pytest.raises(ExportError, match="weight processing"):
        export_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_centred_unembed_is_refused(tmp_path):
    model = load_model("tiny-llama")
    with torch.no_grad():
        model.W_U.sub_(model.W_U.mean(-1, keepdim=True))
    with pytest.raises(ExportError, match="center_unembed"):
        export_hf(model, tmp_path / "out")


def test_unsupported_architecture_is_refused(tmp_path):
    with pytest.raises(ExportError, match="pure TransformerLens model has no HF counterpart"):
        export_hf(tiny_tl_model(tl_config()), tmp_path / "out")
    model = load_model("tiny-llama")
    model.cfg.original_architecture = "GPTJForCausalLM"
    with pytest.raises(ExportError, match="supports Gemma3ForCausalLM, Gemma2ForCausalLM.*'GPTJForCausalLM'"):
        export_hf(model, tmp_path / "out")


def test_edit_to_a_parameter_hf_lacks_is_refused(tmp_path):
    model = load_model("tiny-gemma3")
    with torch.no_grad():
        model.blocks[1].mlp.b_in[4] += 1.0  # TL keeps a zero b_in for Gemma; HF Gemma has none
    with pytest.raises(ExportError, match=r"blocks\.1\.mlp\.b_in is non-zero.*no such parameter"):
        export_hf(model, tmp_path / "out")


def test_existing_output_is_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    model = load_model("tiny-llama")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_hf(model, out)
    assert (out / "precious.txt").read_text() == "keep me"
    export_hf(model, out, overwrite=True)
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").exists()


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "max_logit_diff", lambda *a, **k: 0.5)
    with pytest.raises(ExportError, match=r"max \|Δlogit\| = 0.5.*nothing was written"):
        export_hf(load_model("tiny-llama"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.iterdir()), "the staging directory must be cleaned up"


def test_mismatched_config_is_refused(tmp_path):
    model = load_model("tiny-qwen2")
    config = tiny_hf_model("tiny-qwen2", hidden_size=32).config
    with pytest.raises(ExportError, match="does not match the model.*hidden_size"):
        export_hf(model, tmp_path / "out", hf_config=config)
