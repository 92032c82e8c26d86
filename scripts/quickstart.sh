#!/usr/bin/env bash
# One command from a fresh machine to a demo chain that makes a decision:
# Docker engine (installed and started if missing), offline images, runner in
# .venv, then `runner apply specs/demo/pipeline-diverge.yaml`: phase 1's loss
# diverges, the divergence guard stops it, the failure branch (restart.yaml) runs;
# then `runner report` writes why, as plots, into report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-docker.sh
bash images/build-offline.sh
bash scripts/install.sh
.venv/bin/runner plan specs/demo/pipeline-diverge.yaml
.venv/bin/runner apply specs/demo/pipeline-diverge.yaml
.venv/bin/runner status
.venv/bin/runner report -o report.html
