"""The pipeline's stages, one module each, in order.

A stage is a name, the config keys its results depend on, and a function of the :class:`Run` that reads
the artifacts of earlier stages from the run directory, writes its own atomically and returns the small
summary that goes into its marker ``stages/<name>.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from cca_tl.pipeline.run import Run


@dataclass(frozen=True)
class Stage:
    name: str
    config_keys: tuple[str, ...]  # the RunConfig keys (or whole sections) this stage's own results depend on
    run: Callable[["Run"], dict]

    def keys(self) -> tuple[str, ...]:
        """``config_keys`` with each section name expanded to its dotted keys."""
        from cca_tl.pipeline.config import RunConfig

        every = RunConfig.keys()
        return tuple(k for key in self.config_keys for k in every if k == key or k.startswith(key + "."))


def _stages() -> tuple[Stage, ...]:
    from cca_tl.pipeline.stages import analysis, dcm, evaluate, localize, problems, report, traces, update

    return tuple(m.STAGE for m in (problems, traces, localize, dcm, update, evaluate, analysis, report))


STAGES: tuple[Stage, ...] = ()


def stage_names() -> tuple[str, ...]:
    return tuple(s.name for s in STAGES)


STAGES = _stages()
