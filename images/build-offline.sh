#!/usr/bin/env bash
# Build runner's container images without any container registry.
#
#   bash images/build-offline.sh            # base (cached by tag and recipe) + trainer + indextts-sim + server (Docker layer cache),
#                                           # checkpoint trainers, indextts-tiny (cached by tag and base recipe)
#   REBUILD=1 bash images/build-offline.sh  # ignore the cache
#
# The base image is made from Debian packages (debootstrap + `docker import`),
# so the only network it needs is a Debian mirror and PyPI (for the pure-Python
# tensorboard wheel, which Debian does not package).  Each image is cached by
# tag: a rerun that finds the tag skips the build.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BASE_TAG=${RUNNER_BASE_IMAGE:-runner-base:bookworm}
TRAINER_TAG=${RUNNER_TRAINER_IMAGE:-runner-trainer:latest}
INDEXTTS_SIM_TAG=${RUNNER_INDEXTTS_SIM_IMAGE:-indextts-sim:latest}
SERVER_TAG=${RUNNER_SERVER_IMAGE:-runner-server:latest}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TB_VERSION=${TENSORBOARD_VERSION:-2.14.1}

have_image() { [ -z "${REBUILD:-}" ] && docker image inspect "$1" >/dev/null 2>&1; }
# The base's package list is its recipe: an image built from another list (an older checkout's) is rebuilt, not
# reused because its tag matches.
BASE_PACKAGES=python3,python3-torch,python3-numpy,python3-pip,python3-protobuf,python3-packaging,python3-six,python3-absl,libopenblas0-pthread,ca-certificates,procps
# OpenBLAS's worker threads spin between a trainer's steps: one thread does these images' small products as fast and
# spends a sixth of the CPU (train.py, 300 steps paced at 0.05 s: 7 CPU-s against 28), which a loaded machine needs.
BASE_ENV=OPENBLAS_NUM_THREADS=1
BASE_RECIPE=$(printf '%s %s %s' "$BASE_PACKAGES" "$BASE_ENV" "$TB_VERSION" | sha256sum | cut -c1-16)
# An image on the current base: its tag is there and it carries the base recipe's mark (images built FROM the base
# inherit it, so a tag-cached image on an older base is rebuilt too).
on_current_base() {
  have_image "$1" && docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$1" \
    | grep -qx "RUNNER_BASE_RECIPE=$BASE_RECIPE"
}
say() { printf '[build-offline] %s\n' "$*" >&2; }

command -v docker >/dev/null || { say "docker CLI not found: apt-get install -y docker.io"; exit 1; }
docker info >/dev/null 2>&1 || { say "Docker engine not reachable (is dockerd running?)"; exit 1; }

if on_current_base "$BASE_TAG"; then
  say "$BASE_TAG present, skipping (REBUILD=1 to force)"
