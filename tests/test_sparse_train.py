"""Weight-sparse circuits, part 2: weight-sparse training, the dense twin, circuit edges and bridges."""

from __future__ import annotations

import math

import pytest
import torch

from cca_tl import ContrastSet
from cca_tl.components import Kind
from cca_tl.sparse import NodeMask, node_means
from cca_tl.sparse.bridges import Bridges, bridge_intervention, bridge_locations, bridge_losses, train_bridges
from cca_tl.sparse.prune import gate_hooks, circuit_edges
from cca_tl.sparse.train import (SparseTrainConfig, TrainedModel, abstopk, build_model, kept_count, l0_fraction,
                                 normalise_grad_rms_, python_tokenizer, sharkfin_lr, sparsified_matrices, sparsify_,
                                 stdlib_python_files, token_windows, train_sparse)

TINY = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=32, steps=12, batch_size=4,
            checkpoint_every=4, weight_l0=1 / 8, anneal_start=0.0, anneal_end=0.5, lr=1e-2)


@pytest.fixture(scope="module")
def tokenizer():
    return python_tokenizer()


@pytest.fixture(scope="module")
def windows(tokenizer):
    """Real standard-library code: the first few training files, in 32-token windows."""
    text = "\n".join(f.read_text() for f in stdlib_python_files("train")[:3])
    stream = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    return token_windows(stream, 32, tokenizer.bos_token_id)


def test_stdlib_split_is_disjoint_and_tokenizer_has_specials(tokenizer):
    train, held = stdlib_python_files("train"), stdlib_python_files("held_out")
    assert train and held and not set(train) & set(held)
    assert len(tokenizer) == 2048 and tokenizer.convert_tokens_to_ids(["<pad>", "<bos>", "<eos>"]) == [0, 1, 2]
    ids = tokenizer("x = 'a'")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.decode(ids[1:]) == "x = 'a'"
    with pytest.raises(ValueError, match="split"):
        stdlib_python_files("validation")


def test_annealing_schedule_values():
    assert l0_fraction(0, 100, 1 / 64) == 1.0
    assert l0_fraction(1, 100, 1 / 64) == 1.0  # annealing starts at 1 % of training
    assert l0_fraction(50, 100, 1 / 64) == pytest.approx(1 / 64)  # and ends at 50 %
    assert l0_fraction(99, 100, 1 / 64) == pytest.approx(1 / 64)
    mid = l0_fraction(25.5, 100, 1 / 64)
    assert mid == pytest.approx((1 + 1 / 64) / 2)
    steps = [l0_fraction(s, 100, 0.1) for s in range(100)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))  # never rises


def test_sharkfin_learning_rate():
    lr = [sharkfin_lr(s, 1000, 1.0, l0_fraction(s, 1000, 1 / 16)) for s in range(1000)]
    assert lr[0] == pytest.approx(0.1)  # warm-up over 10 steps
    assert lr[9] == pytest.approx(1.0 * (1 - 9 / 1000))
    peak = max(range(1000), key=lr.__getitem__)
    assert 490 <= peak <= 510 and lr[peak] == pytest.approx(4 * (1 - peak / 1000))  # 1/sqrt(1/16) = 4 at full anneal
    assert lr[-1] < 0.01  # decays to ~0


def test_grad_rms_normalisation():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(5, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 0.0, 4.0]), torch.full((5,), 2.0)
    before = normalise_grad_rms_([a, b])
    assert before == pytest.approx(math.sqrt((9 + 16 + 20) / 8))
    rms = torch.cat([a.grad, b.grad]).pow(2).mean().sqrt()
    assert float(rms) == pytest.approx(1.0)


def test_abstopk_keeps_the_largest_magnitudes():
    x = torch.tensor([[0.1, -3.0, 2.0, -0.5], [1.0, 1.5, -2.5, 0.2]])
    torch.testing.assert_close(abstopk(x, 2), torch.tensor([[0.0, -3.0, 2.0, 0.0], [0.0, 1.5, -2.5, 0.0]]))
    assert abstopk(x, 4) is x


