"""GPU phases through Docker's real NVIDIA device path, on a CPU machine.

The ``gpu_engine`` fixture (tests/integration/gpu_engine.py) is a private Docker engine whose
built-in NVIDIA driver is registered by a stand-in ``nvidia-container-runtime-hook``: GPU requests
are accepted, NVIDIA_VISIBLE_DEVICES is set by the driver and the hook is called, but no device
exists. Everything goes through runner's public paths: `runner apply` and `runner serve` as
processes, pointed at that engine by DOCKER_HOST.

What a container is checked for: NVIDIA_VISIBLE_DEVICES (what NVIDIA's hook would expose) equals the
ids in the phase's recorded plan, the hook was called once with them, and CUDA_VISIBLE_DEVICES is not
set (with NVIDIA's runtime the granted devices are numbered from 0 inside the container, so the
host ids runner schedules would be wrong there; a trainer uses cuda:0..N-1).
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import docker
import pytest

from runner.store import Store
from tests.integration.conftest import stop_server, TEST_LABEL, keep_containers, nvidia_host, wait_for
from tests.integration.gpu_engine import IMAGE, import_busybox

pytestmark = pytest.mark.integration

# Print the environment and the network interfaces, then (with a gate) wait until /ctl/GATE exists.
PROBE = "env; cat /proc/net/dev; test -z \"$GATE\" || while [ ! -e /ctl/$GATE ]; do sleep 0.1; done"


def spec_text(name: str, gpus: str, label: str, extra: str = "", ctl: Path | None = None) -> str:
    """A phase running PROBE on the busybox test image; with ``ctl``, it waits for the file ctl/GATE."""
    lines = ["apiVersion: runner/v1", "kind: Phase", f"name: {name}", f'labels: {{{TEST_LABEL}: "{label}"}}']
    if ctl:
        lines.append("inputs: {gate: null}")
    lines += ["container:", f"  image: {IMAGE}", f"  command: [sh, -c, {json.dumps(PROBE)}]", f"  gpus: {gpus}",
              "  stop_grace_period: 1s"]
    if ctl:
        lines += [f"  mounts: [{{source: {ctl}, target: /ctl}}]", '  env: {GATE: "${{ inputs.gate }}"}']
    return "\n".join(lines) + "\n" + textwrap.dedent(extra)


def env_of(log: str) -> dict[str, list[str]]:
    """Every NAME=VALUE line the container's `env` printed, by name (a name could appear twice)."""
    out: dict[str, list[str]] = {}
    for line in log.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.isupper():
            out.setdefault(name, []).append(value)
    return out


