"""Deprecated: the family table moved to :mod:`cca_tl.arch` (one module per parameter layout). This module
re-exports its names for one version and warns on import."""

from __future__ import annotations

import warnings

from cca_tl.arch import *  # noqa: F401,F403  (the old public names: the star takes cca_tl.arch.__all__)

warnings.warn("cca_tl.families is deprecated; import from cca_tl.arch (the same names).", DeprecationWarning,
              stacklevel=2)
from cca_tl.arch import BiasGroup as BiasFamily  # noqa: E402,F401  (renamed: a bias group, not an HF family)
