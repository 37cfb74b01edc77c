"""Experiments as a capability of the package: a grid of updates declared as data and run over the
pipeline's own stages and evaluation.

    from cca_tl.sweep import Sweep, SweepConfig
    config = SweepConfig.load("analyses/sweeps/budget.toml")
    Sweep(config, "runs/sweeps/budget").execute()      # resumes per cell
    Sweep(config, "runs/sweeps/budget").plan()         # cells to run and estimated seconds per seed

or ``cca-tl sweep CONFIG`` (``--dry-run``, ``--summary``, ``--seeds``, ``--budgets``, ``--variants``). Grid: :mod:`cca_tl.sweep.grid`;
component sets at a budget: :mod:`cca_tl.sweep.budgets`; one seed's cells: :mod:`cca_tl.sweep.cell`; what a
cell reads off a model: :mod:`cca_tl.sweep.readings`; comparisons over seeds: :mod:`cca_tl.sweep.compare`; the
plain answer and its tables: :mod:`cca_tl.sweep.answer`; the pictures: :mod:`cca_tl.sweep.plots`; summary.md
and the files beside it: :mod:`cca_tl.sweep.summary`.
"""

from cca_tl.sweep.grid import VARIANTS, Cell, SweepConfig, VariantSpec
from cca_tl.sweep.runner import Sweep

__all__ = ["VARIANTS", "Cell", "Sweep", "SweepConfig", "VariantSpec"]
