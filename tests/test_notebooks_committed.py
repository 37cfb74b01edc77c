"""The notebooks are committed executed (readers see outputs on GitHub without running anything): every code
cell ran, in order, without an error or a warning, and each file stays small. ``scripts/execute_notebooks.py`` writes
them; the slow tier executes them again (tests/slow/test_notebooks.py)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_with_outputs_in_order(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), f"not executed top to bottom in one kernel: {counts}"
    assert not [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    shown = [o for c in code for o in c.get("outputs", []) if o.get("output_type") in ("execute_result", "display_data")]
    assert shown, "no table, plot or view in the outputs"
    warned = [line for c in code for o in c.get("outputs", []) if o.get("output_type") == "stream"
              for line in o["text"].splitlines() if "Warning:" in line]
    assert not warned, f"warnings in the committed outputs (every reader sees them): {warned[:3]}"
    assert path.stat().st_size <= 2 * 2**20


def test_the_lesson_has_pictures():
    nb = nbformat.read(next(p for p in NOTEBOOKS if p.name.startswith("02_lesson")), as_version=4)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "Exercise" in markdown and "Solution" in markdown
