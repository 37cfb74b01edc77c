"""Analysis: what the mask selected, whether it matters, and what the selected heads look at.

* **Component tables** — counts per kind and per layer for one mask, and mean ± std across masks from
  several seeds or λ values (the paper's Table 7 layout), as DataFrames; per-layer plots.
* **Ablation checks** on error-localization data — set the selected components to zero or to their task mean at the
  position the mask acts on (the last prefix token) and compare with an equal-size random set (same count
  per kind and layer) and with the complement. Effect = change of the mean logit difference
  ``logit[desired] − logit[undesired]``, and of the *pivot accuracy* (share of records where the desired
  token wins — a per-record accuracy that needs no generation).
* **Faithfulness curve** (MIB-style) — keep the top-n components by DCM gain, ablate the rest; faithfulness
  ``f(C) = (m(C) − m(∅)) / (m(all) − m(∅))``; its area over the kept fraction (CPR, higher is better) and
  the area of ``|1 − f|`` (CMD, lower is better).
* **Attention views** — circuitsvis attention patterns of the most-selected heads on real prefixes, saved
  as self-contained HTML (the JavaScript is inlined: the files open without network).

Every ablation runs over the frozen prefix key/value cache (:class:`cca_tl.contrast.PrefixKV`): ablating the
last position leaves every earlier position unchanged, so one forward step per record is enough (exact).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from cca_tl.backend import HookedTransformer

from cca_tl.components import ComponentRegistry, Kind, registry_of
from cca_tl.component_mask import ComponentMask
from cca_tl import interventions
from cca_tl.contrast import ContrastSet, PrefixKV, pad_token_id, prefix_cache_for, two_logit_diff
from cca_tl.interventions import Baseline, Positions, Replace, task_means



# ----------------------------------------------------------------------------------------------------
# Component tables and plots
# ----------------------------------------------------------------------------------------------------


def count_table(masks: Mapping[str, ComponentMask]) -> pd.DataFrame:
    """One row per mask (label → mask): selected components per kind, total, and % of components."""
    rows = []
    for label, mask in masks.items():
        rows.append(dict(run=label, **mask.counts_by_kind(), total=mask.count(),
                         pct_components=100.0 * mask.fraction_components()))
    return pd.DataFrame(rows).set_index("run")


def count_summary(masks: Mapping[str, ComponentMask], *, decimals: int = 1) -> pd.DataFrame:
    """Mean ± std of the per-kind counts across masks (seeds, λ values, …): the paper's Table 7 layout.

    Returns one row with numeric ``<kind>_mean`` / ``<kind>_std`` columns and a ``<kind>`` column of
    ``"mean ± std"`` strings; std is the sample std (0 for a single mask).
    """
    table = count_table(masks).drop(columns=["pct_components"])
    row: dict[str, object] = {"n_masks": len(table)}
    for col in table.columns:
        mean, std = float(table[col].mean()), float(table[col].std(ddof=1)) if len(table) > 1 else 0.0
        row[f"{col}_mean"], row[f"{col}_std"] = mean, std
        row[col] = f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    return pd.DataFrame([row])


def layer_table(mask: ComponentMask) -> pd.DataFrame:
    """Selected components per layer (rows) and kind (columns), with a total row."""
    return mask.counts_by_layer()


def plot_mask(mask: ComponentMask, gains: Mapping[str, Tensor] | None = None, *, title: str = ""):
    """One figure: a layer × head grid per head kind (colour = DCM gain, ● = selected) and a bar chart of
    selected MLP neurons per layer. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt  # the current backend: inline in Jupyter, Agg when headless

    head_kinds = [k for k in mask.kinds if k is not Kind.NEURON]
    n_panels = len(head_kinds) + (Kind.NEURON in mask.kinds)
    fig, axes = plt.subplots(1, n_panels, figsize=(2.9 * n_panels + 1.5, 3.6), squeeze=False)
    axes = axes[0]
    for ax, kind in zip(axes, head_kinds):
        sel = mask.masks[kind].float()
        shown = gains[kind.value].float() if gains is not None and kind.value in gains else sel
        image = ax.imshow(shown.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower",
                          interpolation="nearest")
        layers, units = sel.nonzero(as_tuple=True)
        ax.scatter(layers, units, marker="o", s=14, facecolors="none", edgecolors="red", linewidths=1.0)
        ax.set_title(f"{kind.value} heads: {int(sel.sum())} selected")
        ax.set_xlabel("layer")
        ax.set_ylabel("head" if kind in (Kind.Q, Kind.Z) else "kv head")
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02, label="gain m" if gains is not None else "selected")
    if Kind.NEURON in mask.kinds:
        ax = axes[-1]
        per_layer = mask.masks[Kind.NEURON].sum(dim=1)
        ax.bar(range(len(per_layer)), per_layer.tolist(), color="tab:orange")
        ax.set_title(f"neurons: {int(per_layer.sum())} selected")
        ax.set_xlabel("layer")
        ax.set_ylabel("selected neurons")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------
