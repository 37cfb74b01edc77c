"""Shared fixtures: tiny seeded models for the fast tier, the real offline Gemma-3-270M for `slow`."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from transformer_lens import HookedTransformerConfig

from cca_tl.contrast import ContrastSet
from cca_tl.models import load_model
from cca_tl.testing import TINY_ARCHITECTURES, tiny_tl_model

TINY_HF = TINY_ARCHITECTURES  # one tiny random model per supported HF family


def tl_config(**overrides) -> HookedTransformerConfig:
    """A tiny pure-TransformerLens config; defaults: GQA (4 heads, 2 kv heads), gated MLP, RMSNorm."""
    base = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, n_key_value_heads=2, d_mlp=48, d_vocab=64,
                n_ctx=32, act_fn="silu", gated_mlp=True, normalization_type="RMS",
                positional_embedding_type="rotary", model_name="tiny-tl")
    base.update(overrides)
    if base.get("n_key_value_heads") is None:
        base.pop("n_key_value_heads")
    return HookedTransformerConfig(**base)



def contrast(n=12, seed=0, vocab=256, lengths=(5, 11), desired=17, undesired=42) -> ContrastSet:
    g = torch.Generator().manual_seed(seed)
    prefixes = [torch.randint(0, vocab, (int(torch.randint(*lengths, (1,), generator=g)),), generator=g).tolist()
                for _ in range(n)]
    return ContrastSet(prefixes, [desired] * n, [undesired] * n)


def records_behind_a_prompt(*, seed: int, prompt: int, longest_tail: int, n: int) -> list[list[int]]:
    """``n`` random token sequences: one shared ``prompt``-token start, then 1..``longest_tail`` own tokens."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randint(4, 256, (prompt,), generator=g).tolist()
    return [common + torch.randint(4, 256, (int(torch.randint(1, longest_tail + 1, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.fixture
def model():
    """The default tiny model (grouped-query attention, gated MLP); a test module may define its own."""
    from cca_tl import load_model

    return load_model("tiny-llama")


@pytest.fixture
def batch():
    """Four right-padded contrast records of the default tiny model's vocabulary."""
    from cca_tl.contrast import Batch

    return Batch.collate(contrast(n=4))


@pytest.fixture(params=TINY_HF)
def tiny_hf_name(request) -> str:
    return request.param


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tl_gqa_gated():
    return tiny_tl_model(tl_config(), seed=0)


@pytest.fixture
def tl_mha_plain():
    return tiny_tl_model(tl_config(n_key_value_heads=None, gated_mlp=False, act_fn="gelu",
                                   normalization_type="LN", positional_embedding_type="standard",
                                   model_name="tiny-tl-plain"), seed=0)


@pytest.fixture(scope="session")
def gemma():
    """The real offline Gemma-3-270M (first load parses the GGUF, ~1 min; later loads use the cache)."""
    return load_model("gemma-3-270m")
