"""The lm-eval retention suite's wiring, offline: a local task file over a JSON file, run on the exported
base and edited models of a tiny run, must give the log-likelihoods the HookedTransformers give; the hub's
benchmarks are refused at once with an error that says why."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from cca_tl.errors import CCAError
from cca_tl.pipeline import Run, preset, run

pytest.importorskip("lm_eval", reason="the lm-eval extra (scripts/setup.sh installs it)")
from cca_tl.retention_suite import compare  # noqa: E402

DOCS = [{"question": "1 + 1 =", "answer": " 2"}, {"question": "2 + 1 =", "answer": " 3"},
        {"question": "3 + 3 =", "answer": " 6"}, {"question": "1 + 2 =", "answer": " 3"}]


@pytest.fixture()
def local_task(tmp_path):
    data = tmp_path / "tasks" / "docs.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (data.parent / "local_ll.yaml").write_text(
        "task: local_ll\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: loglikelihood\n"
        "doc_to_text: \"{{question}}\"\ndoc_to_target: \"{{answer}}\"\ntarget_delimiter: \"\"\n"
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n")
    return data.parent


def perplexity(model) -> float:
    """exp(−mean log p(answer | BOS + question)) under the HookedTransformer itself."""
    lls = []
    for doc in DOCS:
        context = model.to_tokens(doc["question"], prepend_bos=True)[0]
        whole = model.to_tokens(doc["question"] + doc["answer"], prepend_bos=True)[0]
        with torch.no_grad():
            logp = torch.log_softmax(model(whole[None])[0].double(), -1)
        lls.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(context), len(whole))))
    return math.exp(-sum(lls) / len(lls))


def test_suite_on_a_runs_base_and_edited_model_matches_the_hooked_transformers(tmp_path, local_task, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "r"
    run(preset("tiny"), out, stop_after="update", progress=False)
    table = compare(out, {"local_ll": 0}, include_path=local_task, batch_size=2)
    row = table.set_index(["task", "metric"]).loc[("local_ll", "perplexity")]
    run_ = Run.open(out, progress=False)
    base = perplexity(run_.session.restore())
    edited = perplexity(run_.edited_model())
    assert row["base"] == pytest.approx(base, rel=1e-4)
    assert row["edited"] == pytest.approx(edited, rel=1e-4)
    assert row["diff"] == pytest.approx(edited - base, rel=1e-3, abs=1e-6)
    assert abs(edited - base) > 1e-3 * base  # the edit moved these numbers, so the two columns are not one model
    assert row["n"] == len(DOCS)


def test_hub_benchmarks_offline_are_refused_before_any_model_is_loaded(monkeypatch, local_task):
    import cca_tl.models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(cca_tl.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(CCAError, match=r"\['mmlu', 'truthfulqa_mc2'\].*not reachable.*--include-path"):
        compare("tiny-gemma3", ["mmlu", "truthfulqa_mc2"], include_path=local_task)
    with pytest.raises(CCAError, match="knows no task"):
        compare("tiny-gemma3", ["no_such_task"])


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(CCAError, match=r"pip install -e '\.\[lm-eval\]'"):
        compare("tiny-gemma3", ["mmlu"])