# Ablation at the last position
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def ablated_logit_diffs(model: HookedTransformer, data: ContrastSet, ablate: ComponentMask | None, *,
                        baseline: Baseline | str = Baseline.TASK_MEAN, means: Mapping[Kind, Tensor] | None = None,
                        prefix_kv: PrefixKV | None = None, batch_size: int = 8) -> Float[Tensor, "record"]:
    """Per-record logit difference with ``ablate``'s components set to ``baseline`` at the last position
    (zero, or their task mean at the pivot: ``means`` from :func:`cca_tl.interventions.task_means`)."""
    reg = registry_of(model)
    baseline = _pivot_baseline(baseline)
    if ablate is not None:
        ablate.validate(reg)
    if baseline is Baseline.TASK_MEAN and ablate is not None and means is None:
        means = task_means(model, data, ablate.kinds, prefix_kv=prefix_kv, batch_size=batch_size)
    replace = None if ablate is None else Replace(ablate.masks, means if baseline is Baseline.TASK_MEAN else None)
    out = []
    for batch in data.batches(batch_size, pad_id=pad_token_id(model), device=model.cfg.device, prefix_kv=prefix_kv):
        fwd_hooks = [] if replace is None else interventions.hooks(reg, replace, positions=Positions.LAST,
                                                                   last_pos=batch.last_pos)
        out.append(two_logit_diff(model, batch, fwd_hooks).float().cpu())
    return torch.cat(out)


def _pivot_baseline(baseline: Baseline | str) -> Baseline:
    """Ablation at the pivot position takes zero or the task mean there (a general-text mean belongs to
    every-position ablation: node pruning)."""
    baseline = Baseline(baseline)
    if baseline not in (Baseline.ZERO, Baseline.TASK_MEAN):
        raise ValueError(f"Ablation at the pivot takes baseline 'zero' or 'task-mean', not {baseline.value!r}")
    return baseline


