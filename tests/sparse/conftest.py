"""Fixtures of the weight-sparse tests: the stdlib tokenizer, real code windows (the tiny training config: tests.helpers.TINY_SPARSE)."""

from __future__ import annotations

import pytest
import torch

from cca_tl.sparse.train import python_tokenizer, stdlib_python_files, token_windows


@pytest.fixture(scope="module")
def tokenizer():
    return python_tokenizer()


@pytest.fixture(scope="module")
def windows(tokenizer):
    """Real standard-library code: the first few training files, in 32-token windows."""
    text = "\n".join(f.read_text() for f in stdlib_python_files("train")[:3])
    stream = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    return token_windows(stream, 32, tokenizer.bos_token_id)
