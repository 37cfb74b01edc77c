"""Builders the tests share (imported by test modules; conftest.py keeps only fixtures): tiny configs, random
contrast sets, records and reference answers behind one shared prompt, a tiny weight-sparse training config."""

from __future__ import annotations

from pathlib import Path

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


#: The committed result of :func:`cross_backend_edit` on the hooked backend, one file per family; the bridge
#: tier compares its own against it (the two backends never share an environment).
CROSS_BACKEND = Path(__file__).parent / "data" / "cross_backend"


def cross_backend_edit(model) -> dict[str, torch.Tensor]:
    """One fixed targeted update (a small mask of q/k/v heads and neurons, three SGD steps of the pivot
    objective on :func:`contrast`, no validation) of ``model`` in place, and the HF parameters it changed
    with their new values under checkpoint names: the hooked backend's through the export's inverse
    conversion, the bridge's as they are."""
    from cca_tl.backend import is_bridge, parameter_owner
    from cca_tl.component_mask import ComponentMask
    from cca_tl.components import Component, registry_of
    from cca_tl.update import targeted_update

    def hf_weights() -> dict[str, torch.Tensor]:
        if is_bridge(model):
            return {n: p.detach().clone() for n, p in parameter_owner(model).named_parameters()}
        from cca_tl.export import hf_state_dict

        return hf_state_dict(model)[0]

    reg = registry_of(model)
    last = reg.n_layers - 1
    mask = ComponentMask.from_components(model, [
        Component("q", 0, 1), Component("k", last, reg.n_units("k") - 1), Component("v", 0, 0),
        Component("neuron", 0, 3), Component("neuron", last, 5)])
    before = hf_weights()
    targeted_update(model, contrast(n=6), mask, lr=0.5, steps=3, eval_steps=[], seed=0, shared_prefix=False,
                    progress=False)
    return {n: p for n, p in hf_weights().items() if not torch.equal(p, before[n])}


def write_cross_backend(families=None) -> None:
    """(Re)write :data:`CROSS_BACKEND` from the hooked backend (in ``.venv``): ``python -c "from tests.helpers
    import write_cross_backend; write_cross_backend()"``."""
    from safetensors.torch import save_file

    from cca_tl.models import load_model
    from cca_tl.testing import TINY_ARCHITECTURES

    CROSS_BACKEND.mkdir(parents=True, exist_ok=True)
    for name in families or [a for a in TINY_ARCHITECTURES if a not in ("tiny-pythia", "tiny-gpt2")]:
        edit = cross_backend_edit(load_model(name))
        save_file({n: v.contiguous() for n, v in edit.items()}, str(CROSS_BACKEND / f"{name}.safetensors"))
