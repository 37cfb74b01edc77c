"""The TransformerLens fast paths compute TransformerLens' own functions, and undo their patches on exit."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.components.abstract_attention import AbstractAttention
from transformer_lens.components.grouped_query_attention import GroupedQueryAttention

from cca_tl.fast_paths import grouped_attention_without_copies, tl_fast_paths
from cca_tl.models import load_model


def test_grouped_attention_without_copies_is_tl_attention():
    model = load_model("tiny-gemma3", seed=1)  # 4 query heads share 1 key/value head
    ids = torch.randint(4, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    _, reference = model.run_with_cache(ids, names_filter=lambda n: n.endswith(("hook_z", "hook_pattern")))
    with grouped_attention_without_copies():
        _, ours = model.run_with_cache(ids, names_filter=lambda n: n.endswith(("hook_z", "hook_pattern")))
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rotated_cache", [False, True])
def test_tl_fast_paths_patches_inside_and_restores_after_an_error(rotated_cache):
    tl_scores, tl_rotary = GroupedQueryAttention.calculate_attention_scores, AbstractAttention.apply_rotary
    with pytest.raises(RuntimeError, match="inside"):
        with tl_fast_paths(rotated_cache=rotated_cache):
            assert GroupedQueryAttention.calculate_attention_scores is not tl_scores
            assert (AbstractAttention.apply_rotary is not tl_rotary) == rotated_cache
            raise RuntimeError("inside")
    assert GroupedQueryAttention.calculate_attention_scores is tl_scores
    assert AbstractAttention.apply_rotary is tl_rotary
