"""cca_tl.sweep: the grid as data, component sets at a budget, and a whole sweep on the tiny preset."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from cca_tl.cli import main as cli
from cca_tl.errors import CCAError
from cca_tl.sweep import Sweep, SweepConfig
from cca_tl.sweep.budgets import (budget_mask, control_mask, disjoint_matched, layer_matched, ranking_scores,
                                  uniform_like)
from cca_tl.tasks import new_fact_problems, two_step_problems

TINY = dict(name="tiny-check", preset="tiny", seeds=[0, 1], budgets=[0.05],
            variants=["cca", "random", "masked-ft", "lofit"],
            draws=2, lrs=[0.05], kl_targets=[0.001], newfacts_per_template=2,
            overrides=["data.task=two-step", "traces.localization=reference", "traces.n_samples=0",
                       "update.val_metric=logit_diff"])


@pytest.mark.parametrize("field, value, words", [
    ("budgets", [0.0], "budgets"), ("budgets", [1.5], "budgets"), ("variants", ["lofit?"], "variants"),
    ("lrs", [0.0], "lrs"), ("lrs", [-1e-4], "lrs"), ("draws", 0, "draws"), ("seeds", [], "seeds"),
    ("seeds", [1, 1], "seeds"), ("kl_targets", [-1.0], "kl_targets"), ("variant_budgets", {"cca": [0.3]}, "variant_budgets"),
    ("variant_budgets", {"nope": [0.05]}, "variant_budgets"),
    ("pivot_steps", True, "pivot_steps"), ("preset", "nope", "preset"), ("overrides", ["update.lr"], "overrides"),
    ("overrides", ["update.nope=1"], "nope"), ("name", "a b", "name"), ("answer_lrs", [0], "answer_lrs"),
    ("greedy_at", 0.002, "greedy_at"), ("validate", "no", "validate"), ("reference_readings", 1, "reference_readings"),
])
def test_every_field_refuses_a_wrong_value_naming_it(field, value, words):
    with pytest.raises(CCAError, match=words):
        SweepConfig(**{**TINY, field: value})


def test_sweep_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(CCAError, match="bad.toml is not valid TOML"):
        SweepConfig.load(bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"budget": [0.1]}))
    with pytest.raises(CCAError, match="unknown field"):
        SweepConfig.load(unknown)
    with pytest.raises(CCAError, match="No sweep config"):
        SweepConfig.load(tmp_path / "missing.toml")


def test_cells_follow_the_grid():
    config = SweepConfig(**{**TINY, "budgets": [0.01, 0.05], "variants": ["cca", "random", "uniform", "masked-ft"],
                            "draws": 3, "uniform_draws": 2, "variant_budgets": {"masked-ft": [0.05]}})
    cells = config.cells(0)
    assert [c.key for c in cells if c.budget == 0.01] == [
        "cca_b0.01_d0", "random_b0.01_d0", "random_b0.01_d1", "random_b0.01_d2", "uniform_b0.01_d0", "uniform_b0.01_d1"]
    assert sum(c.variant == "masked-ft" for c in cells) == 1 and len(cells) == 6 + 7


def test_a_recipe_without_validation_needs_one_learning_rate_per_objective():
    with pytest.raises(CCAError, match="one learning rate"):
        SweepConfig(**{**TINY, "validate": False, "lrs": [0.01, 0.05]})
    SweepConfig(**{**TINY, "validate": False, "answer_lrs": [0.01], "offset_lrs": [0.01]})


def test_the_schedule_runs_the_plain_answers_cells_first_on_every_seed():
    """CCA with the first layer-matched draw, then the uniform draw (it shares almost no weights with the DCM
    set; a layer-matched one shares most at small budgets), then the disjoint draw (shares nothing), then
    further layer-matched draws, then the rest;
    each one budget at a time on every seed, the smallest first."""
    config = SweepConfig(**{**TINY, "budgets": [0.01, 0.05],
                            "variants": ["cca", "random", "uniform", "disjoint", "lofit"],
                            "draws": 2, "variant_budgets": {"lofit": [0.01]}})
    groups = config.schedule()
    assert [(c.key, c.seed) for c in groups[0]] == [("cca_b0.01_d0", 0), ("random_b0.01_d0", 0),
                                                    ("cca_b0.01_d0", 1), ("random_b0.01_d0", 1)]
    assert [c.key for c in groups[1] if c.seed == 0] == ["cca_b0.05_d0", "random_b0.05_d0"]
    assert [({(c.variant, c.draw) for c in g}, {c.budget for c in g}, [c.seed for c in g]) for g in groups[2:]] == [
        ({("uniform", 0)}, {0.01}, [0, 1]), ({("uniform", 0)}, {0.05}, [0, 1]),
        ({("disjoint", 0)}, {0.01}, [0, 1]), ({("disjoint", 0)}, {0.05}, [0, 1]),
        ({("random", 1)}, {0.01}, [0, 1]), ({("random", 1)}, {0.05}, [0, 1]), ({("lofit", 0)}, {0.01}, [0, 1])]
    assert sorted(c.key + str(c.seed) for g in groups for c in g) == \
        sorted(c.key + str(c.seed) for s in config.seeds for c in config.cells(s))


def test_a_later_variants_further_draws_wait_for_its_first_draw_on_every_seed():
    config = SweepConfig(**{**TINY, "budgets": [0.01, 0.05], "variants": ["cca", "random", "masked-ft", "random-ft"],
                            "draws": 2})
    later = [g for g in config.schedule() if g[0].variant == "random-ft"]
    assert [({c.draw for c in g}, {c.budget for c in g}, [c.seed for c in g]) for g in later] == [
        ({0}, {0.01}, [0, 1]), ({0}, {0.05}, [0, 1]), ({1}, {0.01}, [0, 1]), ({1}, {0.05}, [0, 1])]


def test_ranking_breaks_ties_among_saturated_gains_by_attribution():
    gains = {"neuron": torch.tensor([[1.0, 1.0, 0.3], [1.0, 0.0, 0.9]])}
    attribution = {"neuron": torch.tensor([[0.1, 0.5, 9.0], [0.3, 9.0, 0.0]])}
    scores = ranking_scores(gains, attribution)["neuron"]
    order = torch.argsort(scores.flatten(), descending=True).tolist()
    assert order == [1, 3, 0, 5, 2, 4]  # gain 1.0 by attribution, then 0.9, 0.3, 0.0


def test_budget_sets_have_their_size_and_their_controls_keep_the_counts(model):
    from cca_tl.components import registry_of

    reg = registry_of(model)
    gen = torch.Generator().manual_seed(0)
    gains = {k: torch.rand(reg.n_layers, reg.n_units(k), generator=gen) for k in ("q", "k", "v", "neuron")}
    scores = ranking_scores(gains, {k: torch.zeros_like(v) for k, v in gains.items()})
    top = budget_mask(reg, scores, 0.1)
    assert top.count() == round(0.1 * reg.n_components(["q", "k", "v", "neuron"]))
    flat = torch.cat([gains[k.value].flatten() for k in top.kinds])
    chosen = torch.cat([top.masks[k].flatten() for k in top.kinds])
    assert flat[chosen].min() >= flat[~chosen].max()  # the top gains
    matched, other = layer_matched(top, 1), layer_matched(top, 2)
    for kind in top.kinds:
        assert torch.equal(matched.masks[kind].flatten(1).sum(1), top.masks[kind].flatten(1).sum(1))
    assert matched != other and matched != top
    uniform = uniform_like(top, 1)
    assert uniform.counts_by_kind() == top.counts_by_kind() and uniform != top
    disjoint = disjoint_matched(top, 1)
    assert disjoint.counts_by_kind() == top.counts_by_kind() and (disjoint & top).count() == 0
    for kind in top.kinds:  # 10 % of each layer's units: every layer has room for its own count
        assert torch.equal(disjoint.masks[kind].flatten(1).sum(1), top.masks[kind].flatten(1).sum(1))
    assert control_mask(top, "disjoint", seed=0, budget=0.1, draw=0) == \
        disjoint_matched(top, 1_000_003 * 0 + 1_009 * 0 + round(0.1 * 1e6) + 13)


def test_a_disjoint_draw_takes_what_a_layer_cannot_hold_from_the_nearest_layers():
    """One kv head per layer (Gemma-3): a DCM set holding layer 2's k head gets layer 1's or layer 3's; a kind
    with fewer free units than selected ones shares the fewest it can."""
    from cca_tl.component_mask import ComponentMask
    from cca_tl.components import Kind, ModelIdentity

    def k_heads(*layers: int) -> ComponentMask:
        own = torch.zeros(6, 1, dtype=torch.bool)
        own[list(layers)] = True
        return ComponentMask(ModelIdentity("synthetic", None, 6, 4, 1, 8, 32, 64), {Kind("k"): own})

    def drawn(top: ComponentMask, seed: int) -> list[int]:
        return disjoint_matched(top, seed).masks[Kind("k")].flatten().nonzero().flatten().tolist()

    assert {tuple(drawn(k_heads(2), seed)) for seed in range(20)} == {(1,), (3,)}
    # layers 1-3 taken: layer 1's head goes to 0, layer 2's (0 now taken) to 4, layer 3's to 5
    assert drawn(k_heads(1, 2, 3), 0) == [0, 4, 5]
    # four of six taken, two free: both free ones and two of the set's own (the fewest a draw of four can share)
    four = disjoint_matched(k_heads(0, 1, 2, 3), 0).masks[Kind("k")].flatten()
    assert four[4:].all() and int(four.sum()) == 4


def test_new_fact_questions_share_no_arithmetic_with_the_task():
    new = new_fact_problems("two-step", 20, seed=3, max_value=3)
    known = {p.solution for p in two_step_problems(5000, seed=11, max_value=3)}
    assert len(new) == 80 and not any(p.solution in known for p in new)
    assert len({p.question for p in new}) == 80
    with pytest.raises(ValueError, match="must exceed"):
        new_fact_problems("two-step", 5, max_value=3, new_max_value=3)


def test_region_edit_scaled_interpolates_between_base_and_edit(model):
    from cca_tl.component_mask import ComponentMask
    from cca_tl.errors import MaskMismatchError
    from cca_tl.edits import RegionEdit
    from cca_tl.entries import element_masks

    regions = {**element_masks(model, ComponentMask.full(model), "authors"), "blocks.0.attn.b_O": None}
    base = RegionEdit.capture(model, regions)
    edit = RegionEdit(regions, {n: v + 1.0 for n, v in base.values.items()})
    half = edit.scaled(base, 0.5)
    assert all(torch.allclose(half.values[n], base.values[n] + 0.5) for n in base.values)
    assert all(torch.equal(edit.scaled(base, 0.0).values[n], base.values[n]) for n in base.values)
    half.apply(model)
    assert torch.allclose(model.blocks[0].attn.b_O, base.values["blocks.0.attn.b_O"] + 0.5)
    with pytest.raises(MaskMismatchError):
        edit.scaled(RegionEdit.capture(model, {"blocks.0.attn.b_O": None}), 0.5)


def test_a_sweep_runs_resumes_and_summarises(tmp_path, capsys):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    out = tmp_path / "sweep"
    assert cli(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    assert "10 cells to run" in capsys.readouterr().out
    assert cli(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    rows = pd.read_csv(out / "rows.csv")
    for column in ("seed", "variant", "objective", "budget_share", "n_params", "draw", "lr", "kl_to_base",
                   "test_accuracy", "newfacts_accuracy", "pivot_accuracy", "n_test", "n_pivots_test", "reading"):
        assert column in rows.columns, column
    selected = rows[rows["reading"] == "selected"]
    assert sorted(selected["variant"].unique()) == ["base", "cca", "lofit", "masked-ft", "random"]
    assert (selected[selected["variant"] == "random"].groupby("seed")["draw"].nunique() == 2).all()
    cells = selected[~selected["variant"].isin(["base", "lofit"])]
    assert (cells["n_components"] == cells["n_components"].iloc[0]).all()  # DCM and random: the same size
    lofit = selected[selected["variant"] == "lofit"]
    assert (lofit["n_params"] <= cells["n_params"].max()).all() and (lofit["n_components"] >= 1).all()
    assert (selected["n_newfacts"].dropna() == 8).all()
    matched = rows[rows["reading"] == "kl=0.001"].dropna(subset=["edit_scale"])
    assert not matched.empty and ((matched["kl_to_base"] / 0.001).between(1 / 2, 2)).all()
    table = pd.read_csv(out / "comparisons.csv")
    assert {"cca − random", "cca − base", "masked-ft − random-ft", "cca − lofit", "cca − masked-ft"} \
        >= set(table["comparison"]) >= {"cca − random", "cca − lofit", "cca − masked-ft"}
    summary = (out / "summary.md").read_text()
    assert "The plain answer" in summary and "budget.png" in summary and "differences.png" in summary
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seeds/*/sweep/cells/*.json")}
    assert cli(["sweep", str(path), "--out", str(out), "--quiet"]) == 0  # resume: nothing runs again
    assert {p: p.stat().st_mtime_ns for p in out.glob("seeds/*/sweep/cells/*.json")} == stamps
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**TINY, "lrs": [0.01]}))
    assert cli(["sweep", str(other), "--out", str(out), "--quiet"]) == 2
    assert "holds another sweep" in capsys.readouterr().err
    wider = tmp_path / "wider.json"  # the grid's extent may grow: finished cells are kept, new ones run
    wider.write_text(json.dumps({**TINY, "seeds": [0, 1, 2], "budgets": [0.05, 0.1], "variants": ["cca", "random"],
                                 "kl_targets": [0.001]}))
    assert cli(["sweep", str(wider), "--out", str(out), "--quiet", "--budgets", "0.3"]) == 2
    assert "Budget(s) [0.3] are not in this sweep's budgets [0.05, 0.1]" in capsys.readouterr().err
    assert cli(["sweep", str(wider), "--out", str(out), "--quiet", "--seeds", "2", "--budgets", "0.05"]) == 0
    assert not list(out.glob("seeds/*/sweep/cells/*_b0.1_*.json"))  # only the cells asked for ran
    assert cli(["sweep", str(wider), "--out", str(out), "--dry-run", "--budgets", "0.1"]) == 0
    assert "9 cells to run" in capsys.readouterr().out  # 3 seeds x (cca + 2 random draws) at 0.1
    assert cli(["sweep", str(wider), "--out", str(out), "--dry-run", "--budgets", "0.1", "--variants", "cca"]) == 0
    assert "3 cells to run" in capsys.readouterr().out
    assert cli(["sweep", str(wider), "--out", str(out), "--dry-run", "--variants", "lofit"]) == 2
    assert "Variant(s) ['lofit'] are not in this sweep's variants ['cca', 'random']" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.glob("seeds/seed[01]/sweep/cells/*.json")} == \
        {p: t for p, t in stamps.items() if p.parent.parent.parent.name in ("seed0", "seed1")}
    assert set(pd.read_csv(out / "rows.csv")["seed"]) == {0, 1, 2}
    assert Sweep.open(out).rows().shape[0] == pd.read_csv(out / "rows.csv").shape[0] > rows.shape[0]


def test_a_cell_measures_each_weight_setting_on_general_text_once(tmp_path, monkeypatch):
    """The KL search measures KL, NLL and top-1 on general text at every scale it tries; the reading at the
    scale it found, and the greedy scoring there, reuse that measurement instead of repeating the forward
    pass on the same weights (on Gemma-3-270M four retention measurements per cell). Reusing it gives the
    same rows bit for bit (checked against the code before the reuse on the tiny preset: rows.csv and every
    cell file equal)."""
    import hashlib

    import cca_tl.evaluate

    measure, weights_seen = cca_tl.evaluate.retention_scores, []

    def counted(model, base_weights, *args, **kwargs):
        if base_weights is not None:  # an edited model (the base row, unedited, is read once per seed)
            flat = torch.cat([p.detach().flatten() for p in model.parameters()])
            weights_seen.append(hashlib.sha1(flat.numpy().tobytes()).hexdigest())
        return measure(model, base_weights, *args, **kwargs)

    monkeypatch.setattr(cca_tl.evaluate, "retention_scores", counted)
    path = tmp_path / "one.json"
    path.write_text(json.dumps({**TINY, "seeds": [0], "variants": ["cca"], "kl_targets": [0.0005, 0.001, 0.002],
                                "greedy_at": 0.001, "validate": False}))
    assert cli(["sweep", str(path), "--out", str(tmp_path / "sweep"), "--quiet"]) == 0
    rows = pd.read_csv(tmp_path / "sweep" / "rows.csv")
    assert rows["edit_scale"].notna().sum() == 4  # selected and three KL targets, each reached
    assert len(weights_seen) >= 5 and len(set(weights_seen)) == len(weights_seen)


def test_gain_attribution_over_the_prefix_cache_equals_the_full_pass():
    """The budgets' tie-break reads ∂(mean logit diff)/∂gain over DCM's prefix cache; the same as the plain pass."""
    from cca_tl import load_model
    from cca_tl.contrast import ContrastSet, pad_token_id, two_logit_diff
    from cca_tl.dcm import DCMGains
    from cca_tl.params import trainable
    from cca_tl.sweep.budgets import gain_attribution

    model = load_model("tiny-gemma3")
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 60, (12,), generator=g).tolist()
    data = ContrastSet([prompt + torch.randint(0, 60, (int(n),), generator=g).tolist()
                        for n in torch.randint(1, 6, (10,), generator=g)], [17] * 10, [42] * 10)
    gains = {"q": torch.rand(model.cfg.n_layers, model.cfg.n_heads, generator=g),
             "neuron": torch.rand(model.cfg.n_layers, model.cfg.d_mlp, generator=g)}
    fast = gain_attribution(model, data, gains, batch_size=4)
    dcm = DCMGains.from_values(model, gains, form="paper", positions="last")
    with trainable(model):
        for batch in data.batches(4, pad_id=pad_token_id(model)):
            (two_logit_diff(model, batch, dcm.hooks(batch.last_pos)).sum() / len(data)).backward()
    for kind in gains:
        assert fast[kind].abs().sum() > 0
        assert torch.allclose(fast[kind], dcm.gains[kind].grad, atol=1e-6, rtol=1e-4)


def test_a_recipe_sweep_trains_once_and_reads_greedy_accuracy_at_the_matched_size(tmp_path):
    """validate = false: one learning rate, its last step, no validation; greedy accuracy at the KL target."""
    config = SweepConfig(**{**TINY, "seeds": [0], "variants": ["cca", "random"], "draws": 1, "validate": False,
                            "greedy_at": 0.001, "reference_readings": False, "lrs": [0.05]})
    sweep = Sweep(config, tmp_path / "recipe", progress=False)
    rows = sweep.execute()
    cells = rows[rows["variant"] != "base"]
    selected, matched = cells[cells["reading"] == "selected"], cells[cells["reading"] == "kl=0.001"]
    assert (selected["best_step"] == config.pivot_steps).all() and selected["test_accuracy"].isna().all()
    assert matched["test_accuracy"].notna().all() and matched["pivot_accuracy"].notna().all()
    assert "test_reference_accuracy" not in cells or cells["test_reference_accuracy"].isna().all()
    for key in ("cca_b0.05_d0", "random_b0.05_d0"):
        assert len(list((sweep.seed_dir(0) / "sweep" / "cells" / key).glob("lr*.json"))) == 1
        assert {"test@kl=0.001", "newfacts@kl=0.001", "pivot@kl=0.001", "pivot"} <= set(sweep.items(0, key)["set"])
    summary = (tmp_path / "recipe" / "summary.md").read_text()
    assert "Cannot tell yet" in summary and "reading `kl=0.001`" in summary


def test_the_power_experiments_cells_run_as_sweep_variants(tmp_path):
    """Objective × parameters (analyses/sweeps/power.toml): every parameter, and LoRA at the set's count."""
    config = SweepConfig(**{**TINY, "seeds": [0], "variants": ["cca", "all", "pivot-lora", "full-ft", "lora"],
                            "draws": 1})
    rows = Sweep(config, tmp_path / "power", progress=False).execute()
    selected = rows[rows["reading"] == "selected"].set_index("variant")
    assert selected.loc["all", "n_params"] == selected.loc["full-ft", "n_params"] > 10 * selected.loc["cca", "n_params"]
    for lora in ("lora", "pivot-lora"):
        assert 0.5 < selected.loc[lora, "n_params"] / selected.loc["cca", "n_params"] < 2
    moved = selected[selected["best_step"] > 0]
    assert not moved.empty and (moved["kl_to_base"] > 0).all()


