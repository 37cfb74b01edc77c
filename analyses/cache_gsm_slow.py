"""Generate the 17 slow GSM-Symbolic templates' instances once, into cca_tl's cache, in the background.

    nohup .venv/bin/python analyses/cache_gsm_slow.py --n 8 --seeds 0 1 2 > runs/gsm_slow.log 2>&1 &

Their constrained variables make the package's rejection sampler take ~45 s per instance (2 CPU cores), so
``gsm_symbolic`` leaves them out unless ``include_slow=True``. Each template's instances are written to the
cache atomically when it finishes (``cca_tl.tasks.gsm_symbolic`` caches per template, seed and count), so
this resumes per template after a kill, and afterwards ``gsm_symbolic(n, seed=s, include_slow=True)`` with the
same ``n`` and seed reads all 100 templates at once. Prints the seconds per template.
"""

from __future__ import annotations

import argparse
import time

from cca_tl.tasks import SLOW_TEMPLATES, gsm_symbolic


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8, help="instances per template (the same n later reads the cache)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    for seed in args.seeds:
        for template in sorted(SLOW_TEMPLATES):
            start = time.perf_counter()
            gsm_symbolic(args.n, seed=seed, templates=[template], include_slow=True)
            print(f"seed {seed} {template}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
