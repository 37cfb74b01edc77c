"""Weight-sparse circuits: the binary code contrast tasks (generated, tokenised, on the Gemma tokenizer)."""

from __future__ import annotations

import pytest

from cca_tl import load_model
from cca_tl.sparse import (CODE_TASKS, code_contrast_set, code_task_examples)


def test_code_tasks_generate_and_tokenise():
    for task in CODE_TASKS:
        examples = code_task_examples(task, 20, seed=1)
        assert len(examples) == 20 and all(e.target != e.alt for e in examples)
        assert {e.target for e in examples} == {e.alt for e in examples}  # both classes appear
    assert code_task_examples("bracket_counting", 5, seed=3) == code_task_examples("bracket_counting", 5, seed=3)
    model = load_model("tiny-gemma3")  # character tokenizer: quotes are single tokens, "]]" is not
    data = code_contrast_set(model, "single_double_quote", 16)
    assert len(data) == 16 and set(data.desired) == {ord("'"), ord('"')}
    with pytest.raises(ValueError, match="No bracket_counting example is usable"):
        code_contrast_set(model, "bracket_counting", 8)
    with pytest.raises(KeyError, match="Unknown code task"):
        code_task_examples("no_such_task", 3)
