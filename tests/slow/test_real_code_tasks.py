"""Weight-sparse circuits on the real model: the code contrast tasks survive Gemma-3-270M's tokenizer."""

from __future__ import annotations

import pytest

from cca_tl.sparse import CODE_TASKS, code_contrast_set


@pytest.mark.slow
def test_code_tasks_on_gemma_tokenizer(gemma):
    for task in CODE_TASKS:
        data = code_contrast_set(gemma, task, 24, seed=0)
        assert len(data) >= 12, task  # most examples survive the in-context tokenisation check
