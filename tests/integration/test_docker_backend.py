"""The Docker backend and the engine against a real Docker engine."""
import time

import pytest

from runner.engine import Engine
from runner.errors import GpuUnavailable, ImageMissing, LaunchError
from runner.plan import build_plan
from runner.spec import load_spec
from runner.store import Store

from .conftest import TEST_LABEL, keep_containers


@pytest.fixture
def engine(tmp_path, backend):
    keep_containers(tmp_path / "runs")  # these tests look at the ended containers
    return Engine(Store(tmp_path / "runs" / "runner.db"), backend, tmp_path / "runs", poll_s=0.2)


def test_start_logs_labels_and_exit_code(engine, spec_for, docker_client, test_id):
    spec = spec_for(["python3", "-c", "import sys; print('hello from the container'); sys.exit(3)"])
    result = engine.apply(spec).last
    assert (result.status, result.exit_code, result.reason) == ("failed", 3, "exit code 3")
    container = docker_client.containers.get(result.container_id)  # kept: never auto_remove
    labels = container.labels
    assert labels["runner.run-id"] == result.run_id
    assert labels["runner.phase"] == "p1"
    assert labels["runner.spec-sha256"] == load_spec(spec).sha256
    assert labels[TEST_LABEL] == test_id
    log = engine.runs_dir / result.run_id / "p1" / "container.log"
    assert log.read_text() == "hello from the container\n"


def test_success_with_mounts_env_and_workdir(engine, spec_for, tmp_path):
    out = tmp_path / "out"
    spec = spec_for(
        ["python3", "-c", "import os; open('/out/x.txt','w').write(os.environ['GREETING'] + ' ' + os.getcwd())"],
        container_extra=f"""\
            env: {{GREETING: hi}}
            workdir: /tmp
            mounts: [{{source: {out}, target: /out, create: true}}]
            """,
    )
    result = engine.apply(spec).last
    assert result.status == "succeeded" and result.exit_code == 0
    assert (out / "x.txt").read_text() == "hi /tmp"


def test_oom_is_recorded(engine, spec_for):
    spec = spec_for(["python3", "-c", "x = bytearray(512 * 1024 * 1024); print(len(x))"], container_extra="memory: 64m\n")
    result = engine.apply(spec).last
    row = engine.store.phase(result.phase_id)
    assert result.status == "failed" and "out of memory" in result.reason
    assert row["oom_killed"] is True and row["exit_code"] == 137


def test_cancel_sends_sigterm_then_records_cancelled(engine, spec_for):
    script = ("import signal, sys, time\n"
              "def bye(*a):\n    print('got SIGTERM, saving', flush=True); sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(600)\n")
    spec = spec_for(["python3", "-u", "-c", script], container_extra="stop_grace_period: 10s\n")
    result = engine.apply(spec, detach=True).last
    log_seen = wait_for_log(engine, result.container_id, b"ready")
    assert log_seen
    t0 = time.monotonic()
    (after,) = engine.stop_run(result.run_id)
    assert after.status == "cancelled"
    assert time.monotonic() - t0 < 8  # the trainer left on SIGTERM, no SIGKILL wait
    assert b"got SIGTERM, saving" in b"".join(engine.backend.logs(result.container_id))
    assert engine.store.phase(result.phase_id)["exit_code"] == 0


def test_stop_kills_after_grace_when_sigterm_is_ignored(engine, spec_for):
    script = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(600)\n"
    spec = spec_for(["python3", "-u", "-c", script], container_extra="stop_grace_period: 2s\n")
    result = engine.apply(spec, detach=True).last
    assert wait_for_log(engine, result.container_id, b"ready")
    t0 = time.monotonic()
    (after,) = engine.stop_run(result.run_id)
    elapsed = time.monotonic() - t0
    assert after.status == "cancelled"
    assert engine.store.phase(result.phase_id)["exit_code"] == 137
    assert 1.5 < elapsed < 15


