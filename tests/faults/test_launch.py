"""Rows 3, 4, 39 and 40: the runner dies around the container's creation."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import stop_server
from tests.integration.conftest import keep_containers
from tests.faults.conftest import check_invariants, labelled_containers, only_run, run_containers, serve, first_phase, status, wait_for

SHORT = ["sh", "-c", "sleep 3; echo done"]
# Runs until the test says so (a file made by `docker exec`, at most 120 s): still running when status looks, however
# slowly a loaded machine gets there (a fixed 3 s once ended first under a parallel suite).
UNTIL_TOLD = ["sh", "-c", "i=0; while [ ! -e /tmp/go ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done; echo done"]


def crash_apply(cli, spec, point):
    out = cli("apply", spec, env={"RUNNER_FAULT_POINT": point}, timeout=60)
    assert out.returncode == 137, (out.returncode, out.stderr[-2000:])  # died as if SIGKILLed
    return only_run(cli)


def test_row3_crash_after_create_before_the_record_adopts_the_container(cli, spec_for, docker_client):
    keep_containers(cli.state.parent)  # the ended container is looked at after the phase
    run = crash_apply(cli, spec_for(UNTIL_TOLD), "post_create")
    (container,) = run_containers(docker_client, run)  # created and started, its id never recorded
    (p,) = status(cli, run)["phases"]  # status matches the launching phase to it by name
    assert (p["status"], p["container_id"]) == ("running", container.id) and "found container" in p["reason"]
    started = container.attrs["State"]["StartedAt"]
    assert container.exec_run(["touch", "/tmp/go"]).exit_code == 0
    out = cli("attach", run, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = check_invariants(cli, run, docker_client)
    (p,) = doc["phases"]
    assert (p["status"], p["container_id"]) == ("succeeded", container.id)  # adopted, not a second one
    container.reload()
    assert container.attrs["State"]["StartedAt"] == started
    assert [e["kind"] for e in doc["events"]].count("phase.launching") == 1


def test_row4_crash_before_create_launches_exactly_once(cli, spec_for, docker_client):
    keep_containers(cli.state.parent)  # the containers are counted after the phase: launched exactly once
    run = crash_apply(cli, spec_for(SHORT), "pre_create")
    assert run_containers(docker_client, run) == []
    out = cli("attach", run, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = check_invariants(cli, run, docker_client)
    (p,) = doc["phases"]
    assert p["status"] == "succeeded"
    (container,) = run_containers(docker_client, run)
    assert container.id == p["container_id"]


def test_row40_created_never_started_foreground_is_removed_and_relaunched(cli, spec_for, docker_client):
    keep_containers(cli.state.parent)  # the containers are counted after the phase: launched exactly once
    run = crash_apply(cli, spec_for(SHORT), "created")
    (container,) = run_containers(docker_client, run)
    assert container.status == "created"
    out = cli("attach", run, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = check_invariants(cli, run, docker_client)
    (p,) = doc["phases"]
    assert p["status"] == "succeeded"
    (now,) = run_containers(docker_client, run)
    assert now.id != container.id and now.id == p["container_id"]
    assert any("created but never started" in e["message"] for e in doc["events"])  # the reason is recorded


def test_row40_server_killed_between_create_and_start(cli, tmp_path, spec_for, docker_client):
    """The server dies between create and start; restarted, it removes the created container with a
    recorded reason and launches the phase again; the phase's timeout applies to the new container."""
    keep_containers(cli.state.parent)  # the containers are counted after the phase: launched exactly once
    inbox = cli.state.parent / "inbox"
    log = tmp_path / "serve.log"
    spec = spec_for(["sh", "-c", "sleep 300"], extra="timeout: 6s\n", container_extra="stop_grace_period: 1s\n")
    library = tmp_path / "library"  # the server's --specs: empty, so the drop runs as itself
    library.mkdir()
    server = serve(cli, inbox, library, log, env={"RUNNER_FAULT_POINT": "created"})
    try:
        wait_for("the server's inbox", lambda: (inbox / "accepted").is_dir(), timeout=30)
        shutil.copy(spec, inbox / "p1.yaml.tmp")
        os.replace(inbox / "p1.yaml.tmp", inbox / "p1.yaml")  # the inbox protocol: write, then rename
        assert server.wait(timeout=60) == 137, log.read_text()[-3000:]
        run = only_run(cli)
        (created,) = run_containers(docker_client, run)
        assert created.status == "created"
        server = serve(cli, inbox, library, log)
        wait_for("the phase to end", lambda: first_phase(cli, run).get("status") not in
                 (None, "pending", "launching", "running", "detached"), timeout=90)
        doc = check_invariants(cli, run, docker_client)
        (p,) = doc["phases"]
        assert p["status"] == "failed" and "timeout" in p["reason"], p  # the timeout stopped the relaunched one
        (now,) = run_containers(docker_client, run)
        assert now.id != created.id
        assert any("created but never started" in e["message"] for e in doc["events"])
    finally:
        stop_server(server)


