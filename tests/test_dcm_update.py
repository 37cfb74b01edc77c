"""DCM masks and targeted updates: exactness invariants, padding, errors, and a learnable planted target."""

from __future__ import annotations

import pytest
import torch

from cca_tl import Component, ComponentMask, ComponentRegistry, Kind, MaskMismatchError, load_model
from cca_tl.contrast import Batch, ContrastSet, full_logit_diff, two_logit_diff
from cca_tl.dcm import DCMMask, train_dcm
from cca_tl.errors import NonFiniteLossError
from cca_tl.update import element_masks, targeted_update


def records_behind_a_prompt(*, seed: int, prompt: int, longest_tail: int, n: int) -> list[list[int]]:
    """``n`` random token sequences: one shared ``prompt``-token start, then 1..``longest_tail`` own tokens."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randint(4, 256, (prompt,), generator=g).tolist()
    return [common + torch.randint(4, 256, (int(torch.randint(1, longest_tail + 1, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def contrast(n=12, seed=0, vocab=256, lengths=(5, 11), desired=17, undesired=42) -> ContrastSet:
    g = torch.Generator().manual_seed(seed)
    prefixes = [torch.randint(0, vocab, (int(torch.randint(*lengths, (1,), generator=g)),), generator=g).tolist()
                for _ in range(n)]
    return ContrastSet(prefixes, [desired] * n, [undesired] * n)


@pytest.fixture
def model():
    return load_model("tiny-llama")


@pytest.fixture
def batch() -> Batch:
    return Batch.collate(contrast(n=4))


def test_zero_mask_is_bit_identical(model, batch):
    plain = model(batch.tokens)
    for positions in ("last", "all"):
        dcm = DCMMask(model, [*Kind], init=0.0, positions=positions)
        hooked = model.run_with_hooks(batch.tokens, fwd_hooks=dcm.hooks(batch.last_pos))
        assert torch.equal(hooked, plain)


def test_authors_form_half_is_bit_identical(model, batch):
    dcm = DCMMask(model, [*Kind], form="authors", init=0.5)
    assert torch.equal(model.run_with_hooks(batch.tokens, fwd_hooks=dcm.hooks(batch.last_pos)), model(batch.tokens))


@pytest.mark.parametrize("kind,layer,unit", [("q", 1, 2), ("k", 0, 3), ("v", 1, 0), ("z", 0, 1), ("neuron", 1, 9)])
def test_gain_one_doubles_exactly_that_component(model, batch, kind, layer, unit):
    dcm = DCMMask(model, [*Kind], init=0.0)
    with torch.no_grad():
        dcm.gains[kind][layer, unit] = 1.0
    hook_name = ComponentRegistry.from_model(model).hook_name(kind, layer)
    seen = {}
    record = lambda act, hook: seen.__setitem__("after", act.detach().clone())  # noqa: E731
    model.run_with_hooks(batch.tokens, fwd_hooks=dcm.hooks(batch.last_pos) + [(hook_name, record)])
    # the activation entering the hook, with every earlier layer unmasked (gains are 0 elsewhere)
    _, cache = model.run_with_cache(batch.tokens, names_filter=hook_name)
    before, after = cache[hook_name], seen["after"]
    rows = torch.arange(len(batch))
    expected = before.clone()
    idx = (rows, batch.last_pos, unit)
    expected[idx] = 2 * before[idx]
    assert torch.equal(after, expected)
    assert not torch.equal(after, before)


def test_two_logit_diff_equals_full_logits_with_padding_and_softcap():
    model = load_model("tiny-gemma3")
    model.cfg.output_logits_soft_cap = 3.0  # exercise the soft-cap path too
    data = contrast(n=6, lengths=(3, 14))
    batch = Batch.collate(data)
    assert (batch.tokens == 0).any(), "the batch must contain padding"
    dcm = DCMMask(model, init=0.3)
    hooks = dcm.hooks(batch.last_pos)
    torch.testing.assert_close(two_logit_diff(model, batch, hooks), full_logit_diff(model, batch, hooks),
                               atol=1e-5, rtol=0)
    alone = torch.cat([two_logit_diff(model, Batch.collate(data.subset([i]))) for i in range(len(data))])
    torch.testing.assert_close(two_logit_diff(model, batch), alone, atol=1e-5, rtol=0)


def test_bad_contrast_data_is_refused(model):
    with pytest.raises(ValueError, match="not a single token id"):
        ContrastSet([[1, 2]], [[3, 4]], [5])
    with pytest.raises(ValueError, match="not a single token id"):
        ContrastSet([[1, 2]], ["yes"], [5])
    with pytest.raises(ValueError, match="empty"):
        train_dcm(model, ContrastSet([], [], []), progress=False)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        train_dcm(model, ContrastSet([[1, 2]], [10_000], [5]), progress=False)
    with pytest.raises(ValueError, match="context"):
        ContrastSet([[1] * 300], [3], [5]).validate(model)
    with pytest.raises(ValueError, match="differ in length"):
        ContrastSet([[1], [2]], [3], [5])


def test_non_finite_loss_stops_and_keeps_the_last_good_state(model):
    with pytest.raises(NonFiniteLossError, match="step 1") as err:
        train_dcm(model, contrast(n=4), lam=float("nan"), progress=False)
    assert err.value.step == 1 and err.value.last_good.mask.count() == err.value.last_good.mask.size()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.blocks[1].mlp.W_out[0, 0] = float("nan")  # poison: every loss is NaN from step 1
    before["blocks.1.mlp.W_out"][0, 0] = float("nan")
    mask = ComponentMask.from_components(model, [Component("neuron", 0, 3)])
    with pytest.raises(NonFiniteLossError, match="step 1"):
        targeted_update(model, contrast(n=4), mask, progress=False)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) or torch.isnan(p).any(), n


def test_masked_update_touches_only_the_selected_slices(model):
    mask = ComponentMask.from_components(model, [Component("q", 1, 0), Component("k", 0, 2),
                                                 Component("neuron", 1, 7), Component("neuron", 0, 100)])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = targeted_update(model, contrast(), mask, lr=0.1, steps=4, eval_steps=[], progress=False)
    emasks = element_masks(model, mask)
    for name, p in model.named_parameters():
        if name in emasks:
            m = emasks[name]
            assert torch.equal(p[~m], before[name][~m]), f"unselected entries of {name} changed"
        else:
            assert torch.equal(p, before[name]), f"{name} changed"
    reg = ComponentRegistry.from_model(model)
    for comp in mask.components():
        for s in reg.slices(comp):
            assert not torch.equal(s.view(model), before[s.param].select(s.axis, s.index)), f"{comp} unchanged"
    assert result.n_params == mask.n_params(model)


def test_random_variant_matches_counts_per_kind_and_layer(model):
    mask = ComponentMask.from_components(model, [Component("q", 1, 0), Component("q", 1, 3), Component("v", 0, 1),
                                                 Component("neuron", 0, 4), Component("neuron", 1, 5)])
    rand = mask.random_like(seed=3)
    assert rand.counts_by_layer().equals(mask.counts_by_layer())
    assert rand == mask.random_like(seed=3)
    assert rand != mask.random_like(seed=4)
    result = targeted_update(model, contrast(n=4), mask, variant="random", seed=3, steps=2, eval_steps=[],
                             progress=False)
    assert result.mask == rand


def test_update_refuses_a_mask_from_another_model(model):
    other = load_model("tiny-qwen2")
    with pytest.raises(MaskMismatchError):
        targeted_update(model, contrast(n=4), ComponentMask.empty(other), progress=False)


def test_dcm_is_deterministic_for_a_seed(model):
    data = contrast(n=10)
    a = train_dcm(model, data, lam=1e-2, max_epochs=3, seed=5, progress=False)
    b = train_dcm(model, data, lam=1e-2, max_epochs=3, seed=5, progress=False)
    assert a.mask == b.mask
    assert a.history.equals(b.history)
    assert all(torch.equal(a.gains[k], b.gains[k]) for k in a.gains)


def test_planted_target_dcm_then_update_raise_the_logit_difference():
    """A neuron that is always on and writes along W_U[:, d] − W_U[:, u] (no final norm to absorb it)."""
    from cca_tl.models import tiny_tl_model
    from tests.conftest import tl_config

    model = tiny_tl_model(tl_config(normalization_type=None, gated_mlp=False, act_fn="gelu"), seed=1)
    d, u, planted = 17, 42, Component("neuron", 1, 7)
    with torch.no_grad():
        direction = model.W_U[:, d] - model.W_U[:, u]
        model.blocks[1].mlp.b_in[planted.index] = 3.0
        model.blocks[1].mlp.W_out[planted.index] = 0.5 * direction / direction.norm() ** 2
    train, val = contrast(n=16, seed=0, vocab=64, desired=d, undesired=u), contrast(n=8, seed=1, vocab=64, desired=d, undesired=u)
    vb = Batch.collate(val)
    base = two_logit_diff(model, vb).mean().item()
    res = train_dcm(model, train, lam=2e-3, lr=5e-2, max_epochs=30, seed=0, progress=False)
    assert planted in res.mask
    assert 0 < res.mask.count() < res.mask.size()
    binary = DCMMask.from_values(model, {k: m.float() for k, m in res.mask.masks.items()})
    masked = two_logit_diff(model, vb, binary.hooks(vb.last_pos)).mean().item()
    assert masked > base + 0.5, (base, masked)
    upd = targeted_update(model, train, res.mask, lr=0.01, steps=10, val_data=val, progress=False)
    after = two_logit_diff(model, vb).mean().item()
    assert upd.best_step > 0 and after > base + 0.5, (base, after)
    assert upd.fraction_components == res.mask.fraction_components() < 1


@pytest.mark.parametrize("arch", ["tiny-gemma3", "tiny-qwen2", "tiny-gpt2", "tiny-pythia", "tiny-gemma2",
                                  "tiny-olmo2", "tiny-llama", "tiny-qwen3"])
def test_prefix_cache_gives_the_same_logit_diff_and_gradients(arch):
    """Over every family's positional scheme (rotary in full or in part, learned absolute positions)."""
    from cca_tl.contrast import PrefixKV

    model = load_model(arch)
    data = contrast(n=5, lengths=(1, 13))  # includes a one-token prefix (empty cache row)
    data.prefix_ids[0] = data.prefix_ids[0][:1]
    kv = PrefixKV(model, data, batch_size=2)
    assert_prefix_cache_is_exact(model, data, kv, seed=0)
    assert kv.nbytes == PrefixKV.estimate_bytes(model, data)


