"""One seed of a sweep and its cells: train over the learning rates, select, and read the edit twice — as
selected, and scaled to fixed sizes (KL to the base model).

Everything a cell needs comes from the seed's pipeline run (``Run``: problems, traces, localization, DCM
stages; its session owns and restores the model; its evaluate stage's :func:`score` scores the edited model).
A cell writes ``cells/<key>.json`` (its rows) and ``cells/<key>_items.csv`` (per-item outcomes, for paired
comparisons) atomically when it ends; each learning rate's selection is kept in ``cells/<key>/lr<lr>.json``
so a cell killed midway resumes with the learning rates it finished (the selected edit is then retrained —
deterministic on a CPU — rather than stored: at 8 % of the components an edit is ~12 MB per cell).

Why a second reading at matched edit size: in the power experiment the learning-rate sweep picked edits of
different sizes per cell (seed 0's random mask moved the model four times as far as CCA's), and in every seed
the larger edit won at the pivots. The selected edit is therefore also scaled along its own direction,
``base + α·(edit − base)``, to each target KL to the base model (:meth:`RegionEdit.scaled`), and read with
forward-only metrics there.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from cca_tl._io import atomic_write_bytes, atomic_write_text, held_lock, release_freed_memory
from cca_tl.errors import LockedError
from cca_tl.offsets import heads_for_budget, top_heads
from cca_tl.sweep.budgets import budget_mask, control_mask, gain_attribution, ranking_scores
from cca_tl.sweep.grid import VARIANTS, Cell, SweepConfig
from cca_tl.sweep.readings import forward_readings, greedy_readings, scale_to_kl

class SeedSweep:
    """One seed's pipeline run through DCM, and the pieces every cell reuses."""

    def __init__(self, config: SweepConfig, seed: int, directory: Path, *, progress: bool = True):
        from cca_tl.answers import AnswerSet
        from cca_tl.pipeline import Run
        from cca_tl.tasks import new_fact_problems

        self.config, self.seed = config, seed
        self.run = Run(config.run_config(seed), directory, progress=progress)
        self.run.execute(stop_after="dcm")
        self.dir = self.run.dir / "sweep"
        (self.dir / "cells").mkdir(parents=True, exist_ok=True)
        run, data = self.run, self.run.config.data
        model, splits, prompt = run.model, run.problems(), run.prompt_fn()
        self.pivots = run.contrast("train")
        rows = run.localization("train")
        by_id = {(p.template_id, p.instance_id): p for p in splits.train}
        self.answers = AnswerSet.from_problems(
            model, [by_id[(t, i)] for t, i in zip(rows["template_id"], rows["instance_id"])], prompt)
        self.newfacts = (new_fact_problems(data.task, config.newfacts_per_template, seed=seed, max_value=data.max_value,
                                           templates=data.templates)
                         if config.newfacts_per_template else [])
        self.forward_sets = {"test_ref": AnswerSet.from_problems(model, splits.test, prompt)}
        if self.newfacts:
            self.forward_sets["newfacts_ref"] = AnswerSet.from_problems(model, self.newfacts, prompt)
        self.scores = ranking_scores(run.dcm().gains, self._attribution())

    def _attribution(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file, save

        path = self.dir / "attribution.safetensors"
        if not path.exists():
            self.run.log("attribution of the DCM gains (one pass over the training pivots)")
            dcm = self.run.dcm()
            values = gain_attribution(self.run.session.restore(), self.pivots, dcm.gains, form=dcm.config.get("form", "paper"),
                                      batch_size=self.run.config.dcm.batch_size)
            atomic_write_bytes(path, save({k: v.contiguous() for k, v in values.items()}))
        return load_file(str(path))

    # -- parameter sets ---------------------------------------------------------------------------
    def parameters(self, cell: Cell) -> "ParameterSet":
        """What the cell trains: the top-k components by the DCM ranking, a seeded random draw matched to
        them, LoFiT-style offsets on as many heads as the top-k set's parameter count pays for, LoRA factors
        of about that count, or every parameter."""
        from cca_tl.components import registry_of
        from cca_tl.lora import params_per_rank, rank_for_budget

        model, weight_set = self.run.model, self.run.config.update.weight_set
        top = budget_mask(model, self.scores, cell.budget)
        selection = VARIANTS[cell.variant].selection
        if selection == "heads":
            heads = top_heads(self._head_scores(), heads_for_budget(model, top.n_params(model, weight_set)))
            n_heads = sum(len(h) for h in heads.values())
            return ParameterSet(None, n_heads, n_heads * model.cfg.d_head, "offsets", heads=heads)
        if selection == "all":
            return ParameterSet(None, registry_of(model).n_components(), _total_params(model), "all")
        if selection == "lora":
            rank = rank_for_budget(model, top.n_params(model, weight_set))
            return ParameterSet(None, rank, rank * params_per_rank(model), "lora", lora_rank=rank)
        mask = top if selection == "dcm" else control_mask(top, selection, seed=self.seed, budget=cell.budget,
                                                            draw=cell.draw)
        return ParameterSet(mask, mask.count(), mask.n_params(model, weight_set), "mask")

    def _head_scores(self) -> torch.Tensor:
        """|∂ mean pivot logit difference / ∂ a scale on each head's output| at scale 1 (``[layers, heads]``):
        the heads LoFiT-style offsets go to (LoFiT learns a per-head scale with an L1 penalty and keeps the
        largest; one gradient is the cheap first-order reading of the same question). Cached per seed."""
        from safetensors.torch import load_file, save

        path = self.dir / "head_attribution.safetensors"
        if not path.exists():
            model = self.run.session.restore()
            zeros = {"z": torch.zeros(model.cfg.n_layers, model.cfg.n_heads)}
            values = gain_attribution(model, self.pivots, zeros, form="paper", batch_size=self.run.config.dcm.batch_size)
            atomic_write_bytes(path, save({"z": values["z"].abs().contiguous()}))
        return load_file(str(path))["z"]

    def base(self) -> dict:
        """The unedited model's row (greedy and forward readings), measured once per seed."""
        path = self.dir / "cells" / "base.json"
        if path.exists():
            return json.loads(path.read_text())["rows"][0]
        with held_lock(path.with_suffix(".lock"), f"the base readings of seed {self.seed}"):
            return self._base(path)

    def _base(self, path: Path) -> dict:
        from cca_tl.pipeline.stages.evaluate import measure_retention

        self.run.session.restore()
        retention = measure_retention(self.run)  # once, for the greedy and the forward readings
        greedy, items = greedy_readings(self.run, self.newfacts, self.dir / "cells", "base", retention)
        forward, more = forward_readings(self.run, self.forward_sets, retention)
        row = dict(seed=self.seed, variant="base", objective=None, budget_share=0.0, draw=0, reading="selected",
                   n_params=0, n_components=0, **greedy, **forward)
        _write_cell(path, [row], items + more)
        return row

    # -- one cell ---------------------------------------------------------------------------------
    def cell(self, cell: Cell) -> bool:
        """Run one cell unless it is finished or another process holds it (sweeps lock per cell, so several
        processes can share one sweep directory); True when this call ran it."""
        path = self.dir / "cells" / f"{cell.key}.json"
        if path.exists():
            return False
        try:
            with held_lock(path.with_suffix(".lock"), f"sweep cell {cell.key} of seed {self.seed}"):
                if not path.exists():  # (a holder that ended between the two checks may have finished it)
                    self._cell(cell, path)
                    return True
        except LockedError as error:
            self.run.log(f"{error} Skipped here.")
        return False

    def _cell(self, cell: Cell, path: Path) -> None:
        from cca_tl.edits import RegionEdit

        base_row, config = self.base(), self.config
        start = time.perf_counter()
        params, spec = self.parameters(cell), VARIANTS[cell.variant]
        tried, edits = [], {}
        for lr in config.learning_rates(cell.variant):
            tried.append(self._train_lr(cell, params, lr, edits))
        trained = time.perf_counter()
        # ties keep the smaller learning rate (max keeps the first); without validation there is one recipe
        best = max(tried, key=lambda r: r["best_val"]) if config.validate else tried[0]
        common = dict(seed=self.seed, variant=cell.variant, objective=spec.objective, budget_share=cell.budget,
                      draw=cell.draw, n_components=params.n_components, n_params=params.n_params,
                      pct_params=100 * params.n_params / _total_params(self.run.model),
                      lr=best["lr"], best_step=best["best_step"], val_reference_accuracy=best["best_val"])
        if best["best_step"] == 0:  # selection kept the unedited model: the base's readings, bit for bit
            items = pd.read_csv(self.dir / "cells" / "base_items.csv").to_dict("records")
            selected = {**{k: v for k, v in base_row.items() if k not in common}, **common, "reading": "selected",
                        "edit_scale": 0.0}
            edit = self._retrain(cell, params, max(tried, key=lambda r: r["lr"])["lr"], keep_last=True)
        else:
            edit = edits.get(best["lr"]) or self._retrain(cell, params, best["lr"])  # retrained only after a resume
            self.run.session.apply(edit)
            info, items = self._read("selected", cell.key, greedy=config.greedy_at is None)
            selected = dict(common, reading="selected", edit_scale=1.0, **info)
        read = time.perf_counter()
        unedited = RegionEdit.capture(self.run.session.restore(), edit.regions)
        rows, scores = [selected], {}
        for target in sorted(config.kl_targets):
            alpha, _ = scale_to_kl(self.run, edit, unedited, target, scores)
            reading = f"kl={target:g}"
            if alpha is None:
                rows.append(dict(common, reading=reading, edit_scale=float("nan"), kl_target=target))
                continue
            self.run.session.apply(edit.scaled(unedited, alpha))
            info, more = self._read(reading, cell.key, greedy=config.greedy_at == target, retention=scores[alpha])
            rows.append(dict(common, reading=reading, edit_scale=alpha, kl_target=target, **info))
            items += more
        self.run.session.restore()
        end = time.perf_counter()
        for row in rows:  # where the cell's time went (training: every learning rate; reading: retrain + score)
            row.update(seconds=round(end - start, 1), seconds_train=round(trained - start, 1),
                       seconds_selected=round(read - trained, 1), seconds_matched=round(end - read, 1))
        _write_cell(path, rows, items)
        release_freed_memory()

    def _read(self, reading: str, key: str, *, greedy: bool,
              retention: dict[str, float] | None = None) -> tuple[dict, list[dict]]:
        """One reading of the model as it is now: forward metrics (pivots, KL, general text; reference-path
        accuracy when the config asks), greedy accuracy when ``greedy``. KL and the general-text scores are
        measured once for both (``retention``: where the KL search already measured these weights). Items of
        readings other than ``selected`` carry the reading in their set name (``test@kl=0.001``)."""
        from cca_tl.pipeline.stages.evaluate import measure_retention

        info, items = {}, []
        retention = retention or measure_retention(self.run)
        if greedy:
            name = key if reading == "selected" else f"{key}@{reading}"
            info, items = greedy_readings(self.run, self.newfacts, self.dir / "cells", name, retention)
        forward, more = forward_readings(self.run, self.forward_sets if self.config.reference_readings else {},
                                         retention)
        info.update(forward)
        items += more
        if reading != "selected":
            items = [dict(i, set=f"{i['set']}@{reading}") for i in items]
        return info, items

    def _train(self, cell: Cell, params: "ParameterSet", lr: float, *, keep_last: bool = False):
        from cca_tl.pipeline.stages.update import val_metric
        from cca_tl.update import train_update

        spec, run = VARIANTS[cell.variant], self.run
        model = run.session.restore()
        if spec.objective == "pivot":
            data, steps, batch, optimizer = self.pivots, self.config.pivot_steps, run.config.update.batch_size, "sgd"
        else:
            data, batch, optimizer = self.answers, self.config.answer_batch, "adamw"
            steps = self.config.answer_epochs * math.ceil(len(self.answers) / batch)
        if params.kind == "offsets":
            optimizer = "adamw"  # LoFiT's optimiser: offsets start at zero, plain SGD at weight-sized rates barely moves them
        run.log(f"seed {self.seed} {cell.key}: lr {lr:g}, {steps} steps")
        return train_update(model, data, params.mask, objective=spec.objective, params=params.kind, heads=params.heads,
                            lora_rank=params.lora_rank,
                            optimizer=optimizer, lr=lr, steps=steps, batch_size=batch,
                            weight_set=run.config.update.weight_set, val_metric=val_metric(run),
                            eval_steps=[] if keep_last or not self.config.validate else sorted({steps // 2, steps} - {0}),
                            seed=1_000 * self.seed + cell.draw, protect=run.session.protect, progress=run.progress,
                            name=cell.key)

    def _train_lr(self, cell: Cell, params: "ParameterSet", lr: float, edits: dict) -> dict:
        """Train at one learning rate and keep its selection (step and validation score; resumable) and, in
        ``edits``, its selected edit for this process (a resumed cell retrains the one it reads)."""
        from cca_tl.edits import RegionEdit

        path = self.dir / "cells" / cell.key / f"lr{lr:g}.json"
        if path.exists():
            return json.loads(path.read_text())
        start = time.perf_counter()
        result = self._train(cell, params, lr)
        if result.best_step > 0:
            edits[lr] = RegionEdit.capture(self.run.model, result.regions)
        row = dict(lr=lr, best_step=result.best_step, best_val=result.best_metric,
                   history=result.history.to_dict("list"), seconds=round(time.perf_counter() - start, 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(row, default=float))
        self.run.session.restore()
        return row

    def _retrain(self, cell: Cell, params: "ParameterSet", lr: float, *, keep_last: bool = False):
        """The selected edit again (deterministic), as a :class:`RegionEdit`; ``keep_last``: the last step's
        edit whatever validation says (the direction to scale when selection kept the unedited model)."""
        from cca_tl.edits import RegionEdit

        result = self._train(cell, params, lr, keep_last=keep_last)
        edit = RegionEdit.capture(self.run.model, result.regions)
        self.run.session.restore()
        return edit

@dataclass(frozen=True)
class ParameterSet:
    """What one cell trains (``kind`` as :func:`cca_tl.update.train_update`'s ``params``) and its size in
    both units: components (heads for offsets, the rank for LoRA) and parameters."""

    mask: object | None          # ComponentMask, for kind "mask"
    n_components: int
    n_params: int
    kind: str = "mask"           # "mask", "offsets", "lora" or "all"
    heads: dict[int, list[int]] | None = None
    lora_rank: int | None = None


def _total_params(model) -> int:
    from cca_tl.components import registry_of

    return registry_of(model).total_model_params


def _write_cell(path: Path, rows: list[dict], items: list[dict]) -> None:
    """Items first, then the rows file that marks the cell done (both atomic)."""
    atomic_write_text(path.with_name(path.stem + "_items.csv"), pd.DataFrame(items).to_csv(index=False))
    atomic_write_text(path, json.dumps(dict(rows=rows), indent=1, default=float))