def test_sparsify_keeps_exactly_k_per_matrix(tokenizer):
    model = build_model(SparseTrainConfig(**TINY), tokenizer)
    kept = sparsify_(model, 0.1)
    for name, p in sparsified_matrices(model).items():
        assert int((p != 0).sum()) == kept[name] == kept_count(p.numel(), 0.1), name
    assert {"embed.W_E", "unembed.W_U", "blocks.0.attn.W_Q", "blocks.1.mlp.W_out"} <= set(kept)
    assert not any(".b_" in name for name in kept)  # biases stay dense


def test_training_keeps_exactly_k_per_matrix_after_every_step(tokenizer, windows):
    cfg = SparseTrainConfig(**TINY)
    seen = []

    def check(step, model, record):
        for name, p in sparsified_matrices(model).items():
            assert int((p != 0).sum()) == kept_count(p.numel(), record["l0"]), (step, name)
        seen.append(record["l0"])

    result = train_sparse(cfg, tokenizer=tokenizer, train_windows=windows, eval_windows=windows[:4],
                          progress=False, on_step=check)
    assert seen[0] == 1.0 and seen[-1] == pytest.approx(1 / 8) and len(seen) == cfg.steps
    assert result.nonzero_fraction()["fraction"].max() <= 1 / 8 + 0.01
    assert math.isfinite(result.held_out_loss)


def test_activation_sparsity_hooks(tokenizer, windows):
    model = build_model(SparseTrainConfig(**TINY), tokenizer)
    _, cache = model.run_with_cache(windows[:2])
    assert int((cache["blocks.0.mlp.hook_post"] != 0).sum(-1).max()) == 16  # 1/4 of 64 neurons
    assert int((cache["blocks.1.attn.hook_q"].flatten(-2) != 0).sum(-1).max()) == 8  # 1/4 of 4x8 channels
    dense = build_model(SparseTrainConfig(**TINY).dense(), tokenizer)
    _, cache = dense.run_with_cache(windows[:2])
    assert int((cache["blocks.0.mlp.hook_post"] != 0).sum(-1).min()) > 16


def test_dense_twin_stays_dense_and_shares_the_architecture(tokenizer, windows):
    cfg = SparseTrainConfig(**TINY)
    twin = cfg.dense()
    assert twin.weight_l0 is None and twin.activation_keep is None and twin.d_model == cfg.d_model
    result = train_sparse(twin, tokenizer=tokenizer, train_windows=windows, eval_windows=windows[:4], progress=False)
    assert result.nonzero_fraction()["fraction"].min() > 0.99


def test_training_resumes_from_its_checkpoint(tokenizer, windows, tmp_path):
    cfg = SparseTrainConfig(**TINY)
    full = train_sparse(cfg, tmp_path / "a", tokenizer=tokenizer, train_windows=windows, eval_windows=windows[:4],
                        progress=False)

    class Killed(Exception):
        pass

    def kill(step, model, record):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        train_sparse(cfg, tmp_path / "b", tokenizer=tokenizer, train_windows=windows, eval_windows=windows[:4],
                     progress=False, on_step=kill)
    assert (tmp_path / "b" / "checkpoint.pt").exists() and not (tmp_path / "b" / "model.pt").exists()
    resumed = train_sparse(cfg, tmp_path / "b", tokenizer=tokenizer, train_windows=windows, eval_windows=windows[:4],
                           progress=False)
    assert list(resumed.history.step) == list(range(cfg.steps))
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    loaded = TrainedModel.load(tmp_path / "b")
    assert loaded.config == cfg and loaded.held_out_loss == pytest.approx(resumed.held_out_loss)
    with pytest.raises(ValueError, match="different config"):
        train_sparse(SparseTrainConfig(**{**TINY, "lr": 5e-3}), tmp_path / "b", tokenizer=tokenizer,
                     train_windows=windows, progress=False)


def test_nan_loss_stops_training_and_keeps_the_checkpoint(tokenizer, windows, tmp_path):
    def poison(step, model, record):
        if step == 5:
            with torch.no_grad():
                model.W_U.fill_(float("nan"))

    with pytest.raises(FloatingPointError, match="step 6"):
        train_sparse(SparseTrainConfig(**TINY), tmp_path, tokenizer=tokenizer, train_windows=windows,
                     progress=False, on_step=poison)
    assert (tmp_path / "checkpoint.pt").exists()


