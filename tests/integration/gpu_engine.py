"""A private Docker engine that accepts GPU requests on a CPU machine: the ``gpu_engine`` fixture.

Docker's engine has a built-in NVIDIA device driver. It registers itself when a program named
``nvidia-container-runtime-hook`` is on the engine's PATH at start; from then on the engine accepts
``--gpus`` / a DeviceRequest with the ``gpu`` capability, appends ``NVIDIA_VISIBLE_DEVICES`` (the
requested ids; ``0..N-1`` for a count; ``all``) to the container's environment and runs the hook as
an OCI prestart hook. The fixture starts such an engine with a **stand-in hook**: a script that
reads the OCI state from stdin like NVIDIA's hook, records its arguments, the container id and the
``NVIDIA_VISIBLE_DEVICES`` it finds in the bundle's config.json (the value NVIDIA's hook would act
on), and exits 0.

What it proves: runner's GPU request goes through Docker's real NVIDIA device path (the same
driver, the same DeviceRequest handling, the same environment and hook call a GPU host gets) and
the container starts with exactly the device ids runner recorded in its plan; and what runner
itself puts in the container's environment.
What it does not prove: no devices exist. The stand-in mounts no /dev/nvidia* nodes, injects no
driver libraries and checks no CUDA version, so nothing inside can use a GPU, the renumbering of the
granted devices from 0 (done by libnvidia-container on a real host) does not happen, and errors of
the real hook (an unknown device id, a driver mismatch) are never raised. ``scripts/gpu_check.py``
covers what a real GPU host shows.

Isolation (an earlier try of this deleted the main engine's docker0 bridge): the private engine runs
in its own network and mount namespaces (``unshare --net --mount``, loopback up), with
``--bridge none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false``, its own
``--data-root``/``--exec-root``/``--pidfile``/socket/config file under one temporary folder, its own
containerd (a tmpfs hides /run/containerd in its mount namespace) and containerd namespace. Its
socket is a file, reachable from the test process across the network namespace. It is stopped by
its PID (with the containerd and shims it started, found by that folder) and the folder is removed;
teardown fails if the main engine's docker0 bridge, present before, is gone.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

HOOK = "nvidia-container-runtime-hook"
IMAGE = "runner-test-busybox:gpu"
BUSYBOX = os.environ.get("RUNNER_BUSYBOX", "/bin/busybox")
APPLETS = ("sh", "env", "sleep", "cat", "echo", "test", "[", "true", "ls", "touch")
INSTALL_HINT = "install Debian's busybox-static (bash scripts/ensure-docker.sh does)"

HOOK_SCRIPT = """#!{python}
# Stand-in for NVIDIA's {hook}: reads the OCI state (stdin), records what it was asked, exits 0.
import json, os, sys
state = json.load(sys.stdin)
env = {{}}
with open(os.path.join(state["bundle"], "config.json")) as f:
    for item in json.load(f)["process"]["env"]:
        key, _, value = item.partition("=")
        env[key] = value  # the last one wins, as for NVIDIA's hook
record = {{"argv": sys.argv[1:], "id": state["id"], "NVIDIA_VISIBLE_DEVICES": env.get("NVIDIA_VISIBLE_DEVICES"),
          "NVIDIA_DRIVER_CAPABILITIES": env.get("NVIDIA_DRIVER_CAPABILITIES")}}
