"""The pipeline and CLI end to end on a tiny model: every artifact, resume, a refused config, export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from cca_tl.cli import main
from cca_tl.component_mask import ComponentMask
from cca_tl.models import load_model
from cca_tl.errors import CCAError
from cca_tl.pipeline import (STAGES, EmptyLocalizationError, ProblemSplits, Run, RunConfig, RunConfigMismatch,
                             preset, run)
from cca_tl.dcm import DCMResult
from cca_tl.edits import WeightEdit
from cca_tl.entries import element_masks


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One full tiny run through the command line."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["run", "--preset", "tiny", "--out", str(out), "--quiet"]) == 0
    return out


def test_cli_run_writes_every_artifact(tiny_run, capsys):
    from datasets import load_from_disk

    run_ = Run.open(tiny_run, progress=False)
    assert all(run_.done(s) for s in STAGES)
    splits = ProblemSplits.load(tiny_run / "problems.json")
    keys = {name: {(p.template_id, p.instance_id) for p in getattr(splits, name)} for name in ("train", "val", "test")}
    assert keys["train"] and keys["test"] and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    traces = load_from_disk(str(tiny_run / "traces"))
    assert len(traces) == len(splits.train) + len(splits.val)
    assert {"greedy_ids", "sampled_ids", "greedy_correct", "flipped"} <= set(traces.column_names)
    records = load_from_disk(str(tiny_run / "localization"))
    assert len(records) > 0 and set(records["split"]) <= {"train", "val"}
    assert all(r["desired_id"] != r["undesired_id"] for r in records)

    model = load_model("tiny-gemma3")
    dcm = DCMResult.load(tiny_run / "dcm")
    dcm.mask.validate(model)
    assert 0 < dcm.mask.count() < dcm.mask.size()  # a real selection, not all or nothing
    assert ComponentMask.load(tiny_run / "dcm" / "mask.json") == dcm.mask
    assert run_.stage_info("dcm")["selected"] == dcm.mask.count()

    # The edit changes only the selected components' entries; everything else stays bit-identical.
    edit = WeightEdit.load(tiny_run / "update")
    assert edit.mask == dcm.mask
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    edit.apply(model)
    emasks = element_masks(model, edit.mask, edit.weight_set)
    changed = 0
    for name, param in model.named_parameters():
        if name in emasks:
            assert torch.equal(param[~emasks[name]], base[name][~emasks[name]])
            changed += int((param != base[name]).sum())
        else:
            assert torch.equal(param, base[name]), name
    assert changed > 0

    table = pd.read_csv(tiny_run / "evaluate" / "accuracy.csv", index_col="variant")
    assert list(table.index) == ["base", "cca", "random", "all"]
    assert table.loc["cca", "train_logit_diff"] > table.loc["base", "train_logit_diff"]  # the update did its job
    assert table.loc["all", "pct_params"] == pytest.approx(100.0)
    assert table["macro_accuracy"].between(0, 1).all()
    assert table.loc["base", "retention_kl"] == 0.0 and (table.loc[["cca", "all"], "retention_kl"] > 0).all()
    assert table["general_top1"].between(0, 1).all()
    # Held-out test pivots come from the base model's wrong answers, so the base model loses every one of
    # them (its greedy token is the undesired one); every variant is scored on the same records.
    assert table["n_pivots_test"].nunique() == 1 and table.loc["base", "n_pivots_test"] > 0
    assert table.loc["base", "pivot_accuracy"] <= 0.05
    paired = run_.paired("cca", "random")
    assert paired["accuracy_low"] <= paired["accuracy_diff"] <= paired["accuracy_high"]
    assert paired["pivot_accuracy_n"] == table.loc["base", "n_pivots_test"]


def test_logit_differences_reused_from_the_update_are_the_models(tiny_run):
    """evaluate takes the val/train logit differences the update measured on the same weights; they are
    what measuring the base and the edited model again gives."""
    from cca_tl.evaluate import localization_logit_diff

    run_ = Run.open(tiny_run, progress=False)
    update = run_.stage_info("update")
    assert update["val_metric"] == "logit_diff" and not update["val_is_train"]
    batch = run_.config.update.batch_size
    for variant in ("base", "cca"):
        model = run_.session.restore() if variant == "base" else run_.edited_model()
        info = json.loads((tiny_run / "evaluate" / f"{variant}.json").read_text())
        assert info["val_logit_diff"] == update["start_metric" if variant == "base" else "best_metric"]
        fresh = localization_logit_diff(model, run_.localization("val"), batch_size=batch)
        assert info["val_logit_diff"] == pytest.approx(fresh, abs=1e-5)
        fresh = localization_logit_diff(model, run_.localization("train"), batch_size=batch)
        assert info["train_logit_diff"] == pytest.approx(fresh, abs=1e-5)
    assert update["start_train_logit_diff"] is not None

    analysis = tiny_run / "analysis"
    for name in ("components.csv", "components_per_layer.csv", "ablation.csv", "faithfulness.csv"):
        assert len(pd.read_csv(analysis / name)) > 0, name
    for name in ("mask.png", "faithfulness.png"):
        assert (analysis / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (analysis / "attention.html").read_text()
    assert "CircuitsVis" in page and "<script src=" not in page and "cdn" not in page.lower()
    report = (tiny_run / "report.md").read_text()
    assert "| random " in report and "Ablation checks" in report and "analysis/mask.png" in report
    assert "CCA − random" in report and "pivot accuracy" in report
    base_row = next(line for line in report.splitlines() if line.startswith("| base "))
    n_test = int(run_.accuracy_table().loc["base", "n_test"])
    assert str(n_test) in [cell.strip() for cell in base_row.split("|")]  # a count, not "4.000"


def test_report_html_is_self_contained_and_rewritable(tiny_run, tmp_path):
    """report.html carries its plots and the attention view inside it: copied alone to another directory it
    references no file and no remote script; ``cca-tl report`` rewrites both reports without the model."""
    import base64
    import html as html_lib
    import re
    import shutil

    page = (tiny_run / "report.html").read_text()
    alone = tmp_path / "alone.html"
    shutil.copy(tiny_run / "report.html", alone)  # nothing beside it
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    frames = re.findall(r'<iframe title="([^"]+)" srcdoc="([^"]*)"', page)
    assert [title for title, _ in frames] == ["analysis/attention.html"]
    assert html_lib.unescape(frames[0][1]) == (tiny_run / "analysis" / "attention.html").read_text()
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', page)
    assert "<table>" in page and "CCA − random" in page and "pivot accuracy" in page

    (tiny_run / "report.html").unlink()
    marker = json.loads((tiny_run / "stages" / "report.json").read_text())
    assert marker["device"].startswith("cpu")
    assert main(["report", str(tiny_run)]) == 0
    assert (tiny_run / "report.html").read_text() == page
    assert "on cpu (" in (tiny_run / "report.md").read_text()


def test_report_command_refuses_an_unfinished_run(tmp_path, capsys):
    out = tmp_path / "r"
    run(preset("tiny"), out, stop_after="dcm", progress=False)
    assert main(["report", str(out)]) == 2
    assert "has not finished evaluate and analysis" in capsys.readouterr().err
    assert not (out / "report.html").exists()


def test_two_step_task_with_reference_pivots_runs_to_the_update(tmp_path):
    """The main job's path (two-step task, reference localization, no sampling, validation on held-out
    pivots) on the tiny model."""
    cfg = preset("tiny", task="two-step", localization="reference", n_samples=0, max_new_tokens=16)
    info = run(cfg, tmp_path / "r", stop_after="update", progress=False)
    run_ = Run.open(tmp_path / "r", progress=False)
    records = run_.localization()
    assert set(records["method"]) == {"reference"} and run_.stage_info("localize")["train"] > 0
    assert run_.stage_info("traces")["pairs"] == 0  # nothing was sampled
    assert run_.stage_info("update")["val_metric"] == "logit_diff" and "update" in info["ran"]


def test_export_table_and_resume_of_a_finished_run(tiny_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    assert main(["export", str(tiny_run), "--out", str(tmp_path / "hf")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    edited = Run.open(tiny_run, progress=False).edited_model()
    ids = torch.randint(4, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(ids).logits - edited(ids)).abs().max() < 1e-4

    capsys.readouterr()
    assert main(["table", str(tiny_run), str(tiny_run / "dcm" / "mask.json"), "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "mean ± std per model" in out and "tiny-gemma3" in out
    summary = pd.read_csv(tmp_path / "t" / "component_counts_summary.csv")
    assert summary["n_masks"].iloc[0] == 2 and summary["total"].iloc[0].endswith("± 0.0")

    # Rerunning a finished run recomputes nothing.
    assert main(["run", "--preset", "tiny", "--out", str(tiny_run), "--quiet"]) == 0
    assert "ran nothing" in capsys.readouterr().out


def test_resume_after_a_kill_recomputes_nothing_and_matches(tiny_run, tmp_path):
    cfg = preset("tiny")
    first = run(cfg, tmp_path / "r", stop_after="dcm", progress=False)
    assert first["ran"] == ["problems", "traces", "localize", "dcm"]
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*")
              if p.is_file() and p.name != ".lock"}  # the one-writer lock is rewritten by every writer
    second = run(cfg, tmp_path / "r", progress=False)
    assert second["skipped"] == ["problems", "traces", "localize", "dcm"]
    assert second["ran"] == ["update", "evaluate", "analysis", "report"]
    for path, mtime in before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    # Same results as the uninterrupted run (up to fp32 matmul noise: MKL's sums may depend on memory
    # alignment, which differs between processes and allocations).
    assert DCMResult.load(tmp_path / "r" / "dcm").mask == DCMResult.load(tiny_run / "dcm").mask
    a, b = WeightEdit.load(tmp_path / "r" / "update"), WeightEdit.load(tiny_run / "update")
    assert a.values.keys() == b.values.keys()
    for k in a.values:
        torch.testing.assert_close(a.values[k], b.values[k], atol=1e-5, rtol=1e-4)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "r" / "evaluate" / "accuracy.csv"),
                                  pd.read_csv(tiny_run / "evaluate" / "accuracy.csv"), check_exact=False, rtol=1e-4)


def test_a_different_config_is_refused_and_changes_nothing(tiny_run):
    before = (tiny_run / "config.json").read_text()
    with pytest.raises(RunConfigMismatch, match="lam"):
        Run(preset("tiny", lam=0.5), tiny_run)
    assert (tiny_run / "config.json").read_text() == before
    assert main(["run", "--preset", "tiny", "--set", "lam=0.5", "--out", str(tiny_run), "--quiet"]) == 2


def test_no_pairs_is_a_clear_error_and_keeps_the_traces(tmp_path):
    cfg = preset("tiny", n_samples=0)  # no sampled traces: no right/wrong pair can exist
    with pytest.raises(EmptyLocalizationError, match="opposite correctness"):
        run(cfg, tmp_path / "r", progress=False)
    r = Run(cfg, tmp_path / "r")
    assert r.done("traces") and not r.done("localize") and not (tmp_path / "r" / "localization").exists()


def test_export_refuses_an_unfinished_run(tmp_path, capsys):
    run(preset("tiny"), tmp_path / "r", stop_after="problems", progress=False)
    assert main(["export", str(tmp_path / "r"), "--out", str(tmp_path / "hf")]) == 2
    assert "no finished update stage" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
    assert os.listdir(tmp_path) == ["r"]


def test_accuracy_validation_keeps_the_unedited_model_when_nothing_helps(tmp_path):
    """With a learning rate far below float32's resolution of the weights (a zero one is refused) validation
    accuracy cannot beat step 0, so the update must leave the model exactly as loaded (the paper's selection
    rule, step 0 a candidate, ties to the earliest step)."""
    cfg = preset("tiny", val_metric="accuracy", update_lr=1e-12)
    run(cfg, tmp_path / "r", stop_after="update", progress=False)
    info = Run.open(tmp_path / "r", progress=False).stage_info("update")
    assert info["best_step"] == 0 and info["val_metric"] == "accuracy"
    history = pd.read_csv(tmp_path / "r" / "update" / "history.csv")
    assert history["val_metric"].dropna().nunique() == 1 and len(history["val_metric"].dropna()) == 3  # 0, 2, 4
    edit = WeightEdit.load(tmp_path / "r" / "update")
    base = load_model("tiny-gemma3")
    emasks = element_masks(base, edit.mask, edit.weight_set)
    for name, values in edit.values.items():
        assert torch.equal(values, base.get_parameter(name).detach()[emasks[name]])


def test_a_run_started_before_a_config_key_existed_still_opens(tmp_path):
    cfg = preset("tiny")
    old = cfg.to_dict()
    del old["data"]["n_templates"]  # as written by an older cca_tl
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text(json.dumps(old))
    assert Run.open(tmp_path / "r").config == cfg


def test_multi_round_starts_from_the_previous_edit(tiny_run, tmp_path):
    second = Run(preset("tiny", start_from=str(tiny_run)), tmp_path / "round2", progress=False)
    expected = load_model("tiny-gemma3")
    WeightEdit.load(tiny_run / "update").apply(expected)
    for (name, a), b in zip(second.model.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(a, b), name
    second.reset_model()  # "unedited" for round 2 means round 1's result
    assert all(torch.equal(a, b) for a, b in zip(second.model.parameters(), expected.parameters()))
    with pytest.raises(CCAError, match="no finished update"):
        Run(preset("tiny", start_from=str(tmp_path / "nothing")), tmp_path / "bad", progress=False).model


def test_an_empty_dcm_mask_is_a_clear_error(tmp_path):
    from cca_tl.pipeline import EmptyMaskError
    from cca_tl.update import targeted_update

    with pytest.raises(EmptyMaskError, match="selected no component"):
        run(preset("tiny", lam=1e4), tmp_path / "r", stop_after="dcm", progress=False)
    assert (tmp_path / "r" / "dcm" / "mask.safetensors").exists()  # kept for inspection
    assert not (tmp_path / "r" / "stages" / "dcm.json").exists()  # and redone on the next attempt
    mask = DCMResult.load(tmp_path / "r" / "dcm").mask
    r = Run.open(tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="nothing to update"):
        targeted_update(r.model, r.contrast("train"), mask, steps=1, progress=False)


def test_a_run_directory_with_the_flat_config_of_the_previous_version_opens_and_resumes(tmp_path):
    """``tests/data/flat_config_before_sections.json`` (the main job's config.json as the previous version wrote
    it, with flat keys: ``lam``, ``dcm_lr``, ...) still opens, means the same run, and the main job's config
    may resume it."""
    flat = json.loads((Path(__file__).parents[1] / "data/flat_config_before_sections.json").read_text())
    assert "dcm_lr" in flat and "dcm" not in flat
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text(json.dumps(flat))
    opened = Run.open(tmp_path / "r").config
    assert opened == RunConfig(device="cpu")
    assert opened.dcm.lr == flat["dcm_lr"] and opened.update.steps == flat["update_steps"]
    Run(RunConfig(), tmp_path / "r", progress=False)._check_config()  # same identity: resumes
    with pytest.raises(RunConfigMismatch, match="dcm.lr"):
        Run(RunConfig().with_overrides(["dcm.lr=0.5"]), tmp_path / "r", progress=False)._check_config()


def test_reference_path_validation_is_wired_and_measured_on_the_val_questions(tmp_path):
    """``update.val_metric="reference"``: the update's step-0 score is the share of val questions whose reference
    solution is the greedy path (a tiny random model: none), recorded as the selection metric."""
    cfg = preset("tiny", **{"data.task": "two-step", "update.val_metric": "reference", "update.lr": 1e-12})
    run(cfg, tmp_path / "r", stop_after="update", progress=False)
    info = Run.open(tmp_path / "r", progress=False).stage_info("update")
    assert info["val_metric"] == "reference" and info["best_step"] == 0
    assert info["start_metric"] == 0.0  # a random character model is never on the reference path
