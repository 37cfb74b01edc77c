"""A plan before a long run: what each stage will do, and about how long it takes and how much memory.

``cca-tl run --dry-run`` prints :func:`plan`'s table and runs nothing. The sizes come from the config: the
problem splits are drawn for real (the ``problems`` stage costs milliseconds and needs no model); pivot
counts, which depend on the model's wrong answers, are estimated from its measured accuracy on the task
(:data:`PRIOR_ACCURACY`). Times are sizes × per-unit costs measured on Gemma-3-270M in float32 on 2 CPU
cores (:data:`UNIT_SECONDS`; how each was measured is beside it), scaled by the parameter count for other
models and by the thread count for other CPUs above a floor that does not shrink with the model
(:data:`FLOOR_SECONDS`, measured on the tiny model). On a GPU nothing has been measured yet, so no time is
estimated there rather than a guess. ``analyses/plan_check.md`` (Gemma) and ``plan_check_tiny.md`` compare
the estimates with measured runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from cca_tl.pipeline.config import RunConfig

#: Seconds per unit of work, Gemma-3-270M, float32, 2 CPU cores (x86_64), the two-step task's few-shot
#: prompt. Fitted to one uncontended main job (preset ``easy``, seed 0: 80 traced questions, 34 train and 21
#: val pivots, 96 test questions; stage times traces 41.6 s, dcm 14.2, update 43.3, evaluate 166.9,
#: analysis 10.0) and checked on runs of other sizes in ``analyses/plan_check.md``.
UNIT_SECONDS = {
    "gen_token": 0.0131,      # one generated token of one row, batches of 32 rows (traces, evaluation)
    "dcm_record": 0.042,      # one training pivot through one DCM epoch (forward + backward of the gains)
    "update_record": 0.31,    # one training pivot through one update step (full forward + backward)
    "update_all": 3.0,        # factor for the all-parameters control (dense embedding gradients dominate;
                              # the power experiment's "all" cell ran 2-4x the DCM-mask cell's time)
    "fwd_record": 0.012,      # one record's last-token forward pass, batched over a shared prefix cache
    "reference_q": 0.05,      # one val question's teacher-forced reference path (val_metric=reference)
    "retention_text": 0.25,   # one 128-token general text, full-vocabulary forward (KL and NLL)
    "load": 8.0,              # loading the model (dequantising the GGUF the first time adds ~60 s)
}
CALIBRATION_PARAMS = 268_098_176  # Gemma-3-270M
CALIBRATION_THREADS = 2
#: The share of each unit that does not shrink with the model (Python, hook dispatch, batching, tokenising),
#: fitted to one uncontended tiny-preset run (tiny-gemma3, 86,656 parameters, 2 CPU cores; stage times traces
#: 8.83 s, dcm 0.16, update 0.42, evaluate 3.81, analysis 1.55; ``reference_q`` is two record forwards, not
#: measured: the tiny arithmetic prompts exceed its context). A model's unit cost is this floor plus the rest
#: of the Gemma-3-270M cost scaled by parameters and threads, so Gemma's estimates are unchanged. Scaling the
#: whole cost made a tiny model's estimates 50-100x too low (a two-seed tiny sweep: 0.2 s estimated, 12.7 s
#: measured); ``analyses/plan_check_tiny.md`` compares again.
FLOOR_SECONDS = {"gen_token": 1.4e-3, "dcm_record": 8e-4, "update_record": 2e-3, "fwd_record": 1.2e-3,
                 "reference_q": 2.4e-3, "retention_text": 0.016, "load": 0.05}
#: Peak resident memory = BASE_RSS_GB + MEM_PER_WEIGHT_GB × weight bytes (GB); measured 2.82 GB for the main
#: job (1.07 GB of float32 weights) and 0.43 GB before the model loads (analyses/bench_main_job.md).
BASE_RSS_GB, MEM_PER_WEIGHT_GB = 0.45, 2.2
#: The all-parameters control adds its dense gradients and SGD's temporaries: 7.97 GB peak with it against
#: 3.00 GB without (the main job with controls random and all, seed 1; analyses/plan_check.md).
ALL_CONTROL_MEM_PER_WEIGHT_GB = 4.6
#: Greedy accuracy of the model on the task (the share of traced answers that are right), measured; a wrong
#: answer gives one pivot under reference localization. Unknown pairs use 0.3. Qwen on GSM-Symbolic: 4 of 32
#: questions, one per template, chat zero-shot (analyses/tasks_baseline.md) — a small sample.
PRIOR_ACCURACY = {("gemma-3-270m", "two-step"): 0.31, ("gemma-3-270m", "arithmetic"): 0.15,
                  ("qwen2.5-coder-0.5b-instruct", "gsm-symbolic"): 0.125}
#: Published parameter counts of the packaged GGUF models (no weights are read to plan).
KNOWN_PARAMS = {"gemma-3-270m": CALIBRATION_PARAMS, "qwen2.5-coder-0.5b-instruct": 494_032_768}


@dataclass
class Sizes:
    """The sizes a run will have: questions per split, pivots (estimated), updates and evaluations."""

    train_q: int
    val_q: int
    test_q: int
    train_pivots: int
    val_pivots: int
    test_pivots: int
    accuracy: float


def parameter_count(name: str) -> int | None:
    """Parameters of ``name`` without reading its weights (None when only loading would tell)."""
    from cca_tl.models import MODEL_ALIASES
    from cca_tl.testing import TINY_ARCHITECTURES, tiny_hf_model

    key = MODEL_ALIASES.get(name.lower(), name)
    if key in KNOWN_PARAMS:
        return KNOWN_PARAMS[key]
    if key in TINY_ARCHITECTURES:
        return sum(p.numel() for p in tiny_hf_model(key).parameters())
    try:
        from cca_tl.components import config_registry

        return config_registry(name).total_model_params
    except Exception:  # not a shipped config or a config file: the plan says it cannot scale
        return None


def sizes(config: RunConfig) -> Sizes:
    """Questions from the real split (no model needed), pivots from the model's measured accuracy."""
    from cca_tl.pipeline.stages.problems import draw

    splits = draw(config)
    accuracy = PRIOR_ACCURACY.get((config.model.lower(), config.data.task), 0.3)
    if config.model.startswith("tiny-"):
        accuracy = 0.0  # a random tiny model is never right
    wrong = lambda n: round(n * (1 - accuracy))  # noqa: E731
    return Sizes(len(splits["train"]), len(splits["val"]), len(splits["test"]), wrong(len(splits["train"])),
                 wrong(len(splits["val"])), wrong(len(splits["test"])), accuracy)


