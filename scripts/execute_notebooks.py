"""Execute the notebooks top to bottom and commit them with their outputs (what readers see on GitHub).

    .venv/bin/python scripts/execute_notebooks.py                 # every notebook in notebooks/, in place
    .venv/bin/python scripts/execute_notebooks.py notebooks/02_*.ipynb
    .venv/bin/python scripts/execute_notebooks.py --check         # execute, write nothing (what CI does)

Offline (HF_HUB_OFFLINE=1), in a scratch working directory, with nbclient — the same function the slow tests
call, so the committed outputs come from the code the tests run. Volatile metadata (cell timings) is
dropped so a re-run only changes what changed. Fails on any error, on a warning in the outputs, or on a
notebook over 2 MB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 2 * 2**20


def execute(path: Path, *, timeout: int = 1200):
    """Run ``path`` top to bottom; returns the executed notebook (raises on the first failing cell)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="cca_tl_nb_") as scratch:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": scratch}}).execute()
    nb.metadata["cca_tl_cell_seconds"] = [round(_seconds(cell), 1) for cell in nb.cells if cell.cell_type == "code"]
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    return nb


def _seconds(cell) -> float:
    """A code cell's run time, from nbclient's timing metadata."""
    from datetime import datetime

    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def warnings_shown(nb) -> list[str]:
    """Lines of printed output that carry a Python warning (``...Warning: ...``): every reader of the
    committed notebook sees them, with this machine's paths in them."""
    return [line for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
            if out.get("output_type") == "stream" for line in out["text"].splitlines() if "Warning:" in line]


def size_of(nb) -> int:
    import nbformat

    return len(nbformat.writes(nb).encode())


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="execute but write nothing")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        nb = execute(path)
        size = size_of(nb)
        if size > MAX_BYTES:
            print(f"{path}: {size / 2**20:.1f} MB with outputs, over the 2 MB limit", file=sys.stderr)
            return 1
        if warned := warnings_shown(nb):
            print(f"{path}: warnings in the outputs (silence or fix them): {warned[:3]}", file=sys.stderr)
            return 1
        if not args.check:
            nbformat.write(nb, path)
        seconds = nb.metadata["cca_tl_cell_seconds"]
        slowest = sorted(range(len(seconds)), key=seconds.__getitem__, reverse=True)[:3]
        print(f"{path.name}: executed in {time.perf_counter() - start:.0f} s, {size / 2**10:,.0f} KB"
              f"{'' if args.check else ', written'}; slowest code cells: "
              + ", ".join(f"#{i + 1} {seconds[i]:.0f} s" for i in slowest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
