"""Rows 9, 10, 11 and 13: the Docker engine restarts or goes away under a supervised phase.

Each test starts its own private engine (tests/faults/private_engine.py: its own namespaces, socket and data
root), so the main engine is never touched; runner reaches it through DOCKER_HOST."""
import json
import os
import subprocess
import sys
import time

import docker

import pytest

from tests.integration.conftest import keep_containers
from tests.faults.conftest import check_invariants, status, wait_for
from tests.faults.private_engine import private_engine  # noqa: F401  (fixture)
from tests.integration.gpu_engine import IMAGE

TICKS = 12
# Busybox sh as PID 1: a TERM trap so an engine stopping it ends it at once (not after its 10 s kill timeout).
TICKER = ["sh", "-c", f"trap 'exit 143' TERM; i=0; while [ $i -lt {TICKS} ]; do echo tick $i; i=$((i+1)); "
                      "sleep 1 & wait $!; done"]


def on(engine, cli):
    """The CLI pointed at the private engine."""
    def run(*args, **kwargs):
        return cli(*args, env=engine.env, **kwargs)

    run.state = cli.state
    return run


def start_apply(ecli, engine, spec):
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(ecli.state), "apply", spec],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **engine.env})

    def ticking():
        if not ecli.state.exists():
            return None
        runs = status(ecli)["runs"]
        if not runs or not runs[0]["phases"] or not runs[0]["phases"][0]["container_id"]:
            return None
        run = runs[0]["id"]
        c = engine.client.containers.get(runs[0]["phases"][0]["container_id"])
        return b"tick 2" in c.logs() and (run, c)

    run, container = wait_for("the container to tick", ticking, timeout=60, every=0.2)
    return proc, run, container


def test_row9_engine_restart_with_live_restore_keeps_the_same_container(cli, spec_for, private_engine):
    engine = private_engine(live_restore=True)
    ecli = on(engine, cli)
    proc, run, container = start_apply(ecli, engine, spec_for(TICKER, image=IMAGE))
    pid, started = container.attrs["State"]["Pid"], container.attrs["State"]["StartedAt"]
    engine.restart()
    after = engine.client.containers.get(container.id)
    assert (after.status, after.attrs["State"]["Pid"], after.attrs["State"]["StartedAt"]) == ("running", pid, started)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-3000:]
    doc = check_invariants(ecli, run, engine.client)
    (p,) = doc["phases"]
    assert (p["status"], p["exit_code"], p["container_id"]) == ("succeeded", 0, container.id)
    assert [e["kind"] for e in doc["events"]].count("phase.running") == 1


def test_row13_log_stream_broken_by_an_engine_restart_is_resumed_without_duplicates(cli, spec_for, private_engine):
    engine = private_engine(live_restore=True)
    ecli = on(engine, cli)
    proc, run, container = start_apply(ecli, engine, spec_for(TICKER, image=IMAGE))
    engine.restart()
    proc.communicate(timeout=90)
    doc = check_invariants(ecli, run, engine.client)
    with open(doc["phases"][0]["log"]) as f:
        lines = [line.strip() for line in f if line.startswith("tick")]
    assert lines == [f"tick {i}" for i in range(TICKS)], lines


# runner cannot tell this restart from a `docker stop`: dockerd stops its containers while its API still
# answers.  The reason names both, the phase fails (never success), and `retry: {on: [stopped]}` may relaunch it.
def test_row10_engine_restart_without_live_restore_is_an_infrastructure_interruption(cli, spec_for, private_engine):
    keep_containers(cli.state.parent)  # the ended container is counted after the phase: never relaunched
    engine = private_engine(live_restore=False)
    ecli = on(engine, cli)
    proc, run, container = start_apply(ecli, engine, spec_for(TICKER, image=IMAGE))
    engine.restart()  # stops the container with the engine
    proc.communicate(timeout=90)
    doc = check_invariants(ecli, run, engine.client)
    (p,) = doc["phases"]
    assert p["status"] != "succeeded" and p["container_id"] == container.id
    assert len(engine.client.containers.list(all=True, ignore_removed=True, filters={"label": f"runner.run-id={run}"})) == 1  # no relaunch
    assert any(w in p["reason"].lower() for w in ("engine", "infrastructure", "interrupt")), p["reason"]


def test_row11_socket_gone_is_degraded_no_transition_no_failure(cli, spec_for, private_engine):
    engine = private_engine(live_restore=True)
    ecli = on(engine, cli)
    proc, run, container = start_apply(ecli, engine, spec_for(TICKER, image=IMAGE))
    before = status(ecli, run)
    engine.stop()  # the socket is gone; the container runs on (live-restore)
    try:
        out = ecli("status", run, "--output", "json")
        assert out.returncode == 0, out.stderr  # status reads the store without an engine
        during = json.loads(out.stdout)
        assert during["phases"][0]["status"] == "running"
        assert [e["kind"] for e in during["events"]] == [e["kind"] for e in before["events"]]  # no transitions
        assert proc.poll() is None  # supervision rides the outage out
    finally:
        engine.start()
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-3000:]
    doc = check_invariants(ecli, run, engine.client)
    (p,) = doc["phases"]
    assert (p["status"], p["container_id"]) == ("succeeded", container.id)


def test_row12_api_stall_past_the_read_timeout_is_waited_out_never_a_kill(cli, spec_for, private_engine):
    """The engine's answers are held back for 70 s (longer than the SDK's 60 s read timeout): supervision treats the
    engine as unreachable for a while and polls again; it never stops or kills the container, and the phase ends
    succeeded once the engine answers."""
    keep_containers(cli.state.parent)  # the ended container is looked at after the phase
    from tests.faults.private_engine import StallingProxy

    engine = private_engine(live_restore=True)
    proxy = StallingProxy(engine.sock, engine.root / "proxy.sock")
    try:
        ecli = on(engine, cli)
        ecli_env = {"DOCKER_HOST": proxy.host}
        ticker = ["sh", "-c", "trap 'exit 143' TERM; i=0; while [ $i -lt 95 ]; do echo tick $i; i=$((i+1)); "
                              "sleep 1 & wait $!; done"]
        spec = spec_for(ticker, image=IMAGE, container_extra="stop_grace_period: 1s\n")
        proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "apply", spec],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **ecli_env})
        run = wait_for("the container to run", lambda: ecli.state.exists() and status(ecli)["runs"] and
                       status(ecli)["runs"][0]["phases"][0]["container_id"] and status(ecli)["runs"][0]["id"], timeout=60)
        container = engine.client.containers.get(status(ecli, run)["phases"][0]["container_id"])
        started = container.attrs["State"]["StartedAt"]
        proxy.stalled.set()
        try:
            with pytest.raises(docker.errors.DockerException):  # the stall is real: a 2 s client times out
                docker.DockerClient(base_url=proxy.host, timeout=2).ping()
            # 70 s: every call runner makes meanwhile waits, and the first ones run into the 60 s read timeout.
            deadline = time.monotonic() + 70
            while time.monotonic() < deadline:
                container.reload()
                assert container.status == "running", "the container was stopped during the stall"
                time.sleep(1)
        finally:
            proxy.stalled.clear()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        doc = check_invariants(ecli, run, engine.client)
        (p,) = doc["phases"]
        assert (p["status"], p["exit_code"], p["container_id"]) == ("succeeded", 0, container.id)
        container.reload()
        assert container.attrs["State"]["StartedAt"] == started
        assert not any(e["kind"] in ("phase.stop-requested", "phase.timeout", "guard.tripped") for e in doc["events"])
    finally:
        proxy.close()
