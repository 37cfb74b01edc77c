"""The contrast module: two-logit readout, bad contrast data, the prefix cache and the prompt run once (exact)."""

from __future__ import annotations

import pytest
import torch

from cca_tl import Kind, load_model
from cca_tl.contrast import Batch, ContrastSet, full_logit_diff, two_logit_diff
from cca_tl.dcm import DCMGains, train_dcm
from tests.helpers import contrast, records_behind_a_prompt


def assert_prefix_cache_is_exact(model, data, kv, *, seed: int) -> None:
    """Logit differences and DCM-gain gradients over ``kv`` equal those of the full right-padded batch."""
    g = torch.Generator().manual_seed(seed)
    dcm = DCMGains(model, [*Kind], init=0.0)
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


def test_two_logit_diff_equals_full_logits_with_padding_and_softcap():
    model = load_model("tiny-gemma3")
    model.cfg.output_logits_soft_cap = 3.0  # exercise the soft-cap path too
    data = contrast(n=6, lengths=(3, 14))
    batch = Batch.collate(data)
    assert (batch.tokens == 0).any(), "the batch must contain padding"
    dcm = DCMGains(model, init=0.3)
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