def _eval_points(config: RunConfig) -> int:
    from cca_tl.update import default_eval_steps

    steps = config.update.eval_steps
    return 1 + len(set(default_eval_steps(config.update.steps) if steps is None else steps))


def _selection_seconds(config: RunConfig, s: Sizes, u: dict[str, float]) -> float:
    """One measurement of the update's step-selection metric."""
    metric = config.update.val_metric if s.val_q else "logit_diff"
    if metric == "accuracy":
        return s.val_q * config.traces.max_new_tokens * u["gen_token"]
    if metric == "reference":
        return s.val_q * u["reference_q"]
    return (s.val_pivots or s.train_pivots) * u["fwd_record"]


def unit_costs(config: RunConfig, *, threads: int | None = None) -> dict[str, float]:
    """:data:`UNIT_SECONDS` for this config's model and this machine's threads: the fixed floor
    (:data:`FLOOR_SECONDS`) plus the rest scaled by parameters and threads (NaN on a GPU or for a model of
    unknown size; ``update_all`` stays a factor)."""
    import torch

    from cca_tl.devices import resolve_device

    n_params = parameter_count(config.model)
    threads = threads or torch.get_num_threads()
    on_cpu = resolve_device(config.device).type == "cpu"
    scale = (n_params / CALIBRATION_PARAMS) * (CALIBRATION_THREADS / threads) if n_params and on_cpu else math.nan
    return {k: math.nan if math.isnan(scale) else FLOOR_SECONDS[k] + (v - FLOOR_SECONDS[k]) * scale
            for k, v in UNIT_SECONDS.items() if k != "update_all"}


