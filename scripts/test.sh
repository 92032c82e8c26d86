#!/usr/bin/env bash
# The test suite, as CI runs it: engine, images, install, the static checks (scripts/check.sh: ruff, mypy,
# import-linter), then pytest (unit tests and integration tests against the real Docker engine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-docker.sh
bash scripts/ensure-slurm.sh
bash images/build-offline.sh
bash scripts/install.sh
bash scripts/check.sh
exec .venv/bin/python -m pytest -q "$@"
