"""DCM and targeted updates on the real Gemma-3-270M (slow)."""

from __future__ import annotations

import pytest
import torch

from cca_tl import ComponentMask
from cca_tl.contrast import ContrastSet
from cca_tl.dcm import train_dcm
from cca_tl.update import targeted_update

pytestmark = pytest.mark.slow

PREFIXES = [
    "Q: Tom has 3 apples and buys 4 more. How many apples does he have?\nA: 3 + 4 = ",
    "Q: A box holds 6 pens. How many pens are in 2 boxes?\nA: 6 * 2 = ",
    "Q: Sara had 10 stickers and gave away 3. How many are left?\nA: 10 - 3 = ",
    "Q: There are 5 birds and 4 more arrive. How many birds are there?\nA: 5 + 4 = ",
]


def test_multi_token_target_is_refused(gemma):
    with pytest.raises(ValueError, match=r"desired target ' 1234567' is \d+ tokens"):
        ContrastSet.from_texts(gemma, PREFIXES[:1], [" 1234567"], [" 8"])


def test_dcm_and_masked_update_on_gemma(gemma):
    data = ContrastSet.from_texts(gemma, PREFIXES, ["7", "1", "7", "9"], ["8", "8", "6", "8"])
    result = train_dcm(gemma, data, lam=1e-2, lr=0.1, max_epochs=15, batch_size=4, progress=False)
    assert 0 < result.mask.count() < result.mask.size()
    assert set(result.history.columns) >= {"loss", "logit_diff", "n_q", "n_k", "n_v", "n_neuron"}
    before = {n: p.detach().clone() for n, p in gemma.named_parameters()}
    mask = ComponentMask.from_components(gemma, result.mask.components()[:20])
    try:
        upd = targeted_update(gemma, data, mask, lr=1e-3, steps=2, eval_steps=[2], progress=False)
        changed = [n for n, p in gemma.named_parameters() if not torch.equal(p, before[n])]
        touched = {s.param for c in mask.components() for s in gemma._cca_registry.slices(c)}
        assert set(changed) <= touched
        assert 0 < upd.fraction_params < 1e-2  # 20 components; a v head alone owns 640x256 weights
    finally:
        with torch.no_grad():
            for n, p in gemma.named_parameters():
                p.copy_(before[n])
