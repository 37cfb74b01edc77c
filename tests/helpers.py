"""Builders the tests share (imported by test modules; conftest.py keeps only fixtures): tiny configs, random
contrast sets, records and reference answers behind one shared prompt, a tiny weight-sparse training config."""

from __future__ import annotations

import torch
from cca_tl.backend import HookedTransformerConfig

from cca_tl.answers import AnswerSet
from cca_tl.contrast import ContrastSet


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


def answers_behind_a_prompt(n: int = 6, seed: int = 0) -> AnswerSet:
    prompts = records_behind_a_prompt(seed=seed, prompt=12, longest_tail=4, n=n)
    g = torch.Generator().manual_seed(seed + 1)
    return AnswerSet(prompts, [torch.randint(4, 200, (int(k),), generator=g).tolist()
                               for k in torch.randint(1, 6, (n,), generator=g)])


# A training config small enough for the fast tier (12 steps of a 2-layer model).
TINY_SPARSE = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=32, steps=12, batch_size=4,
                   checkpoint_every=4, weight_l0=1 / 8, anneal_start=0.0, anneal_end=0.5, lr=1e-2)