def assert_prefix_cache_is_exact(model, data, kv, *, seed: int) -> None:
    """Logit differences and DCM-gain gradients over ``kv`` equal those of the full right-padded batch."""
    g = torch.Generator().manual_seed(seed)
    dcm = DCMMask(model, [*Kind], init=0.0)
    with torch.no_grad():
        for p in dcm.gains.values():
            p.copy_(torch.rand(p.shape, generator=g))
    full = Batch.collate(data)
    ref = two_logit_diff(model, full, dcm.hooks(full.last_pos))
    ref_grads = torch.autograd.grad(ref.sum(), list(dcm.gains.values()))
    cached = kv.batch(data, range(len(data)))
    got = two_logit_diff(model, cached, dcm.hooks(cached.last_pos))
    got_grads = torch.autograd.grad(got.sum(), list(dcm.gains.values()))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    again = two_logit_diff(model, cached, dcm.hooks(cached.last_pos))  # a frozen batch can be reused
    assert torch.equal(again, got)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_dcm_with_and_without_prefix_cache_agree(model):
    data = contrast(n=10)
    a = train_dcm(model, data, lam=1e-2, max_epochs=3, seed=5, progress=False, prefix_cache=True)
    b = train_dcm(model, data, lam=1e-2, max_epochs=3, seed=5, progress=False, prefix_cache=False)
    assert a.mask == b.mask
    for k in a.gains:
        torch.testing.assert_close(a.gains[k], b.gains[k], atol=1e-5, rtol=0)


