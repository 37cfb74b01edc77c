"""Every notebook in notebooks/ executes top to bottom offline, through the same function that writes the
committed outputs (scripts/execute_notebooks.py), as a user would run it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _executor():
    spec = importlib.util.spec_from_file_location("execute_notebooks", ROOT / "scripts" / "execute_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_lesson_from_a_wrong_trace.ipynb", "03_component_tables.ipynb",
            "04_pruning_a_circuit.ipynb", "05_does_the_circuit_matter.ipynb"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path):
    executor = _executor()
    nb = executor.execute(path)  # raises on the first failing cell
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") in ("execute_result", "display_data") for o in outputs)
    assert not executor.warnings_shown(nb)
    assert executor.size_of(nb) <= executor.MAX_BYTES
