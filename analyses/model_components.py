"""Components of the paper's and the field's models, from their published configs alone (no weights).

    .venv/bin/python analyses/model_components.py

Writes ``analyses/model_components.md`` and ``.csv``: per model the q/k/v/z heads and MLP neurons
(all layers), the parameters one component owns (authors' weight set, docs/method.md §A4), and what the paper's
"% of components updated" (1.59 % on Gemma-2-2B-It ... 0.17 % on Gemma-2-9B-It) comes to there. The
configs are the JSON files shipped in ``cca_tl/model_configs/``; the registry is built on torch's meta
device, so this runs in seconds and reads no checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cca_tl.components import PAPER_SHARES, config_registry
from cca_tl.arch import published_config_names

HERE = Path(__file__).resolve().parent
ORDER = ["gemma-2-2b-it", "gemma-2-9b-it", "olmo-2-1124-7b-instruct", "olmo-2-1124-13b-instruct", "gpt2",
         "pythia-160m", "qwen2.5-0.5b-instruct", "qwen3-0.6b"]


def row(name: str) -> dict:
    reg = config_registry(name)
    n = lambda kind: reg.n_units(kind) * reg.n_layers  # noqa: E731
    total = n("q") + n("k") + n("v") + n("neuron")
    out = dict(
        model=name, architecture=reg.identity.architecture, layers=reg.n_layers,
        q_heads=n("q"), kv_heads=n("k"), z_heads=n("z"), neurons=n("neuron"), components=total,
        params_q_head=reg.params_per_unit("q"), params_kv_head=reg.params_per_unit("k"),
        params_neuron=reg.params_per_unit("neuron"), model_params=reg.total_model_params,
    )
    for model, pct in PAPER_SHARES.items():
        out[f"{pct:g} % ({model})"] = round(total * pct / 100)
    return out


def reading(counts: pd.DataFrame, shares: pd.DataFrame) -> str:
    two_b = counts.loc["gemma-2-2b-it"]
    mask = int(shares.loc["gemma-2-2b-it"].iloc[0])
    heads = int(two_b["q_heads"] + 2 * two_b["kv_heads"])
    return (f"Reading it: on Gemma-2-2B-It 1.59 % is about {mask:,} components, while the model has {heads:,} q, k "
            f"and v heads in all, so at least {mask - heads:,} of them ({(mask - heads) / mask:.0%}) must be "
            f"neurons. On Gemma-2-9B-It 0.17 % is about {int(shares.loc['gemma-2-9b-it'].iloc[3]):,} components.")


def main() -> None:
    assert sorted(ORDER) == published_config_names(), "a shipped config is missing from the table"
    df = pd.DataFrame([row(name) for name in ORDER]).set_index("model")
    df.to_csv(HERE / "model_components.csv")
    counts = df.drop(columns=[c for c in df.columns if "%" in c])
    shares = df[[c for c in df.columns if "%" in c]]
    text = f"""# Components of the paper's and the field's models (from published configs)

Command: `.venv/bin/python analyses/model_components.py` (no weights; the registry is built on the meta
device from the configs in `cca_tl/model_configs/`). Heads and neurons are summed over all layers;
`kv_heads` counts the k heads (the v heads are as many). A DCM mask covers q, k, v heads and neurons
(`components`); head outputs (`z`) are opt-in. Parameters per component: the authors' weight set (a q
head's rows of q_proj (+ bias where the model has one); a neuron's row of up_proj / column of c_fc).
`model_params` counts the HF model's parameters (tied embeddings once).

{counts.to_markdown(floatfmt=",.0f")}

## What the paper's "% of components updated" is in each model

The paper reports CCA-with-mask masks of 1.59 % (Gemma-2-2B-It), 0.44 % (OLMo-2-13B-Instruct), 0.25 %
(OLMo-2-7B-Instruct) and 0.17 % (Gemma-2-9B-It) of components. The table says how many components that
share is in every model (rounded); where the row is the model a column names, it is the paper's own mask.

{shares.to_markdown()}

{reading(counts, shares)}
"""
    (HERE / "model_components.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