@pytest.mark.parametrize("name", ["budget", "power"])
def test_the_committed_sweep_files_load(name):
    from pathlib import Path

    config = SweepConfig.load(Path(__file__).resolve().parents[1] / "analyses" / "sweeps" / f"{name}.toml")
    assert config.name == name and len(config.seeds) >= 3


def test_a_broken_sweep_file_is_named_with_what_to_do(tmp_path):
    from cca_tl.errors import CorruptFileError

    sweep = Sweep(SweepConfig(**TINY), tmp_path / "s", progress=False)
    cells = sweep.seed_dir(0) / "sweep" / "cells"
    cells.mkdir(parents=True)
    (cells / "cca_b0.05_d0.json").write_text('{"rows": [')
    with pytest.raises(CorruptFileError, match=r"cca_b0.05_d0.json is not valid JSON.*delete it"):
        sweep.rows()
    (tmp_path / "s" / "sweep.json").write_text("{")
    with pytest.raises(CorruptFileError, match="sweep.json is not valid JSON"):
        Sweep.open(tmp_path / "s")


def test_the_committed_budget_summary_follows_from_its_cells():
    """rows.csv, comparisons.csv and comparisons_per_seed.csv of analyses/results/budget are what the summary
    code derives from the committed cell files (a cell committed without rewriting the summary fails here),
    and the README shows the summary's test-accuracy grid as it stands."""
    import io
    from pathlib import Path

    import pandas as pd

    from cca_tl.sweep.answer import glance, plain_answer
    from cca_tl.sweep.compare import comparisons
    from cca_tl.sweep.summary import COLUMNS

    root = Path(__file__).resolve().parents[1]
    out = root / "analyses" / "results" / "budget"
    sweep = Sweep.open(out, progress=False)
    rows = sweep.rows()
    rows = rows.reindex(columns=[c for c in COLUMNS if c in rows] + [c for c in rows if c not in COLUMNS])
    committed = pd.read_csv(out / "rows.csv")
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(rows.to_csv(index=False))), committed)
    table, per_seed = comparisons(sweep, committed)
    for derived, name in ((table, "comparisons.csv"), (per_seed, "comparisons_per_seed.csv")):
        pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(derived.to_csv(index=False))), pd.read_csv(out / name))
    assert plain_answer(table, sweep.config.greedy_reading) in (out / "summary.md").read_text()
    grid = glance(table, sweep.config.greedy_reading).to_markdown()
    assert grid in (out / "summary.md").read_text() and grid in (root / "README.md").read_text()


