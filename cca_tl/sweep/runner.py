"""A sweep directory: its config lock, the seeds' pipeline runs, the cells, the plan and the tidy table.

Layout::

    <dir>/sweep.json                    the SweepConfig (a sweep directory refuses another one)
    <dir>/seeds/seed<N>/                a pipeline run directory (problems … dcm) plus
    <dir>/seeds/seed<N>/sweep/          attribution.safetensors, cells/<key>.json, cells/<key>_items.csv
    <dir>/rows.csv, summary.md, *.png   written by :meth:`Sweep.summarise`
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cca_tl._io import atomic_write_text, read_json
from cca_tl.errors import CCAError
from cca_tl.sweep.grid import VARIANTS, Cell, SweepConfig


#: Fields that only say which cells exist: a sweep directory may grow (or narrow) along them — more seeds,
#: budgets, variants or draws — and keeps every finished cell. Every other field changes what a cell computes
#: and is locked.
EXTENT = ("seeds", "budgets", "variants", "draws", "uniform_draws", "disjoint_draws", "variant_budgets")


class Sweep:
    """``Sweep(config, dir).execute()`` runs (or resumes) every cell; ``plan()`` says what that will cost."""

    def __init__(self, config: SweepConfig, directory: str | Path, *, progress: bool = True):
        self.config, self.dir, self.progress = config, Path(directory), progress
        lock = self.dir / "sweep.json"
        if lock.exists():
            previous = SweepConfig.from_dict(read_json(lock, "restore it from a copy, or use a new sweep directory"))
            now = config.to_dict()
            diff = {k: (v, now[k]) for k, v in previous.to_dict().items() if now[k] != v and k not in EXTENT}
            if diff:
                raise CCAError(f"{self.dir} holds another sweep (field: (then, now)): {diff}. Use a new directory, "
                               f"or change only the grid's extent ({', '.join(EXTENT)}) to resume or extend it.")

    @classmethod
    def open(cls, directory: str | Path, **kwargs) -> "Sweep":
        path = Path(directory) / "sweep.json"
        if not path.exists():
            raise CCAError(f"{directory} is not a sweep directory (no sweep.json).")
        return cls(SweepConfig.from_dict(read_json(path, "restore it from a copy")), directory, **kwargs)

    def seed_dir(self, seed: int) -> Path:
        return self.dir / "seeds" / f"seed{seed}"

    def done(self, seed: int) -> set[str]:
        cells = self.seed_dir(seed) / "sweep" / "cells"
        return {p.stem for p in cells.glob("*.json")} if cells.exists() else set()

    # -- running ----------------------------------------------------------------------------------
    def execute(self, seeds: list[int] | None = None, *, budgets: list[float] | None = None,
                variants: list[str] | None = None, summarise: bool = True) -> pd.DataFrame:
        """Run every unfinished cell of ``seeds``, ``budgets`` and ``variants`` (default: all) in the config's
        :meth:`~SweepConfig.schedule` (one comparison at one budget on every seed, the smallest budgets
        first), then write the summary. The summary is rewritten after each seed's share of a group, so an
        interrupted sweep reports what it has."""
        from tqdm.auto import tqdm

        from cca_tl.sweep.cell import SeedSweep

        wanted = self._wanted(seeds, budgets, variants)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "sweep.json", json.dumps(self.config.to_dict(), indent=1))  # the grid as it now is
        for group in self.config.schedule():
            for seed in self.config.seeds:
                todo = [c for c in group if c.seed == seed and wanted(c) and c.key not in self.done(seed)]
                if not todo:
                    continue
                state = SeedSweep(self.config, seed, self.seed_dir(seed), progress=self.progress)
                state.base()
                for cell in tqdm(todo, desc=f"sweep {self.config.name} seed {seed}", disable=not self.progress):
                    state.cell(cell)
                state.run.session.close()
                if summarise:
                    self.summarise()
        return self.summarise() if summarise else self.rows()

    def _wanted(self, seeds: list[int] | None, budgets: list[float] | None,
                variants: list[str] | None = None) -> Callable[[Cell], bool]:
        """Which cells a run or plan covers; a seed, budget or variant the sweep does not hold is an error."""
        for name, asked, held in (("Seed", seeds, self.config.seeds), ("Budget", budgets, self.config.budgets),
                                  ("Variant", variants, self.config.variants)):
            unknown = sorted(set(asked or ()) - set(held))
            if unknown:
                raise CCAError(f"{name}(s) {unknown} are not in this sweep's {name.lower()}s {held}.")
        return lambda c: ((seeds is None or c.seed in seeds) and (budgets is None or c.budget in budgets)
                          and (variants is None or c.variant in variants))

    # -- the plan ---------------------------------------------------------------------------------
    def plan(self, seeds: list[int] | None = None, *, budgets: list[float] | None = None,
             variants: list[str] | None = None) -> pd.DataFrame:
        """One row per seed: cells to run and their estimated seconds (per-unit costs of the pipeline's plan,
        measured on Gemma-3-270M / 2 CPU cores, scaled by parameters and threads above a fixed floor; NaN on a
        GPU), for the cells of ``seeds``, ``budgets`` and ``variants`` (default: all)."""
        from cca_tl.pipeline.plan import plan, sizes, unit_costs

        wanted, rows = self._wanted(seeds, budgets, variants), []
        for seed in [s for s in self.config.seeds if seeds is None or s in seeds]:
            run_config = self.config.run_config(seed)
            s, u = sizes(run_config), unit_costs(run_config)
            done = self.done(seed)
            stages = plan(run_config).loc[["problems", "traces", "localize", "dcm"], "seconds"]
            setup = 0.0 if (self.seed_dir(seed) / "stages" / "dcm.json").exists() else float(stages.sum())
            cells = [c for c in self.config.cells(seed) if c.key not in done and wanted(c)]
            seconds = setup + ("base" not in done) * self._greedy_seconds(run_config, s, u)
            seconds += sum(self.cell_seconds(run_config, s, u, VARIANTS[c.variant].objective) for c in cells)
            rows.append(dict(seed=seed, cells_done=sum(c.key in done for c in self.config.cells(seed)), cells_to_run=len(cells),
                             setup="done" if setup == 0 else "to run", seconds=seconds))
        return pd.DataFrame(rows).set_index("seed")

    def _greedy_seconds(self, cfg, s, u) -> float:
        questions = s.test_q + self.config.newfacts_per_template * _n_templates(cfg)
        return questions * cfg.traces.max_new_tokens * u["gen_token"] + self._forward_seconds(cfg, s, u)

    def _forward_seconds(self, cfg, s, u, *, reference: bool = True) -> float:
        questions = s.test_q + self.config.newfacts_per_template * _n_templates(cfg)
        return (reference * questions * u["reference_q"] + s.test_pivots * u["fwd_record"]
                + 2 * cfg.evaluate.retention_texts * u["retention_text"])

    def cell_seconds(self, cfg, s, u, objective: str) -> float:
        """One cell: training at every learning rate (with validation at half and end when the config
        validates, and a retrain of the selected one), one greedy reading, forward readings at the selected
        edit and each KL target, and ~5 KL measurements for the scale search."""
        c = self.config
        if objective == "pivot":
            train = c.pivot_steps * s.train_pivots * u["update_record"]
        else:  # every question's answer once per epoch, about one pivot record's cost each
            train = c.answer_epochs * s.train_pivots * u["update_record"]
        select = 3 * s.val_q * u["reference_q"] if c.validate else 0.0
        runs = len(c.lrs) + 1 if c.validate else 1
        kl_search = (5 if c.kl_targets else 0) * 2 * cfg.evaluate.retention_texts * u["retention_text"]
        forward = self._forward_seconds(cfg, s, u, reference=c.reference_readings)
        return runs * (train + select) + self._greedy_seconds(cfg, s, u) + kl_search + len(c.kl_targets) * forward

    # -- results ----------------------------------------------------------------------------------
    def rows(self) -> pd.DataFrame:
        """Every finished cell's rows (and each seed's base row): the sweep's tidy table."""
        rows = []
        for seed in self.config.seeds:
            for path in sorted((self.seed_dir(seed) / "sweep" / "cells").glob("*.json")):
                rows += read_json(path, "delete it (and its _items.csv) to run that cell again")["rows"]
        return pd.DataFrame(rows)

    def items(self, seed: int, key: str) -> pd.DataFrame:
        return pd.read_csv(self.seed_dir(seed) / "sweep" / "cells" / f"{key}_items.csv")

    def summarise(self, out: Path | None = None) -> pd.DataFrame:
        from cca_tl.sweep.summary import write_summary

        return write_summary(self, out or self.dir)


def _n_templates(cfg) -> int:
    from cca_tl.pipeline.stages.problems import draw

    return len({p.template_id for p in draw(cfg)["test"]})
