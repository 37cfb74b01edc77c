"""Structure figures of the package and its tests (issue 14's "done when"), from the AST.

    .venv/bin/python analyses/code_metrics.py [--label TEXT]

Prints and appends to ``analyses/code_metrics.csv``: the largest class and function (lines), how many
imports reach a private name (``_x``) of another cca_tl module (package and tests), and which modules define
TransformerLens hook functions (a function or lambda with a parameter named ``hook``), and the package's
lines. Writes ``analyses/code_metrics.md`` with every measurement so far. ``--root DIR`` measures another
checkout (``git worktree add /tmp/old REV``) instead of this one.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent.parent
CSV = HERE / "analyses" / "code_metrics.csv"
ROOT = HERE


def _sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts)


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def measure() -> dict:
    largest_class, largest_function = ("", 0), ("", 0)
    private_imports: list[str] = []
    hook_modules: set[str] = set()
    package_lines = sum(len(p.read_text().splitlines()) for p in _sources("cca_tl"))
    for path in _sources("cca_tl") + _sources("tests"):
        tree = ast.parse(path.read_text())
        name = _module_name(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and path.parts[-2:][0] != "tests":
                size = node.end_lineno - node.lineno + 1
                if size > largest_class[1] and "cca_tl" in path.parts:
                    largest_class = (f"{name}.{node.name}", size)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not isinstance(node, ast.Lambda):
                    size = node.end_lineno - node.lineno + 1
                    if size > largest_function[1] and "cca_tl" in path.parts:
                        largest_function = (f"{name}.{node.name}", size)
                if any(a.arg == "hook" for a in node.args.args) and "cca_tl" in path.parts:
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
                package_lines=package_lines,
                private_import_list=private_imports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="")
    parser.add_argument("--root", default=None, help="measure this checkout instead")
    args = parser.parse_args()
    global ROOT
    ROOT = Path(args.root).resolve() if args.root else HERE
    figures = measure()
    listing = figures.pop("private_import_list")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    row = pd.DataFrame([dict(label=args.label, commit=commit, **figures)])
    table = pd.concat([pd.read_csv(CSV), row]) if CSV.exists() else row
    table.to_csv(CSV, index=False)
    lines = ["# Structure of the package (`analyses/code_metrics.py`)", "",
             "Largest class and function of `cca_tl/` (lines), imports of another cca_tl module's private names "
             "(package, tests), modules defining TransformerLens hook functions (rows from 'broader rule' on: any "
             "function or lambda with a `hook` parameter; before: only a last parameter named `hook`), package lines.",
             "",
             table.to_markdown(index=False), "", "Private imports at the latest measurement:", ""]
    lines += [f"- `{item}`" for item in listing] or ["- none"]
    (HERE / "analyses" / "code_metrics.md").write_text("\n".join(lines) + "\n")
    print(row.T.to_string(header=False))
    print("\n".join(listing))


if __name__ == "__main__":
    main()
