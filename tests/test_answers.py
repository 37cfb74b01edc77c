"""Reference answers: teacher-forced scores equal a plain full forward per question; the greedy path is on
the reference exactly when the reference is the greedy continuation."""

from __future__ import annotations

import pytest
import torch

from cca_tl import load_model
from cca_tl.answers import AnswerSet, answer_token_losses, reference_path_scores
from tests.helpers import answers_behind_a_prompt, records_behind_a_prompt


def one_by_one(model, data: AnswerSet) -> tuple[torch.Tensor, torch.Tensor]:
    nll, on_path = [], []
    for prompt, answer in zip(data.prompt_ids, data.answer_ids):
        logits = model(torch.tensor([prompt + answer]))[0].float()[len(prompt) - 1:len(prompt) + len(answer) - 1]
        target = torch.tensor(answer)
        nll.append(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        on_path.append(bool((logits.argmax(-1) == target).all()))
    return torch.stack(nll), torch.tensor(on_path)


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gemma3"])
def test_scores_over_the_shared_prompt_equal_one_question_at_a_time(arch):
    model = load_model(arch)
    data = answers_behind_a_prompt()
    scores = reference_path_scores(model, data, batch_size=4)
    nll, on_path = one_by_one(model, data)
    assert torch.allclose(scores["nll"], nll, atol=1e-4)
    assert torch.equal(scores["on_path"], on_path)
    with torch.no_grad():
        losses = torch.cat(list(answer_token_losses(model, data, batch_size=4)))
    assert losses.numel() == data.n_tokens
    assert torch.allclose(losses.sum(), nll.sum(), atol=1e-3)


def test_the_greedy_continuation_is_on_the_path_and_a_changed_token_is_not():
    model = load_model("tiny-llama")
    prompts = records_behind_a_prompt(seed=3, prompt=10, longest_tail=3, n=4)
    answers = []
    for prompt in prompts:  # three greedy tokens
        ids = list(prompt)
        for _ in range(3):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        answers.append(ids[len(prompt):])
    data = AnswerSet(prompts, answers)
    assert reference_path_scores(model, data)["on_path"].all()
    answers[1] = answers[1][:2] + [(answers[1][2] + 1) % 200]
    on_path = reference_path_scores(model, AnswerSet(prompts, answers))["on_path"]
    assert on_path.tolist() == [True, False, True, True]


def test_bad_answer_sets_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        AnswerSet([[1, 2]], [])
    with pytest.raises(ValueError, match="at least one answer token"):
        AnswerSet([[1, 2]], [[]])


def test_the_answer_objective_is_transformers_labels_loss_on_the_hf_copy():
    """The reference for the answer objective (what the retired peft path trained on): the mean
    cross-entropy of the answer tokens is what ``transformers`` computes with the prompt's labels at -100."""
    from cca_tl.export import hf_copy

    model = load_model("tiny-qwen2")
    data = answers_behind_a_prompt(n=5, seed=3)
    ours = torch.cat([losses.detach() for losses in answer_token_losses(model, data, batch_size=2)]).sum() / data.n_tokens
    twin, total = hf_copy(model), 0.0
    with torch.no_grad():
        for prompt, answer in zip(data.prompt_ids, data.answer_ids):
            ids = torch.tensor([prompt + answer])
            labels = torch.tensor([[-100] * len(prompt) + answer])
            total += float(twin(input_ids=ids, labels=labels).loss) * len(answer)
    assert abs(float(ours) - total / data.n_tokens) < 1e-4
    assert float(ours) > 1.0  # a random tiny model: far from a trivial zero
