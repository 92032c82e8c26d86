"""Rows 6, 7, 8, 35, 41: what happens to the container while (or whether) runner watches."""
import subprocess
import sys

import pytest

from tests.integration.conftest import keep_containers
from tests.faults.conftest import TRAINER_IMAGE, check_invariants, only_run, run_containers, status, wait_for

GRACE = "stop_grace_period: 1s\n"


def running_container(cli, docker_client):
    def find():
        if not cli.state.exists():
            return None
        runs = status(cli)["runs"]
        if not runs:
            return None
        found = [c for c in run_containers(docker_client, runs[0]["id"]) if c.status == "running"]
        return found and (runs[0]["id"], found[0])

    return wait_for("a running container", find, timeout=60, every=0.2)


def test_row6_external_docker_kill_is_killed_from_outside_not_oom_or_success(cli, spec_for, docker_client):
    spec = spec_for(["sh", "-c", "sleep 300"], container_extra=GRACE)
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "apply", spec],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run, container = running_container(cli, docker_client)
    container.kill()  # out of band: nobody in runner asked
    proc.wait(timeout=60)
    doc = check_invariants(cli, run, docker_client)
    (p,) = doc["phases"]
    assert p["status"] == "failed" and p["verdict"] == "failure"
    assert "out of memory" not in p["reason"] and not p["oom_killed"]
    assert any(w in p["reason"] for w in ("outside", "externally")), p["reason"]


def test_row7_exit_0_while_runner_is_down_is_done_and_chained_once(cli, spec_for, docker_client, tmp_path):
    spec_for(["sh", "-c", "echo second"], name="p2")
    spec = spec_for(["sh", "-c", "sleep 2; exit 0"], extra="next:\n  - {when: success, apply: p2.yaml}\n")
    out = cli("apply", spec, "--detach", "--unsupervised")
    assert out.returncode == 0, out.stderr
    run = only_run(cli)
    (container,) = run_containers(docker_client, run)

    def exited():
        container.reload()
        return container.status == "exited"

    wait_for("the container to exit while no runner watches", exited, timeout=60, every=0.2)
    out = cli("attach", run, timeout=120)  # the runner comes back
    assert out.returncode == 0, out.stderr[-3000:]
    doc = check_invariants(cli, run, docker_client)
    p1, p2 = doc["phases"]
    assert (p1["status"], p1["exit_code"], p2["status"]) == ("succeeded", 0, "succeeded")
    assert p1["container_id"] == container.id
    again = cli("attach", run, timeout=60)  # a second attach chains nothing more
    assert again.returncode != 0
    doc = check_invariants(cli, run, docker_client)
    assert len(doc["phases"]) == 2
    assert [e["kind"] for e in doc["events"]].count("chain.decision") == 2


