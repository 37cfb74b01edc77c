"""Circuit sizes in the weight-sparse model vs its dense twin, per code task, and one bridge intervention.

    .venv/bin/python analyses/train_sparse_twins.py          # first: the two models (runs/sparse)
    .venv/bin/python analyses/sparse_vs_dense.py [--n 64] [--steps 300] [--bridge-steps 150]

Per task and model: full-model loss/accuracy, the smallest pruned circuit (learned node pruning with mean
ablation, bisection) reaching the *same* target loss in both models, its nodes and edges
(:func:`cca_tl.sparse.circuit_edges`), and faithfulness on *held-out* examples (another seed). Then bridges
are trained between the twins and one sparse-model node of the quote circuit is mean-ablated; its effect is
carried through the bridge into the dense model (control: random nodes of the same kind and layer outside
the circuit). Writes ``analyses/results/sparse_twins/circuits.md`` (+ CSV, circuit pictures, bridge table).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd
import torch

from cca_tl.components import Kind
from cca_tl.component_mask import ComponentMask
from cca_tl.sparse import (CODE_TASKS, TrainedModel, bridge_intervention, circuit_edges, code_contrast_set,
                           faithfulness, text_means, plot_circuit, prune_nodes, python_tokenizer, stdlib_tokens,
                           token_windows, train_bridges)
from cca_tl.sparse.prune import NODE_KINDS, binary_loss, circuit_diffs, circuit_gates, gated

OUT = Path(__file__).resolve().parent / "results" / "sparse_twins"


def node_location(kind: Kind, layer: int, n_layers: int) -> str:
    """The first bridge location downstream of a node's sublayer."""
    if kind is Kind.NEURON:
        return f"blocks.{layer + 1}.hook_resid_pre" if layer + 1 < n_layers else f"blocks.{layer}.hook_resid_post"
    return f"blocks.{layer}.hook_resid_mid"


