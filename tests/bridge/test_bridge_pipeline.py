"""The pipeline on the bridge (issue 29's done-when): ``cca-tl run --preset tiny --backend bridge`` runs every
stage, records the backend in the run's config (a resume with the other backend is refused), and
``cca-tl export`` of the run writes a directory plain transformers loads with the edited weights."""

from __future__ import annotations

import json

import pytest
import torch

from cca_tl.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-bridge") / "run"
    assert main(["run", "--preset", "tiny", "--backend", "bridge", "--out", str(out), "--quiet"]) == 0
    return out


def test_the_tiny_run_finishes_on_the_bridge_and_records_its_backend(run_dir):
    from cca_tl.pipeline import Run

    assert json.loads((run_dir / "config.json").read_text())["backend"] == "bridge"
    run = Run.open(run_dir, progress=False)
    assert all(run.done(stage) for stage in ("traces", "dcm", "update", "evaluate", "analysis", "report"))
    assert (run_dir / "report.md").exists()


def test_a_resume_with_the_other_backend_is_refused(run_dir, capsys):
    assert main(["run", "--preset", "tiny", "--backend", "hooked", "--out", str(run_dir), "--quiet"]) != 0
    assert "{'backend': ('bridge', 'hooked')}" in capsys.readouterr().err


def test_the_exported_run_reloads_in_transformers_with_the_edit(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from cca_tl.backend import parameter_owner
    from cca_tl.models import load_model
    from cca_tl.pipeline import Run

    assert main(["export", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    edited = dict(parameter_owner(Run.open(run_dir, progress=False).edited_model()).named_parameters())
    base = dict(parameter_owner(load_model("tiny-gemma3", backend="bridge")).named_parameters())
    reloaded = dict(AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).named_parameters())
    assert set(reloaded) == set(edited)
    assert all(torch.equal(reloaded[n].detach(), p.detach()) for n, p in edited.items())
    assert any(not torch.equal(p, base[n]) for n, p in edited.items())  # the CCA edit is in the export
