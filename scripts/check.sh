#!/usr/bin/env bash
# The static checks CI runs before the tests (scripts/test.sh), configured in pyproject.toml:
#   ruff         lint (pyflakes, pycodestyle, bugbear, pyupgrade) over runner/, tests/, scripts/, benchmarks/
#   mypy         types of runner/ (every body checked; new modules and the core fully annotated)
#   lint-imports the layers: cli > server > operations > engine > checkpoints/backends > decisions > store >
#                spec/metrics > units/errors; decisions pure; one module per third-party boundary
# Installed with the test extras (bash scripts/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
for step in "ruff check ." "mypy" "lint-imports --no-cache"; do
  start=$(date +%s%N)
  if ! out=$($BIN/$step 2>&1); then
    echo "$out" >&2
    echo "[check] $step: FAILED" >&2
    exit 1
  fi
  echo "[check] $step: ok ($(( ($(date +%s%N) - start) / 1000000 )) ms)" >&2
done
