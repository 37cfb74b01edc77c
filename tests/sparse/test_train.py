"""Weight-sparse training: the stdlib data, the L0 schedule, sharkfin LR, AbsTopK, exact k per matrix, resume."""

from __future__ import annotations

import math

import pytest
import torch

from cca_tl.interventions import abstopk
from cca_tl.sparse.train import (SparseTrainConfig, TrainedModel, build_model, kept_count, l0_fraction,
                                 normalise_grad_rms_, sharkfin_lr, sparsified_matrices, sparsify_, stdlib_python_files,
                                 train_sparse)
from tests.helpers import TINY_SPARSE


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
    model = build_model(SparseTrainConfig(**TINY_SPARSE), tokenizer)
    kept = sparsify_(model, 0.1)
    for name, p in sparsified_matrices(model).items():
        assert int((p != 0).sum()) == kept[name] == kept_count(p.numel(), 0.1), name
    assert {"embed.W_E", "unembed.W_U", "blocks.0.attn.W_Q", "blocks.1.mlp.W_out"} <= set(kept)
    assert not any(".b_" in name for name in kept)  # biases stay dense


def test_training_keeps_exactly_k_per_matrix_after_every_step(tokenizer, windows):
    cfg = SparseTrainConfig(**TINY_SPARSE)
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
    model = build_model(SparseTrainConfig(**TINY_SPARSE), tokenizer)
    _, cache = model.run_with_cache(windows[:2])
    assert int((cache["blocks.0.mlp.hook_post"] != 0).sum(-1).max()) == 16  # 1/4 of 64 neurons
    assert int((cache["blocks.1.attn.hook_q"].flatten(-2) != 0).sum(-1).max()) == 8  # 1/4 of 4x8 channels
    dense = build_model(SparseTrainConfig(**TINY_SPARSE).dense(), tokenizer)
    _, cache = dense.run_with_cache(windows[:2])
    assert int((cache["blocks.0.mlp.hook_post"] != 0).sum(-1).min()) > 16


def test_dense_twin_stays_dense_and_shares_the_architecture(tokenizer, windows):
    cfg = SparseTrainConfig(**TINY_SPARSE)
    twin = cfg.dense()
    assert twin.weight_l0 is None and twin.activation_keep is None and twin.d_model == cfg.d_model
    result = train_sparse(twin, tokenizer=tokenizer, train_windows=windows, eval_windows=windows[:4], progress=False)
    assert result.nonzero_fraction()["fraction"].min() > 0.99


def test_training_resumes_from_its_checkpoint(tokenizer, windows, tmp_path):
    cfg = SparseTrainConfig(**TINY_SPARSE)
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
        train_sparse(SparseTrainConfig(**{**TINY_SPARSE, "lr": 5e-3}), tmp_path / "b", tokenizer=tokenizer,
                     train_windows=windows, progress=False)


def test_nan_loss_stops_training_and_keeps_the_checkpoint(tokenizer, windows, tmp_path):
    def poison(step, model, record):
        if step == 5:
            with torch.no_grad():
                model.W_U.fill_(float("nan"))

    with pytest.raises(FloatingPointError, match="step 6"):
        train_sparse(SparseTrainConfig(**TINY_SPARSE), tmp_path, tokenizer=tokenizer, train_windows=windows,
                     progress=False, on_step=poison)
    assert (tmp_path / "checkpoint.pt").exists()


def _sparse_fields():
    import dataclasses
    import typing

    hints = typing.get_type_hints(SparseTrainConfig)
    return [(f.name, f, hints[f.name]) for f in dataclasses.fields(SparseTrainConfig)]


@pytest.mark.parametrize("name, field, annotation", _sparse_fields(), ids=[n for n, _, _ in _sparse_fields()])
def test_the_sparse_config_refuses_a_wrong_type_and_an_out_of_range_value_naming_the_field(name, field, annotation):
    """Every field, walked from the dataclass (a field added later is covered): the weight-sparse system's
    config is validated like the run config (issue 28, item 4)."""
    with pytest.raises(ValueError, match=name):
        SparseTrainConfig(**{name: {"not": 1}})
    bounds = field.metadata
    if not bounds:
        return
    bad = bounds["min"] - 1 if "min" in bounds else bounds["above"] - 1 if "above" in bounds else bounds["max"] + 1
    with pytest.raises(ValueError, match=name):
        SparseTrainConfig(**{name: bad})


def test_the_sparse_config_refuses_an_anneal_that_ends_before_it_starts():
    with pytest.raises(ValueError, match="anneal_end"):
        SparseTrainConfig(anneal_start=0.6, anneal_end=0.5)
