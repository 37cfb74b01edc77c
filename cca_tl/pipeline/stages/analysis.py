"""Stage ``analysis``: component tables and plots, ablation checks, the faithfulness curve and an
attention view of the top DCM heads, all on the unedited model."""

from __future__ import annotations

from cca_tl._io import atomic_directory, atomic_write_text
from cca_tl.pipeline.stage import Stage


# Records per last-token pass. These passes read every weight once per mini-batch for one token per row, so
# fuller batches cost little more: 30 Gemma-3-270M records took 1.09 s at 8, 0.90 s at 16, 0.74 s at 32
# (2 cores); the key/value buffers of 32 two-step records hold ~0.4 GB.
FORWARD_BATCH = 32


def run(run) -> dict:
    import matplotlib.pyplot as plt

    from cca_tl.analysis import (ablation_checks, attention_view, count_table, default_sizes, faithfulness_area,
                                 faithfulness_curve, layer_table, plot_faithfulness, plot_mask,
                                 save_html, top_heads)
    from cca_tl.components import ComponentRegistry
    from cca_tl.contrast import prefix_cache_for
    from cca_tl.interventions import task_means

    cfg = run.config
    model = run.session.restore()
    dcm = run.dcm()
    data = run.contrast("train")
    with atomic_directory(run.dir / "analysis", overwrite=True) as out:
        atomic_write_text(out / "components.csv", count_table({"cca": dcm.mask}).to_csv())
        atomic_write_text(out / "components_per_layer.csv", layer_table(dcm.mask).to_csv())
        fig = plot_mask(dcm.mask, dcm.gains, title=f"DCM mask, {cfg.model}, λ={cfg.dcm.lam:g}")
        fig.savefig(out / "mask.png", dpi=110)
        # One prefix cache and one set of means for every ablation below (each costs a pass over the data).
        prefix_kv = prefix_cache_for(model, data, batch_size=FORWARD_BATCH)
        means = task_means(model, data, list(dcm.gains), prefix_kv=prefix_kv, batch_size=FORWARD_BATCH)
        checks = ablation_checks(model, data, dcm.mask, seed=cfg.seed, n_random=cfg.analysis.ablation_random_sets,
                                 batch_size=FORWARD_BATCH, prefix_kv=prefix_kv, means=means)
        atomic_write_text(out / "ablation.csv", checks.to_csv())
        total = sum(v.numel() for v in dcm.gains.values())
        sizes = default_sizes(total, extra=[dcm.mask.count()], points=cfg.analysis.faithfulness_points)
        curve = faithfulness_curve(model, data, dcm.gains, sizes=sizes, progress=run.progress,
                                   batch_size=FORWARD_BATCH, prefix_kv=prefix_kv, means=means)
        atomic_write_text(out / "faithfulness.csv", curve.to_csv(index=False))
        plot_faithfulness(curve, mark=dcm.mask.count()).savefig(out / "faithfulness.png", dpi=110)
        area = faithfulness_area(curve)
        heads = top_heads(ComponentRegistry.from_model(model), dcm.gains, cfg.analysis.attention_heads)
        example = run.localization("train")[0]
        view = attention_view(model, example["prefix_ids"], heads)
        tok = model.tokenizer
        save_html(view, out / "attention.html", title=f"Top DCM heads of {cfg.model}: {heads}",
                  caption=f"Last 64 tokens of a training prefix; desired next token "
                          f"{tok.decode([example['desired_id']])!r}, undesired {tok.decode([example['undesired_id']])!r}.")
        plt.close("all")
    return dict(cpr=area["cpr"], cmd=area["cmd"], heads=heads)


STAGE = Stage("analysis", ("analysis",), run)