def test_gaps_name_the_cells_that_never_reached_a_kl_target():
    import pandas as pd

    from cca_tl.sweep.summary import gaps

    cell = dict(seed=2, variant="random", budget_share=0.001, draw=0)
    rows = pd.DataFrame([
        {**cell, "reading": "selected", "kl_target": None, "edit_scale": 1.0, "kl_to_base": 1.5e-7},
        {**cell, "reading": "kl=0.0005", "kl_target": 5e-4, "edit_scale": 57.2, "kl_to_base": 4.8e-4},
        {**cell, "reading": "kl=0.001", "kl_target": 1e-3, "edit_scale": None, "kl_to_base": None},
        {**cell, "variant": "cca", "reading": "kl=0.001", "kl_target": 1e-3, "edit_scale": 3.0, "kl_to_base": 1e-3},
    ])
    found = gaps(rows)
    assert found[["variant", "kl_target"]].values.tolist() == [["random", 1e-3]]
    assert found["largest_kl_reached"].tolist() == [4.8e-4]
    assert gaps(rows[rows["variant"] == "cca"]).empty


def test_the_budget_pictures_draw_only_panels_that_hold_data(tmp_path):
    """Greedy accuracy is read at one reading: budget.png draws it there and held-out pivots at every reading,
    with no empty panel; differences.png draws CCA minus each control (and nothing without a comparison)."""
    import pandas as pd

    from cca_tl.sweep.plots import difference_bars, plot, plot_panels

    rows = pd.DataFrame([dict(seed=s, variant=v, budget_share=b, draw=0, reading=r, pivot_accuracy=0.5,
                              test_accuracy=0.6 if r == "kl=0.001" else None)
                         for s in (0, 1) for v in ("cca", "random") for b in (0.001, 0.01)
                         for r in ("selected", "kl=0.001", "kl=0.002")])
    assert plot_panels(rows, "kl=0.001") == [("kl=0.001", "test_accuracy"), ("kl=0.001", "pivot_accuracy"),
                                         ("selected", "pivot_accuracy"), ("kl=0.002", "pivot_accuracy")]
    nan = float("nan")
    table = pd.DataFrame([
        dict(reading="kl=0.001", budget_share=0.001, comparison="cca − random", metric="test", control_budget=0.001,
             seeds=2, diff=0.03, between_low=-0.01, between_high=0.05),
        dict(reading="kl=0.001", budget_share=0.01, comparison="cca − random", metric="test", control_budget=0.01,
             seeds=1, diff=0.02, between_low=nan, between_high=nan),
        *[dict(reading="kl=0.001", budget_share=b, comparison="cca − lofit", metric="test", control_budget=0.001,
               seeds=2, diff=-0.1, between_low=-0.2, between_high=-0.01) for b in (0.001, 0.01)],
        dict(reading="kl=0.002", budget_share=0.001, comparison="cca − random", metric="pivot", control_budget=0.001,
             seeds=2, diff=0.5, between_low=0.4, between_high=0.6)])
    per_seed = pd.DataFrame([dict(reading=r.reading, budget_share=r.budget_share, comparison=r.comparison,
                                  metric=r.metric, seed=s, diff=r.diff + (0.01 if s else -0.01) * (r.seeds > 1))
                             for r in table.itertuples() for s in range(r.seeds)])
    bars = difference_bars(table, per_seed, "kl=0.001").set_index(["comparison", "budget_share"])
    assert len(bars) == 4  # the other reading is not drawn
    assert bars.loc[("cca − random", 0.001), ["mean", "low", "high"]].tolist() == pytest.approx([0.03, -0.01, 0.05])
    assert bars.loc[("cca − random", 0.01), ["mean", "low", "high"]].tolist() == pytest.approx([0.02] * 3)  # one seed
    assert set(bars["label"]) == {"cca − random", "cca − lofit (at 0.1 %)"}
    assert plot(rows, table, per_seed, tmp_path, "kl=0.001") == ["budget.png", "differences.png"]
    (tmp_path / "none").mkdir()
    assert plot(rows, table.iloc[:0], per_seed.iloc[:0], tmp_path / "none", "kl=0.001") == ["budget.png"]
    assert plot(rows.iloc[:0], table.iloc[:0], per_seed.iloc[:0], tmp_path, "kl=0.001") == []


