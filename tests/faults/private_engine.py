"""A private Docker engine that a test may stop, start and restart: the ``private_engine`` fixture.

Built as ``tests/integration/gpu_engine.py`` builds its engine, and isolated the same way (FAULTS.md: a second
dockerd in the host's network namespace rewires the main engine's docker0 bridge and iptables): its own network
and mount namespaces, ``--bridge none`` and no iptables, its own data root, exec root, pidfile, socket, config file
and containerd namespace under one temporary folder.  To be restartable, the namespaces belong to a *holder*
process (``unshare --net --mount ... sleep``, loopback up, a tmpfs over /run/containerd) and each dockerd is
started inside them with ``nsenter``; the holder's /run/containerd keeps the shims' sockets, so with
``live-restore`` a restarted engine finds its running containers again.  Everything is stopped by PID at the end
(dockerd, then every process naming the folder: containerd, shims, the holder) and the folder removed."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import pytest

from tests.integration.gpu_engine import _docker0, _pids_mentioning, _wait_gone, busybox_tar, import_busybox


class PrivateEngine:
    def __init__(self, root: Path, live_restore: bool):
        self.root = root
        self.sock = root / "docker.sock"
        self.host = f"unix://{self.sock}"
        (root / "daemon.json").write_text(json.dumps({"live-restore": live_restore}))
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c",
             'set -e; ip link set lo up; if [ -d /run/containerd ]; then mount -t tmpfs tmpfs /run/containerd; fi; '
             f'touch {root}/ns-ready; exec sleep 1000000'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not (root / "ns-ready").exists():
            if self.holder.poll() is not None or time.monotonic() > deadline:
                pytest.fail("could not make the private engine's namespaces (unshare)", pytrace=False)
            time.sleep(0.05)
        self.proc: subprocess.Popen | None = None
        self.client: docker.DockerClient | None = None
        self.log = open(root / "dockerd.log", "ab")

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    def start(self) -> None:
        dockerd = [
            "dockerd", "--host", self.host, "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "docker.pid"), "--config-file", str(self.root / "daemon.json"),
            "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
            "--containerd-namespace", "runner-fault-test", "--containerd-plugins-namespace", "runner-fault-test-plugins",
        ]
        self.proc = subprocess.Popen(["nsenter", "-t", str(self.holder.pid), "--net", "--mount", "--", *dockerd],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the private engine exited ({self.proc.returncode}):\n{self.tail()}", pytrace=False)
            if self.sock.exists():
                try:
                    client = docker.DockerClient(base_url=self.host, timeout=30)
                    client.ping()
                    self.client = client
                    return
                except docker.errors.DockerException:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"the private engine did not answer in 60 s:\n{self.tail()}", pytrace=False)
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM dockerd and wait: with live-restore its containers keep running, else it stops them."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.client is None and self.proc is None:
            try:
                self.start()  # to remove what it holds
            except BaseException:  # noqa: BLE001  (teardown goes on)
                pass
        if self.client is not None:
            try:
                for c in self.client.containers.list(all=True, ignore_removed=True):
                    c.remove(force=True)
            except docker.errors.DockerException:
                pass
        self.stop()
        for pid in [*_pids_mentioning(str(self.root)), self.holder.pid]:  # containerd, shims, the holder
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _wait_gone(pid, 5)
        self.holder.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_engine():
    """Factory: ``private_engine(live_restore=True)`` starts a private engine with the busybox test image."""
    if os.geteuid() != 0:
        pytest.skip("a private Docker engine needs root (as CI has)")
    for tool in ("dockerd", "unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: bash scripts/ensure-docker.sh installs what the tests need", pytrace=False)
    tar = busybox_tar()
    had_docker0 = _docker0()
    engines: list[PrivateEngine] = []

    def make(live_restore: bool = True) -> PrivateEngine:
        root = Path(tempfile.mkdtemp(prefix="runner-fault-", dir="/tmp"))  # short: unix socket paths are limited
        engine = PrivateEngine(root, live_restore)
        engines.append(engine)
        engine.start()
        import_busybox(engine.client, tar)
        return engine

    try:
        yield make
    finally:
        for engine in engines:
            engine.close()
        if had_docker0 and not _docker0():
            pytest.fail("the main engine's docker0 bridge is gone after the private engine ran", pytrace=False)


class StallingProxy:
    """A unix-socket proxy in front of an engine's socket that can hold back the engine's answers (an API stall):
    while ``stalled`` is set, nothing the engine sends reaches the client, so its requests run into their timeout."""

    def __init__(self, target: Path, sock: Path):
        import socket
        import threading

        self.target, self.sock = str(target), sock
        self.stalled = threading.Event()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(sock))
        self.server.listen(64)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src, dst, answers: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while answers and self.stalled.is_set() and not self.closed:
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.stalled.clear()
        self.server.close()
