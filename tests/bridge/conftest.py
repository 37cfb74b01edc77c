"""The bridge tier: TransformerLens 4 (``TransformerBridge``) tests. They run in the environment of
``scripts/setup-tl4.sh`` (``.venv-tl4/bin/python -m pytest tests/bridge``, a CI step of its own) and are
skipped, saying so, where transformer-lens 3.x is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cca_tl.backend import TL_MAJOR

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    if TL_MAJOR >= 4:
        return
    skip = pytest.mark.skip(reason="bridge tier: needs transformer-lens 4.x (bash scripts/setup-tl4.sh; "
                                   ".venv-tl4/bin/python -m pytest tests/bridge)")
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(skip)
