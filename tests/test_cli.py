"""The command line on tiny models."""

from __future__ import annotations

import json

from cca_tl.cli import main


def test_components_prints_and_writes_the_table(capsys, tmp_path):
    assert main(["components", "--model", "tiny-qwen2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tiny-qwen2 (Qwen2ForCausalLM): 2 layers, 107,072 parameters" in out
    assert "blocks.{L}.attn.hook_k" in out
    md = (tmp_path / "components.md").read_text()
    assert "| neuron" in md


def test_export_command(capsys, tmp_path):
    assert main(["export", "tiny-gemma3", "--out", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert report["max_abs_logit_diff"] <= 1e-4 and report["architecture"] == "Gemma3ForCausalLM"
    assert (tmp_path / "hf" / "model.safetensors").exists()


def test_errors_are_one_clear_line(capsys, tmp_path):
    assert main(["components", "--model", "no-such-model"]) == 2
    assert "cca-tl: error: Unknown model 'no-such-model'" in capsys.readouterr().err
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "x").write_text("x")
    assert main(["export", "tiny-llama", "--out", str(tmp_path / "hf")]) == 2
    assert "not empty" in capsys.readouterr().err
