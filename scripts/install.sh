#!/usr/bin/env bash
# Install runner (and its test dependencies) into .venv.  Safe to rerun.
#   bash scripts/install.sh           # runner + test extras
# torch is installed first at a version that has a local CPU build here, so the
# ">=1.13" range in pyproject.toml does not pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${RUNNER_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install -q "$TORCH_SPEC"
fi
.venv/bin/pip install -q -e ".[test]"
echo "[install] runner installed in .venv (activate with: source .venv/bin/activate)" >&2