@pytest.mark.parametrize("delay", [0.4, 0.8, 1.2, 1.6])
def test_row39_sigkill_of_apply_during_launch(cli, tmp_path, spec_for, docker_client, test_id, delay):
    """SIGKILL `runner apply` at a delay around the launch; whatever it left, `status` and `stop` match
    the phase to its container by name, `stop` stops the container it finds, and there is never a second."""
    spec = spec_for(["sh", "-c", "sleep 300"], extra="timeout: 10m\n", container_extra="stop_grace_period: 1s\n")
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "apply", spec],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)  # the injection itself: kill at this moment, whatever it is doing
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    runs = status(cli)["runs"] if cli.state.exists() else []
    if not runs:  # killed before the run was recorded: nothing may have been launched
        assert labelled_containers(docker_client, test_id) == []
        return
    run = runs[0]["id"]
    status(cli, run)  # status refreshes: a launching phase is matched to its container by name
    assert len(run_containers(docker_client, run)) <= 1
    out = cli("stop", run, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = check_invariants(cli, run, docker_client)
    if not doc["phases"]:  # killed after the run was recorded, before its first phase was (a loaded machine)
        assert run_containers(docker_client, run) == [] and labelled_containers(docker_client, test_id) == []
        return
    for c in run_containers(docker_client, run):
        c.reload()
        assert c.status != "running", "`runner stop` left the container training"
        assert doc["phases"][0]["container_id"] == c.id
    assert doc["phases"][0]["status"] not in ("pending", "launching", "running", "detached")


@pytest.mark.parametrize("moment", ["phase.pending", "phase.launching", "phase.running"])
def test_row58_ctrl_c_at_each_recorded_transition_of_launch_stops_everything_on_a_loaded_machine(
        cli, spec_for, docker_client, moment):
    import sqlite3

    script = "import signal,sys,time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\ntime.sleep(300)\n"
    spec = spec_for(["python3", "-c", script], container_extra="stop_grace_period: 5s\n")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]  # both cores busy
    try:
        proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "apply", spec],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        seen = False
        while time.monotonic() < deadline and proc.poll() is None and not seen:
            if cli.state.exists():
                try:
                    con = sqlite3.connect(f"file:{cli.state}?mode=ro", uri=True, timeout=1)
                    seen = con.execute("SELECT 1 FROM events WHERE kind = ?", (moment,)).fetchone() is not None
                    con.close()
                except sqlite3.Error:
                    pass
            if not seen:
                time.sleep(0.005)
        assert seen, f"{moment} never recorded"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        for b in burners:
            b.kill()
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert took < 5 + 20, took  # the grace period, and room for the loaded machine
    run = only_run(cli)
    for c in run_containers(docker_client, run):
        c.reload()
        assert c.status != "running", c.status
    doc = check_invariants(cli, run, docker_client)
    (p,) = doc["phases"]
    assert p["status"] == "cancelled", (p["status"], p["reason"])