def plan(config: RunConfig, *, threads: int | None = None) -> pd.DataFrame:
    """One row per stage: the work it does, estimated seconds and peak memory (GB, host RAM on a CPU).

    ``seconds`` is NaN where nothing calibrates it (a GPU, or a model whose size is unknown)."""
    import torch

    s = sizes(config)
    n_params = parameter_count(config.model)
    u = unit_costs(config, threads=threads)
    t, cfg = config.traces, config
    traced = s.train_q + s.val_q
    selection = _eval_points(cfg) * _selection_seconds(cfg, s, u)
    update_cca = cfg.update.steps * s.train_pivots * u["update_record"] + selection
    update_control = {"random": update_cca,
                      "all": cfg.update.steps * s.train_pivots * u["update_record"] * UNIT_SECONDS["update_all"] + selection}
    variants = ["base", "cca", *cfg.evaluate.controls]
    per_variant = (s.test_q * t.max_new_tokens * u["gen_token"] + s.test_pivots * u["fwd_record"]
                   + 2 * cfg.evaluate.retention_texts * u["retention_text"])
    ablation_passes = 2 * (2 + cfg.analysis.ablation_random_sets + 1) + 2 * cfg.analysis.faithfulness_points + 1
    rows = [
        ("problems", f"{s.train_q} train / {s.val_q} val / {s.test_q} test questions", 0.0),
        ("traces", f"{traced} questions × {1 + t.n_samples} traces × ≤ {t.max_new_tokens} tokens",
         u["load"] + traced * (1 + t.n_samples) * t.max_new_tokens * u["gen_token"]),
        ("localize", f"~{s.train_pivots} train + ~{s.val_pivots} val pivots (at {s.accuracy:.0%} accuracy)", 0.0),
        ("dcm", f"{cfg.dcm.epochs} epochs × ~{s.train_pivots} pivots", cfg.dcm.epochs * s.train_pivots * u["dcm_record"]),
        ("update", f"{cfg.update.steps} steps × ~{s.train_pivots} pivots, {_eval_points(cfg)} selections "
                   f"({cfg.update.val_metric})", update_cca),
        ("evaluate", f"{len(variants)} variants × ({s.test_q} test questions + ~{s.test_pivots} test pivots); "
                     f"controls' updates: {', '.join(cfg.evaluate.controls) or 'none'}",
         len(variants) * per_variant + sum(update_control[c] for c in cfg.evaluate.controls)),
        ("analysis", f"{ablation_passes} ablation passes × ~{s.train_pivots} pivots",
         ablation_passes * s.train_pivots * u["fwd_record"]),
        ("report", "report.md and report.html", 0.0),
    ]
    weights_gb = (n_params or math.nan) * torch.finfo(getattr(torch, cfg.dtype)).bits / 8 / 1e9
    peak = BASE_RSS_GB + MEM_PER_WEIGHT_GB * weights_gb
    table = pd.DataFrame(rows, columns=["stage", "work", "seconds"]).set_index("stage")
    table["peak_gb"] = [BASE_RSS_GB if stage == "problems" else peak for stage in table.index]
    if "all" in cfg.evaluate.controls:
        table.loc["evaluate", "peak_gb"] += ALL_CONTROL_MEM_PER_WEIGHT_GB * weights_gb
    return table


def describe(config: RunConfig, table: pd.DataFrame) -> str:
    """The plan as text: the table, the totals, and what the estimate rests on."""
    total, peak = table["seconds"].sum(skipna=False), table["peak_gb"].max()
    from cca_tl.devices import resolve_device

    head = (f"Plan for {config.model} ({config.dtype}) on {resolve_device(config.device)}: {config.data.task} "
            f"task.\n\n"
            f"{table.to_string(float_format=lambda x: f'{x:,.1f}')}\n\n")
    if math.isnan(total):
        memory = "unknown" if math.isnan(peak) else f"≈ {peak:.1f} GB (host estimate)"
        return head + ("No time estimate: per-unit costs are measured on CPUs only and need the model's parameter "
                       f"count. Peak memory {memory}.")
    return head + (f"Estimated total {total / 60:.1f} min of stage time, peak ≈ {peak:.1f} GB RAM. Per-unit costs "
                   "are measured on Gemma-3-270M (2 CPU cores) and scaled by parameters and threads above a fixed "
                   "per-call floor; pivots are estimated from the model's accuracy. analyses/plan_check.md and "
                   "plan_check_tiny.md say how close this came.")
