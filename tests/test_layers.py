"""The package's layers (docs/architecture.md): every import runs sideways or down, and none forms a circle.

Static, over every ``import`` in every module of ``cca_tl`` — lazy imports inside functions and
``TYPE_CHECKING`` ones included, since each of those ties two modules together for a reader as much as a
top-level import does. A package's ``__init__`` counts as a module (a submodule importing its own package
closes a circle through the ``__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cca_tl

ROOT = Path(cca_tl.__file__).parent

#: Bottom to top; a module may import modules of its own layer or of a layer below. The first matching
#: prefix decides (a module name, or a package followed by a dot). Kept equal to docs/architecture.md.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("cca_tl.errors", "cca_tl._io", "cca_tl.validated", "cca_tl.stats", "cca_tl.provenance", "cca_tl.devices",
                    "cca_tl.params", "cca_tl.backend", "cca_tl.fast_paths")),
    ("arch", ("cca_tl.arch", "cca_tl.arch.")),
    ("architecture", ("cca_tl.families", "cca_tl.convert", "cca_tl.bridge", "cca_tl.gguf", "cca_tl.testing", "cca_tl.models",
                      "cca_tl.components", "cca_tl.component_mask", "cca_tl.lora", "cca_tl.offsets",
                      "cca_tl.export")),
    ("data", ("cca_tl.tasks", "cca_tl.tasks.", "cca_tl.prompt_cache", "cca_tl.generation", "cca_tl.contrast", "cca_tl.answers",
              "cca_tl.traces", "cca_tl.localize")),
    ("methods", ("cca_tl.interventions", "cca_tl.evaluate", "cca_tl.dcm", "cca_tl.entries", "cca_tl.edits",
                 "cca_tl.update", "cca_tl.analysis", "cca_tl.baselines", "cca_tl.sparse", "cca_tl.sparse.")),
    ("pipeline", ("cca_tl.pipeline", "cca_tl.pipeline.")),
    ("experiments", ("cca_tl.sweep", "cca_tl.sweep.", "cca_tl.retention_suite")),
    ("interface", ("cca_tl.cli", "cca_tl")),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The cca_tl modules ``path`` imports (``from m import x`` counts as ``m.x`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            for alias in node.names:
                full = f"{module}.{alias.name}"
                out.add(full if full in known else module)
    return {m for m in out if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported(path, name, set(modules)) for name, path in modules.items()}


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or (p.endswith(".") and module.startswith(p)) for p in prefixes):
            return index
    raise LookupError(module)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once (as found by a depth-first search)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def upward(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
            for m, deps in sorted(graph.items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]


def test_every_module_has_a_layer():
    unplaced = [m for m in package_modules() if not _placed(m)]
    assert not unplaced, f"Add these modules to LAYERS here and in docs/architecture.md: {unplaced}"


def _placed(module: str) -> bool:
    try:
        layer_of(module)
    except LookupError:
        return False
    return True


def test_no_import_runs_upward():
    assert upward(import_graph()) == []


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_the_architecture_layer_imports_nothing_of_cca_tl_but_its_errors():
    graph = import_graph()
    outside = {m: sorted(d for d in deps if not (d == "cca_tl.errors" or d.startswith("cca_tl.arch")))
               for m, deps in graph.items() if m == "cca_tl.arch" or m.startswith("cca_tl.arch.")}
    assert {m: d for m, d in outside.items() if d} == {}


def test_the_layers_in_the_docs_are_these():
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    for name, prefixes in LAYERS:
        assert f"**{name}**" in doc, name
        for prefix in prefixes:
            assert f"`{prefix.removeprefix('cca_tl.').rstrip('.') or 'cca_tl'}" in doc, (name, prefix)


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    from cca_tl.pipeline.run import Run\n", "cca_tl.pipeline.run"),  # lazy
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cca_tl.sweep import Sweep\n", "cca_tl.sweep"),
    ("from . import update\n", "cca_tl.update"),  # relative
])
def test_the_check_sees_lazy_type_checking_and_relative_imports(tmp_path, source, expected):
    module = tmp_path / "m.py"
    module.write_text(source)
    assert expected in imported(module, "cca_tl.m", set(package_modules()))


def test_the_checks_fail_on_an_upward_import_and_a_circle():
    graph = {"cca_tl.errors": {"cca_tl.cli"}, "cca_tl.cli": {"cca_tl.errors"}}
    assert upward(graph) == ["cca_tl.errors (foundation) imports cca_tl.cli (interface)"]
    assert circles(graph) == [["cca_tl.cli", "cca_tl.errors", "cca_tl.cli"]]
