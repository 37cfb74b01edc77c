"""Per HF family: how exactly the HookedTransformer reproduces HF, and how exactly an edited export reloads.

    .venv/bin/python analyses/family_fidelity.py

Writes ``analyses/family_fidelity.md``. One tiny seeded random model per family (norms and biases
randomised), float32, 3 x 20 random tokens. Columns: max |Δlogit| TL vs HF; after editing one component of
every kind (extended weight set, +0.3), max |Δlogit| between the edited HookedTransformer and its export
reloaded in plain transformers, and between that export and the original checkpoint (the edit's size).
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from cca_tl import Component, ComponentRegistry, export_hf, load_model
from cca_tl.testing import TINY_ARCHITECTURES, tiny_hf_model

HERE = Path(__file__).resolve().parent
IDS = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(11))


@torch.no_grad()
def measure(name: str) -> dict:
    hf = tiny_hf_model(name, seed=0).eval()
    model = load_model(name, seed=0)
    tl_vs_hf = (hf(IDS).logits - model(IDS)).abs().max().item()
    reg = ComponentRegistry.from_model(model)
    for i, kind in enumerate(reg.kinds()):
        for s in reg.slices(Component(kind, i % reg.n_layers, reg.n_units(kind) - 1), "extended"):
            s.view(model).add_(0.3)
    with tempfile.TemporaryDirectory() as tmp:
        report = export_hf(model, Path(tmp) / "out")
        reloaded = AutoModelForCausalLM.from_pretrained(str(Path(tmp) / "out"), dtype=torch.float32).eval()
        export_vs_tl = (reloaded(IDS).logits - model(IDS)).abs().max().item()
        edit_size = (reloaded(IDS).logits - hf(IDS).logits).abs().max().item()
    return dict(tiny_model=name, architecture=report.architecture, tl_vs_hf=tl_vs_hf,
                edited_export_vs_tl=export_vs_tl, edited_vs_original=edit_size, tied=report.tied_embeddings)


def main() -> None:
    df = pd.DataFrame([measure(n) for n in TINY_ARCHITECTURES]).set_index("tiny_model")
    text = (f"# TL vs HF and export fidelity per family\n\nCommand: `.venv/bin/python analyses/family_fidelity.py` "
            f"(CPU, float32, torch {torch.__version__}, {platform.machine()}).\n\n"
            f"{df.to_markdown(floatfmt='.2e')}\n\nAll differences are float32 kernel noise (≤ 1e-4 is the tests' "
            "bound); `edited_vs_original` shows the edit itself reached the exported checkpoint.\n")
    (HERE / "family_fidelity.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
