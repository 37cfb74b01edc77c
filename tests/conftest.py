"""Shared fixtures: tiny seeded models for the fast tier, the real offline Gemma-3-270M for `slow`."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from cca_tl.models import load_model
from cca_tl.testing import TINY_ARCHITECTURES, tiny_tl_model
from tests.helpers import contrast, tl_config

TINY_HF = TINY_ARCHITECTURES  # one tiny random model per supported HF family



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