else
  command -v debootstrap >/dev/null || { say "installing debootstrap"; apt-get install -y -q debootstrap >/dev/null; }
  work=$(mktemp -d /var/tmp/runner-rootfs.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  rootfs="$work/rootfs"
  say "debootstrap bookworm into $rootfs (takes a few minutes)"
  # libopenblas0-pthread: Debian's torch does its matrix products in the reference BLAS without it, ~10x slower on
  # CPU (124 ms against 12 ms a step for train.py's tiny GPT), and the test suite is bound by the trainers' CPU.
  debootstrap --variant=minbase --include="$BASE_PACKAGES" \
    bookworm "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  say "adding tensorboard $TB_VERSION (pure-Python wheel, no dependencies pulled)"
  mkdir -p "$rootfs/tmp/wheels"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$rootfs/tmp/wheels" "tensorboard==$TB_VERSION"
  wheel=$(cd "$rootfs/tmp/wheels" && ls -- *.whl)
  chroot "$rootfs" python3 -m pip install -q --no-deps --no-index --break-system-packages "/tmp/wheels/$wheel"
  rm -rf "$rootfs/tmp/wheels" "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  chroot "$rootfs" python3 -c "import torch, torch.utils.tensorboard; print('torch', torch.__version__)"
  say "importing $BASE_TAG"
  tar -C "$rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' -c "ENV $BASE_ENV" -c "ENV RUNNER_BASE_RECIPE=$BASE_RECIPE" -c 'CMD ["python3"]' - "$BASE_TAG" >/dev/null
fi

# Always built: Docker's layer cache makes an unchanged trainer a no-op, and a changed
# train.py is never hidden behind a stale tag.
say "building $TRAINER_TAG from $BASE_TAG"
docker build -q --build-arg "BASE_IMAGE=$BASE_TAG" -t "$TRAINER_TAG" "$here/trainer" >/dev/null
# The simulated IndexTTS-2 GPT trainer (a test double for runner's end-to-end tests).
say "building $INDEXTTS_SIM_TAG from $BASE_TAG"
docker build -q --build-arg "BASE_IMAGE=$BASE_TAG" -t "$INDEXTTS_SIM_TAG" "$here/indextts-sim" >/dev/null
# The server image (compose.yaml's runner and tensorboard services).  Its Python dependencies
# are downloaded here as wheels for the base image's Python (3.11), so the build needs no network.
wheels="$here/runner/wheels"
if [ -n "${REBUILD:-}" ] || [ ! -f "$wheels/.complete" ] || [ "$here/runner/requirements.txt" -nt "$wheels/.complete" ]; then
  say "downloading the server's Python wheels into $wheels"
  rm -rf "$wheels" && mkdir -p "$wheels"
  python3 -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$wheels" -r "$here/runner/requirements.txt"
  touch "$wheels/.complete"
fi
say "building $SERVER_TAG from $BASE_TAG"
docker build -q --build-arg "BASE_IMAGE=$BASE_TAG" -f "$here/runner/Dockerfile" -t "$SERVER_TAG" "$here/.." >/dev/null
# The real trainers for the checkpoint tests (HF Trainer, Lightning): exact pins, wheels downloaded here
# with --no-deps (torch and numpy stay the base image's Debian packages); cached like the server's.
CKPT_TAG=${RUNNER_CHECKPOINT_TRAINERS_IMAGE:-runner-checkpoint-trainers:latest}
cwheels="$here/checkpoint-trainers/wheels"
if [ -n "${REBUILD:-}" ] || [ ! -f "$cwheels/.complete" ] || [ "$here/checkpoint-trainers/requirements.txt" -nt "$cwheels/.complete" ]; then
  say "downloading the checkpoint trainers' wheels into $cwheels"
  rm -rf "$cwheels" && mkdir -p "$cwheels"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$cwheels" -r "$here/checkpoint-trainers/requirements.txt"
  touch "$cwheels/.complete"
fi
say "building $CKPT_TAG from $BASE_TAG"
docker build -q --build-arg "BASE_IMAGE=$BASE_TAG" -t "$CKPT_TAG" "$here/checkpoint-trainers" >/dev/null
# The tiny IndexTTS-2 GPT (real training on CPU with IndexTTS-2's own model class, for the incident's CI scenario):
# wheels downloaded here with --no-deps (exact pins; indextts2-inference's model code on Debian's torch), then the
# image builds its data, tokenizer and pretrained base model itself.  Cached by tag and base recipe: the pretraining is not redone.
TINY_TAG=${RUNNER_INDEXTTS_TINY_IMAGE:-indextts-tiny:latest}
twheels="$here/indextts-tiny/wheels"
if on_current_base "$TINY_TAG"; then
  say "$TINY_TAG present, skipping (REBUILD=1 to force)"
else
  if [ -n "${REBUILD:-}" ] || [ ! -f "$twheels/.complete" ] || [ "$here/indextts-tiny/requirements.txt" -nt "$twheels/.complete" ]; then
    say "downloading the tiny IndexTTS-2 image's wheels into $twheels"
    rm -rf "$twheels" && mkdir -p "$twheels"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
      -d "$twheels" -r "$here/indextts-tiny/requirements.txt"
    touch "$twheels/.complete"
  fi
  say "building $TINY_TAG from $BASE_TAG (makes its data and pretrains its base model: about a minute)"
  docker build -q --build-arg "BASE_IMAGE=$BASE_TAG" -t "$TINY_TAG" "$here/indextts-tiny" >/dev/null
fi
say "ready: $BASE_TAG $TRAINER_TAG $INDEXTTS_SIM_TAG $SERVER_TAG $CKPT_TAG $TINY_TAG"
