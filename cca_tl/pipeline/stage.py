"""What a pipeline stage is, and the stages' names in order (the stages themselves: :data:`cca_tl.pipeline.stages.STAGES`).

A stage is a name, the config keys its results depend on, and a function of the
:class:`~cca_tl.pipeline.run.Run` that reads the artifacts of earlier stages from the run directory, writes
its own atomically and returns the small summary that goes into its marker ``stages/<name>.json``. This
module imports nothing of the run, so the run can import the stage list at its top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from cca_tl.pipeline.config import RunConfig

#: The stages in the order they run (each one a module of :mod:`cca_tl.pipeline.stages`). Declared here, in
#: the leaf, so a stage that needs the list (the report lists every stage) does not import the list's module.
STAGE_NAMES: tuple[str, ...] = ("problems", "traces", "localize", "dcm", "update", "evaluate", "analysis", "report")


@dataclass(frozen=True)
class Stage:
    name: str
    config_keys: tuple[str, ...]  # the RunConfig keys (or whole sections) this stage's own results depend on
    run: Callable[[Any], dict]  # called with the Run; returns the marker's summary

    def keys(self) -> tuple[str, ...]:
        """``config_keys`` with each section name expanded to its dotted keys."""
        every = RunConfig.keys()
        return tuple(k for key in self.config_keys for k in every if k == key or k.startswith(key + "."))
