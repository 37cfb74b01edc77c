"""The pipeline's stages, one module each, in order (a stage's type: :class:`cca_tl.pipeline.stage.Stage`)."""

from __future__ import annotations

from cca_tl.pipeline.stage import Stage

STAGES: tuple[Stage, ...] = ()


def stage_names() -> tuple[str, ...]:
    return tuple(s.name for s in STAGES)


def _stages() -> tuple[Stage, ...]:
    # Imported here, after stage_names exists: the report stage lists the stages.
    from cca_tl.pipeline.stages import analysis, dcm, evaluate, localize, problems, report, traces, update

    return tuple(m.STAGE for m in (problems, traces, localize, dcm, update, evaluate, analysis, report))


STAGES = _stages()

__all__ = ["STAGES", "Stage", "stage_names"]
