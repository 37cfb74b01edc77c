"""Evaluation: retention KL, the localization logit difference, text logits (tiny models)."""

from __future__ import annotations

import pytest
import torch

from cca_tl import load_model


def test_retention_kl_is_zero_for_the_same_model_and_grows_with_an_edit():
    from cca_tl.evaluate import retention_kl

    model = load_model("tiny-qwen2")
    edited = load_model("tiny-qwen2")
    chunks = [torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    assert retention_kl(model, edited, chunks) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        edited.unembed.W_U.mul_(20.0)  # a random tiny model is near-uniform: sharpen it
    assert retention_kl(model, edited, chunks) > 1e-4
    with pytest.raises(ValueError, match="No text"):
        retention_kl(model, edited, [])


def test_localization_logit_diff_matches_the_dcm_readout():
    from datasets import Dataset

    from cca_tl.contrast import Batch, ContrastSet, two_logit_diff
    from cca_tl.evaluate import localization_logit_diff

    model = load_model("tiny-gemma3")
    rows = [dict(prefix_ids=[1, 2, 3], desired_id=5, undesired_id=6), dict(prefix_ids=[4, 5], desired_id=7, undesired_id=8)]
    expected = two_logit_diff(model, Batch.collate(ContrastSet.from_dataset(rows))).mean().item()
    assert localization_logit_diff(model, Dataset.from_list(rows)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("arch", ["tiny-gemma2", "tiny-gpt2", "tiny-qwen2"])
def test_text_logits_are_the_models_logits(arch):
    """Retention's faster unembedding: the same logits as ``model(tokens)`` (Gemma-2's final soft cap,
    GPT-2's LayerNorm and biases included)."""
    from cca_tl.evaluate import text_logits
    from cca_tl.models import load_model

    model = load_model(arch, seed=5)
    with torch.no_grad():
        model.b_U.normal_()  # a real bias must be added too
    tokens = model.to_tokens("The quick brown fox jumps over the lazy dog.")
    torch.testing.assert_close(text_logits(model, tokens), model(tokens).float(), rtol=1e-5, atol=1e-5)