def test_row7_exit_0_seen_first_by_status_then_attach_chains_once(cli, spec_for, docker_client):
    """The same, but `runner status` sees the end first (and judges the phase): attach still carries the chain on."""
    spec_for(["sh", "-c", "echo second"], name="p2")
    spec = spec_for(["sh", "-c", "sleep 2; exit 0"], extra="next:\n  - {when: success, apply: p2.yaml}\n")
    out = cli("apply", spec, "--detach", "--unsupervised")
    assert out.returncode == 0, out.stderr
    run = only_run(cli)
    wait_for("status to judge the ended phase", lambda: status(cli, run)["phases"][0]["status"] == "succeeded",
             timeout=60)
    out = cli("attach", run, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = check_invariants(cli, run, docker_client)
    assert len(doc["phases"]) == 2 and doc["phases"][1]["status"] == "succeeded"
    assert [e["kind"] for e in doc["events"]].count("chain.decision") == 2


def test_row8_container_removed_while_runner_is_down_is_lost_never_relaunched(cli, spec_for, docker_client):
    spec = spec_for(["sh", "-c", "sleep 300"], container_extra=GRACE)
    out = cli("apply", spec, "--detach", "--unsupervised")
    assert out.returncode == 0, out.stderr
    run = only_run(cli)
    (container,) = run_containers(docker_client, run)
    container.remove(force=True)  # docker rm -f while no runner watches
    doc = check_invariants(cli, run, docker_client)
    (p,) = doc["phases"]
    assert p["status"] == "lost" and "disappeared" in p["reason"] and p["verdict"] != "success"
    out = cli("attach", run, timeout=60)
    assert out.returncode != 0  # nothing to attach to, and no silent relaunch
    assert run_containers(docker_client, run) == []
    assert check_invariants(cli, run, docker_client)["phases"][0]["status"] == "lost"


def test_row35_api_version_above_the_servers_is_negotiated(cli, spec_for, docker_client):
    out = cli("apply", spec_for(["sh", "-c", "echo ok"]), env={"DOCKER_API_VERSION": "9.99"}, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = check_invariants(cli, only_run(cli), docker_client)
    assert doc["phases"][0]["status"] == "succeeded"


@pytest.mark.parametrize("planned", [
    "stop_at: {steps: 400}\n",
    "",  # only metrics.total_steps: the planned end too
], ids=["stop_at", "total_steps"])
def test_row41_docker_stop_at_10_percent_is_stopped_from_outside_not_success(cli, spec_for, docker_client, planned):
    """The reference trainer (SIGTERM: save, exit 0) stopped by `docker stop` at ~10% of its planned steps."""
    keep_containers(cli.state.parent)  # the ended container is looked at after the phase
    spec_for(["true"], name="after")  # the success branch: it must never run (the whole chain is checked first)
    spec = spec_for(["python3", "/app/train.py", "--max-steps", "400", "--save-every", "1000", "--step-delay", "0.05",
                     "--logdir", "${{ phase.dir }}/tb", "--output-dir", "${{ phase.dir }}/ckpt"],
                    image=TRAINER_IMAGE,
                    container_extra=GRACE + 'mounts: [{source: "${{ phase.dir }}", target: "${{ phase.dir }}", create: true}]\n',
                    extra=(planned +
                           "metrics:\n  tensorboard: {logdir: \"${{ phase.dir }}/tb\", tags: {loss: train/text_loss}}\n"
                           "  poll_interval: 0.2s\n  total_steps: 400\n"
                           "next:\n  - {when: success, apply: after.yaml}\n"))
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "apply", spec],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run, container = running_container(cli, docker_client)
    wait_for("step 40", lambda: (container.logs().decode().count("step") or 0) and
             any(int(w) >= 40 for w in __import__("re").findall(r"step (\d+)", container.logs().decode())), timeout=60)
    subprocess.run(["docker", "stop", "-t", "10", container.id], check=True, capture_output=True)
    proc.wait(timeout=60)
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0  # the trainer saved and exited 0
    doc = check_invariants(cli, run, docker_client)
    (p,) = doc["phases"]
    assert p["status"] != "succeeded" and p["verdict"] != "success", p
    assert "next" not in (p["decision"] or "") or "no next rule" in p["decision"]  # the success branch never runs
    assert any(w in p["reason"] + p["explanation"] for w in ("outside", "planned end", "short of")), p


def test_row13_a_40_kb_line_is_reassembled_from_the_engines_16_kb_pieces(cli, spec_for, docker_client):
    """The json-file log driver stores a line longer than 16 KB in pieces; container.log and the stdout metric
    parser get the line whole."""
    line = "loss=1.5 " + "x" * 40000
    spec = spec_for(["sh", "-c", f"echo step=7 {line}; echo done"],
                    extra="metrics:\n  stdout: {step: 'step=(\\d+)', patterns: {loss: 'loss=([0-9.]+)'}}\n")
    out = cli("apply", spec, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = check_invariants(cli, only_run(cli), docker_client)
    (p,) = doc["phases"]
    with open(p["log"]) as f:
        assert f.read().splitlines() == [f"step=7 {line}", "done"]
    assert p["outputs"]["metrics"].get("loss", {}).get("last") == 1.5, p["outputs"]["metrics"]
