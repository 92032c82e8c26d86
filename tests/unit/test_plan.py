"""The pure plan step and the Docker request it becomes, tested by equality (no engine)."""
import pytest
from docker.types import DeviceRequest, LogConfig, Mount

from runner.backends.docker import create_kwargs
from runner.errors import SpecError
from runner.plan import BindMount, LaunchPlan, build_plan
from runner.spec import load_spec

SPEC = """
apiVersion: runner/v1
kind: Phase
name: phase1
inputs:
  resume_from: null
  lr: 1e-6
container:
  image: trainer:latest
  command: [python3, train.py, --resume, "${{ inputs.resume_from }}", --learning-rate, "${{ inputs.lr }}", --steps, 5000]
  workdir: /app
  env: {CUDA_LAUNCH_BLOCKING: 1, RUN: "${{ run.id }}"}
  gpus: [0, 2]
  shm_size: 16g
  memory: 32g
  cpus: 4
  user: "1000:1000"
  mounts:
    - {source: ./data, target: /data, read_only: true}
    - {source: "${{ phase.dir }}", target: /runs, create: true}
labels: {team: tts}
timeout: 3h
"""


def test_plan_is_exact(write_spec, tmp_path):
    spec = write_spec(SPEC)
    loaded = load_spec(spec)
    plan = build_plan(loaded, {"resume_from": "/ckpt/model_step351000.pth"}, "r1", tmp_path / "runs")
    phase_dir = str(tmp_path / "runs" / "r1" / "phase1")
    vault = str(tmp_path / "runs" / "vault" / "r1")
    assert plan == LaunchPlan(
        run_id="r1",
        phase="phase1",
        container_name="runner-r1-phase1",
        image="trainer:latest",
        command=("python3", "train.py", "--resume", "/ckpt/model_step351000.pth", "--learning-rate", "1e-6", "--steps", "5000"),
        env={"CUDA_LAUNCH_BLOCKING": "1", "RUN": "r1"},
        mounts=(BindMount(str(tmp_path / "data"), "/data", True, False), BindMount(phase_dir, "/runs", False, True),
                BindMount(vault, vault, True, True)),  # the run's vault, read-only at the same path
        workdir="/app",
        gpus=("0", "2"),
        shm_size=16 * 1024**3,
        memory=32 * 1024**3,
        cpus=4.0,
        user="1000:1000",
        labels={"team": "tts", "runner.run-id": "r1", "runner.phase": "phase1", "runner.spec-sha256": loaded.sha256},
        stop_grace=30.0,
        timeout=3 * 3600.0,
        phase_dir=phase_dir,
        inputs={"resume_from": "/ckpt/model_step351000.pth", "lr": "1e-6"},
    )


def test_docker_request_is_exact(write_spec, tmp_path):
    loaded = load_spec(write_spec(SPEC))
    plan = build_plan(loaded, {"resume_from": "/c.pth"}, "r1", tmp_path / "runs")
    assert create_kwargs(plan) == {
        "image": "trainer:latest",
        "command": ["python3", "train.py", "--resume", "/c.pth", "--learning-rate", "1e-6", "--steps", "5000"],
        "name": "runner-r1-phase1",
        "labels": {"team": "tts", "runner.run-id": "r1", "runner.phase": "phase1", "runner.spec-sha256": loaded.sha256},
        "environment": {"CUDA_LAUNCH_BLOCKING": "1", "RUN": "r1"},
        "mounts": [
            Mount(target="/data", source=str(tmp_path / "data"), type="bind", read_only=True),
            Mount(target="/runs", source=str(tmp_path / "runs" / "r1" / "phase1"), type="bind", read_only=False),
            Mount(target=str(tmp_path / "runs" / "vault" / "r1"), source=str(tmp_path / "runs" / "vault" / "r1"),
                  type="bind", read_only=True),
        ],
        "detach": True,
        "stop_signal": "SIGTERM",
        "log_config": LogConfig(type="json-file", config={"max-size": "100m", "max-file": "2"}),
        "working_dir": "/app",
        "shm_size": 16 * 1024**3,
        "mem_limit": 32 * 1024**3,
        "memswap_limit": 32 * 1024**3,
        "nano_cpus": 4_000_000_000,
        "user": "1000:1000",
        "device_requests": [DeviceRequest(device_ids=["0", "2"], capabilities=[["gpu"]])],
    }
    assert "auto_remove" not in create_kwargs(plan)


@pytest.mark.parametrize("gpus,expected", [
    ("0", None),
    ("1", [DeviceRequest(count=1, capabilities=[["gpu"]])]),
    ("all", [DeviceRequest(count=-1, capabilities=[["gpu"]])]),
])
def test_gpu_requests(write_spec, tmp_path, gpus, expected):
    spec = write_spec(SPEC.replace("gpus: [0, 2]", f"gpus: {gpus}"))
    kwargs = create_kwargs(build_plan(load_spec(spec), {"resume_from": "x"}, "r", tmp_path))
    assert kwargs.get("device_requests") == expected
    # Docker's NVIDIA driver sets NVIDIA_VISIBLE_DEVICES for a GPU request; a CPU phase gets "void", so an
    # image's NVIDIA_VISIBLE_DEVICES=all (CUDA images) gives it nothing even under nvidia-container-runtime.
    # runner never sets CUDA_VISIBLE_DEVICES: inside the container the granted GPUs are numbered from 0.
    env = kwargs["environment"]
    assert env.get("NVIDIA_VISIBLE_DEVICES") == ("void" if expected is None else None)
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_the_spec_cannot_choose_nvidia_devices_itself(write_spec):
    spec = write_spec(SPEC.replace("env: {CUDA_LAUNCH_BLOCKING: 1,", "env: {NVIDIA_VISIBLE_DEVICES: all,"))
    with pytest.raises(SpecError) as exc:
        load_spec(spec)
    (problem,) = exc.value.problems
    assert (problem.path, problem.line) == ("container.env", 11)
    assert "NVIDIA_VISIBLE_DEVICES is set from container.gpus" in problem.message


def test_missing_required_input_is_located(write_spec, tmp_path):
    spec = write_spec(SPEC)
    with pytest.raises(SpecError) as exc:
        build_plan(load_spec(spec), {}, "r1", tmp_path)
    assert [str(p) for p in exc.value.problems] == [
        f"{spec.resolve()}:5:3: inputs.resume_from: required input not given; pass --input resume_from=VALUE"
    ]


def test_unknown_input_is_an_error(write_spec, tmp_path):
    with pytest.raises(SpecError, match="--input typo: the spec declares no such input"):
        build_plan(load_spec(write_spec(SPEC)), {"resume_from": "x", "typo": "1"}, "r1", tmp_path)


def test_input_overrides_default(write_spec, tmp_path):
    plan = build_plan(load_spec(write_spec(SPEC)), {"resume_from": "x", "lr": "2e-6"}, "r1", tmp_path)
    assert plan.command[5] == "2e-6"


def test_substitution_is_text_only(write_spec, tmp_path):
    """An input value is never evaluated or split: it lands as one argv element."""
    evil = "$(rm -rf /); `id` ${{ inputs.lr }}"
    plan = build_plan(load_spec(write_spec(SPEC)), {"resume_from": evil}, "r1", tmp_path)
    assert plan.command[3] == evil
