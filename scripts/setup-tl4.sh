#!/usr/bin/env bash
# A second environment, .venv-tl4, with TransformerLens 4.x (TransformerBridge) beside the default .venv
# (TransformerLens 3.9, HookedTransformer). The core install pins transformer-lens < 4, so pip cannot put 4.x in
# the same environment: this installs cca_tl's other dependencies from pyproject.toml, then transformer-lens
# 4.x, then cca_tl itself without dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TL4=${TL4:-transformer-lens==4.3.0}
[ -x .venv-tl4/bin/python ] || "$PYTHON" -m venv .venv-tl4
pip_install() {
  if ! .venv-tl4/bin/pip install --quiet --disable-pip-version-check "$@" > .venv-tl4/pip.log 2>&1; then
    grep -v "^WARNING: Location" .venv-tl4/pip.log >&2
    echo "setup-tl4: pip install $* failed" >&2
    return 1
  fi
}
pip_install torch==2.13.0
mapfile -t deps < <(.venv-tl4/bin/python - <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for dep in project["dependencies"] + project["optional-dependencies"]["test"]:
    if not dep.replace("_", "-").startswith("transformer-lens"):
        print(dep)
PY
)
pip_install "$TL4" "${deps[@]}"
pip_install --no-deps -e .
.venv-tl4/bin/python - <<'PY'
from importlib.metadata import version
print(f"cca_tl (TransformerLens 4 environment) ready: torch {version('torch')}, "
      f"transformer-lens {version('transformer-lens')}, transformers {version('transformers')}")
PY
