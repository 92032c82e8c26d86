"""The CLI as a user runs it, against the real engine and the reference trainer image."""
import json
import signal
import subprocess
import sys

from tests.conftest import REPO

from .conftest import TEST_LABEL, keep_containers, wait_for


def wait_until(fn, timeout=60, every=0.2):
    return wait_for("the condition", fn, timeout, every)


def status_json(cli, run=None):
    out = cli("status", *([run] if run else []), "--output", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_demo_phase_end_to_end(cli, docker_client, tmp_path):
    out = cli("apply", str(REPO / "specs/demo/train.yaml"), "--input", "max_steps=40", timeout=300)
    assert out.returncode == 0, out.stderr
    assert "done at step 40" in out.stdout
    (run,) = status_json(cli)["runs"]
    (phase,) = run["phases"]
    assert (run["status"], phase["status"], phase["exit_code"], phase["oom_killed"]) == ("succeeded", "succeeded", 0, False)
    # removed once its whole log was saved (labels are checked in test_docker_backend): docker ps -a stays clean
    assert docker_client.containers.list(all=True, ignore_removed=True, filters={"label": f"runner.run-id={run['id']}"}) == []
    assert any(e["kind"] == "container.removed" for e in status_json(cli, run["id"])["events"])
    log = tmp_path / "runs" / run["id"] / "demo-train" / "container.log"
    assert "done at step 40" in log.read_text()
    ckpts = sorted(p.name for p in (tmp_path / "runs" / run["id"] / "demo-train" / "ckpt").iterdir())
    assert ckpts == ["model_step40.pth"]
    assert any(p.name.startswith("events.out.tfevents") for p in (log.parent / "tb").iterdir())
    logs = cli("logs", run["id"])
    assert logs.returncode == 0 and "done at step 40" in logs.stdout  # from the saved copy


def test_validate_reports_three_located_errors(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: runner/v1\nkind: Phase\nname: x\ncontainer:\n  image: i\n"
                   "  command: python train.py\n  gpus: many\n  shm_sise: 1g\n")
    out = cli("validate", str(bad), str(REPO / "specs/demo/train.yaml"))
    assert out.returncode == 1
    errors = out.stdout.strip().splitlines()
    assert [line.split(": ")[0] for line in errors[:3]] == [f"{bad}:6:12", f"{bad}:7:9", f"{bad}:8:3"]
    assert errors[3].endswith("train.yaml: ok (phase demo-train)")
    assert "Traceback" not in out.stderr


def test_engine_unreachable_is_one_line(cli, tmp_path):
    out = cli("apply", str(REPO / "specs/demo/train.yaml"), env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})
    assert out.returncode == 3
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("runner: Docker engine not reachable at unix://")
    assert "Traceback" not in out.stderr


def test_missing_image_names_build_command(cli, spec_for):
    out = cli("apply", spec_for(["true"], image="runner-absent:1"))
    assert out.returncode == 3
    assert "image 'runner-absent:1' not found" in out.stderr and "bash images/build-offline.sh" in out.stderr


def test_gpu_phase_without_runtime_fails_clearly(cli, spec_for, docker_client, test_id, no_gpu_runtime):
    out = cli("apply", spec_for(["python3", "-c", "print('ran')"], container_extra="gpus: 1\n"))
    assert out.returncode == 3
    assert "GPUs requested but the Docker engine has no GPU runtime" in out.stderr
    assert "ran" not in out.stdout
    assert docker_client.containers.list(all=True, ignore_removed=True, filters={"label": f"{TEST_LABEL}={test_id}"}) == []


def _foreground(cli, spec):
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "apply", spec],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # polled in process (cli.peek): the terminal supervises, nothing for `status` to judge
    run = wait_until(lambda: (cli.peek() or {}).get("runs") and cli.peek()["runs"][0])
    phase = wait_until(lambda: (p := cli.peek(run["id"])["phases"]) and p[0]["container_id"] and p[0])
    return proc, run["id"], phase