def test_lambda_sweep_shrinks_the_mask_as_lambda_grows(model):
    from cca_tl.dcm import lambda_sweep

    results, table = lambda_sweep(model, contrast(n=8), lams=(1e-1, 1e-4), lr=5e-2, max_epochs=20, progress=False)
    assert list(table.index) == [1e-1, 1e-4]
    assert table.loc[1e-1, "selected"] < table.loc[1e-4, "selected"]
    assert {"n_q", "n_k", "n_v", "n_neuron", "pct_components", "final_logit_diff"} <= set(table.columns)


@pytest.mark.parametrize("arch", ["tiny-gemma3", "tiny-qwen2"])
def test_shared_prefix_batch_is_exact(arch):
    """Running the common prefix once (batch 1) and sharing its cache gives the same logit differences
    and gradients as the full right-padded batch (tiny Gemma-3's sliding window is shorter than it)."""
    from cca_tl.contrast import Batch, shared_prefix_batch

    model = load_model(arch)
    prefixes = records_behind_a_prompt(seed=0, prompt=20, longest_tail=8, n=6)
    data = ContrastSet(prefixes, [17] * 6, [42] * 6)

    def diff_and_grads(batch):
        model.zero_grad()
        diff = two_logit_diff(model, batch)
        diff.sum().backward()
        return diff.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = diff_and_grads(Batch.collate(data))
    shared_batch = shared_prefix_batch(model, data, range(6))
    assert shared_batch.tokens.shape[1] < Batch.collate(data).tokens.shape[1] - 15  # really shared
    shared, shared_grads = diff_and_grads(shared_batch)
    model.zero_grad()
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=0)
    assert shared_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(shared_grads[name], full_grads[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["tiny-gemma3", "tiny-qwen2"])
def test_update_with_the_prefix_run_once_per_step_matches_plain_batches(arch):
    """The update runs the prefix common to all records once per step and sends the summed key/value
    gradients of its mini-batches back through it: the same step as plain right-padded mini-batches."""
    prefixes = records_behind_a_prompt(seed=1, prompt=20, longest_tail=8, n=7)
    data = ContrastSet(prefixes, [17] * 7, [42] * 7)
    states = []
    for shared in (True, False):
        model = load_model(arch)
        result = targeted_update(model, data, None, variant="all", lr=1e-2, steps=2, batch_size=3, eval_steps=[],
                                 shared_prefix=shared, progress=False)
        states.append(({n: p.detach().clone() for n, p in model.named_parameters()}, result.history))
    (edited_shared, hist_shared), (edited_plain, hist_plain) = states
    torch.testing.assert_close(hist_shared["train_logit_diff"].to_numpy(), hist_plain["train_logit_diff"].to_numpy(),
                               atol=1e-4, rtol=0, equal_nan=True)
    for name in edited_plain:
        torch.testing.assert_close(edited_shared[name], edited_plain[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["tiny-gemma3", "tiny-qwen2"])
def test_logit_diffs_with_the_prompt_run_once_match_plain_batches(arch):
    """Held-out scoring runs the prompt common to all records once; every record's logit difference is the
    one a plain right-padded batch gives (tiny-gemma3: an 8-token sliding window, shorter than the prompt)."""
    from cca_tl.contrast import record_logit_diffs

    prefixes = records_behind_a_prompt(seed=2, prompt=20, longest_tail=8, n=7)
    data = ContrastSet(prefixes, list(range(10, 17)), list(range(40, 47)))
    model = load_model(arch)
    once = record_logit_diffs(model, data, batch_size=3)
    plain = record_logit_diffs(model, data, batch_size=3, shared_prefix=False)
    assert len(once) == 7 and once.abs().min() > 0
    torch.testing.assert_close(once, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["tiny-gemma3", "tiny-qwen2"])
def test_prefix_cache_stores_a_shared_prompt_once_and_stays_exact(arch):
    from cca_tl.contrast import PrefixKV

    model = load_model(arch)
    prefixes = records_behind_a_prompt(seed=3, prompt=12, longest_tail=6, n=5)
    data = ContrastSet(prefixes, [17] * 5, [42] * 5)
    kv = PrefixKV(model, data, batch_size=2)
    if arch == "tiny-gemma3":  # its 8-token sliding window is shorter than the prompt: stored per example
        assert kv.shared == 0 and kv.nbytes == PrefixKV.estimate_bytes(model, data)
    else:
        assert kv.shared == 12 and kv.nbytes < PrefixKV.estimate_bytes(model, data) / 2  # stored once
    assert_prefix_cache_is_exact(model, data, kv, seed=3)