def test_missing_image_names_the_build_command(engine, spec_for):
    with pytest.raises(ImageMissing) as exc:
        engine.apply(spec_for(["true"], image="runner-no-such-image:latest"))
    assert "bash images/build-offline.sh" in str(exc.value)


def test_gpu_request_without_runtime_fails_before_anything_runs(engine, spec_for, docker_client, test_id, no_gpu_runtime):
    with pytest.raises(GpuUnavailable) as exc:
        engine.apply(spec_for(["python3", "-c", "print('should not run')"], container_extra="gpus: 1\n"))
    assert "no GPU runtime" in str(exc.value)
    # Nothing ran and nothing is left behind.
    assert docker_client.containers.list(all=True, ignore_removed=True, filters={"label": f"{TEST_LABEL}={test_id}"}) == []


def test_bind_mount_missing_source_is_an_engine_error(backend, spec_for, tmp_path):
    """Mount(type=bind) makes the engine refuse a missing source instead of creating it."""
    spec = spec_for(["true"], container_extra=f"mounts: [{{source: {tmp_path}/absent, target: /x}}]\n")
    plan = build_plan(load_spec(spec), {}, "itest", tmp_path / "runs")
    with pytest.raises(LaunchError, match="absent"):
        backend.launch(plan)
    assert not (tmp_path / "absent").exists()


def test_find_by_labels(engine, spec_for, backend):
    result = engine.apply(spec_for(["true"])).last
    found = backend.find({"runner.run-id": result.run_id})
    assert [c.id for c in found] == [result.container_id]
    assert found[0].ended and found[0].exit_code == 0
    any_run = backend.find({"runner.run-id": None, "runner.phase": "p1"})  # key only: any value
    assert result.container_id in [c.id for c in any_run]


def test_second_launch_of_same_phase_is_refused(engine, spec_for, backend, tmp_path):
    # `sleep` as PID 1 ignores SIGTERM: a short grace period, not 30 s of a worker waiting for the stop.
    spec = spec_for(["sleep", "30"], container_extra="stop_grace_period: 1s\n")
    result = engine.apply(spec, detach=True).last
    plan = build_plan(load_spec(spec), {}, result.run_id, engine.runs_dir)
    with pytest.raises(LaunchError, match="already exists"):
        backend.launch(plan)
    engine.stop_run(result.run_id)


def wait_for_log(engine, container_id, needle, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in b"".join(engine.backend.logs(container_id)):
            return True
        time.sleep(0.2)
    return False


def test_reference_trainer_resumes_exactly_on_the_image_torch(engine, spec_for, tmp_path):
    """The image carries Debian's torch 1.13; the host tests (tests/trainer) cover torch 2.x."""
    import torch

    from .conftest import TRAINER_IMAGE

    out = tmp_path / "out"
    mount = f"mounts: [{{source: {out}, target: /out, create: true}}]\n"
    common = ["python3", "/app/train.py", "--max-steps", "20", "--save-every", "10", "--d-model", "32", "--layers", "1"]
    full = engine.apply(spec_for(common + ["--output-dir", "/out/a", "--logdir", "/out/a/tb"], name="full",
                                 image=TRAINER_IMAGE, container_extra=mount)).last
    assert full.status == "succeeded", full.reason
    resumed = engine.apply(spec_for(common + ["--output-dir", "/out/b", "--logdir", "/out/b/tb", "--resume", "/out/a/model_step10.pth"],
                                    name="resumed", image=TRAINER_IMAGE, container_extra=mount)).last
    assert resumed.status == "succeeded", resumed.reason
    a = torch.load(out / "a" / "model_step20.pth", map_location="cpu")
    b = torch.load(out / "b" / "model_step20.pth", map_location="cpu")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    log = (engine.runs_dir / resumed.run_id / "resumed" / "container.log").read_text()
    assert "torch 1.13" in log