def status(cli, run_id: str | None = None, env=None) -> dict:
    out = cli("status", *([run_id] if run_id else []), "--output", "json", env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def container_log(phase: dict) -> str:
    return Path(phase["log"]).read_text()


# ---------------------------------------------------------------------- runner apply (foreground)

@pytest.mark.parametrize("gpus,planned,visible", [
    ("[1, 3]", ["1", "3"], "1,3"),
    ("2", ["0", "1"], "0,1"),  # a count is planned as the ids Docker's driver gives it
    ("all", "all", "all"),
    ("0", 0, "void"),  # CPU: the image's NVIDIA_VISIBLE_DEVICES=all is overridden, no hook runs
], ids=["ids", "count", "all", "cpu"])
def test_apply_sends_the_planned_gpus_through_dockers_nvidia_driver(gpu_engine, cli, tmp_path, gpus, planned, visible):
    keep_containers(cli.state.parent)  # its device requests are read from the ended container
    spec = tmp_path / "probe.yaml"
    spec.write_text(spec_text("probe", gpus, tmp_path.name))
    out = cli("apply", str(spec), env=gpu_engine.env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    (run,) = status(cli)["runs"]
    (phase,) = status(cli, run["id"])["phases"]
    assert phase["status"] == "succeeded"
    assert phase["gpus"] == planned  # what runner recorded
    env = env_of(container_log(phase))
    assert env["NVIDIA_VISIBLE_DEVICES"] == [visible]  # what the container (and NVIDIA's hook) sees
    assert "CUDA_VISIBLE_DEVICES" not in env
    calls = gpu_engine.hook_calls(phase["container_id"])
    if planned == 0:
        assert calls == []
    else:
        assert [(c["argv"], c["NVIDIA_VISIBLE_DEVICES"]) for c in calls] == [(["prestart"], visible)]
    requests = gpu_engine.client.api.inspect_container(phase["container_id"])["HostConfig"]["DeviceRequests"]
    if planned == 0:
        assert not requests
    else:
        assert requests[0]["Capabilities"] == [["gpu"]]
        assert (requests[0]["DeviceIDs"] or None, requests[0]["Count"]) == ((planned, 0) if planned != "all" else (None, -1))


# ---------------------------------------------------------------------- nvidia-smi missing or odd

SMI_FAILS = """#!/bin/sh
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running."
exit 9
"""
SMI_ODD = """#!/bin/sh
case "$1" in *memory*) printf '0, [N/A]\\n' ;; *) printf '0\\n' ;; esac
"""
SMI_FOUR = """#!/bin/sh
# four GPUs; 1 and 3 have 30000 MiB free, 0 and 2 have 1000 MiB
case "$1" in *memory*) printf '0, 1000\\n1, 30000\\n2, 1000\\n3, 30000\\n' ;; *) printf '0\\n1\\n2\\n3\\n' ;; esac
"""


def fake_bin(folder: Path, smi: str | None) -> str:
    """A PATH with only a fake nvidia-smi (or none at all)."""
    folder.mkdir()
    if smi is not None:
        (folder / "nvidia-smi").write_text(smi)
        (folder / "nvidia-smi").chmod(0o755)
    return str(folder)


@pytest.mark.parametrize("smi,gpus,status_,message", [
    (None, "1", "blocked", "gpu_memory_free: no NVIDIA GPU visible on this host (nvidia-smi not found)"),
    (SMI_FAILS, "1", "blocked", "gpu_memory_free: no NVIDIA GPU visible on this host (nvidia-smi failed (exit code 9): "
                                "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."),
    (SMI_ODD, "1", "blocked", "reports GPU 0 free memory as '[N/A]', not a number of MiB"),
    (SMI_FOUR, "2", "blocked", "gpu_memory_free: GPU 0: 1000.0 MiB free, GPU 1: 29.3 GiB free (need 20.0 GiB on 2)"),
    (SMI_FOUR, "[1, 3]", "succeeded", None),  # checked on the ids the phase gets
], ids=["no-nvidia-smi", "driver-fails", "odd-output", "too-little-free", "enough-free"])
def test_gpu_memory_free_says_clearly_what_nvidia_smi_gave(gpu_engine, cli, tmp_path, smi, gpus, status_, message):
    spec = tmp_path / "probe.yaml"
    spec.write_text(spec_text("probe", gpus, tmp_path.name, extra="preconditions:\n  - gpu_memory_free: {at_least: 20g}\n"))
    path = {**gpu_engine.env, "PATH": fake_bin(tmp_path / "bin", smi)}
    out = cli("apply", str(spec), env=path, timeout=120)
    text = out.stdout + out.stderr
    assert "Traceback" not in text and "internal error" not in text, text
    (run,) = status(cli)["runs"]
    (phase,) = status(cli, run["id"])["phases"]
    assert phase["status"] == status_, text
    if message:
        assert message in phase["reason"] and message in text
        assert out.returncode == 1 and phase["container_id"] is None  # nothing was launched
    else:
        assert out.returncode == 0 and env_of(container_log(phase))["NVIDIA_VISIBLE_DEVICES"] == ["1,3"]


def test_server_without_nvidia_smi_says_why_it_has_no_gpus(gpu_engine, cli, tmp_path):
    runs = cli.state.parent
    (runs / "specs").mkdir(parents=True)
    spec = runs / "specs" / "one.yaml"
    spec.write_text(spec_text("one-gpu", "1", tmp_path.name))
    env = {**gpu_engine.env, "PATH": fake_bin(tmp_path / "bin", SMI_FAILS)}
    log = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "serve", "--specs",
                               str(runs / "specs")], stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=_env(env))
    try:
        wait_for("the server", lambda: cli("queue").stdout.startswith("server: pid"), timeout=30)
        line = cli("status").stdout.splitlines()[0]
        assert "GPUs 0/0 in use (nvidia-smi failed (exit code 9): NVIDIA-SMI has failed because it couldn't " in line
        out = cli("apply", str(spec), env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        run_id = out.stdout.strip().splitlines()[-1]
        phase = wait_for("the phase to end", lambda: [p for p in status(cli, run_id)["phases"] if p["status"] == "error"])[0]
        assert "phase one-gpu needs 1 GPU(s); this server has 0" in phase["reason"]
    finally:
        stop_server(server)
    assert "Traceback" not in log.read_text()


def _env(extra: dict) -> dict:
    return {**os.environ, **extra}


# ---------------------------------------------------------------------- runner serve --gpus 0,1,2,3

def test_server_hands_out_disjoint_gpus_waits_and_keeps_them_across_a_restart(gpu_engine, cli, tmp_path):
    runs = cli.state.parent
    specs, ctl = runs / "specs", runs / "ctl"
    specs.mkdir(parents=True)
    ctl.mkdir()
    (specs / "two.yaml").write_text(spec_text("two", "2", tmp_path.name, ctl=ctl))
    (specs / "all.yaml").write_text(spec_text("every", "all", tmp_path.name, ctl=ctl))
    env = gpu_engine.env
    log = tmp_path / "serve.log"
    store = Store(cli.state)

    def serve() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "serve", "--gpus", "0,1,2,3",
                                 "--specs", str(specs)], stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=_env(env))

    def submit(spec: str, gate: str) -> str:
        out = cli("apply", str(specs / spec), "--input", f"gate={gate}", env=env, timeout=60)
        assert out.returncode == 0 and "submitted to the server" in out.stderr, out.stderr
        return out.stdout.strip().splitlines()[-1]

    def phase(run_id: str) -> dict | None:
        rows = store.phases(run_id)
        return rows[0] if rows else None

    def running(run_id: str) -> dict | None:
        p = phase(run_id)
        return p if p and p["status"] == "running" else None

    def granted(run_id: str) -> tuple[str, ...]:
        return tuple(json.loads(phase(run_id)["plan_json"])["gpus"])

    def sees(run_id: str) -> str:
        """What the container got: its NVIDIA_VISIBLE_DEVICES, checked against the hook's record."""
        p = phase(run_id)
        text = wait_for("the container's env", lambda: Path(p["log_path"]).exists() and "PATH=" in Path(p["log_path"]).read_text()
                        and Path(p["log_path"]).read_text(), timeout=30)
        (visible,) = env_of(text)["NVIDIA_VISIBLE_DEVICES"]
        assert "CUDA_VISIBLE_DEVICES" not in env_of(text)
        assert [c["NVIDIA_VISIBLE_DEVICES"] for c in gpu_engine.hook_calls(p["container_id"])] == [visible]
        return visible

    def finish(run_id: str, gate: str) -> None:
        (ctl / gate).touch()
        wait_for(f"run {run_id} to succeed", lambda: phase(run_id)["status"] == "succeeded", timeout=60)

    server = serve()
    try:
        wait_for("the server", lambda: cli("queue").stdout.startswith("server: pid"), timeout=30)
        a, b, c = submit("two.yaml", "a"), submit("two.yaml", "b"), submit("two.yaml", "c")
        wait_for("two phases running", lambda: running(a) and running(b), timeout=60)
        assert len(set(granted(a)) | set(granted(b))) == 4  # disjoint, two each
        assert sees(a) == ",".join(granted(a)) and sees(b) == ",".join(granted(b))
        assert status(cli, a)["phases"][0]["gpus"] == list(granted(a))
        wait_for("the third to wait", lambda: "queued: waiting for 2 GPU(s)" in (phase(c) or {}).get("reason", ""), timeout=30)
        assert phase(c)["status"] == "pending" and phase(c)["container_id"] is None

        freed = granted(a)
        finish(a, "a")
        wait_for("the third to start", lambda: running(c), timeout=60)
        assert granted(c) == freed and sees(c) == ",".join(freed)

        # A restart: B and C keep running and keep their GPUs; D, queued meanwhile, is given none of them.
        d = submit("two.yaml", "d")
        wait_for("D to wait", lambda: "queued" in (phase(d) or {}).get("reason", ""), timeout=30)
        held = {b: granted(b), c: granted(c)}
        containers = {r: phase(r)["container_id"] for r in (b, c)}
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        server = serve()
        wait_for("the restarted server", lambda: "reconcile: 2 phase(s) with containers to re-adopt" in log.read_text(), timeout=30)
        wait_for("B and C re-adopted", lambda: log.read_text().count("attached to phase two") >= 2, timeout=30)
        time.sleep(2)  # several scheduler rounds: D must still wait
        assert phase(d)["status"] == "pending" and phase(d)["container_id"] is None
        for r in (b, c):
            assert running(r) and granted(r) == held[r] and phase(r)["container_id"] == containers[r]
        info = json.loads((runs / "server.json").read_text())["scheduler"]["gpus"]
        assert {gpu: info[gpu] for gpu in held[b]} == {gpu: phase(b)["id"] for gpu in held[b]}
        assert {gpu: info[gpu] for gpu in held[c]} == {gpu: phase(c)["id"] for gpu in held[c]}

        finish(b, "b")
        wait_for("D to start", lambda: running(d), timeout=60)
        assert granted(d) == held[b] and sees(d) == ",".join(held[b])

        # gpus: all on the server is all of its inventory, as explicit ids, once every GPU is free.
        e = submit("all.yaml", "e")
        wait_for("E to wait", lambda: "queued: waiting for 4 GPU(s)" in (phase(e) or {}).get("reason", ""), timeout=30)
        finish(c, "c")
        time.sleep(1)
        assert phase(e)["status"] == "pending"
        finish(d, "d")
        wait_for("E to start", lambda: running(e), timeout=60)
        assert granted(e) == ("0", "1", "2", "3") and sees(e) == "0,1,2,3"
        finish(e, "e")
    finally:
        stop_server(server)
        for cont in gpu_engine.client.containers.list(all=True, ignore_removed=True, filters={"label": f"{TEST_LABEL}={tmp_path.name}"}):
            cont.remove(force=True)
    assert server.returncode == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


