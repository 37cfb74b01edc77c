"""ModelSession (the one owner of a run's model state), device and dtype choices, bfloat16 runs, and
running out of memory — on tiny models."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cca_tl.cli import main
from cca_tl.component_mask import ComponentMask
from cca_tl.errors import CCAError, DeviceError, OutOfMemory, RunConfigMismatch
from cca_tl.devices import resolve_device, resolve_dtype
from cca_tl.models import load_model
from cca_tl.pipeline import ModelSession, Run, RunConfig, STAGE_SPECS, preset
from cca_tl.pipeline.config import EXECUTION_KEYS
from cca_tl.entries import element_masks


def _state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _mask(model, seed: int = 0) -> ComponentMask:
    mask = ComponentMask.empty(model)
    generator = torch.Generator().manual_seed(seed)
    for kind, selected in mask.masks.items():
        selected |= torch.rand(selected.shape, generator=generator) < 0.3
    return mask


def test_restore_puts_back_exactly_the_protected_slices():
    session = ModelSession("tiny-qwen2", device="cpu")
    model = session.model
    base = _state(model)
    assert session.is_base()
    regions = element_masks(model, _mask(model), "authors")
    session.protect(regions)
    assert session.is_base()  # protecting writes nothing
    with torch.no_grad():
        for name, region in regions.items():
            model.get_parameter(name)[region] += 1.0
    assert not session.is_base()
    session.restore()
    assert session.is_base()
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())


def test_a_whole_tensor_region_is_spilled_to_disk_and_restored():
    session = ModelSession("tiny-gemma3", device="cpu")
    model = session.model
    base = _state(model)
    session.protect({name: None for name in ("blocks.0.mlp.W_in", "unembed.W_U")})
    assert session._scratch is not None and any(session._scratch.iterdir())
    with torch.no_grad():
        model.blocks[0].mlp.W_in.mul_(3.0)
        model.W_U.add_(0.5)
    session.restore()
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())
    assert session._scratch is None  # the spill files are gone


def test_an_edit_outside_protected_regions_cannot_be_restored_silently():
    session = ModelSession("tiny-llama", device="cpu")
    with torch.no_grad():
        session.model.blocks[1].attn.W_O.add_(1.0)
    with pytest.raises(CCAError, match="without session.protect"):
        session.restore()
    with pytest.raises(CCAError, match="changed before it was protected"):
        session.protect({"blocks.1.attn.W_O": None})


def test_base_weights_swaps_the_edit_out_and_back_in():
    session = ModelSession("tiny-qwen2", device="cpu")
    model = session.model
    base = _state(model)
    regions = element_masks(model, _mask(model, 1), "authors")
    session.protect(regions)
    with torch.no_grad():
        for name, region in regions.items():
            model.get_parameter(name)[region] -= 0.25
    edited = _state(model)
    with session.base_weights():
        assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())
    assert all(torch.equal(p, edited[n]) for n, p in model.named_parameters())


def test_retention_scores_match_two_separate_models():
    from cca_tl.evaluate import final_residuals, general_text_scores, retention_kl, retention_scores

    session = ModelSession("tiny-gemma3", device="cpu")
    model = session.model
    reference = load_model("tiny-gemma3")
    regions = element_masks(model, _mask(model, 2), "authors")
    session.protect(regions)
    with torch.no_grad():
        for name, region in regions.items():
            model.get_parameter(name)[region] += 0.3
    texts = ["Q: 1 + 2 = 3. The answer is 3.", "def f(x):\n    return x"]
    ours = retention_scores(model, session.base_weights, texts)
    assert ours["retention_kl"] > 0
    assert ours["retention_kl"] == pytest.approx(retention_kl(reference, model, texts), rel=1e-5)
    for key, value in general_text_scores(model, texts).items():
        assert ours[key] == pytest.approx(value, rel=1e-5)
    # The unedited model's residuals stand in for its second forward pass, and for its own scores.
    unedited = final_residuals(reference, texts)
    assert retention_scores(model, session.base_weights, texts, reference=unedited) == pytest.approx(ours, rel=1e-6)
    assert retention_scores(reference, None, texts, reference=unedited) == pytest.approx(
        retention_scores(reference, None, texts), rel=1e-6)
    with pytest.raises(ValueError, match="2 texts"):
        retention_scores(model, session.base_weights, texts[:1], reference=unedited)


def test_weights_are_stored_in_the_layout_tl_reads_them_in():
    """TL's forward transposes W_in/W_U etc. and calls .contiguous(): with our layout that is a no-op."""
    model = load_model("tiny-qwen2")
    assert model.blocks[0].mlp.W_in.T.is_contiguous() and model.W_U.T.is_contiguous()
    assert model.blocks[0].attn.W_Q.permute(0, 2, 1).is_contiguous()