def test_differences_stand_beside_what_the_control_keeps_of_the_dcm_set(tmp_path):
    """overlap.png and the summary's bands: each seed's CCA − random control beside the share of the DCM set's
    parameters that control keeps (mean over its draws that were read); the LoFiT anchor and other readings are
    left out."""
    from cca_tl.sweep.plots import differences_by_overlap, plot
    from cca_tl.sweep.summary import overlap_bands

    per_seed = pd.DataFrame([
        dict(reading="kl=0.001", budget_share=0.01, comparison="cca − random", metric="test", seed=0, diff=0.01),
        dict(reading="kl=0.001", budget_share=0.01, comparison="cca − uniform", metric="test", seed=0, diff=0.12),
        dict(reading="kl=0.001", budget_share=0.01, comparison="cca − lofit", metric="test", seed=0, diff=-0.1),
        dict(reading="kl=0.001", budget_share=0.01, comparison="cca − random", metric="pivot", seed=0, diff=0.3),
        dict(reading="kl=0.002", budget_share=0.01, comparison="cca − random", metric="test", seed=0, diff=0.2)])
    overlap = pd.DataFrame([dict(seed=0, budget_share=0.01, control="layer-matched", draw=d, pct_params_shared=p)
                            for d, p in ((0, 80.0), (1, 60.0))]
                           + [dict(seed=0, budget_share=0.01, control="uniform", draw=0, pct_params_shared=0.5)])
    pairs = differences_by_overlap(per_seed, overlap, "kl=0.001").set_index("control")
    assert pairs.loc["layer-matched", ["pct_params_shared", "diff"]].tolist() == pytest.approx([70.0, 1.0])
    assert pairs.loc["uniform", ["pct_params_shared", "diff"]].tolist() == pytest.approx([0.5, 12.0])
    assert len(pairs) == 2
    bands = overlap_bands(pairs.reset_index())
    assert bands["seed × budget pairs"].to_dict() == {"0–5 %": 1, "40–100 %": 1}
    assert bands.loc["40–100 %", "mean (points)"] == 1.0
    # with the sweep's rows, only the draws behind the difference: layer-matched draw 1 never reached KL 1e-3
    rows = pd.DataFrame([dict(seed=0, variant=v, budget_share=0.01, draw=d, reading="kl=0.001", test_accuracy=acc,
                              pivot_accuracy=0.5) for v, d, acc in (("cca", 0, 0.6), ("random", 0, 0.59),
                                                                   ("random", 1, float("nan")), ("uniform", 0, 0.48))])
    read = differences_by_overlap(per_seed, overlap, "kl=0.001", rows=rows).set_index("control")
    assert read.loc["layer-matched", "pct_params_shared"] == 80.0
    assert read.loc["uniform", "pct_params_shared"] == 0.5
    assert differences_by_overlap(per_seed, overlap, "kl=0.002", rows=rows).empty  # no draw read there
    assert "overlap.png" in plot(rows, pd.DataFrame(), per_seed, tmp_path, "kl=0.001", overlap=overlap)
    assert "overlap.png" not in plot(rows, pd.DataFrame(), per_seed, tmp_path, "kl=0.001", overlap=overlap.iloc[:0])


