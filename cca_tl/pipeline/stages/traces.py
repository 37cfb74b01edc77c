"""Stage ``traces``: a greedy and up to ``n_samples`` sampled traces per train and val question, graded."""

from __future__ import annotations

from cca_tl._io import atomic_directory
from cca_tl.pipeline.stage import Stage


def run(run) -> dict:
    from cca_tl.traces import generate_traces

    cfg, splits = run.config, run.problems()
    traces = generate_traces(run.session.restore(), splits.train + splits.val, run.prompt_fn(),
                             n_samples=cfg.traces.n_samples, max_new_tokens=cfg.traces.max_new_tokens,
                             batch_size=cfg.traces.gen_batch_size, seed=cfg.seed, stops=run.stops(), progress=run.progress)
    with atomic_directory(run.dir / "traces", overwrite=True) as staging:
        traces.save_to_disk(str(staging))
    return dict(questions=len(traces), greedy_correct=int(sum(traces["greedy_correct"])),
                pairs=int(sum(traces["flipped"])))


STAGE = Stage("traces", ("model", "dtype", "backend", "start_from", "traces.n_samples", "traces.max_new_tokens",
                         "traces.gen_batch_size"), run)
