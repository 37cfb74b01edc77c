"""What a pipeline stage is (the list of them, in order, is :data:`cca_tl.pipeline.stages.STAGES`).

A stage is a name, the config keys its results depend on, and a function of the
:class:`~cca_tl.pipeline.run.Run` that reads the artifacts of earlier stages from the run directory, writes
its own atomically and returns the small summary that goes into its marker ``stages/<name>.json``. This
module imports nothing of the run, so the run can import the stage list at its top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from cca_tl.pipeline.config import RunConfig


@dataclass(frozen=True)
class Stage:
    name: str
    config_keys: tuple[str, ...]  # the RunConfig keys (or whole sections) this stage's own results depend on
    run: Callable[[Any], dict]  # called with the Run; returns the marker's summary

    def keys(self) -> tuple[str, ...]:
        """``config_keys`` with each section name expanded to its dotted keys."""
        every = RunConfig.keys()
        return tuple(k for key in self.config_keys for k in every if k == key or k.startswith(key + "."))
