"""The run config: overrides and key resolution; a wrong type and an out-of-range value of every field refused,
naming the field, before any work (issue 30): the whole schema is walked, so a later field is covered too."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from cca_tl.pipeline import preset
from cca_tl.pipeline.config import SECTIONS, EvaluateConfig, RunConfig


def _fields() -> list[tuple[str, dataclasses.Field, object]]:
    out = []
    for f in dataclasses.fields(RunConfig):
        if f.name in SECTIONS:
            hints = typing.get_type_hints(SECTIONS[f.name])
            out += [(f"{f.name}.{g.name}", g, hints[g.name]) for g in dataclasses.fields(SECTIONS[f.name])]
        else:
            out.append((f.name, f, typing.get_type_hints(RunConfig)[f.name]))
    return out


def _out_of_range(field: dataclasses.Field, annotation) -> object | None:
    bounds = field.metadata
    is_list = "list" in str(annotation)
    value = None
    if "min" in bounds:
        value = bounds["min"] - 1
    elif "above" in bounds:
        value = bounds["above"] - 1
    elif "max" in bounds:
        value = bounds["max"] + 1
    if value is None:
        return None
    return [value] if is_list else value


FIELDS = _fields()


@pytest.mark.parametrize("key, field, annotation", FIELDS, ids=[k for k, _, _ in FIELDS])
def test_a_wrong_type_is_refused_naming_the_field(key, field, annotation):
    with pytest.raises(ValueError, match=key.rsplit(".", 1)[-1]):
        RunConfig().with_overrides([f"{key}={'{'}\"not\": 1{'}'}"])


BOUNDED = [(k, f, a) for k, f, a in FIELDS if _out_of_range(f, a) is not None]


@pytest.mark.parametrize("key, field, annotation", BOUNDED, ids=[k for k, _, _ in BOUNDED])
def test_an_out_of_range_value_is_refused_naming_the_field(key, field, annotation):
    import json

    with pytest.raises(ValueError, match=key.rsplit(".", 1)[-1]):
        RunConfig().with_overrides([f"{key}={json.dumps(_out_of_range(field, annotation))}"])


@pytest.mark.parametrize("pair, words", [
    ("dcm.lam=-1", "lam must be at least 0"), ("update.lr=0", "lr must be above 0"),
    ("update.lr=-0.5", "lr must be above 0"), ("dcm.lr=0", "lr must be above 0"),
    ("data.split=[0.5,0.5,0.5]", "summing to 1"), ("traces.weak_threshold=1.5", "at most 1"),
    ("device=gpu", "device must be"), ("device=cuda:x", "device must be"), ("update.eval_steps=[0,2]", "each item"),
])
def test_the_issue_s_nonsense_values_are_refused_with_what_is_allowed(pair, words):
    with pytest.raises(ValueError, match=words):
        RunConfig().with_overrides([pair])


def test_the_bounds_leave_every_preset_valid():
    from cca_tl.pipeline.config import PRESETS, preset

    for name in PRESETS:
        preset(name)
    assert RunConfig(device="cuda:1").device == "cuda:1" and RunConfig(dcm=SECTIONS["dcm"](lam=0.0)).dcm.lam == 0.0


def test_broken_json_in_a_run_directory_is_named_or_recomputed(tmp_path, capsys):
    """A torn config names the file and the fix; a torn stage marker is set aside and its stage runs again."""
    from cca_tl.cli import main as cli
    from cca_tl.errors import CorruptFileError
    from cca_tl.pipeline import Run, preset

    run = Run(preset("tiny"), tmp_path / "r", progress=False)
    run.execute(stop_after="problems")
    marker = run.marker("problems")
    marker.write_text('{"train": 3,\n')
    again = Run.open(tmp_path / "r", progress=False)
    assert not again.done("problems") and (marker.parent / "problems.json.broken").exists()
    assert "the problems stage runs again" in capsys.readouterr().out
    again.execute(stop_after="problems")
    assert again.stage_info("problems")["train"] > 0
    (tmp_path / "r" / "config.json").write_text('{"model": ')
    with pytest.raises(CorruptFileError, match=r"config.json is not valid JSON .*line 1.*restore config.json"):
        Run.open(tmp_path / "r")
    broken = tmp_path / "c.json"
    broken.write_text("{")
    assert cli(["run", "--config", str(broken), "--out", str(tmp_path / "x")]) == 2
    assert "c.json is not valid JSON" in capsys.readouterr().err


def test_config_overrides_and_validation():
    cfg = RunConfig().with_overrides(["lam=1e-3", "controls=random,all", "templates=null", "model=tiny-llama"])
    assert cfg.dcm.lam == 1e-3 and cfg.evaluate.controls == ["random", "all"] and cfg.data.templates is None
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="Unknown config key"):
        RunConfig().with_overrides(["lamda=1"])
    with pytest.raises(ValueError, match=r"controls must be a list of \['random', 'all'\]"):
        RunConfig(evaluate=EvaluateConfig(controls=["lora"]))
    with pytest.raises(ValueError, match="Unknown preset"):
        preset("huge")


def test_config_sections_are_typed_and_keys_resolve():
    cfg = RunConfig().with_overrides(["dcm.lam=0.003", "update.lr=2e-5", "data.templates=[\"a\"]", "steps=2"])
    assert (cfg.dcm.lam, cfg.update.lr, cfg.data.templates, cfg.update.steps) == (0.003, 2e-5, ["a"], 2)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg == RunConfig.from_dict(cfg.flat())
    assert set(cfg.flat()) == set(RunConfig.keys()) and "dcm.batch_size" in RunConfig.keys()
    with pytest.raises(ValueError, match="ambiguous.*dcm.lr.*update.lr"):
        RunConfig().with_overrides(["lr=1"])
    for bad, message in (("dcm.lam=high", "lam must be float"), ("dcm.kinds=q,x", "kinds must be a list of"),
                         ("data.task=poetry", "task must be one of"), ("evaluate.retention_texts=0", "at least 1"),
                         ("traces.n_samples=1.5", "n_samples must be int")):
        with pytest.raises(ValueError, match=message):
            RunConfig().with_overrides([bad])
    assert preset("tiny", lam=0.5, update_lr=0.1).dcm.lam == 0.5 and preset("tiny", update_lr=0.1).update.lr == 0.1


def test_the_library_functions_default_to_their_config_section():
    """Defaults once (issue 28): ``train_dcm``, ``train_update`` and ``targeted_update`` default to their
    section's values, so a notebook call and a run without overrides train the same thing; the stages pass
    the section through ``train_kwargs`` (every key a parameter of the function)."""
    import inspect

    from cca_tl.components import Kind
    from cca_tl.dcm import DCMConfig, train_dcm
    from cca_tl.update import UpdateConfig, targeted_update, train_update

    dcm = inspect.signature(train_dcm).parameters
    for key, value in DCMConfig().train_kwargs().items():
        default = [Kind(k).value for k in dcm[key].default] if key == "kinds" else dcm[key].default
        assert default == value, key
    for function in (train_update, targeted_update):
        parameters = inspect.signature(function).parameters
        for key, value in UpdateConfig().train_kwargs().items():
            assert parameters[key].default == value, (function.__name__, key)
    paper = DCMConfig.paper()
    assert (paper.lam, paper.lr, paper.epochs, paper.batch_size) == (1e-3, 5e-3, 50, 8)  # docs/method.md §A3
    assert RunConfig().dcm == DCMConfig() and RunConfig().update == UpdateConfig()
