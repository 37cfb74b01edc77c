"""LoRA and full fine-tuning baselines (peft) on tiny real architectures."""

from __future__ import annotations

import pytest
import torch

from cca_tl.baselines import answer_loss, collate_answers, finetune, same_weights, sft_examples
from cca_tl.lora import params_per_rank
from cca_tl.models import load_model
from cca_tl.tasks import Problem, arithmetic_problems
from cca_tl.export import hf_copy


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-qwen2")


@pytest.fixture(scope="module")
def examples(tiny):
    problems = arithmetic_problems(3, max_value=3)[:6]
    return sft_examples(tiny, problems, lambda q: f"Q: {q[:20]}\nA:")


def test_answer_loss_matches_transformers_labels(tiny, examples):
    twin = hf_copy(tiny)
    ids, attn, predict = collate_answers(examples[:3], pad_id=0)
    labels = torch.full_like(ids, -100)
    rows, cols = predict.nonzero(as_tuple=True)
    labels[rows, cols + 1] = ids[rows, cols + 1]
    with torch.no_grad():
        reference = twin(input_ids=ids, attention_mask=attn, labels=labels).loss
        ours = answer_loss(twin, ids, attn, predict)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_lora_without_training_or_improvement_returns_the_base_weights(tiny, examples):
    untouched = finetune(tiny, examples, method="lora", epochs=0, progress=False)
    assert same_weights(untouched.model, tiny) and untouched.best_epoch == 0
    # validation never improves on the unedited model => the kept checkpoint is the unedited one
    kept = finetune(tiny, examples, method="lora", lr=1e-2, epochs=2, validate=lambda m: 0.0, progress=False)
    assert kept.best_epoch == 0 and same_weights(kept.model, tiny)
    assert list(kept.history.epoch) == [0, 1, 2]


def test_lora_and_full_finetuning_lower_the_answer_loss(tiny, examples):
    def loss_of(model):
        ids, attn, predict = collate_answers(examples, pad_id=0)
        with torch.no_grad():
            return float(answer_loss(hf_copy(model), ids, attn, predict))

    before = loss_of(tiny)
    lora = finetune(tiny, examples, method="lora", lr=1e-2, epochs=3, dropout=0.0, progress=False)
    full = finetune(tiny, examples, method="full", lr=1e-3, epochs=3, progress=False)
    assert loss_of(lora.model) < before and loss_of(full.model) < before
    assert not same_weights(lora.model, tiny) and same_weights(tiny, load_model("tiny-qwen2"))  # input untouched
    assert lora.trainable_params == 16 * params_per_rank(tiny) and full.trainable_params == full.total_params


def test_bad_input_is_refused(tiny, examples):
    with pytest.raises(ValueError, match="No training"):
        finetune(tiny, [], progress=False)
    with pytest.raises(ValueError, match="method"):
        finetune(tiny, examples, method="adapter", progress=False)
    with pytest.raises(ValueError, match="LoRA targets"):
        finetune(tiny, examples, targets=("nonexistent",), progress=False)
    with pytest.raises(ValueError, match="reference solution"):
        sft_examples(tiny, [Problem("t", 0, "q?", 1.0, "")], lambda q: q)
