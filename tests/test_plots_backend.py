"""Plotting helpers must not switch matplotlib's backend: in Jupyter that silently stopped every later
figure of the session from being shown (the committed notebooks lost their plots to it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_plot_mask_keeps_the_backend():
    code = ("import matplotlib; matplotlib.use('svg')\n"
            "from cca_tl.analysis import plot_mask\n"
            "from cca_tl.component_mask import ComponentMask\n"
            "from cca_tl.testing import tiny_model\n"
            "plot_mask(ComponentMask.empty(tiny_model('tiny-gemma3')))\n"
            "print(matplotlib.get_backend())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "svg"


def test_no_module_sets_a_backend():
    package = Path(__file__).resolve().parents[1] / "cca_tl"
    offenders = [str(p) for p in package.rglob("*.py") if "matplotlib.use(" in p.read_text()]
    assert not offenders