def test_shared_with_counts_what_a_control_keeps_of_the_dcm_set(tmp_path):
    """A set shares all of itself, a disjoint set nothing; a head's share is its parameters, not its count.
    The summary shows the table only where an overlap.csv was written."""
    from cca_tl.component_mask import ComponentMask
    from cca_tl.components import Component, registry_of
    from cca_tl.models import load_model
    from cca_tl.sweep.budgets import shared_with
    from cca_tl.sweep.summary import overlap_section

    reg = registry_of(load_model("tiny-llama"))
    top = ComponentMask.from_components(reg, [Component("q", 0, 0), Component("neuron", 0, 1)])
    assert shared_with(top, top, reg)["pct_params_shared"] == 100.0
    other = ComponentMask.from_components(reg, [Component("q", 1, 0), Component("neuron", 1, 1)])
    assert shared_with(top, other, reg) == dict(shared_components=0, shared_params=0, pct_params_shared=0.0,
                                                components_off_layer=2)
    head_only = ComponentMask.from_components(reg, [Component("q", 0, 0), Component("neuron", 1, 1)])
    share = reg.params_per_unit("q") / (reg.params_per_unit("q") + reg.params_per_unit("neuron"))
    assert shared_with(top, head_only, reg)["pct_params_shared"] == round(100 * share, 1)
    assert shared_with(top, head_only, reg)["components_off_layer"] == 1
    same_layers = ComponentMask.from_components(reg, [Component("q", 0, 1), Component("neuron", 0, 2)])
    assert shared_with(top, same_layers, reg)["components_off_layer"] == 0
    assert overlap_section(None) == []
    overlap = pd.DataFrame([dict(seed=0, budget_share=0.01, control="uniform", draw=0, pct_params_shared=3.0,
                                 components_off_layer=5)])
    section = "\n".join(overlap_section(overlap))
    assert "seed 0" in section and "('uniform', 0.01) |        3" in section and "uniform 5." in section


