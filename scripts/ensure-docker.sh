#!/usr/bin/env bash
# Make sure a Docker engine answers and docker-compose is there; install and start them if
# not (needs root).  Used by scripts/quickstart.sh, scripts/test.sh and CI.  Safe to rerun.
set -euo pipefail
say() { printf '[ensure-docker] %s\n' "$*" >&2; }

missing=()
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  missing+=(docker-compose)
fi
# The GPU tests (tests/integration/gpu_engine.py): a static busybox for their image, and unshare and ip
# to start a private engine in its own network namespace.
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
  missing+=(busybox-static)
fi
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# The live view's test drives `runner apply` in a real terminal (tests/integration/test_live_view.py); the web
# page's test opens it in headless Chromium (tests/integration/test_http.py).
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing ${missing[*]} and this is not root: install them (sudo apt-get install -y ${missing[*]})"
    exit 1
  fi
  say "installing ${missing[*]} from Debian packages"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "no Docker engine answers and this is not root: start it (sudo systemctl start docker) or set DOCKER_HOST"
  exit 1
fi
if command -v systemctl >/dev/null 2>&1 && systemctl start docker 2>/dev/null; then
  :
else
  say "starting dockerd in the background (log: /var/log/runner-dockerd.log)"
  # its own session: a daemon started from a job that is later killed (a CI step, a tool call) must outlive it
  setsid nohup dockerd >/var/log/runner-dockerd.log 2>&1 < /dev/null &
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
