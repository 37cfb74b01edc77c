"""Stage ``problems``: the task's questions, split train / val / test and capped per template."""

from __future__ import annotations

from cca_tl.errors import CCAError
from cca_tl.pipeline.artifacts import ProblemSplits
from cca_tl.pipeline.stage import Stage


def cap_per_template(items: list, cap: int | None) -> list:
    """The first ``cap`` problems of every template (all of them for ``None``)."""
    if cap is None:
        return list(items)
    seen: dict[str, int] = {}
    out = []
    for p in items:
        if seen.get(p.template_id, 0) < cap:
            out.append(p)
            seen[p.template_id] = seen.get(p.template_id, 0) + 1
    return out


def draw(cfg) -> dict[str, list]:
    """The config's problems, split train / val / test and capped per template (no model is needed)."""
    from cca_tl.tasks import arithmetic_problems, gsm_symbolic, split_problems, two_step_problems

    if cfg.data.task in ("two-step", "arithmetic"):
        make = two_step_problems if cfg.data.task == "two-step" else arithmetic_problems
        problems = make(cfg.data.n_per_template, seed=cfg.seed, max_value=cfg.data.max_value, templates=cfg.data.templates)
    else:
        problems = gsm_symbolic(cfg.data.n_per_template, seed=cfg.seed, templates=cfg.data.templates,
                                max_clauses=cfg.data.max_clauses)
    if cfg.data.n_templates is not None:
        keep = sorted({p.template_id for p in problems})[:cfg.data.n_templates]
        problems = [p for p in problems if p.template_id in keep]
    splits = split_problems(problems, seed=cfg.seed, fractions=cfg.data.split)
    caps = dict(train=cfg.data.train_per_template, val=cfg.data.val_per_template, test=cfg.data.test_per_template)
    return {name: cap_per_template(items, caps[name]) for name, items in splits.items()}


def run(run) -> dict:
    capped = draw(run.config)
    artifact = ProblemSplits(**capped)
    if not artifact.train or not artifact.test:
        raise CCAError(f"The split left {len(artifact.train)} train and {len(artifact.test)} test problems; "
                       "raise n_per_template.")
    artifact.save(run.dir / "problems.json")
    return {name: len(items) for name, items in capped.items()}


STAGE = Stage("problems", ("seed", "data"), run)