def test_the_plain_answer_speaks_to_each_control_on_the_budgets_with_two_seeds_or_more():
    from cca_tl.sweep.answer import plain_answer

    from cca_tl.stats import seeds_needed

    def row(control, budget, seeds, diff, between_low, between_high, verdict="above 0", spread=0.05):
        return dict(reading="kl=0.001", budget_share=budget, comparison=f"cca − {control}", metric="test",
                    seeds=seeds, diff=diff, between_low=between_low, between_high=between_high, between_sd=spread,
                    verdict=verdict)

    nan = float("nan")
    table = pd.DataFrame([row("random", 0.001, 5, 0.01, -0.02, 0.04), row("random", 0.01, 5, 0.09, 0.02, 0.16),
                          row("random", 0.03, 4, 0.20, 0.05, 0.35, "cannot tell (seeds disagree)", 0.12),
                          row("uniform", 0.001, 1, 0.30, nan, nan, spread=nan)])
    answer = plain_answer(table, "kl=0.001")
    assert "Against layer-matched random sets, the DCM-selected components win by ≥ 5 test points" in answer
    assert "at 1 % of the components (reading `kl=0.001`; seeds per budget: 0.1 %: 5, 1 %: 5, 3 %: 4)" in answer
    assert "Cannot tell yet against uniform random sets" in answer and "0.1 %: 1" in answer
    answer = plain_answer(table.iloc[[0, 2]], "kl=0.001")
    assert answer.startswith("Against layer-matched random sets, the DCM-selected components do not win")
    # what the seeds could see: the 0.1 % interval ends below +5 points; 3 % (seeds disagreeing) is open
    assert ("A win of that size is ruled out at 0.1 % (between-seed interval below +5); open at 3 %, where showing "
            f"a true 5-point difference (80 % power) at the spread seen between seeds would take "
            f"{seeds_needed(0.05, 0.12)} seeds respectively.") in answer
    assert plain_answer(table, "selected") == "No CCA − random comparison on the test questions is finished yet."


