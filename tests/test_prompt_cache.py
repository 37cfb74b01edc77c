"""The prompt cache's sharing rule, and rows over a cached prompt equal full rows (with gradients)."""

from __future__ import annotations

import torch

from cca_tl.models import load_model
from cca_tl.prompt_cache import (backward_through_prompt, cache_leaves, cache_over_prompt, common_prefix_length,
                                 prompt_keys_values, shared_length)
from tests.helpers import records_behind_a_prompt


def test_shared_length_is_the_common_prefix_when_it_is_worth_a_pass():
    rows = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12]]
    assert common_prefix_length(rows) == 9
    assert shared_length(rows) == 9
    assert shared_length(rows, min_shared=10) == 0  # too short to pay for a separate pass
    assert shared_length(rows[:1]) == 0 and shared_length(rows[:1], min_rows=1) == 9  # each row keeps a token
    assert shared_length([]) == 0 and shared_length([[1], [1]], min_shared=1) == 0


def test_rows_over_the_cached_prompt_equal_full_rows_and_their_gradient():
    model = load_model("tiny-llama")
    rows = records_behind_a_prompt(seed=0, prompt=10, longest_tail=1, n=3)  # one own token each
    shared = shared_length(rows)
    full = model(torch.tensor(rows))[:, -1]
    full.sum().backward()
    expected = model.blocks[0].attn.W_Q.grad.clone()
    model.zero_grad(set_to_none=True)

    computed = prompt_keys_values(model, rows[0][:shared])
    leaves = cache_leaves(computed)
    tails = torch.tensor([r[shared:] for r in rows])
    cached = model(tails, past_kv_cache=cache_over_prompt(model, len(rows), leaves))[:, -1]
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    cached.sum().backward()
    backward_through_prompt(computed, leaves)
    torch.testing.assert_close(model.blocks[0].attn.W_Q.grad, expected, atol=1e-5, rtol=1e-4)
