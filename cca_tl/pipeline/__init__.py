"""The CCA pipeline as resumable stages over a run directory (the API behind ``cca-tl run``).

``problems → traces → localize → dcm → update → evaluate → analysis → report``, one module per stage in
:mod:`cca_tl.pipeline.stages`. Each stage reads the artifacts of the stages before it from the run
directory and writes its own atomically, then a marker ``stages/<stage>.json`` (timing and headline
numbers). A killed run resumes at the first stage without a marker; a run directory refuses a config that
differs from the one it was started with (except where it runs: ``device``, ``n_devices``). The model
and everything needed to restore its unedited weights belong to one :class:`ModelSession`.

>>> from cca_tl.pipeline import RunConfig, run
>>> summary = run(RunConfig(), "runs/easy")                      # the README's main job
>>> summary = run(RunConfig(device="cuda", dtype="bfloat16"), "runs/gpu")

Run directory::

    config.json                    the RunConfig
    problems.json                  train / val / test problems (ProblemSplits)
    traces/                        greedy + sampled traces (datasets.Dataset), train + val questions
    localization/                  error-localization records with a ``split`` column (datasets.Dataset)
    dcm/                           mask.safetensors, mask.json, gains.safetensors, history.csv, result.json
    update/                        edit.safetensors (new values of the edited weight entries only),
                                   history.csv, result.json
    evaluate/                      <variant>.json and <variant>_records.csv; accuracy.csv
    analysis/                      component tables, mask.png, ablation.csv, faithfulness.csv/.png,
                                   attention.html
    report.md                      everything above, tied together
"""

from cca_tl.errors import EmptyLocalizationError, EmptyMaskError, OutOfMemory, RunConfigMismatch
from cca_tl.pipeline.artifacts import ProblemSplits
from cca_tl.pipeline.config import CONTROL_VARIANTS, PRESETS, RunConfig, preset
from cca_tl.pipeline.run import Run, run
from cca_tl.pipeline.session import ModelSession
from cca_tl.pipeline.stages import STAGES as STAGE_SPECS, Stage, stage_names
from cca_tl.pipeline.stages.report import render_report, verdict

STAGES = stage_names()

__all__ = ["CONTROL_VARIANTS", "PRESETS", "STAGES", "STAGE_SPECS", "EmptyLocalizationError", "EmptyMaskError",
           "ModelSession", "OutOfMemory", "ProblemSplits", "Run", "RunConfig", "RunConfigMismatch", "Stage",
           "preset", "render_report", "run", "verdict"]