def test_sighup_never_stops_the_container_and_hands_it_to_a_background_supervisor(cli, spec_for, docker_client):
    proc, run_id, phase = _foreground(cli, spec_for(["sleep", "300"]))
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 0
    assert docker_client.containers.get(phase["container_id"]).status == "running"
    p = status_json(cli, run_id)["phases"][0]
    assert p["status"] == "running" and p["supervisor"].startswith("background"), p
    out = cli("stop", run_id, timeout=60)
    assert out.returncode == 0 and "cancelled" in out.stdout, out.stdout + out.stderr
    assert status_json(cli, run_id)["phases"][0]["status"] == "cancelled"


def test_ctrl_c_stops_the_container_and_records_cancelled(cli, spec_for, docker_client):
    script = "import signal,sys,time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\ntime.sleep(300)\n"
    proc, run_id, phase = _foreground(cli, spec_for(["python3", "-c", script]))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, proc.stderr.read()
    assert docker_client.containers.get(phase["container_id"]).status == "exited"
    final = status_json(cli, run_id)
    assert final["phases"][0]["status"] == "cancelled"
    assert any(e["kind"] == "phase.stop-requested" for e in final["events"])


def test_detach_then_status_sees_the_end(cli, spec_for):
    out = cli("apply", "--detach", spec_for(["python3", "-c", "print('bye')"]))
    assert out.returncode == 0
    run_id = out.stdout.strip().splitlines()[-1]
    final = wait_until(lambda: (s := status_json(cli, run_id))["status"] == "succeeded" and s)
    assert final["phases"][0]["exit_code"] == 0
    assert cli("logs", run_id).stdout == "bye\n"


def test_rm_and_prune_clean_up_finished_runs_never_a_running_one(cli, docker_client, spec_for, tmp_path):
    """`runner rm` removes a finished run's containers (real engine), folders and records; a running run is refused
    and keeps running; `prune --dry-run` lists without removing."""
    import docker.errors

    keep_containers(cli.state.parent)  # ended containers kept, for rm and prune to remove
    done = cli("apply", spec_for(["sh", "-c", "echo trained"], name="done"), timeout=120)
    assert done.returncode == 0, done.stderr
    (finished,) = status_json(cli)["runs"]
    cid = finished["phases"][0]["container_id"]
    docker_client.containers.get(cid)  # still there after the phase: its logs saved, kept until removed
    live = cli("apply", "--detach", spec_for(["sleep", "300"], name="live"), timeout=120)
    assert live.returncode == 0, live.stderr
    running = live.stdout.strip().splitlines()[-1]

    dry = cli("prune", "--older-than", "0s", "--dry-run")
    assert dry.returncode == 0 and f"run {finished['id']}: would remove 1 container(s)" in dry.stdout, dry.stdout
    assert running not in dry.stdout  # a running run is never a candidate
    docker_client.containers.get(cid)

    refused = cli("rm", running)
    assert refused.returncode == 1 and "not finished" in refused.stdout, refused.stdout
    assert docker_client.containers.get(status_json(cli, running)["phases"][0]["container_id"]).status == "running"

    out = cli("rm", finished["id"])
    assert out.returncode == 0 and "removed 1 container(s)" in out.stdout, out.stdout + out.stderr
    try:
        docker_client.containers.get(cid)
        raise AssertionError("the finished run's container is still there")
    except docker.errors.NotFound:
        pass
    assert not (tmp_path / "runs" / finished["id"]).exists()
    assert [r["id"] for r in status_json(cli)["runs"]] == [running]
    cli("stop", running, timeout=120)


def test_apply_with_a_missing_bind_source_exits_1_and_creates_nothing(cli, docker_client, spec_for, tmp_path):
    """On the real engine: a bind source that does not exist is a located spec error at launch (exit 1), nothing is
    created; once the folder is there the same spec runs."""
    path = spec_for(["true"], name="m", container_extra="mounts: [{source: ./data, target: /data}]\n")
    out = cli("apply", path, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"container.mounts[0].source: mount source {tmp_path}/data does not exist" in out.stderr, out.stderr
    (run,) = status_json(cli)["runs"]
    assert run["phases"][0]["container_id"] is None
    assert docker_client.containers.list(all=True, ignore_removed=True, filters={"label": f"runner.run-id={run['id']}"}) == []
    (tmp_path / "data").mkdir()
    assert cli("apply", path, timeout=120).returncode == 0
