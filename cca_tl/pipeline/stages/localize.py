"""Stage ``localize``: pivotal-token records (Prefix, Branching or Reference) from the traces of weak templates."""

from __future__ import annotations

from cca_tl._io import atomic_directory
from cca_tl.errors import EmptyLocalizationError
from cca_tl.pipeline.stage import Stage


def run(run) -> dict:
    from cca_tl.localize import localize_branching, localize_prefix, localize_reference
    from cca_tl.tasks import macro_accuracy, weak_templates

    cfg = run.config
    traces, split_of = run.traces(), run.problems().split_of()
    train_rows = [dict(template_id=t["template_id"], correct=t["greedy_correct"]) for t in traces
                  if split_of[(t["template_id"], t["instance_id"])] == "train"]
    _, per_template = macro_accuracy(train_rows)
    weak = set(weak_templates(per_template, cfg.traces.weak_threshold))
    kept = traces.filter(lambda t: t["template_id"] in weak, keep_in_memory=True)
    if cfg.traces.localization == "prefix":
        records = localize_prefix(kept, run.model.tokenizer)
    elif cfg.traces.localization == "reference":
        splits = run.problems()
        problem = {(p.template_id, p.instance_id): p for p in splits.train + splits.val}
        records = localize_reference([problem[(t["template_id"], t["instance_id"])] for t in kept],
                                     kept["prompt_ids"], kept["greedy_text"], kept["greedy_correct"],
                                     run.model.tokenizer)
    else:
        records = localize_branching(kept, run.session.restore(), max_new_tokens=cfg.traces.max_new_tokens,
                                     batch_size=cfg.traces.gen_batch_size)
    splits = [split_of[(t, i)] for t, i in zip(records["template_id"], records["instance_id"])]
    n_train = splits.count("train")
    if n_train == 0:
        raise EmptyLocalizationError(
            f"No {cfg.traces.localization} localization record on the train split: {int(sum(traces['flipped']))} of "
            f"{len(traces)} questions had a trace of opposite correctness, "
            f"{len(traces) - int(sum(traces['greedy_correct']))} a wrong greedy answer; weak templates: {sorted(weak)}. "
            "Trace more questions (train_per_template), sample more (n_samples), or pick a task the model "
            "solves sometimes.")
    records = records.add_column("split", splits)
    with atomic_directory(run.dir / "localization", overwrite=True) as staging:
        records.save_to_disk(str(staging))
    return dict(records=len(records), train=n_train, val=len(records) - n_train, weak_templates=sorted(weak),
                train_macro_accuracy=float(per_template["accuracy"].mean()))


STAGE = Stage("localize", ("traces.weak_threshold", "traces.localization"), run)
