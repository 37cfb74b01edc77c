"""The backend choice where transformer-lens 3.x is installed (the default environment): ``hooked`` is what
runs; asking for the bridge says how to get it; a typo is refused naming the choices."""

from __future__ import annotations

import pytest
import torch

from cca_tl.backend import INSTALLED, TL_MAJOR, backend_of, require
from cca_tl.errors import BackendError
from cca_tl.models import load_model

pytestmark = pytest.mark.skipif(TL_MAJOR >= 4, reason="the default environment's view; tests/bridge holds 4.x's")


def test_the_default_environment_runs_the_hooked_backend():
    assert INSTALLED == "hooked" and require("hooked") == "hooked"
    assert backend_of(load_model("tiny-llama")) == "hooked"


def test_the_bridge_is_refused_here_with_how_to_get_it():
    with pytest.raises(BackendError, match="setup-tl4.sh"):
        load_model("tiny-llama", backend="bridge")
    with pytest.raises(BackendError, match="'hooked', 'bridge'"):
        load_model("tiny-llama", backend="bridgee")


def test_the_committed_cross_backend_edits_are_what_the_hooked_backend_computes():
    """The hooked half of the cross-backend test (the bridge tier compares its own update against these
    files): if this fails after a deliberate change, rewrite them with ``tests.helpers.write_cross_backend``."""
    from safetensors.torch import load_file

    from tests.helpers import CROSS_BACKEND, cross_backend_edit

    files = sorted(CROSS_BACKEND.glob("*.safetensors"))
    assert len(files) >= 5
    for path in files:
        committed = load_file(str(path))
        ours = cross_backend_edit(load_model(path.stem))
        assert set(ours) == set(committed) and ours, path.stem
        for n, value in ours.items():
            torch.testing.assert_close(value, committed[n], rtol=0, atol=1e-6, msg=f"{path.stem}: {n}")


def test_a_run_records_its_backend_and_the_bridge_is_refused_here(tmp_path, capsys):
    from cca_tl.cli import main
    from cca_tl.pipeline import RunConfig

    assert RunConfig().backend == "hooked" and RunConfig.from_dict({"model": "tiny-llama"}).backend == "hooked"
    with pytest.raises(ValueError, match="backend"):
        RunConfig(backend="bridgee")
    assert main(["run", "--preset", "tiny", "--backend", "bridge", "--out", str(tmp_path / "run"), "--quiet"]) != 0
    assert "setup-tl4.sh" in capsys.readouterr().err