with open({log!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
"""


@dataclass
class GpuEngine:
    host: str  # the DOCKER_HOST value that points runner at it
    client: docker.DockerClient
    image: str
    hook_log: Path
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    def hook_calls(self, container_id: str | None = None) -> list[dict]:
        """What the stand-in hook was called with (for one container, or all)."""
        if not self.hook_log.exists():
            return []
        calls = [json.loads(line) for line in self.hook_log.read_text().splitlines() if line.strip()]
        return [c for c in calls if container_id is None or c["id"] == container_id]


def is_static(path: str) -> bool:
    """An ELF executable without an interpreter (PT_INTERP): it runs in an empty root filesystem."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            if struct.unpack("<I", f.read(4))[0] == 3:  # PT_INTERP
                return False
    return True


def busybox_tar() -> bytes:
    """A root filesystem of one static busybox and its applet links, as a tar for `docker import`."""
    if not os.path.exists(BUSYBOX) or not is_static(BUSYBOX):
        pytest.fail(f"no static busybox at {BUSYBOX}: {INSTALL_HINT}", pytrace=False)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in ("bin", "tmp", "dev", "proc", "sys", "etc"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, "bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    return buf.getvalue()


def import_busybox(client: docker.DockerClient, tar: bytes | None = None) -> str:
    """The test image: busybox, with NVIDIA_VISIBLE_DEVICES=all in its environment as NVIDIA's CUDA
    images have, so the tests see what a GPU request (or a CPU phase) makes of an image's value."""
    repo, tag = IMAGE.split(":")
    client.api.import_image_from_data(tar or busybox_tar(), repository=repo, tag=tag,
                                      changes=["ENV PATH=/bin", "ENV NVIDIA_VISIBLE_DEVICES=all"])
    client.images.get(IMAGE)
    return IMAGE


def _docker0() -> bool:
    return subprocess.run(["ip", "link", "show", "docker0"], capture_output=True).returncode == 0


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line names ``text`` (the engine's folder): its containerd and shims."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry))
    return found


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or "(zombie)" in _state(pid):
            return True
        time.sleep(0.1)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].splitlines()[0]
    except (OSError, IndexError):
        return ""


@pytest.fixture(scope="session")
def gpu_engine():
    """A private Docker engine with the stand-in NVIDIA hook (see the module's docstring)."""
    if os.geteuid() != 0:
        pytest.fail("the GPU tests start a private Docker engine and need root (as CI has)", pytrace=False)
    for tool in ("dockerd", "unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: bash scripts/ensure-docker.sh installs what the tests need", pytrace=False)
    tar = busybox_tar()  # fail early, before anything is started
    had_docker0 = _docker0()
    root = Path(tempfile.mkdtemp(prefix="runner-gpu-", dir="/tmp"))  # short: unix socket paths are limited
    (root / "bin").mkdir()
    hook = root / "bin" / HOOK
    hook.write_text(HOOK_SCRIPT.format(python=sys.executable, hook=HOOK, log=str(root / "hook.jsonl")))
    hook.chmod(0o755)
    (root / "daemon.json").write_text("{}")  # never the host's /etc/docker/daemon.json
    sock = root / "docker.sock"
    dockerd = [
        "dockerd", "--host", f"unix://{sock}", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "docker.pid"), "--config-file", str(root / "daemon.json"),
        "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
        "--containerd-namespace", "runner-gpu-test", "--containerd-plugins-namespace", "runner-gpu-test-plugins",
    ]
    script = ('set -e; ip link set lo up; '
              'if [ -d /run/containerd ]; then mount -t tmpfs tmpfs /run/containerd; fi; '
              'exec "$@"')
    log = open(root / "dockerd.log", "wb")
    # unshare and sh exec: the PID is dockerd's.
    proc = subprocess.Popen(["unshare", "--net", "--mount", "--", "sh", "-c", script, "sh", *dockerd],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PATH": f"{root / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
    host = f"unix://{sock}"
    client = None
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the private engine exited ({proc.returncode}):\n"
                            f"{(root / 'dockerd.log').read_text()[-3000:]}", pytrace=False)
            if sock.exists():
                try:
                    client = docker.DockerClient(base_url=host, timeout=60)
                    client.ping()
                    break
                except docker.errors.DockerException:
                    client = None
            if time.monotonic() > deadline:
                pytest.fail(f"the private engine did not answer in 60 s:\n{(root / 'dockerd.log').read_text()[-3000:]}",
                            pytrace=False)
            time.sleep(0.2)
        import_busybox(client, tar)
        yield GpuEngine(host=host, client=client, image=IMAGE, hook_log=root / "hook.jsonl", root=root)
    finally:
        _stop(proc, client, root)
        log.close()
        if had_docker0 and not _docker0():
            pytest.fail("the main engine's docker0 bridge is gone after the private engine ran", pytrace=False)


def _stop(proc: subprocess.Popen, client, root: Path) -> None:
    if client is not None:
        try:
            for c in client.containers.list(all=True, ignore_removed=True):
                c.remove(force=True)
        except docker.errors.DockerException:
            pass
        client.close()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    # dockerd stops its containerd; a shim or containerd left by a killed engine is ended by its PID.
    for pid in _pids_mentioning(str(root)):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(pid, 5)
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
              if line.split()[1].startswith(str(root))]
    for mount in sorted(mounts, reverse=True):  # none expected: its mounts lived in its own namespace
        subprocess.run(["umount", "-l", mount], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)