def test_a_draw_that_never_reached_the_matched_size_leaves_its_seed_to_the_draws_that_did(tmp_path):
    """The control of a seed is the mean of the draws that reached the reading; a seed none reached is out."""
    from cca_tl.sweep.compare import paired_groups

    config = SweepConfig.from_dict(TINY)
    (tmp_path / "sweep.json").write_text(json.dumps(config.to_dict()))
    outcomes = {0: {"cca_b0.05_d0": [1, 1, 0, 1], "random_b0.05_d0": None, "random_b0.05_d1": [1, 0, 0, 1]},
                1: {"cca_b0.05_d0": [1, 0, 0, 1], "random_b0.05_d0": None, "random_b0.05_d1": None}}
    for seed, cells in outcomes.items():
        folder = tmp_path / "seeds" / f"seed{seed}" / "sweep" / "cells"
        folder.mkdir(parents=True)
        for key, correct in cells.items():
            (folder / f"{key}.json").write_text("{}")
            reached = [] if correct is None else [dict(set="test@kl=0.001", item=i, correct=c)
                                                  for i, c in enumerate(correct)]
            pd.DataFrame([dict(set="pivot", item=0, correct=1), *reached]).to_csv(folder / f"{key}_items.csv",
                                                                                  index=False)
    found = paired_groups(Sweep.open(tmp_path, progress=False), "cca", "random", 0.05, "kl=0.001", "test")
    assert [(pair.seed, pair.draws) for pair in found] == [(0, 1)]
    assert found[0].a.tolist() == [1, 1, 0, 1] and found[0].b.tolist() == [1, 0, 0, 1]


def test_the_summary_says_when_a_seeds_control_rests_on_fewer_draws():
    from cca_tl.sweep.summary import per_seed_text

    seeds = pd.DataFrame(dict(seed=[0, 1, 2], diff=[0.01, -0.02, 0.0], low=[-0.01, -0.04, 0.0],
                              high=[0.03, 0.0, 0.0], draws=[3, 2, 1]))
    assert per_seed_text(seeds) == ("0: +1.0 [-1.0, +3.0]; 1: -2.0 [-4.0, +0.0] (on 2 draws); "
                                     "2: +0.0 [+0.0, +0.0] (on 1 draw)")
    assert "draw" not in per_seed_text(seeds.assign(draws=2))


