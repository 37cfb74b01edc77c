"""Generation on tiny models with a character tokenizer: exactness against unbatched decoding and HF,
per-row temperatures, stops, balanced batches, edits seen at once."""

from __future__ import annotations

import pytest
import torch

from cca_tl.generation import balanced_chunks as _balanced_chunks
from cca_tl.generation import generate
from cca_tl.models import load_model
from cca_tl.testing import TINY_ARCHITECTURES
from cca_tl.export import hf_copy

SHARED = "Q: 1 + 2 = 3. The answer is 3.\n"
QUESTIONS = ("Q: 3 + 4", "Q: 12 + 40 =", "Q: x", "Q: 99 - 1 = ?", "hello there")


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_batched_generation_equals_one_row_at_a_time_and_hf(arch):
    """Shared-prompt cache, padding between the shared part and each row's own tail, rows leaving the batch
    early: none of it changes a row's greedy tokens (tiny-gemma3's 8-token sliding window is the hard case)."""
    model = load_model(arch, seed=3)
    prompts = [model.to_tokens(SHARED + q)[0].tolist() for q in QUESTIONS] + [model.to_tokens("zz")[0].tolist()]
    batched = generate(model, prompts, max_new_tokens=12, batch_size=4, stops=("e",))
    alone = [generate(model, [p], max_new_tokens=12, stops=("e",))[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    twin = hf_copy(model)
    for prompt, ours in zip(prompts, generate(model, prompts, max_new_tokens=12, batch_size=8, stops=())):
        ids = torch.tensor([prompt])
        reference = twin.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                  do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
        special = set(model.tokenizer.all_special_ids)
        cut = next((i for i, t in enumerate(reference) if t in special), len(reference))
        assert ours.token_ids == reference[:cut]


def test_generation_sees_an_edit_immediately():
    model = load_model("tiny-llama", seed=2)
    prompt = [model.to_tokens("Q: 5 + 5")[0].tolist()]
    before = generate(model, prompt, max_new_tokens=8, stops=())[0].token_ids
    with torch.no_grad():
        model.b_U[before[0]] -= 1e4  # the first greedy token can no longer win
    after = generate(model, prompt, max_new_tokens=8, stops=())[0].token_ids
    assert after[0] != before[0]


def test_balanced_chunks_cover_everything_once():
    assert [len(c) for c in _balanced_chunks(17, 16)] == [9, 8]
    assert [len(c) for c in _balanced_chunks(32, 16)] == [16, 16]
    assert _balanced_chunks(0, 8) == []
    for n in range(1, 40):
        chunks = _balanced_chunks(n, 7)
        assert [i for c in chunks for i in c] == list(range(n)) and max(len(c) for c in chunks) <= 7


def test_zero_temperature_rows_are_greedy_and_others_sample():
    model = load_model("tiny-gemma3")
    prompts = [model.to_tokens(t)[0].tolist() for t in ("Q: 1 + 2", "Q: 3 + 4", "Q: 5 + 1", "Q: 2 + 2")]
    greedy = generate(model, prompts, max_new_tokens=10, stops=())
    mixed = generate(model, prompts, max_new_tokens=10, temperature=[0.0, 5.0, 0.0, 5.0], stops=(),
                     seed=3)
    assert mixed[0].token_ids == greedy[0].token_ids and mixed[2].token_ids == greedy[2].token_ids
    assert mixed[1].token_ids != greedy[1].token_ids or mixed[3].token_ids != greedy[3].token_ids
    again = generate(model, prompts, max_new_tokens=10, temperature=[0.0, 5.0, 0.0, 5.0], stops=(),
                     seed=3)
    assert [g.token_ids for g in again] == [g.token_ids for g in mixed]  # seeded


def test_generation_stops_at_a_stop_string():
    model = load_model("tiny-gemma3")
    prompt = model.to_tokens("Q: 1")[0].tolist()
    free = generate(model, [prompt], max_new_tokens=30, temperature=1.0, stops=(), seed=1)[0]
    stop = free.text[3:5]  # a string the unconstrained output contains
    cut = generate(model, [prompt], max_new_tokens=30, temperature=1.0, stops=(stop,), seed=1)[0]
    assert stop not in cut.text and free.text.startswith(cut.text) and len(cut.text) < len(free.text)


def test_argmax_rows_is_torch_argmax():
    """The first maximum of each row, whatever the layout, vocabulary size, ties or NaN."""
    import torch

    from cca_tl.generation import argmax_rows

    g = torch.Generator().manual_seed(0)
    for vocab in (5, 1024, 1500, 262144 + 7):
        logits = torch.randn(9, vocab, generator=g)
        logits[1, :] = 0.0  # all tied: id 0
        logits[2, vocab // 3] = logits[2, -1] = 50.0  # a tie across blocks: the first
        logits[3, -1] = 60.0  # the short last block
        logits[4, vocab // 2] = float("nan")  # argmax treats NaN as the maximum
        for layout in (logits, logits.T.contiguous().T):
            assert torch.equal(argmax_rows(layout), logits.argmax(-1)), vocab


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


@pytest.mark.parametrize("arch", [a for a in TINY_ARCHITECTURES if a != "tiny-gpt2"])
def test_rotating_cached_keys_once_matches_transformer_lens(arch):
    """The decoder keeps rotated keys and rotates only new ones; TransformerLens re-rotates the whole cache
    at every token. (1) Rotating positions ``start:`` alone gives exactly TL's rotation of those positions
    (pads inside the mask, as the decoder lays rows out). (2) Decoding agrees with TL's path to float
    rounding, step after step: the attention matmul reads the cached keys in another memory layout, which
    may change its summation order (|Δ| ~ 1e-7)."""
    from cca_tl.generation import Decoder

    model = load_model(arch, seed=4)
    if model.cfg.positional_embedding_type != "rotary":
        pytest.skip(f"{arch} has no rotary embedding")
    attn = model.blocks[0].attn
    keys = torch.randn(3, 12, model.cfg.n_key_value_heads or model.cfg.n_heads, model.cfg.d_head)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 4:7] = 0  # [shared prompt] [pads] [own tail]
    whole = attn.apply_rotary(keys, 0, mask)
    for start in (0, 5, 11):
        assert torch.equal(attn.apply_rotary(keys[:, start:], start, mask), whole[:, start:])

    prompts = [model.to_tokens(SHARED + q)[0].tolist() for q in QUESTIONS[:3]]
    once, every = (Decoder(model, prompts, 6, 0, rotate_once=flag) for flag in (True, False))
    (tokens, attention) = once.first_step
    with torch.no_grad():
        for _ in range(6):
            ours, theirs = once.logits(tokens, attention), every.logits(tokens, attention)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
            tokens = ours.argmax(-1)[:, None]
            attention = torch.ones_like(tokens)
