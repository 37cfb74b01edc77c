"""Fixtures of the weight-sparse tests: the stdlib tokenizer, real code windows, a tiny training config."""

from __future__ import annotations

import pytest
import torch

from cca_tl.sparse.train import python_tokenizer, stdlib_python_files, token_windows

# A training config small enough for the fast tier (12 steps of a 2-layer model).
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
