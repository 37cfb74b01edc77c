"""The pipeline's stages, one module each, in order (a stage's type: :class:`cca_tl.pipeline.stage.Stage`;
their names, in order: :data:`cca_tl.pipeline.stage.STAGE_NAMES`)."""

from __future__ import annotations

from cca_tl.pipeline.stage import STAGE_NAMES, Stage
from cca_tl.pipeline.stages import analysis, dcm, evaluate, localize, problems, report, traces, update

STAGES: tuple[Stage, ...] = tuple(m.STAGE for m in (problems, traces, localize, dcm, update, evaluate, analysis,
                                                      report))
if tuple(s.name for s in STAGES) != STAGE_NAMES:  # a stage added to one list and not the other
    raise ImportError(f"The stage modules {[s.name for s in STAGES]} do not match STAGE_NAMES {STAGE_NAMES}.")


def stage_names() -> tuple[str, ...]:
    """The stages' names in the order they run."""
    return STAGE_NAMES


__all__ = ["STAGES", "STAGE_NAMES", "Stage", "stage_names"]
