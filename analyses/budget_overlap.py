"""How much of each random control is the DCM set itself, in the budget sweep (issue 31).

The layer-matched control keeps the DCM set's count per kind *and* layer. Gemma-3-270M has one kv head and
four query heads per layer, so a layer-matched k or v component is always the DCM set's own, and a q head is
with probability 1/4; a head owns 163,840 parameters against a neuron's 640. This counts, per seed and
budget, the components and the parameters each control's draws share with the DCM set, and how many of a
draw's components sit outside the DCM set's count for their kind and layer (exactly as the sweep builds the
draws: ``cca_tl.sweep.budgets.control_mask``). It writes ``analyses/results/budget/overlap.csv``, which the
sweep's ``summary.md`` shows (rerun ``cca-tl sweep ... --summary`` after this).

    .venv/bin/python analyses/budget_overlap.py [analyses/results/budget]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file

from cca_tl.components import registry_of
from cca_tl.models import load_model
from cca_tl.sweep.budgets import RANDOM_SETS, budget_mask, control_mask, ranking_scores, shared_with
from cca_tl.sweep.grid import SweepConfig


def overlap_rows(sweep_dir: Path) -> pd.DataFrame:
    config = SweepConfig.load(sweep_dir / "sweep.json")
    reg = registry_of(load_model("gemma-3-270m"))
    rows = []
    for seed in config.seeds:
        seed_dir = sweep_dir / "seeds" / f"seed{seed}"
        if not (seed_dir / "sweep" / "attribution.safetensors").exists():
            continue
        scores = ranking_scores(load_file(str(seed_dir / "dcm" / "gains.safetensors")),
                                load_file(str(seed_dir / "sweep" / "attribution.safetensors")))
        for budget in config.budgets:
            top = budget_mask(reg, scores, budget)
            for control in RANDOM_SETS:
                for draw in range(config.draws_for(control)):
                    mask = control_mask(top, control, seed=seed, budget=budget, draw=draw)
                    rows.append(dict(seed=seed, budget_share=budget, control=control, draw=draw,
                                     n_components=top.count(), n_params=top.n_params(reg),
                                     heads=sum(int(top.masks[k].sum()) for k in top.kinds if k.value != "neuron"),
                                     **shared_with(top, mask, reg)))
    return pd.DataFrame(rows)


if __name__ == "__main__":
    sweep_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "analyses/results/budget")
    table = overlap_rows(sweep_dir)
    table.to_csv(sweep_dir / "overlap.csv", index=False)
    print(table[table.draw == 0].pivot_table(index="budget_share", columns=["control", "seed"],
                                              values="pct_params_shared").to_string())