def test_an_anchor_capped_below_a_budget_stands_at_its_cap_against_cca():
    """LoFiT's offsets on every head are all it has (capped at the smallest budget), so CCA at each larger
    budget is compared with LoFiT at its cap; other controls only ever at CCA's own budget."""
    from cca_tl.sweep.answer import plain_answer
    from cca_tl.sweep.compare import control_budget

    config = SweepConfig.from_dict({**TINY, "budgets": [0.001, 0.01, 0.05], "variants": ["cca", "random", "lofit"],
                                    "variant_budgets": {"lofit": [0.001], "random": [0.01]}})
    assert [control_budget(config, "lofit", b) for b in (0.001, 0.01, 0.05)] == [0.001, 0.001, 0.001]
    assert [control_budget(config, "random", b) for b in (0.001, 0.01, 0.05)] == [0.001, 0.01, 0.05]
    table = pd.DataFrame([dict(reading="kl=0.001", budget_share=b, comparison="cca − lofit", metric="test",
                               control_budget=0.001, seeds=5, diff=d, between_low=lo, between_high=hi, verdict=v)
                          for b, d, lo, hi, v in ((0.001, -0.104, -0.177, -0.03, "effect (worse)"),
                                                  (0.05, -0.009, -0.094, 0.076, "cannot tell (seeds disagree)"))])
    answer = plain_answer(table, "kl=0.001")
    assert "Against the LoFiT anchor (its cells at 0.1 %)" in answer
    assert "0.1 % -10.4 [-17.7, -3.0], effect (worse); 5 % -0.9 [-9.4, +7.6], cannot tell (seeds disagree)" in answer
    assert "masked fine-tuning" not in answer
    # masked fine-tuning of the same components is not capped: each budget stands against its own cells
    masked = table.assign(comparison="cca − masked-ft", control_budget=table["budget_share"])
    answer = plain_answer(pd.concat([table, masked]), "kl=0.001")
    assert ("Against masked fine-tuning (the answer objective on the same components; its cells at 0.1 %, 5 %), "
            "CCA − masked FT in test points with between-seed intervals, by CCA's budget: 0.1 % -10.4") in answer
    assert answer.index("LoFiT anchor") < answer.index("masked fine-tuning")
    assert "masked fine-tuning" not in plain_answer(pd.concat([table, masked.assign(seeds=1)]), "kl=0.001")


def test_the_glance_grid_folds_each_budget_and_control_into_one_cell():
    from cca_tl.sweep.answer import glance

    def row(comparison, budget, seeds, diff, low, high, verdict, control_budget=None, metric="test"):
        return dict(reading="kl=0.001", budget_share=budget, comparison=comparison, metric=metric, seeds=seeds,
                    control_budget=budget if control_budget is None else control_budget, diff=diff,
                    between_low=low, between_high=high, verdict=verdict)

    table = pd.DataFrame([row("cca − random", 0.03, 5, 0.021, 0.014, 0.028, "effect (better)"),
                          row("cca − random", 0.001, 4, 0.009, -0.014, 0.032, "cannot tell"),
                          row("cca − uniform", 0.001, 1, 0.05, float("nan"), float("nan"), "cannot tell"),
                          row("cca − lofit", 0.03, 5, 0.004, -0.064, 0.072, "cannot tell", control_budget=0.001),
                          row("cca − random", 0.03, 5, 0.5, 0.4, 0.6, "effect (better)", metric="pivot"),
                          row("pivot-lora − lora", 0.03, 5, 0.5, 0.4, 0.6, "effect (better)"),
                          row("cca − masked-ft", 0.001, 5, -0.158, -0.265, -0.051, "effect (worse)")])
    grid = glance(table, "kl=0.001")
    assert list(grid.index) == ["0.1 %", "3 %"]
    assert list(grid.columns) == ["CCA − layer-matched", "CCA − uniform", "CCA − LoFiT", "CCA − masked FT"]
    assert grid.loc["0.1 %", "CCA − masked FT"] == "-15.8 [-26.5, -5.1], 5 seeds: effect (worse)"
    assert grid.loc["3 %", "CCA − layer-matched"] == "+2.1 [+1.4, +2.8], 5 seeds: effect (better)"
    assert grid.loc["0.1 %", "CCA − uniform"] == "+5.0, 1 seed: cannot tell"
    assert grid.loc["3 %", "CCA − LoFiT"].startswith("+0.4 [-6.4, +7.2] (vs 0.1 %), 5 seeds")
    assert grid.loc["3 %", "CCA − uniform"] == "not run"
    assert glance(table, "kl=0.001", "pivot").loc["3 %", "CCA − layer-matched"].startswith("+50.0")
    assert glance(table, "selected").empty


def test_the_scale_search_finds_a_target_its_power_law_fit_keeps_missing():
    """KL that saturates (0.018 at α = 1, 0.0079 at 0.24, ~1e-5 at 0.0064, as a tiny random model measured)
    made the fit through the two nearest points propose the same α again and the search gave up; the
    bracket between the measurements below and above the target finds it. A KL that is α² is found as
    before, in one step, and a target beyond the largest scale is still reported as unreachable."""
    import math

    from cca_tl.sweep.readings import KL_TOLERANCE, search_scale

    def saturating(alpha: float) -> float:
        return 0.01937 * alpha ** 2 / (alpha ** 2 + 0.082)

    measured: dict[float, float] = {}
    alpha, value = search_scale(saturating, 0.001, measured)
    assert alpha is not None and abs(math.log(value / 0.001)) <= math.log(KL_TOLERANCE)
    assert sorted(measured)[:1] == [pytest.approx(0.0064, rel=0.05)]  # it did pass through the repeated proposal
    quadratic: dict[float, float] = {}
    assert search_scale(lambda a: 0.004 * a ** 2, 0.001, quadratic) == (pytest.approx(0.5), pytest.approx(0.001))
    assert sorted(quadratic) == [pytest.approx(0.5), 1.0]
    alpha, value = search_scale(lambda a: 1e-8 * a ** 2, 0.001)
    assert alpha is None and value < 0.001
