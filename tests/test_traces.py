"""Generation on a tiny model with a character tokenizer: per-row temperatures, stops, balanced batches."""

from __future__ import annotations

from cca_tl.models import load_model
from cca_tl.traces import _balanced_chunks, generate, hf_twin


def test_balanced_chunks_cover_everything_once():
    assert [len(c) for c in _balanced_chunks(17, 16)] == [9, 8]
    assert [len(c) for c in _balanced_chunks(32, 16)] == [16, 16]
    assert _balanced_chunks(0, 8) == []
    for n in range(1, 40):
        chunks = _balanced_chunks(n, 7)
        assert [i for c in chunks for i in c] == list(range(n)) and max(len(c) for c in chunks) <= 7


def test_zero_temperature_rows_are_greedy_and_others_sample():
    model = load_model("tiny-gemma3")
    twin = hf_twin(model)
    prompts = [model.to_tokens(t)[0].tolist() for t in ("Q: 1 + 2", "Q: 3 + 4", "Q: 5 + 1", "Q: 2 + 2")]
    greedy = generate(twin, model.tokenizer, prompts, max_new_tokens=10, stops=())
    mixed = generate(twin, model.tokenizer, prompts, max_new_tokens=10, temperature=[0.0, 5.0, 0.0, 5.0], stops=(),
                     seed=3)
    assert mixed[0].token_ids == greedy[0].token_ids and mixed[2].token_ids == greedy[2].token_ids
    assert mixed[1].token_ids != greedy[1].token_ids or mixed[3].token_ids != greedy[3].token_ids
    again = generate(twin, model.tokenizer, prompts, max_new_tokens=10, temperature=[0.0, 5.0, 0.0, 5.0], stops=(),
                     seed=3)
    assert [g.token_ids for g in again] == [g.token_ids for g in mixed]  # seeded


def test_generation_stops_at_a_stop_string():
    model = load_model("tiny-gemma3")
    twin = hf_twin(model)
    prompt = model.to_tokens("Q: 1")[0].tolist()
    free = generate(twin, model.tokenizer, [prompt], max_new_tokens=30, temperature=1.0, stops=(), seed=1)[0]
    stop = free.text[3:5]  # a string the unconstrained output contains
    cut = generate(twin, model.tokenizer, [prompt], max_new_tokens=30, temperature=1.0, stops=(stop,), seed=1)[0]
    assert stop not in cut.text and free.text.startswith(cut.text) and len(cut.text) < len(free.text)


def test_sample_rows_matches_the_distribution_and_greedy_rows():
    import torch

    from cca_tl.traces import sample_rows

    probs = torch.tensor([0.1, 0.2, 0.3, 0.4] + [0.0] * 1001)
    logits = torch.log(probs).repeat(20000, 1)
    t = torch.ones(20000)
    t[:5] = 0.0  # greedy rows
    ids = sample_rows(logits, t, torch.Generator().manual_seed(0), block=3)
    assert (ids[:5] == 3).all() and ids.max() < 4
    freq = torch.bincount(ids[5:], minlength=4).float() / (20000 - 5)
    torch.testing.assert_close(freq, probs[:4], atol=0.015, rtol=0)
    hot = sample_rows(torch.log(probs).repeat(20000, 1), torch.full((20000,), 2.0), torch.Generator().manual_seed(1))
    tempered = probs[:4] ** 0.5 / (probs[:4] ** 0.5).sum()  # temperature 2 flattens the distribution
    torch.testing.assert_close(torch.bincount(hot, minlength=4).float()[:4] / 20000, tempered, atol=0.015, rtol=0)


def test_sync_twin_follows_an_edit():
    import torch

    from cca_tl.traces import sync_twin

    model = load_model("tiny-gemma3")
    twin = hf_twin(model)
    ids = torch.randint(4, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.blocks[1].mlp.W_in[:, 3] += 0.5
        synced = sync_twin(twin, model)
        assert synced is twin
        torch.testing.assert_close(synced(ids).logits, model(ids), atol=1e-4, rtol=0)
        model.W_U[:, 7] += 1.0  # unties the embedding: the twin is rebuilt
        rebuilt = sync_twin(twin, model)
        assert rebuilt is not twin
        torch.testing.assert_close(rebuilt(ids).logits, model(ids), atol=1e-4, rtol=0)
