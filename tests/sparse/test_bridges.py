"""Bridges between a dense model and its sparse twin, and circuit edges."""

from __future__ import annotations


import pytest
import torch

from cca_tl import ContrastSet
from cca_tl.components import Kind
from cca_tl.component_mask import ComponentMask
from cca_tl.sparse import gated, text_means
from cca_tl.sparse.bridges import Bridges, bridge_intervention, bridge_locations, bridge_losses, train_bridges
from cca_tl.sparse.prune import NODE_KINDS, circuit_edges
from cca_tl.sparse.train import (SparseTrainConfig, build_model, sparsify_)
from tests.helpers import TINY_SPARSE


def test_circuit_edges_dense_counts_every_pair_and_sparsity_removes_them(tokenizer):
    cfg = SparseTrainConfig(**TINY_SPARSE)
    model = build_model(cfg.dense(), tokenizer)
    keep = ComponentMask.empty(model, NODE_KINDS, "channel")
    keep.masks[Kind.V][0, 1, 2] = True     # writes in layer 0
    keep.masks[Kind.NEURON][0, 5] = True   # reads after it in layer 0, writes
    keep.masks[Kind.Q][1, 0, 3] = True     # reads in layer 1
    keep.masks[Kind.K][1, 0, 3] = True     # pairs with the query channel
    edges = circuit_edges(model, keep, logit_tokens=[10, 11])
    # v -> neuron, v -> q, v -> k, v -> 2 logits; neuron -> q, k, 2 logits; q·k
    assert edges == dict(residual_edges=5 + 4, attention_edges=1, edges=10)
    sparse = build_model(cfg, tokenizer)
    sparsify_(sparse, 1 / 64)
    assert circuit_edges(sparse, keep, [10, 11])["residual_edges"] < 9


def test_identity_bridges_give_zero_loss(tokenizer, windows):
    model = build_model(SparseTrainConfig(**TINY_SPARSE).dense(), tokenizer)
    bridges = Bridges.identity(model.cfg.d_model, bridge_locations(model.cfg.n_layers))
    losses = bridge_losses(model, model, bridges, windows[:2])
    for name, value in losses.items():
        assert abs(float(value.detach())) < 1e-6, name


def test_bridge_intervention_with_identity_bridges_matches_the_edited_model(tokenizer):
    model = build_model(SparseTrainConfig(**TINY_SPARSE).dense(), tokenizer)
    bridges = Bridges.identity(model.cfg.d_model, bridge_locations(model.cfg.n_layers))
    data = ContrastSet([tokenizer("x = 'a")["input_ids"], tokenizer('y = "b')["input_ids"]],
                       [tokenizer.convert_tokens_to_ids("'")] * 2, [tokenizer.convert_tokens_to_ids('"')] * 2)
    means = text_means(model, [torch.tensor(tokenizer("def f(x):\n    return x\n")["input_ids"])])
    gates = {k: torch.ones(m.shape) for k, m in ComponentMask.full(model, NODE_KINDS, "channel").masks.items()}
    gates[Kind.NEURON][0, :32] = 0.0  # mean-ablate half the layer-0 neurons
    df = bridge_intervention(model, model, bridges, data, "blocks.1.hook_resid_pre", gated(model, gates, means))
    torch.testing.assert_close(torch.tensor(df.dense_bridged.values), torch.tensor(df.sparse_intervened.values),
                               rtol=1e-4, atol=1e-4)
    assert (df.dense_clean - df.dense_bridged).abs().max() > 1e-4  # the intervention did something
    with pytest.raises(KeyError, match="not a bridge location"):
        bridge_intervention(model, model, bridges, data, "blocks.0.hook_mlp_out", [])


def test_bridge_training_lowers_the_loss(tokenizer, windows):
    dense = build_model(SparseTrainConfig(**TINY_SPARSE).dense(), tokenizer)
    sparse = build_model(SparseTrainConfig(**{**TINY_SPARSE, "seed": 1}), tokenizer)
    before = {p: v.clone() for p, v in sparse.state_dict().items()}
    trained = train_bridges(dense, sparse, windows, steps=6, batch_size=2, progress=False)
    h = trained.history
    assert h.total.iloc[-3:].mean() < h.total.iloc[:3].mean()
    assert all(torch.equal(before[p], v) for p, v in sparse.state_dict().items())  # models untouched
    assert all(p.requires_grad for p in sparse.parameters())
    with pytest.raises(ValueError, match="same number of layers"):
        Bridges.between(dense, build_model(SparseTrainConfig(**{**TINY_SPARSE, "n_layers": 1}), tokenizer))
