#!/usr/bin/env bash
# One command from a fresh machine to a finished demo phase:
# Docker engine (installed and started if missing), offline images, runner in
# .venv, then `runner apply specs/demo/train.yaml` (about a minute on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-docker.sh
bash images/build-offline.sh
bash scripts/install.sh
.venv/bin/runner validate specs/demo/train.yaml
.venv/bin/runner apply specs/demo/train.yaml
.venv/bin/runner status