def all_but(model, kind: Kind, index: tuple[int, ...]) -> ComponentMask:
    """Every node kept except one (channel granularity)."""
    keep = ComponentMask.full(model, NODE_KINDS, "channel")
    keep.masks[kind][index] = False
    return keep


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default="runs/sparse")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--bridge-steps", type=int, default=150)
    parser.add_argument("--target", type=float, default=0.15)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    models = {label: TrainedModel.load(Path(args.runs) / label).model for label in ("sparse", "dense")}
    tokenizer = python_tokenizer()
    held = token_windows(stdlib_tokens(tokenizer, "held_out"), 128, tokenizer.bos_token_id)
    means = {label: text_means(m, list(held[:48])) for label, m in models.items()}
    rows, masks = [], {}
    for task in CODE_TASKS:
        try:
            data = code_contrast_set(models["sparse"], task, args.n, seed=0)
            test = code_contrast_set(models["sparse"], task, args.n, seed=1)
        except ValueError as err:
            print(f"{task}: skipped ({err})")
            rows.append(dict(task=task, model="both", note=f"no usable examples: {err}"))
            continue
        fulls = {label: float(binary_loss(circuit_diffs(m, data, None, means[label]))) for label, m in models.items()}
        target = max(args.target, max(fulls.values()) + 0.05)  # the same target for both models
        logit_tokens = sorted(set(data.desired) | set(data.undesired))
        for label, model in models.items():
            start = time.perf_counter()
            res = prune_nodes(model, data, means[label], steps=args.steps, lr=0.1, k_coef=1e-4,
                              target_loss=target, progress=False)
            table = faithfulness(model, test, res.mask, means[label])
            masks[(task, label)] = res
            rows.append(dict(task=task, model=label, examples=len(data), target_loss=target,
                             full_loss=fulls[label], full_acc=table.loc["full model", "accuracy"],
                             nodes=res.mask.count(), of=res.mask.size(), reached=res.reached,
                             **circuit_edges(model, res.mask, logit_tokens),
                             **{f"n_{k}": v for k, v in res.mask.counts_by_kind().items()},
                             heldout_full_acc=table.loc["full model", "accuracy"],
                             heldout_sufficiency_acc=table.loc["circuit only (sufficiency)", "accuracy"],
                             heldout_sufficiency_loss=table.loc["circuit only (sufficiency)", "loss"],
                             heldout_necessity_acc=table.loc["circuit ablated (necessity)", "accuracy"],
                             seconds=round(time.perf_counter() - start)))
            print({k: rows[-1][k] for k in ("task", "model", "nodes", "edges", "reached", "full_acc")}, flush=True)
            if task == "single_double_quote":
                fig = plot_circuit(res.mask, f"{label} model, {task}: {res.mask.count()} nodes, "
                                             f"{rows[-1]['edges']} edges (target loss {target:.2f})")
                fig.savefig(OUT / f"circuit_{task}_{label}.png", dpi=110)
                plt.close(fig)
    df = pd.DataFrame(rows)
    df.to_csv(OUT / "circuits.csv", index=False)
    wide = df.pivot_table(index="task", columns="model", values=["nodes", "edges", "full_acc", "heldout_sufficiency_acc",
                                                                 "heldout_necessity_acc"], aggfunc="first")

    # ---- bridges and one intervention through them ----------------------------------------------------------
    start = time.perf_counter()
    train = token_windows(stdlib_tokens(tokenizer, "train"), 64, tokenizer.bos_token_id)
    evalw = token_windows(stdlib_tokens(tokenizer, "held_out"), 64, tokenizer.bos_token_id)[:16]
    trained = train_bridges(models["dense"], models["sparse"], train, steps=args.bridge_steps, batch_size=8,
                            eval_windows=evalw)
    bridge_seconds = time.perf_counter() - start
    bridge_rows = [dict(setting="after least-squares init (step 0)", **trained.history.iloc[0].drop("step").to_dict()),
                   dict(setting=f"after {args.bridge_steps} Adam steps (held-out windows)", **trained.final)]
    task = "single_double_quote"
    data = code_contrast_set(models["sparse"], task, args.n, seed=1)
    sparse, dense = models["sparse"], models["dense"]
    circuit = masks[(task, "sparse")].mask
    # the circuit node whose single ablation moves the sparse model's logit difference most
    base = circuit_diffs(sparse, data, None, means["sparse"]).mean()
    effects = []
    for kind, keep in circuit.masks.items():
        for index in map(tuple, keep.nonzero().tolist()):
            d = circuit_diffs(sparse, data, all_but(sparse, kind, index), means["sparse"]).mean()
            effects.append((float(base - d), kind, index))
    effects.sort(key=lambda e: -abs(e[0]))
    _, kind, index = effects[0]
    location = node_location(kind, index[0], sparse.cfg.n_layers)
    chosen = bridge_intervention(dense, sparse, trained.bridges, data, location,
                                 gated(sparse, circuit_gates(all_but(sparse, kind, index)), means["sparse"]))
    rng = random.Random(0)
    outside = (~circuit).masks[kind][index[0]].nonzero().tolist()
    controls = []
    for other in rng.sample(outside, min(5, len(outside))):
        idx = (index[0], *other)
        df_c = bridge_intervention(dense, sparse, trained.bridges, data, location,
                                   gated(sparse, circuit_gates(all_but(sparse, kind, idx)), means["sparse"]))
        controls.append(df_c)

    def summary(frame: pd.DataFrame) -> dict:
        return dict(sparse_delta=float((frame.sparse_intervened - frame.sparse_clean).mean()),
                    dense_delta=float((frame.dense_bridged - frame.dense_clean).mean()),
                    dense_acc_clean=float((frame.dense_clean > 0).mean()),
                    dense_acc_bridged=float((frame.dense_bridged > 0).mean()))

    node_name = f"{kind.value} L{index[0]} " + "/".join(map(str, index[1:]))
    inter = pd.DataFrame([dict(intervention=f"circuit node {node_name} mean-ablated", **summary(chosen))] +
                         [dict(intervention=f"control: random {kind.value} node, same layer, outside the circuit #{i}",
                               **summary(c)) for i, c in enumerate(controls)]).set_index("intervention")
    inter.to_csv(OUT / "bridge_intervention.csv")
    (OUT / "bridges.json").write_text(json.dumps(dict(rows=bridge_rows, seconds=bridge_seconds, location=location), indent=2))

    text = [
        "# Weight-sparse vs dense twin: circuit sizes per task, and a bridge", "",
        f"Command: `.venv/bin/python analyses/sparse_vs_dense.py --n {args.n} --steps {args.steps} "
        f"--bridge-steps {args.bridge_steps}` after `analyses/train_sparse_twins.py` (2 CPU cores, no GPU lent).", "",
        "Models: `training.md` (same architecture; the sparse one keeps 1/16 of every matrix and 1/4 of activations). "
        "Circuits: learned node pruning (q/k/v channels + MLP neurons, mean-ablated to their held-out means), "
        f"{args.steps} Adam steps, then bisection to the smallest top-k circuit reaching the **same target loss in both "
        f"models** ({args.target}, or the worse full model's loss + 0.05). Fitted on {args.n} examples (seed 0); "
        "faithfulness measured on another seed's examples. Edges: pairs of kept nodes joined through a residual "
        "channel by nonzero weights on both sides (writer before reader; task logits count as readers), plus "
        "matched q·k channels — in a dense model every ordered pair is one.", "",
        wide.to_markdown(floatfmt=".3g"), "",
        "Solved by both models (full-model accuracy ≥ 0.7 on the fitting examples): "
        + (", ".join(sorted(t for t, g in df.dropna(subset=["full_acc"]).groupby("task") if (g.full_acc >= 0.7).all()))
           or "none") + ". Where a model is near chance, its \"circuit\" only has to match chance-level loss and "
        "its size says nothing.", "", "Full table: `circuits.csv`.", "",
        "![sparse](circuit_single_double_quote_sparse.png)", "", "![dense](circuit_single_double_quote_dense.png)", "",
        "## Bridges", "", f"Trained in {bridge_seconds:.0f} s on 64-token training windows (batch 8).", "",
        pd.DataFrame(bridge_rows).set_index("setting").to_markdown(floatfmt=".4f"), "",
        f"Intervention: the sparse quote-circuit node with the largest single-node ablation effect ({node_name}), "
        f"mean-ablated in the sparse model; the change of the sparse residual at `{location}` is decoded and added "
        "to the dense model's residual there. Logit differences are target − alt (`'` vs `\"` by the opening quote), "
        f"on {len(data)} held-out examples.", "", inter.to_markdown(floatfmt=".3f"), "",
    ]
    (OUT / "circuits.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
