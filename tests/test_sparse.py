"""Weight-sparse circuits, part 1: code contrast tasks and learned node pruning with mean ablation."""

from __future__ import annotations

import pytest
import torch

from cca_tl import ContrastSet, load_model
from cca_tl.components import Kind
from cca_tl.sparse import (CODE_TASKS, NodeMask, bisect_smallest, calibrate_logits, code_contrast_set,
                           code_task_examples, faithfulness, heaviside_ste, node_means, prune_nodes)
from cca_tl.sparse.prune import binary_loss, circuit_diffs


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


def test_mean_ablation_with_every_node_kept_changes_nothing(tiny, tiny_data):
    means = node_means(tiny, [torch.randint(4, 256, (30,), generator=torch.Generator().manual_seed(s)) for s in range(3)])
    full = circuit_diffs(tiny, tiny_data, NodeMask.full(tiny), means)
    plain = circuit_diffs(tiny, tiny_data, None, means)
    assert torch.equal(full, plain)
    nothing = circuit_diffs(tiny, tiny_data, ~NodeMask.full(tiny), means)
    assert not torch.allclose(nothing, plain)
    assert means[Kind.Q].shape == (2, 4, 16) and means[Kind.K].shape == (2, 4, 16) and means[Kind.NEURON].shape == (2, 128)


def test_prune_nodes_finds_a_circuit_and_reports_faithfulness(tiny, tiny_data):
    means = node_means(tiny, [torch.randint(4, 256, (30,), generator=torch.Generator().manual_seed(s)) for s in range(3)])
    full_loss = float(binary_loss(circuit_diffs(tiny, tiny_data, None, means)))
    empty_loss = float(binary_loss(circuit_diffs(tiny, tiny_data, ~NodeMask.full(tiny), means)))
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


def test_code_tasks_generate_and_tokenise():
    for task in CODE_TASKS:
        examples = code_task_examples(task, 20, seed=1)
        assert len(examples) == 20 and all(e.target != e.alt for e in examples)
        assert {e.target for e in examples} == {e.alt for e in examples}  # both classes appear
    assert code_task_examples("bracket_counting", 5, seed=3) == code_task_examples("bracket_counting", 5, seed=3)
    model = load_model("tiny-gemma3")  # character tokenizer: quotes are single tokens, "]]" is not
    data = code_contrast_set(model, "single_double_quote", 16)
    assert len(data) == 16 and set(data.desired) == {ord("'"), ord('"')}
    with pytest.raises(ValueError, match="No bracket_counting example is usable"):
        code_contrast_set(model, "bracket_counting", 8)
    with pytest.raises(KeyError, match="Unknown code task"):
        code_task_examples("no_such_task", 3)


@pytest.mark.slow
def test_code_tasks_on_gemma_tokenizer(gemma):
    for task in CODE_TASKS:
        data = code_contrast_set(gemma, task, 24, seed=0)
        assert len(data) >= 12, task  # most examples survive the in-context tokenisation check