def test_circuit_edges_dense_counts_every_pair_and_sparsity_removes_them(tokenizer):
    cfg = SparseTrainConfig(**TINY)
    model = build_model(cfg.dense(), tokenizer)
    keep = NodeMask.full(model)
    keep = NodeMask(keep.identity, {k: torch.zeros_like(m) for k, m in keep.keep.items()})
    keep.keep[Kind.V][0, 1, 2] = True     # writes in layer 0
    keep.keep[Kind.NEURON][0, 5] = True   # reads after it in layer 0, writes
    keep.keep[Kind.Q][1, 0, 3] = True     # reads in layer 1
    keep.keep[Kind.K][1, 0, 3] = True     # pairs with the query channel
    edges = circuit_edges(model, keep, logit_tokens=[10, 11])
    # v -> neuron, v -> q, v -> k, v -> 2 logits; neuron -> q, k, 2 logits; q·k
    assert edges == dict(residual_edges=5 + 4, attention_edges=1, edges=10)
    sparse = build_model(cfg, tokenizer)
    sparsify_(sparse, 1 / 64)
    assert circuit_edges(sparse, keep, [10, 11])["residual_edges"] < 9


def test_identity_bridges_give_zero_loss(tokenizer, windows):
    model = build_model(SparseTrainConfig(**TINY).dense(), tokenizer)
    bridges = Bridges.identity(model.cfg.d_model, bridge_locations(model.cfg.n_layers))
    losses = bridge_losses(model, model, bridges, windows[:2])
    for name, value in losses.items():
        assert abs(float(value.detach())) < 1e-6, name


def test_bridge_intervention_with_identity_bridges_matches_the_edited_model(tokenizer):
    model = build_model(SparseTrainConfig(**TINY).dense(), tokenizer)
    bridges = Bridges.identity(model.cfg.d_model, bridge_locations(model.cfg.n_layers))
    data = ContrastSet([tokenizer("x = 'a")["input_ids"], tokenizer('y = "b')["input_ids"]],
                       [tokenizer.convert_tokens_to_ids("'")] * 2, [tokenizer.convert_tokens_to_ids('"')] * 2)
    means = node_means(model, [torch.tensor(tokenizer("def f(x):\n    return x\n")["input_ids"])])
    gates = {k: torch.ones(m.shape) for k, m in NodeMask.full(model).keep.items()}
    gates[Kind.NEURON][0, :32] = 0.0  # mean-ablate half the layer-0 neurons
    df = bridge_intervention(model, model, bridges, data, "blocks.1.hook_resid_pre", gate_hooks(model, gates, means))
    torch.testing.assert_close(torch.tensor(df.dense_bridged.values), torch.tensor(df.sparse_intervened.values),
                               rtol=1e-4, atol=1e-4)
    assert (df.dense_clean - df.dense_bridged).abs().max() > 1e-4  # the intervention did something
    with pytest.raises(KeyError, match="not a bridge location"):
        bridge_intervention(model, model, bridges, data, "blocks.0.hook_mlp_out", [])


def test_bridge_training_lowers_the_loss(tokenizer, windows):
    dense = build_model(SparseTrainConfig(**TINY).dense(), tokenizer)
    sparse = build_model(SparseTrainConfig(**{**TINY, "seed": 1}), tokenizer)
    before = {p: v.clone() for p, v in sparse.state_dict().items()}
    trained = train_bridges(dense, sparse, windows, steps=6, batch_size=2, progress=False)
    h = trained.history
    assert h.total.iloc[-3:].mean() < h.total.iloc[:3].mean()
    assert all(torch.equal(before[p], v) for p, v in sparse.state_dict().items())  # models untouched
    assert all(p.requires_grad for p in sparse.parameters())
    with pytest.raises(ValueError, match="same number of layers"):
        Bridges.between(dense, build_model(SparseTrainConfig(**{**TINY, "n_layers": 1}), tokenizer))
