"""Weight-sparse circuits: learned node pruning with mean ablation (gates, bisection, calibration, faithfulness)."""

from __future__ import annotations

import pytest
import torch

from cca_tl import ContrastSet, load_model
from cca_tl.components import Kind
from cca_tl.component_mask import ComponentMask
from cca_tl.sparse import (bisect_smallest, calibrate_logits, faithfulness, heaviside_ste, prune_nodes,
                           text_means)
from cca_tl.sparse.prune import NODE_KINDS, binary_loss, circuit_diffs


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def tiny_data(tiny):
    """Contrasts the tiny model solves: desired = its top next token, undesired = its bottom one."""
    g = torch.Generator().manual_seed(0)
    prefixes = [torch.randint(4, 256, (int(torch.randint(4, 10, (1,), generator=g)),), generator=g).tolist()
                for _ in range(12)]
    with torch.no_grad():
        last = [tiny(torch.tensor([p]))[0, -1] for p in prefixes]
    return ContrastSet(prefixes, [int(l.argmax()) for l in last], [int(l.argmin()) for l in last])


def test_heaviside_forward_and_sigmoid_backward():
    tau = torch.tensor([-1.0, -0.2, 0.0, 0.3, 1.0], requires_grad=True)
    out = heaviside_ste(tau, 0.5)
    assert out.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    out.sum().backward()
    s = torch.sigmoid(tau.detach() / 0.5)
    torch.testing.assert_close(tau.grad, s * (1 - s) / 0.5)


def test_bisection_finds_the_boundary_on_a_monotone_toy():
    calls = []

    def loss(k):
        calls.append(k)
        return 10.0 / (k + 1)

    k, seen = bisect_smallest(loss, 0, 1000, target=0.5)
    assert k == 19 and loss(19) <= 0.5 < loss(18)  # 10/20 = 0.5, 10/19 > 0.5
    assert len(seen) <= 12  # log2(1000) + the first check
    k, seen = bisect_smallest(lambda k: 5.0, 0, 100, target=1.0)
    assert k == 100 and seen[100] > 1.0  # unreachable: the whole model, flagged by its loss
    assert bisect_smallest(lambda k: 0.0, 0, 100, target=1.0)[0] == 0


def test_calibration_never_hurts():
    diffs = torch.tensor([3.0, 2.5, -0.5, 4.0, 1.0]) * 0.2
    a, b, loss = calibrate_logits(diffs)
    assert loss <= float(binary_loss(diffs)) + 1e-9 and a > 1.0


def test_mean_ablation_with_every_node_kept_changes_nothing(tiny, tiny_data):
    means = text_means(tiny, [torch.randint(4, 256, (30,), generator=torch.Generator().manual_seed(s)) for s in range(3)])
    full = circuit_diffs(tiny, tiny_data, ComponentMask.full(tiny, NODE_KINDS, "channel"), means)
    plain = circuit_diffs(tiny, tiny_data, None, means)
    assert torch.equal(full, plain)
    nothing = circuit_diffs(tiny, tiny_data, ~ComponentMask.full(tiny, NODE_KINDS, "channel"), means)
    assert not torch.allclose(nothing, plain)
    assert means[Kind.Q].shape == (2, 4, 16) and means[Kind.K].shape == (2, 4, 16) and means[Kind.NEURON].shape == (2, 128)


def test_prune_nodes_finds_a_circuit_and_reports_faithfulness(tiny, tiny_data):
    means = text_means(tiny, [torch.randint(4, 256, (30,), generator=torch.Generator().manual_seed(s)) for s in range(3)])
    full_loss = float(binary_loss(circuit_diffs(tiny, tiny_data, None, means)))
    empty_loss = float(binary_loss(circuit_diffs(tiny, tiny_data, ~ComponentMask.full(tiny, NODE_KINDS, "channel"), means)))
    assert full_loss < empty_loss
    target = (full_loss + empty_loss) / 2  # reachable (the full model meets it), not by nothing
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    result = prune_nodes(tiny, tiny_data, means, steps=30, lr=0.1, k_coef=1e-3, target_loss=target, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in tiny.named_parameters())  # weights untouched
    assert result.reached and result.circuit_loss <= target
    assert 0 < result.mask.count() < result.mask.size()
    assert result.calibrated_loss <= result.circuit_loss + 1e-6
    assert result.history["live"].iloc[-1] <= result.history["live"].iloc[0]  # the sparsity term pulls nodes out
    table = faithfulness(tiny, tiny_data, result.mask, means)
    assert table.loc["circuit only (sufficiency)", "loss"] == pytest.approx(result.circuit_loss, abs=1e-5)
    assert table.loc["full model", "loss"] == pytest.approx(full_loss, abs=1e-6)
    assert table.loc["everything ablated", "nodes_kept"] == 0
