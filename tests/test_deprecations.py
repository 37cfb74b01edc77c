"""Names that moved or were renamed keep working for one version, each with a DeprecationWarning that
names its replacement."""

from __future__ import annotations

import pytest


def test_the_old_family_module_still_imports_and_says_where_it_went():
    import importlib
    import sys

    sys.modules.pop("cca_tl.families", None)
    with pytest.warns(DeprecationWarning, match="cca_tl.arch"):
        old = importlib.import_module("cca_tl.families")
    from cca_tl.arch import FAMILIES, tl_config_dict

    assert old.FAMILIES is FAMILIES and old.tl_config_dict is tl_config_dict


def test_renamed_names_still_work_and_say_their_new_name():
    from cca_tl.export import hf_copy
    from cca_tl.models import load_model
    from cca_tl.pipeline import RunConfig
    from cca_tl.traces import hf_twin

    config = RunConfig()
    with pytest.warns(DeprecationWarning, match="result_fields"):
        assert config.identity() == config.result_fields()
    model = load_model("tiny-gpt2")
    with pytest.warns(DeprecationWarning, match="cca_tl.export.hf_copy"):
        old = hf_twin(model)
    assert old.state_dict().keys() == hf_copy(model).state_dict().keys()


def test_the_peft_path_still_works_and_names_its_replacement():
    from cca_tl.baselines import finetune, sft_examples
    from cca_tl.evaluate import accuracy
    from cca_tl.export import hf_copy
    from cca_tl.models import load_model
    from cca_tl.tasks import arithmetic_problems

    model = load_model("tiny-qwen2")
    problems = arithmetic_problems(3, max_value=3)[:2]
    prompt = lambda q: f"Q: {q[:20]}\nA:"  # noqa: E731
    with pytest.warns(DeprecationWarning, match="train_update"):
        examples = sft_examples(model, problems, prompt)
    with pytest.warns(DeprecationWarning, match="train_update"):
        assert finetune(model, examples, epochs=0, progress=False).best_epoch == 0
    with pytest.warns(DeprecationWarning, match="HookedTransformer"):
        macro, _, _ = accuracy(model, problems, prompt, max_new_tokens=2, hf_model=hf_copy(model), progress=False)
    assert macro == accuracy(model, problems, prompt, max_new_tokens=2, progress=False)[0]


def test_the_old_gain_form_name_is_read_as_code():
    from cca_tl.dcm import DCMGains
    from cca_tl.models import load_model

    model = load_model("tiny-gpt2")
    with pytest.warns(DeprecationWarning, match="'code'"):
        assert DCMGains(model, form="authors").form == "code"


def test_the_parameter_set_type_has_its_own_name():
    import cca_tl.entries as entries
    import cca_tl.update as update

    with pytest.warns(DeprecationWarning, match="PARAM_SETS"):
        assert update.PARAMS == entries.PARAM_SETS
    with pytest.warns(DeprecationWarning, match="ParamSet"):
        assert entries.Params is entries.ParamSet


def test_the_dcm_gains_module_has_its_own_name():
    import cca_tl.dcm as dcm

    with pytest.warns(DeprecationWarning, match="DCMGains"):
        assert dcm.DCMMask is dcm.DCMGains
    import cca_tl

    with pytest.warns(DeprecationWarning, match="DCMGains"):
        assert cca_tl.DCMMask is dcm.DCMGains
