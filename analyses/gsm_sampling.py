"""Time GSM-Symbolic instantiation of the 17 slow templates: rejection sampling against the package.

    .venv/bin/python analyses/gsm_sampling.py [--n 50] [--package gsm-1141 ...]

The package (multilingual-gsm-symbolic) enumerates every combination of a template's constrained variables
and keeps the valid ones before drawing; for these 17 templates that is 0.4M-9.1M combinations checked by
an AST interpreter. ``cca_tl.tasks.gsm_symbolic`` draws them by rejection instead (uniform over the same
valid set; ``tests/test_tasks.py`` checks the distribution). Writes ``analyses/gsm_sampling.md``: per
template the product size, the draws per accepted instance and the seconds for ``--n`` instances; with
``--package``, the package's own seconds for the named templates (minutes each, so opt-in).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from random import Random

import pandas as pd

from cca_tl.tasks import SLOW_TEMPLATES, constrained_options, draw_constrained, gsm_templates, sample_by_rejection


def measure(template_id: str, n: int, package: bool) -> dict:
    template = gsm_templates()[template_id]
    options = constrained_options(template)
    rng = Random(0)
    draws = sum(draw_constrained(template, options, rng)[1] for _ in range(n))
    start = time.perf_counter()
    sample_by_rejection(template, n, seed=0)
    row = dict(template=template_id, combinations=math.prod(len(o) for o in options),
               draws_per_instance=round(draws / n, 1), rejection_seconds=round(time.perf_counter() - start, 2))
    if package:
        start = time.perf_counter()
        template.generate_questions(n=n, seed=0, verbose=False)
        row["package_seconds"] = round(time.perf_counter() - start, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50, help="instances per template")
    parser.add_argument("--package", nargs="*", default=[], help="also time the package's enumeration for these")
    args = parser.parse_args()
    unknown = sorted(set(args.package) - SLOW_TEMPLATES)
    if unknown:
        parser.error(f"--package takes slow templates only; not slow: {', '.join(unknown)}. "
                     f"The 17: {', '.join(sorted(SLOW_TEMPLATES))}")
    rows = [measure(t, args.n, t in args.package) for t in sorted(SLOW_TEMPLATES)]
    table = pd.DataFrame(rows)
    text = (f"# GSM-Symbolic: the 17 slow templates by rejection sampling\n\n"
            f"Command: `.venv/bin/python analyses/gsm_sampling.py --n {args.n}"
            + (f" --package {' '.join(args.package)}" if args.package else "")
            + "` (2 CPU cores, beside other work).\n\n"
            f"{args.n} instances per template. `combinations`: the product of the constrained variables' values "
            "the package enumerates; `draws_per_instance`: draws per accepted instance (1 / acceptance rate); "
            "`package_seconds`: `Template.generate_questions` itself, where timed.\n\n"
            + table.to_markdown(index=False)
            + f"\n\nAll 17 by rejection: {table.rejection_seconds.sum():.1f} s.\n")
    out = Path(__file__).with_name("gsm_sampling.md")
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
