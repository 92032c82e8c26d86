#!/usr/bin/env bash
# The test suite, as CI runs it: engine, images, install, the static checks (scripts/check.sh: ruff, mypy,
# import-linter), then pytest (unit tests and integration tests against the real Docker engine).
#   bash scripts/test.sh            # everything (CI)
#   bash scripts/test.sh --quick    # the quick tier: unit tests and decisions, no Docker, no Slurm, no images,
#                                   # not the trainers' own tests (tests/trainer)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--quick" ]; then
  shift
  bash scripts/install.sh
  # No engine: a test that needs one is marked `integration` and left out; DOCKER_HOST points nowhere so that one
  # that forgot its mark fails here instead of quietly using a local engine.
  export DOCKER_HOST="unix:///nonexistent/runner-quick-tier.sock"
  # tests/trainer (the trainers in the images, trained on the host's torch) is left to the full suite.
  exec .venv/bin/python -m pytest -q -m "not integration" --ignore=tests/trainer -n "${RUNNER_TEST_WORKERS:-auto}" "$@"
fi
bash scripts/ensure-docker.sh
bash scripts/ensure-slurm.sh
bash images/build-offline.sh
bash scripts/install.sh
bash scripts/check.sh
# In parallel: RUNNER_TEST_WORKERS pytest-xdist workers (default 6: on 2 cores many tests wait on containers,
# trainers, a held lock or Slurm's clock, not on a core; with 4 the cores stood idle a fifth of the time for minutes,
# with 6 they are busy to the end); tests that share the Slurm cluster or a private engine run on one worker in
# turn (tests/xdist_groups.py).  --durations: the slowest tests in every CI log (issue 23's budget).
exec .venv/bin/python -m pytest -q -n "${RUNNER_TEST_WORKERS:-6}" --durations=30 "$@"