def ablation_checks(model: HookedTransformer, data: ContrastSet, mask: ComponentMask, *, seed: int = 0,
                    baselines: Sequence[Baseline | str] = (Baseline.ZERO, Baseline.TASK_MEAN), n_random: int = 3,
                    batch_size: int = 8, prefix_kv: PrefixKV | None = None,
                    means: Mapping[Kind, Tensor] | None = None) -> pd.DataFrame:
    """Ablate the selected set vs equal-size random sets (``n_random`` seeds; mean ± std) vs the complement.

    Rows: (ablation, set); columns: components ablated, mean logit difference, its change from the
    unablated model, pivot accuracy and its change. ``prefix_kv`` / ``means`` (of ``mask``'s kinds):
    reuse those already computed for ``data`` (the faithfulness curve needs the same).
    """
    reg = registry_of(model)
    mask.validate(reg)
    prefix_kv = prefix_kv if prefix_kv is not None else prefix_cache_for(model, data, batch_size)
    if means is None:
        means = task_means(model, data, mask.kinds, prefix_kv=prefix_kv, batch_size=batch_size)
    clean = ablated_logit_diffs(model, data, None, prefix_kv=prefix_kv, batch_size=batch_size)
    full = ComponentMask.full(reg, mask.kinds)
    rows = []

    def add(baseline: Baseline, label: str, diffs: list[Tensor], n: int) -> None:
        stats = torch.stack([d.mean() for d in diffs])
        accs = torch.stack([(d > 0).float().mean() for d in diffs])
        rows.append(dict(ablation=baseline.value, set=label, n_ablated=n,
                         logit_diff=float(stats.mean()),
                         logit_diff_std=float(stats.std()) if len(diffs) > 1 else 0.0,
                         delta_logit_diff=float(stats.mean() - clean.mean()),
                         pivot_accuracy=float(accs.mean()),
                         delta_pivot_accuracy=float(accs.mean() - (clean > 0).float().mean())))

    for baseline in map(_pivot_baseline, baselines):
        add(baseline, "none", [clean], 0)
        add(baseline, "circuit (selected)", [ablated_logit_diffs(model, data, mask, baseline=baseline, means=means,
                                                            prefix_kv=prefix_kv, batch_size=batch_size)],
            mask.count())
        randoms = [ablated_logit_diffs(model, data, mask.random_like(seed + i), baseline=baseline, means=means,
                                       prefix_kv=prefix_kv, batch_size=batch_size) for i in range(n_random)]
        add(baseline, f"random, same size ({n_random} seeds)", randoms, mask.count())
        add(baseline, "complement", [ablated_logit_diffs(model, data, full - mask, baseline=baseline, means=means,
                                                    prefix_kv=prefix_kv, batch_size=batch_size)],
            (full - mask).count())
    return pd.DataFrame(rows).set_index(["ablation", "set"])


def default_sizes(total: int, *, extra: Iterable[int] = (), points: int = 12) -> list[int]:
    """0, a geometric grid up to ``total``, and ``extra`` sizes (e.g. the mask's own), sorted, unique."""
    grid = {0, total, *extra}
    if total > 1:
        grid.update(int(round(x)) for x in torch.logspace(0, torch.log10(torch.tensor(float(total))), points).tolist())
    return sorted(s for s in grid if 0 <= s <= total)


@torch.no_grad()
def faithfulness_curve(model: HookedTransformer, data: ContrastSet, scores: Mapping[str, Tensor], *,
                       sizes: Sequence[int] | None = None, baseline: Baseline | str = Baseline.TASK_MEAN,
                       batch_size: int = 8, progress: bool = False, prefix_kv: PrefixKV | None = None,
                       means: Mapping[Kind, Tensor] | None = None) -> pd.DataFrame:
    """Faithfulness of the top-n circuits (by ``scores``) with everything else ablated at the last position.

    Columns: size, fraction of components kept, mean logit difference, faithfulness. Sizes 0 (everything
    ablated: ``m(∅)``) and all components (nothing ablated: ``m(all)``, faithfulness exactly 1) are always
    included.
    """
    from tqdm.auto import tqdm

    reg = registry_of(model)
    kinds = [Kind(k) for k in scores]
    full = ComponentMask.full(reg, kinds)
    total = full.count()
    sizes = sorted({0, total, *(sizes if sizes is not None else default_sizes(total))})
    prefix_kv = prefix_kv if prefix_kv is not None else prefix_cache_for(model, data, batch_size)
    baseline = _pivot_baseline(baseline)
    if baseline is Baseline.TASK_MEAN and means is None:
        means = task_means(model, data, kinds, prefix_kv=prefix_kv, batch_size=batch_size)
    diffs = {}
    for size in tqdm(sizes, desc="faithfulness", disable=not progress, leave=False):
        keep = ComponentMask.top_k(reg, scores, size)
        diffs[size] = float(ablated_logit_diffs(model, data, full - keep, baseline=baseline, means=means, prefix_kv=prefix_kv,
                                                batch_size=batch_size).mean())
    m_empty, m_full = diffs[0], diffs[total]
    denom = m_full - m_empty
    rows = [dict(size=s, fraction=s / total, logit_diff=d,
                 faithfulness=(d - m_empty) / denom if denom != 0 else float("nan")) for s, d in diffs.items()]
    return pd.DataFrame(rows)


