"""What a sweep reads off a model: greedy accuracy, forward-only metrics, and the edit scale that reaches a
KL target. Each reads the seed's pipeline ``Run`` (its session holds the model as it is now) and returns the
row's numbers plus per-item outcomes (``set``, ``item``, ``correct``) for paired comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from cca_tl._io import release_freed_memory

#: Search for the edit scale that reaches a KL target: stop within this factor of the target, or after this
#: many new KL measurements (each one forward of the retention texts), or at this largest scale (KL grows
#: about as α², so 64 reaches ~4,000× the trained edit's KL: room for the small edits of tight budgets).
KL_TOLERANCE, KL_MAX_TRIES, MAX_SCALE = 1.1, 7, 64.0


def forward_readings(run, answer_sets: dict, retention: dict[str, float]) -> tuple[dict, list[dict]]:
    """Forward-only metrics of the model as it is now: reference-path accuracy on each of ``answer_sets``
    (``{"test_ref": AnswerSet, "newfacts_ref": ...}``), held-out test pivot accuracy, and ``retention``
    (KL to the base model, general-text NLL and top-1: the evaluate stage's ``measure_retention`` of these
    very weights, which the caller has already measured, often inside :func:`scale_to_kl`)."""
    from cca_tl.answers import reference_path_scores
    from cca_tl.evaluate import pivot_scores

    batch = run.config.update.batch_size
    info, items = {}, []
    for name, answers in answer_sets.items():
        on_path = reference_path_scores(run.model, answers, batch)["on_path"]
        info[f"{name.removesuffix('_ref')}_reference_accuracy"] = float(on_path.float().mean())
        items += [dict(set=name, item=i, correct=float(v)) for i, v in enumerate(on_path.tolist())]
    pivots = pivot_scores(run.model, run.test_pivots())
    items += [dict(set="pivot", item=i, correct=float(d > 0)) for i, d in enumerate(pivots.pop("diffs"))]
    info.update(pivot_accuracy=pivots["pivot_accuracy"], n_pivots_test=pivots["n_pivots"],
                **retention)
    info["kl_to_base"] = info.pop("retention_kl")
    return info, items


def greedy_readings(run, newfacts: list, out_dir: Path, name: str,
                    retention: dict[str, float] | None = None) -> tuple[dict, list[dict]]:
    """Greedy accuracy on the test questions (the evaluate stage's :func:`score`, which also writes the base
    model's held-out test pivots; ``retention``: these weights' scores on general text where they were
    measured, which it then does not measure again) and on the ``newfacts`` questions."""
    from cca_tl.evaluate import accuracy
    from cca_tl.pipeline.stages.evaluate import score

    cfg = run.config
    info, test = score(run, name, out_dir, logit_diffs=False, retention=retention)
    items = [dict(set="test", item=i, correct=float(v)) for i, v in enumerate(test["correct"])]
    out = dict(test_accuracy=info["macro_accuracy"], n_test=info["n_test"])
    if newfacts:
        macro, _, records = accuracy(run.model, newfacts, run.prompt_fn(), max_new_tokens=cfg.traces.max_new_tokens,
                                     batch_size=cfg.traces.gen_batch_size, stops=run.stops(), progress=run.progress)
        out.update(newfacts_accuracy=macro, n_newfacts=len(records))
        items += [dict(set="newfacts", item=i, correct=float(v)) for i, v in enumerate(records["correct"])]
        release_freed_memory()
    return out, items


def scale_to_kl(run, edit, unedited, target: float,
                scores: dict[float, dict[str, float]] | None = None) -> tuple[float | None, float]:
    """The scale α at which ``unedited + α·(edit − unedited)`` is ``target`` nats/token from the base model
    (within :data:`KL_TOLERANCE`), found by :func:`search_scale`; None when the edit cannot reach it.
    ``scores`` (α → the evaluate stage's ``measure_retention``: KL, general-text NLL and top-1) gains every
    measurement made here. Shared between the targets of one edit, a later target starts from every
    earlier measurement (on Gemma-3-270M three targets then cost ~4-5 KL measurements instead of ~8), and
    the reading at the found α reuses its scores instead of measuring the same weights again."""
    from cca_tl.pipeline.stages.evaluate import measure_retention

    scores = {} if scores is None else scores

    def kl(alpha: float) -> float:
        run.session.apply(edit.scaled(unedited, alpha))
        scores[alpha] = measure_retention(run)
        return scores[alpha]["retention_kl"]

    return search_scale(kl, target, {alpha: s["retention_kl"] for alpha, s in scores.items()})


def search_scale(kl: Callable[[float], float], target: float,
                 measured: dict[float, float] | None = None) -> tuple[float | None, float]:
    """The α where ``kl(α)`` is ``target`` (within :data:`KL_TOLERANCE`), or None with the nearest KL.

    KL grows about as α² for small edits, so each try fits log KL against log α through the two measured
    points nearest the target and steps to where the fit meets it. Where that step repeats a measured α
    (KL far from a power law: on a tiny random model KL went 0.018 → 0.0079 from α = 1 to 0.24, then 1.3e-5
    at 0.0064, and the fit through the two nearest points kept proposing 0.0064), the search interpolates
    inside the tightest pair of measurements that bracket the target instead, and bisects it (in log α)
    where that fails, so an edit whose measurements bracket the target keeps closing in on it (within the
    :data:`KL_MAX_TRIES` measurements) instead of stopping. Every search that never repeats an α measures
    exactly what it did before that fallback existed."""
    measured = {} if measured is None else measured

    def measure(alpha: float) -> float:
        if alpha not in measured:
            measured[alpha] = kl(alpha)
        return measured[alpha]

    def distance(value: float) -> float:
        return abs(math.log(max(value, 1e-30) / target))

    measure(1.0)
    for _ in range(KL_MAX_TRIES):
        ranked = sorted(measured.items(), key=lambda p: distance(p[1]))
        alpha, value = ranked[0]
        if value <= 0:
            return None, value
        if distance(value) <= math.log(KL_TOLERANCE):
            return alpha, value
        slope = 2.0
        if len(ranked) > 1 and ranked[1][1] > 0 and ranked[1][0] != alpha:
            fitted = math.log(value / ranked[1][1]) / math.log(alpha / ranked[1][0])
            slope = fitted if fitted > 0.5 else slope
        nxt = alpha * (target / value) ** (1 / slope)
        if nxt in measured:
            nxt = _inside_bracket(measured, target)
        if nxt is None or nxt > MAX_SCALE or nxt in measured:
            break
        measure(nxt)
    alpha, value = min(measured.items(), key=lambda p: distance(p[1]))
    return (alpha, value) if distance(value) <= math.log(2) else (None, value)


def _inside_bracket(measured: dict[float, float], target: float) -> float | None:
    """A new α between the measured pair that brackets ``target`` most tightly (KL just below and just above
    it): where log KL against log α through the pair meets the target, or their geometric mean where that
    point is not strictly inside; None without a bracket."""
    below = [(a, v) for a, v in measured.items() if 0 < v < target]
    above = [(a, v) for a, v in measured.items() if v > target]
    if not below or not above:
        return None
    (a0, v0), (a1, v1) = max(below, key=lambda p: p[1]), min(above, key=lambda p: p[1])
    if a0 != a1:
        slope = math.log(v1 / v0) / math.log(a1 / a0)
        if slope > 0:
            nxt = a0 * (target / v0) ** (1 / slope)
            if min(a0, a1) < nxt < max(a0, a1) and nxt not in measured:
                return nxt
    return math.sqrt(a0 * a1)
