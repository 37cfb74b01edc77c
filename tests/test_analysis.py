"""Analysis layer on tiny models: ablation sanity, faithfulness endpoints, tables, self-contained views."""

from __future__ import annotations

import pytest
import torch

from cca_tl import ComponentMask, ContrastSet, load_model
from cca_tl.analysis import (ablated_logit_diffs, ablation_checks, attention_view, count_summary, count_table,
                             default_sizes, faithfulness_area, faithfulness_curve, plot_mask,
                             save_html, top_heads)
from cca_tl.components import Kind, registry_of
from cca_tl.contrast import Batch, PrefixKV, two_logit_diff
from cca_tl.interventions import Baseline, task_means


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-qwen2")


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    prefixes = [torch.randint(4, 256, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
                for _ in range(10)]
    return ContrastSet(prefixes, [17] * 10, [42] * 10)


def random_gains(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    reg = registry_of(model)
    return {k: torch.rand(reg.n_layers, reg.n_units(k), generator=g) for k in ("q", "k", "v", "neuron")}


@pytest.mark.parametrize("baseline", [Baseline.ZERO, Baseline.TASK_MEAN])
def test_ablating_nothing_changes_nothing(model, data, baseline):
    with torch.no_grad():
        clean = two_logit_diff(model, Batch.collate(data))
    empty = ComponentMask.empty(model)
    for ablate in (None, empty):
        diffs = ablated_logit_diffs(model, data, ablate, baseline=baseline, prefix_kv=PrefixKV(model, data))
        torch.testing.assert_close(diffs, clean, atol=1e-5, rtol=0)  # cached prefix vs full pass: fp noise only
    checks = ablation_checks(model, data, empty, n_random=2)
    assert (checks["delta_logit_diff"].abs() < 1e-9).loc[(slice(None), ["none", "circuit (selected)"])].all()


def test_ablating_everything_differs_and_mean_ablation_uses_means(model, data):
    full = ComponentMask.full(model)
    kv = PrefixKV(model, data)
    clean = ablated_logit_diffs(model, data, None, prefix_kv=kv)
    zeroed = ablated_logit_diffs(model, data, full, baseline="zero", prefix_kv=kv)
    meaned = ablated_logit_diffs(model, data, full, baseline="task-mean", prefix_kv=kv)
    assert not torch.allclose(zeroed, clean) and not torch.allclose(meaned, zeroed)
    means = task_means(model, data, full.kinds, prefix_kv=kv)
    assert means[Kind.Q].shape == (2, 4, 16) and means[Kind.NEURON].shape == (2, 128)
    # Mean ablation of all components makes every record's last-position activations equal to the means:
    # the logit difference then depends on the record only through its prefix keys/values.
    assert zeroed.std() > 0


def test_faithfulness_endpoints_are_exact(model, data):
    gains = random_gains(model)
    curve = faithfulness_curve(model, data, gains, sizes=[0, 3, 30])
    total = sum(v.numel() for v in gains.values())
    assert curve["size"].tolist() == [0, 3, 30, total]
    assert curve["faithfulness"].iloc[0] == 0.0 and curve["faithfulness"].iloc[-1] == 1.0
    area = faithfulness_area(curve)
    assert area["cpr"] + area["cmd"] >= 0 and 0 <= area["cmd"]
    perfect = curve.assign(faithfulness=1.0)
    assert faithfulness_area(perfect) == pytest.approx(dict(cpr=1.0, cmd=0.0))


def test_top_k_and_sizes(model):
    reg = registry_of(model)
    gains = random_gains(model, 1)
    mask = ComponentMask.top_k(reg, gains, 5)
    assert mask.count() == 5
    threshold = min(float(gains[c.kind.value][c.layer, c.index]) for c in mask.components())
    assert sum(int((g > threshold).sum()) for g in gains.values()) == 4  # the other 4 beat the 5th
    assert ComponentMask.top_k(reg, gains, 0).count() == 0
    with pytest.raises(ValueError):
        ComponentMask.top_k(reg, gains, 10_000)
    sizes = default_sizes(272, extra=[17], points=6)
    assert sizes[0] == 0 and sizes[-1] == 272 and 17 in sizes and sizes == sorted(set(sizes))
    heads = top_heads(reg, gains, 3)
    assert len(heads) == 3 and all(0 <= layer < 2 and 0 <= h < 4 for layer, h in heads)


def test_count_tables(model):
    a = ComponentMask.from_components(model, [])
    reg = registry_of(model)
    gains = random_gains(model, 2)
    masks = {"s0": ComponentMask.top_k(reg, gains, 4), "s1": ComponentMask.top_k(reg, gains, 8), "s2": a}
    table = count_table(masks)
    assert table["total"].tolist() == [4, 8, 0]
    summary = count_summary(masks)
    assert summary["total_mean"].iloc[0] == pytest.approx(4.0) and summary["total_std"].iloc[0] == pytest.approx(4.0)
    assert summary["total"].iloc[0] == "4.0 ± 4.0"
    fig = plot_mask(masks["s1"], gains)
    assert len(fig.axes) >= 4


def test_attention_view_is_self_contained(model, data, tmp_path):
    view = attention_view(model, data.prefix_ids[0], [(1, 2), (0, 1)])
    path = save_html(view, tmp_path / "a.html", title="t <x>")
    page = path.read_text()
    assert "CircuitsVis" in page and "<script src=" not in page and "unpkg" not in page and "t &lt;x&gt;" in page
    assert oct(path.stat().st_mode)[-3:] in ("644", "664")
