"""Structure figures of the package and its tests (issue 14's "done when"), from the AST.

    .venv/bin/python analyses/code_metrics.py [--label TEXT]

Prints and appends to ``analyses/code_metrics.csv``: the largest class and function (lines), how many
imports reach a private name (``_x``) of another cca_tl module (package and tests), and which modules define
TransformerLens hook functions (a function whose last parameter is named ``hook``). Writes
``analyses/code_metrics.md`` with every measurement so far.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
CSV = ROOT / "analyses" / "code_metrics.csv"


def _sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts)


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def measure() -> dict:
    largest_class, largest_function = ("", 0), ("", 0)
    private_imports: list[str] = []
    hook_modules: set[str] = set()
    for path in _sources("cca_tl") + _sources("tests"):
        tree = ast.parse(path.read_text())
        name = _module_name(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and path.parts[-2:][0] != "tests":
                size = node.end_lineno - node.lineno + 1
                if size > largest_class[1] and "cca_tl" in path.parts:
                    largest_class = (f"{name}.{node.name}", size)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > largest_function[1] and "cca_tl" in path.parts:
                    largest_function = (f"{name}.{node.name}", size)
                params = node.args.args
                if params and params[-1].arg == "hook" and "cca_tl" in path.parts:
                    hook_modules.add(name)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cca_tl"):
                if node.module == name:
                    continue
                for alias in node.names:
                    if alias.name.startswith("_"):
                        private_imports.append(f"{name}: from {node.module} import {alias.name}")
    package = [p for p in private_imports if p.startswith("cca_tl")]
    return dict(largest_class=f"{largest_class[0]} ({largest_class[1]})",
                largest_function=f"{largest_function[0]} ({largest_function[1]})",
                private_imports_package=len(package), private_imports_tests=len(private_imports) - len(package),
                hook_modules=len(hook_modules), hook_module_names=" ".join(sorted(hook_modules)),
                private_import_list=private_imports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    figures = measure()
    listing = figures.pop("private_import_list")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    row = pd.DataFrame([dict(label=args.label, commit=commit, **figures)])
    table = pd.concat([pd.read_csv(CSV), row]) if CSV.exists() else row
    table.to_csv(CSV, index=False)
    lines = ["# Structure of the package (`analyses/code_metrics.py`)", "",
             "Largest class and function of `cca_tl/` (lines), imports of another cca_tl module's private names "
             "(package, tests), modules defining TransformerLens hook functions.", "",
             table.to_markdown(index=False), "", "Private imports at the latest measurement:", ""]
    lines += [f"- `{item}`" for item in listing] or ["- none"]
    (ROOT / "analyses" / "code_metrics.md").write_text("\n".join(lines) + "\n")
    print(row.T.to_string(header=False))
    print("\n".join(listing))


if __name__ == "__main__":
    main()