def test_device_and_dtype_choices_are_checked():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="Unknown device"):
        resolve_device("tpu-please")
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(DeviceError, match="float16 on the CPU"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(DeviceError, match="Unsupported dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees no CUDA GPU"):
            resolve_device("cuda")
        with pytest.raises(DeviceError, match="n_devices=2 needs"):
            load_model("tiny-llama", n_devices=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cli_device_cuda_without_a_gpu_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--preset", "tiny", "--device", "cuda", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA GPU" in err and "--device cpu" in err
    assert not out.exists()


def test_tiny_preset_runs_end_to_end_in_bfloat16_from_the_cli(tmp_path):
    out = tmp_path / "bf16"
    assert main(["run", "--preset", "tiny", "--dtype", "bfloat16", "--out", str(out), "--quiet"]) == 0
    run = Run.open(out, progress=False)
    assert run.session.dtype == torch.bfloat16 and run.model.cfg.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in run.model.parameters())
    assert (out / "report.md").exists() and "bfloat16" in (out / "report.md").read_text()
    # A resume may move to another device (an execution setting) but not to another dtype.
    Run(dataclasses.replace(run.config, device="cpu"), out, progress=False)
    with pytest.raises(RunConfigMismatch, match="dtype"):
        Run(dataclasses.replace(run.config, dtype="float32"), out, progress=False)


def test_bfloat16_update_keeps_steps_smaller_than_a_bfloat16_ulp():
    """Without the float32 master copy a step of lr·g below bf16 resolution rounds to no change."""
    from cca_tl.contrast import ContrastSet
    from cca_tl.update import targeted_update

    model = load_model("tiny-llama", dtype="bfloat16")
    base = _state(model)
    data = ContrastSet([[1, 5, 9, 12], [1, 7, 7, 30, 31]], [40, 50], [41, 51])
    mask = _mask(model, 3)
    regions = element_masks(model, mask, "authors")
    lr = 1e-5  # steps ~1e-5·|g| ≪ the 2^-8 relative spacing of bfloat16 weights of size ~0.02–1
    targeted_update(model, data, mask, lr=lr, steps=6, eval_steps=[], progress=False)
    changed = 0
    for name, param in model.named_parameters():
        if name in regions:
            assert torch.equal(param[~regions[name]], base[name][~regions[name]])
            changed += int((param[regions[name]] != base[name][regions[name]]).sum())
        else:
            assert torch.equal(param, base[name])
    assert changed > 0


def test_running_out_of_memory_is_a_clear_error_that_keeps_finished_stages(tmp_path, monkeypatch):
    out = tmp_path / "oom"
    config = preset("tiny")
    Run(config, out, progress=False).execute(stop_after="localize")

    def boom(run):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    import importlib

    run_module = importlib.import_module("cca_tl.pipeline.run")  # the package's `run` attribute is the function

    patched = tuple(dataclasses.replace(s, run=boom) if s.name == "dcm" else s for s in run_module.STAGES)
    monkeypatch.setattr(run_module, "STAGES", patched)
    before = sorted(p.name for p in (out / "stages").iterdir())
    with pytest.raises(OutOfMemory, match="gen_batch_size"):
        Run(config, out, progress=False).execute()
    assert sorted(p.name for p in (out / "stages").iterdir()) == before
    assert not (out / "dcm").exists()
    monkeypatch.undo()
    summary = Run(config, out, progress=False).execute()
    assert "dcm" in summary["ran"] and "localize" in summary["skipped"]


def test_every_config_key_belongs_to_a_stage_or_is_an_execution_setting():
    owned = {key for stage in STAGE_SPECS for key in stage.keys()}
    keys = set(RunConfig.keys())
    assert owned <= keys
    assert keys - owned == set(EXECUTION_KEYS)


def test_a_run_directory_written_before_device_and_dtype_existed_still_opens(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    old = {k: v for k, v in preset("tiny").to_dict().items() if k not in ("device", "dtype", "n_devices")}
    (out / "config.json").write_text(json.dumps(old))
    run = Run.open(out, progress=False)
    assert run.config.dtype == "float32" and run.config.device == "auto"