# ---------------------------------------------------------------------- the main engine: no GPU runtime

@pytest.fixture(scope="module")
def main_engine():
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker engine ({exc}); start one with: bash scripts/ensure-docker.sh", pytrace=False)
    why = nvidia_host(client)
    if why:
        pytest.skip(f"{why}: this test needs a main engine that refuses GPU requests (CI has one)")
    import_busybox(client)
    return client


def test_main_engine_without_the_hook_refuses_gpus_and_still_runs_containers(gpu_engine, main_engine, cli, tmp_path):
    """Runs after the private engine did its work: the main engine (its docker0 bridge included) is untouched."""
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(spec_text("gpu", "1", tmp_path.name))
    out = cli("apply", str(gpu), env={"DOCKER_HOST": ""}, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "GPUs requested but the Docker engine has no GPU runtime" in out.stderr
    assert "install the NVIDIA Container Toolkit" in out.stderr
    assert main_engine.containers.list(all=True, ignore_removed=True, filters={"label": f"{TEST_LABEL}={tmp_path.name}"}) == []

    cpu = tmp_path / "cpu.yaml"
    cpu.write_text(spec_text("cpu", "0", tmp_path.name))
    try:
        out = cli("apply", str(cpu), env={"DOCKER_HOST": ""}, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        (phase,) = [p for r in status(cli)["runs"] for p in status(cli, r["id"])["phases"] if p["name"] == "cpu"]
        assert env_of(container_log(phase))["NVIDIA_VISIBLE_DEVICES"] == ["void"]
        # The main engine's default bridge network (docker0) still gives its containers an interface.
        assert "eth0:" in container_log(phase)
    finally:
        for cont in main_engine.containers.list(all=True, ignore_removed=True, filters={"label": f"{TEST_LABEL}={tmp_path.name}"}):
            cont.remove(force=True)
