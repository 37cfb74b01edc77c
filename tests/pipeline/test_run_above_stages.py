"""The run sits above its stages: nothing a stage is made of imports the run (no circle run ↔ stages).

Static: every import in the files, lazy and ``TYPE_CHECKING`` ones included, since each of those closes the
circle for a reader as much as for Python.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cca_tl

PIPELINE = Path(cca_tl.__file__).parent / "pipeline"
BELOW_THE_RUN = [PIPELINE / "stage.py", PIPELINE / "markers.py", PIPELINE / "config.py", PIPELINE / "session.py",
                 PIPELINE / "artifacts.py", *sorted((PIPELINE / "stages").glob("*.py"))]


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def test_no_module_below_the_run_imports_it():
    upward = {path.relative_to(PIPELINE).as_posix(): sorted(m for m in imported_modules(path)
                                                          if m in ("cca_tl.pipeline.run", "cca_tl.pipeline"))
              for path in BELOW_THE_RUN}
    assert not {k: v for k, v in upward.items() if v}, upward


def test_the_check_sees_a_lazy_type_checking_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cca_tl.pipeline.run import Run\n")
    assert "cca_tl.pipeline.run" in imported_modules(module)
