#!/usr/bin/env bash
# Make sure a Docker engine answers; install and start one if not (needs root).
# Used by scripts/quickstart.sh, scripts/test.sh and CI.  Safe to rerun.
set -euo pipefail
say() { printf '[ensure-docker] %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "no Docker engine answers and this is not root: start it (sudo systemctl start docker) or set DOCKER_HOST"
  exit 1
fi
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  say "installing docker.io and debootstrap from Debian packages"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null 2>&1 && systemctl start docker 2>/dev/null; then
    :
  else
    say "starting dockerd in the background (log: /var/log/runner-dockerd.log)"
    nohup dockerd >/var/log/runner-dockerd.log 2>&1 &
  fi
fi
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    say "Docker engine is up"
    exit 0
  fi
  sleep 1
done
say "Docker engine did not come up in 60 s; see /var/log/runner-dockerd.log"
tail -20 /var/log/runner-dockerd.log >&2 || true
exit 1