def faithfulness_area(curve: pd.DataFrame) -> dict[str, float]:
    """CPR (area under faithfulness over the kept fraction; higher is better) and CMD (area under
    ``|1 − faithfulness|``; lower is better), by the trapezoid rule."""
    x = torch.tensor(curve["fraction"].to_numpy(), dtype=torch.float64)
    f = torch.tensor(curve["faithfulness"].to_numpy(), dtype=torch.float64)
    return dict(cpr=float(torch.trapezoid(f, x)), cmd=float(torch.trapezoid((1 - f).abs(), x)))


def plot_faithfulness(curve: pd.DataFrame, *, mark: int | None = None, title: str = ""):
    """Faithfulness against circuit size (log x axis); ``mark`` draws the DCM mask's own size."""
    import matplotlib.pyplot as plt  # the current backend: inline in Jupyter, Agg when headless

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    shown = curve[curve["size"] > 0]
    ax.plot(shown["size"], shown["faithfulness"], marker="o")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    if mark:
        ax.axvline(mark, color="red", linestyle="--", linewidth=1, label=f"DCM mask ({mark})")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("components kept (top by DCM gain; rest mean-ablated at the last position)")
    ax.set_ylabel("faithfulness")
    area = faithfulness_area(curve)
    ax.set_title(title or f"CPR {area['cpr']:.3f}, CMD {area['cmd']:.3f}")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------
# Attention views (circuitsvis)
# ----------------------------------------------------------------------------------------------------


def top_heads(registry: ComponentRegistry, scores: Mapping[str, Tensor], n: int = 4) -> list[tuple[int, int]]:
    """The ``n`` query heads (layer, head) with the highest score: a head's score is the largest gain of its
    q entry, its z entry, or the k/v entries of its kv group."""
    n_heads, n_kv = registry.n_units(Kind.Q), registry.n_units(Kind.K)
    head_score = torch.full((registry.n_layers, n_heads), float("-inf"))
    group = n_heads // n_kv
    for name, value in scores.items():
        kind = Kind(name)
        if kind in (Kind.Q, Kind.Z):
            head_score = torch.maximum(head_score, value.float())
        elif kind in (Kind.K, Kind.V):
            head_score = torch.maximum(head_score, value.float().repeat_interleave(group, dim=1))
    order = torch.sort(head_score.flatten(), descending=True, stable=True).indices[:n]
    return [(int(i) // n_heads, int(i) % n_heads) for i in order
            if torch.isfinite(head_score.flatten()[i])]


@torch.no_grad()
def attention_view(model: HookedTransformer, tokens: Sequence[int], heads: Sequence[tuple[int, int]], *,
                   window: int = 64):
    """circuitsvis attention patterns of ``heads`` on one prefix, restricted to its last ``window`` tokens
    (queries and keys) so long few-shot prompts stay legible."""
    from circuitsvis.attention import attention_heads

    if not heads:
        raise ValueError("No heads to show.")
    ids = torch.tensor([list(tokens)], device=model.cfg.device)
    layers = sorted({layer for layer, _ in heads})
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    _, cache = model.run_with_cache(ids, names_filter=lambda name: name in names,
                                    stop_at_layer=max(layers) + 1)
    start = max(0, ids.shape[1] - window)
    patterns = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0, head, start:, start:]
                            for layer, head in heads])
    labels = [model.tokenizer.decode([t]) if model.tokenizer is not None else str(t) for t in tokens[start:]]
    return attention_heads(patterns.cpu(), labels, attention_head_names=[f"L{layer}H{head}" for layer, head in heads])


def save_html(view, path: str | Path, *, title: str = "cca_tl attention view", caption: str = "") -> Path:
    """Write a circuitsvis view as a self-contained page (``local_src`` inlines the JavaScript; ``str(view)``
    would load it from a CDN and show a blank page offline)."""
    from cca_tl._io import atomic_write_text

    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
            f"<body style=\"font-family: sans-serif\"><h3>{html.escape(title)}</h3>"
            f"<p>{html.escape(caption)}</p>\n{view.local_src}\n</body></html>\n")
    return atomic_write_text(path, page)
