"""The Slurm job for a plan (sbatch argv, docker run argv, the script's quoting) and the reading of Slurm's
answers, tested by equality without a cluster.  The cluster itself: tests/slurm."""
import dataclasses
import json
import shlex
import subprocess

import pytest

from runner.backends.slurm_records import Job, container_state, labels_of, line_start, parse_sacct, parse_squeue, since_offset
from runner.backends.slurm import SlurmBackend
from runner.backends.slurm_job import (COMMENT_MAX, NOT_SHARED, POST_STOP_WAIT_S, SIGNAL_MARGIN_S, docker_run_argv, job_files,
                                       job_script, sbatch_argv, time_limit_minutes)
from runner.errors import LaunchError, LaunchRefused, SpecError
from runner.plan import BindMount, LaunchPlan
from runner.settings import SlurmSettings, load_settings


def plan(**changes) -> LaunchPlan:
    base = LaunchPlan(
        run_id="r1", phase="phase1", container_name="runner-r1-phase1", image="trainer:latest",
        command=("python3", "train.py", "--lr", "1e-6", "--note", "$(rm -rf /); `id`"),
        env={"RUN": "r1", "TRICKY": "a b'c\"d"},
        mounts=(BindMount("/shared/data", "/data", True, False), BindMount("/shared/runs/r1/phase1", "/runs", False, True),
                BindMount("/shared/odd,name", "/odd")),
        workdir="/app", gpus=2, shm_size=1 << 30, memory=8 << 30, cpus=3.5, user="1000:1000",
        labels={"runner.run-id": "r1", "runner.phase": "phase1"}, stop_grace=30.0, timeout=3600.0,
        phase_dir="/shared/runs/r1/phase1")
    return dataclasses.replace(base, **changes)


def test_docker_run_argv_is_exact():
    assert docker_run_argv(plan()) == [
        "run", "--name", "runner-r1-phase1", "--init", "--pull", "never", "--stop-signal", "SIGTERM",
        "--label", "runner.run-id=r1", "--label", "runner.phase=phase1",
        "--env", "RUN=r1", "--env", "TRICKY=a b'c\"d",
        "--mount", "type=bind,source=/shared/data,target=/data,readonly",
        "--mount", "type=bind,source=/shared/runs/r1/phase1,target=/runs",
        "--mount", 'type=bind,"source=/shared/odd,name",target=/odd',
        "--workdir", "/app", "--shm-size", str(1 << 30), "--memory", str(8 << 30), "--memory-swap", str(8 << 30),
        "--cpus", "3.5", "--user", "1000:1000",
        "trainer:latest", "python3", "train.py", "--lr", "1e-6", "--note", "$(rm -rf /); `id`",
    ]


def test_a_cpu_phase_sees_no_gpu():
    argv = docker_run_argv(plan(gpus=0))
    assert argv[argv.index("--env", argv.index("TRICKY=a b'c\"d")) + 1] == "NVIDIA_VISIBLE_DEVICES=void"


def test_sbatch_argv_is_exact():
    settings = SlurmSettings(partition="gpu", account="speech", sbatch_args=["--constraint=a100"], time_margin=300)
    assert sbatch_argv(plan(), settings) == [
        "sbatch", "--parsable", "--job-name", "runner-r1-phase1",
        "--comment", '{"runner.run-id":"r1","runner.phase":"phase1"}',  # plan()'s labels are runner's two
        "--chdir", "/shared/runs/r1/phase1/slurm", "--output", "/shared/runs/r1/phase1/slurm/runner-r1-phase1.out",
        "--no-requeue", "--signal=B:TERM@60", "--time", "66", "--gres=gpu:2", "--cpus-per-task", "4", "--mem=8192M",
        "--partition", "gpu", "--account", "speech", "--constraint=a100",
        "/shared/runs/r1/phase1/slurm/runner-r1-phase1.sh",
    ]


def test_the_comment_carries_every_label_of_the_plan_and_reads_back_from_squeue_and_sacct():
    labels = {"runner.run-id": "r1", "runner.phase": "phase1", "runner.spec-sha256": "ab" * 32, "team": "speech",
              "note": 'a|b=c "d"\nnext', "lang": "Grüße"}
    argv = sbatch_argv(plan(labels=labels), SlurmSettings())
    comment = argv[argv.index("--comment") + 1]
    assert comment.isascii() and "\n" not in comment and comment.startswith('{"runner.run-id":"r1","runner.phase":"phase1",')
    # sacct's parsable text (Comment last, "|" in it) and squeue's JSON give the labels back whole
    (from_sacct,) = parse_sacct(f"12|runner-r1-phase1|COMPLETED|0:0|n1|/w/slurm|Unknown|Unknown|gpu|{comment}\n")
    (from_squeue,) = parse_squeue(json.dumps({"jobs": [{"job_id": 12, "name": "runner-r1-phase1", "job_state": "RUNNING",
                                                        "comment": comment}]}))
    assert labels_of(from_sacct) == labels_of(from_squeue) == labels


def test_labels_too_long_for_slurms_comment_are_refused_before_anything_is_submitted():
    with pytest.raises(LaunchRefused, match=f"over Slurm's limit of {COMMENT_MAX}") as err:
        sbatch_argv(plan(labels={"runner.run-id": "r1", "runner.phase": "phase1", "big": "x" * COMMENT_MAX}), SlurmSettings())
    assert "(big)" in (err.value.hint or "")


def test_time_limit_leaves_runner_the_first_word():
    # the phase's timeout + its grace + the TERM margin + the settings' margin, in whole minutes
    assert time_limit_minutes(plan(timeout=30, stop_grace=10), SlurmSettings(time_margin=0)) == 2
    assert time_limit_minutes(plan(timeout=None), SlurmSettings()) is None


@pytest.mark.parametrize("gpus", ["all", ("0", "1")])
def test_gpu_ids_or_all_are_refused_with_a_reason(gpus):
    with pytest.raises(LaunchError, match="give a count"):
        sbatch_argv(plan(gpus=gpus), SlurmSettings())


def test_the_job_script_quotes_every_spec_value_and_parses():
    script = job_script(plan(), SlurmSettings(docker=["sudo", "-n", "docker"], node_env={"DOCKER_HOST": "unix:///x y"}), "t0k")
    assert "docker=(sudo -n docker)" in script
    assert "export DOCKER_HOST='unix:///x y'" in script
    run_line = next(line for line in script.splitlines() if line.startswith('"${docker[@]}" run'))
    # the spec's values reach docker as the argv written, whatever they hold
    assert run_line.endswith(shlex.join(docker_run_argv(plan())[1:]) + " &")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_the_job_script_refuses_a_folder_it_cannot_see(tmp_path):
    p = plan(phase_dir=str(tmp_path / "phase"))
    script = tmp_path / "job.sh"
    script.write_text(job_script(p, SlurmSettings(docker=["true"]), "expected-token"))
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True)  # no token file: not shared
    assert done.returncode == NOT_SHARED
    assert "not visible on node" in done.stdout


def test_settings_errors_are_located(tmp_path):
    (tmp_path / "backend.yaml").write_text("backend: slurm\nslurm:\n  partiton: gpu\n")
    with pytest.raises(SpecError) as err:
        load_settings(tmp_path)
    assert "backend.yaml:3:3: slurm.partiton: unknown field 'partiton'; did you mean 'partition'?" in str(err.value)
    (tmp_path / "backend.yaml").write_text("backend: kubernetes\n")
    with pytest.raises(SpecError, match=r"backend.yaml:1:\d+: backend: .*'docker' or 'slurm'"):
        load_settings(tmp_path)
    (tmp_path / "backend.yaml").unlink()
    assert load_settings(tmp_path).backend == "docker"


# ---------------------------------------------------------------- Slurm's answers

def job(**changes) -> Job:
    return dataclasses.replace(Job(id="12", name="runner-r1-phase1", state="RUNNING", nodes="n1",
                                   workdir="/shared/runs/r1/phase1/slurm"), **changes)


def test_a_pending_job_is_queued_with_slurms_reason_never_created():
    state = container_state(job(state="PENDING", reason="Resources", nodes=""), None)
    assert (state.status, state.running, state.ended) == ("queued", False, False)
    assert state.error == "Slurm job 12 PENDING (Resources)"
    assert state.id == "slurm:12" and state.labels == {"runner.run-id": "r1", "runner.phase": "phase1"}


def test_the_containers_exit_code_and_oom_come_from_the_jobs_record():
    record = {"exit_code": 137, "oom_killed": True, "node": "n1", "stage": "ran"}
    state = container_state(job(state="FAILED", exit_code=137), record)
    assert (state.status, state.exit_code, state.oom_killed) == ("exited", 137, True)


@pytest.mark.parametrize("slurm_state,infra,words", [
    ("TIMEOUT", "", "time limit"),
    ("CANCELLED", "", "cancelled"),
    ("NODE_FAIL", "its node stopped answering", "NODE_FAIL"),
    ("PREEMPTED", "it was preempted", "PREEMPTED"),
])
def test_ended_states_name_slurms_state(slurm_state, infra, words):
    state = container_state(job(state=slurm_state, exit_code=143 if slurm_state != "NODE_FAIL" else None), None)
    assert state.ended and state.infrastructure == infra
    assert f"Slurm job 12 {slurm_state}" in state.error and words in state.error


def test_the_scripts_own_failures_are_explained():
    state = container_state(job(state="FAILED", exit_code=NOT_SHARED), None)
    assert "not visible on the node" in state.error and "shared" in state.error


def test_labels_come_from_the_comment_or_else_the_folder():
    assert labels_of(job(comment=json.dumps({"runner.run-id": "rX", "runner.phase": "p"}))) == \
        {"runner.run-id": "rX", "runner.phase": "p"}
    assert labels_of(job(workdir="/s/runs/r9/phase2.3/slurm")) == {"runner.run-id": "r9", "runner.phase": "phase2"}


def test_since_starts_at_the_output_size_sampled_as_that_second_began():
    times = "100.004 10\n101.003 25\n102.150 40\n103.002 55\n104.0"  # the last line is being written
    assert since_offset(times, 99) == 0  # before any sample: all of it
    assert since_offset(times, 100) == 10
    assert since_offset(times, 101) == 25
    assert since_offset(times, 102) == 25  # sampled 150 ms late: not used, the stream starts earlier (never later)
    assert since_offset(times, 103) == 55
    assert since_offset(times, 500) == 55
    assert since_offset("", 100) == 0


def test_a_stream_since_starts_at_the_line_that_holds_the_offset(tmp_path):
    path = tmp_path / "out"
    path.write_bytes(b"one\ntwo\n" + b"x" * 200_000 + b"\nlast")
    with open(path, "rb") as handle:
        assert [line_start(handle, n) for n in (0, 1, 4, 5, 8)] == [0, 0, 4, 4, 8]
        assert line_start(handle, 150_000) == 8  # a long line: back over chunks
        assert line_start(handle, 10**9) == 200_009  # past the end: the last line


# A stand-in docker that prints a line, another 2.2 s later, and exits 0 (for the output's clock).
CLOCK_DOCKER = r"""#!/bin/bash
d=$(dirname "$0")/state
mkdir -p "$d"
case "$1" in
  version) exit 0 ;;
  inspect) [ -e "$d/ran" ] || exit 1; [ "$2" = -f ] && echo "0 false exited"; exit 0 ;;
  run) echo early; sleep 2.2; echo late; touch "$d/ran" ;;
esac
"""


def test_the_job_script_keeps_the_outputs_clock_and_logs_since_reads_it(tmp_path):
    import os
    import time

    (tmp_path / "docker").write_text(CLOCK_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    p = plan(phase_dir=str(tmp_path / "phase"), gpus=0)
    files = job_files(p)
    (tmp_path / "phase" / "slurm").mkdir(parents=True)
    (tmp_path / "phase" / "slurm" / "runner-r1-phase1.token").write_text("tok")
    (tmp_path / "job.sh").write_text(job_script(p, SlurmSettings(docker=[str(tmp_path / "docker")]), "tok"))
    with open(files["out"], "wb") as out:  # as Slurm's --output
        proc = subprocess.Popen(["bash", str(tmp_path / "job.sh")], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "SLURMD_NODENAME": "n1"})
    deadline = time.monotonic() + 10
    while b"early" not in open(files["out"], "rb").read():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    since = int(time.time()) + 1  # "early" came before that second, "late" comes in it or after
    assert proc.wait(timeout=20) == 0
    times = [line.split() for line in open(files["times"]).read().splitlines()]
    assert times and all(float(t) > since - 5 and int(size) > 0 for t, size in times)
    backend = SlurmBackend()
    backend._files["1"] = files
    assert b"".join(backend.logs("slurm:1", since=since)) == b"late\n"
    assert b"".join(backend.logs("slurm:1", since=since - 10)) == b"runner-slurm: node n1\nearly\nlate\n"
    assert b"".join(backend.logs("slurm:1")) == open(files["out"], "rb").read()


def test_squeue_and_sacct_json_of_both_shapes():
    # Slurm 22.05 (bare numbers) and >= 23.02 ({"set", "number"}, state lists) read the same
    old = {"jobs": [{"job_id": 7, "name": "runner-r1-p", "job_state": "PENDING", "state_reason": "Resources",
                     "nodes": "", "current_working_directory": "/w/slurm", "comment": "", "start_time": 0, "end_time": 0,
                     "exit_code": 0}]}
    new = {"jobs": [{"job_id": 7, "name": "runner-r1-p", "job_state": ["RUNNING"], "state_reason": "None",
                     "nodes": "n2", "current_working_directory": "/w/slurm", "comment": "",
                     "start_time": {"set": True, "number": 1700000000}, "end_time": {"set": True, "number": 0},
                     "exit_code": {"return_code": {"set": True, "number": 0}, "signal": {"id": {"set": False, "number": 0}}}}]}
    assert parse_squeue(json.dumps(old))[0].state == "PENDING"
    assert parse_squeue(json.dumps(old))[0].started is None
    running = parse_squeue(json.dumps(new))[0]
    assert (running.state, running.nodes, running.started) == ("RUNNING", "n2", 1700000000.0)
    # 22.05's squeue gives the raw wait status: exit 3 is 768, a kill -9 is 9
    raw = {"jobs": [{**old["jobs"][0], "job_state": "FAILED", "exit_code": 768}, {**old["jobs"][0], "exit_code": 9}]}
    assert [j.exit_code for j in parse_squeue(json.dumps(raw))] == [3, 137]
    # sacct's parsable text (its 22.05 JSON says 0 for every normal exit); the accounting placeholder is skipped
    text = ("8|runner-r1-p|FAILED|3:0|n1|/w/slurm|2026-11-27T09:00:00|2026-11-27T09:01:00|gpu|{\"runner.run-id\":\"r1\"}\n"
            "9|runner-r1-q|CANCELLED by 0|0:15|n2|/w/slurm|2026-11-27T09:00:00|Unknown|gpu|\n"
            "10|allocation|COMPLETED|0:0|n1|/w|2026-11-27T09:00:00|2026-11-27T09:00:01||\n")
    failed, cancelled = parse_sacct(text)
    assert (failed.state, failed.exit_code, failed.ended - failed.started) == ("FAILED", 3, 60.0)
    assert labels_of(failed)["runner.run-id"] == "r1"
    assert (cancelled.state, cancelled.exit_code, cancelled.ended) == ("CANCELLED", 143, None)


def test_ended_states_that_are_not_the_containers_own_are_never_a_zero_exit():
    record = {"exit_code": 0, "oom_killed": False, "node": "n1", "stage": "ran"}
    assert container_state(job(state="CANCELLED", exit_code=0), record).exit_code is None
    assert container_state(job(state="TIMEOUT", exit_code=0), record).exit_code is None
    assert container_state(job(state="COMPLETED", exit_code=0), record).exit_code == 0


def test_a_pending_reason_that_never_clears_says_so():
    state = container_state(job(state="PENDING", reason="PartitionTimeLimit", nodes=""), None)
    assert "will not start as submitted" in state.error and "partition's limit" in state.error


def test_a_job_that_left_nothing_in_the_phase_folder_points_at_the_shared_filesystem():
    state = container_state(job(state="FAILED", exit_code=1), None, wrote=False)
    assert "filesystem the node shares" in state.error


# A stand-in for the docker CLI (state in files), to drive the job script's stop logic through its races.
FAKE_DOCKER = r"""#!/bin/bash
d=$(dirname "$0")/state
mkdir -p "$d"
case "$1" in
  version) exit 0 ;;
  inspect)
    name=${@: -1}
    [ -e "$d/$name" ] || exit 1
    if [ "$2" = -f ]; then cat "$d/$name"; fi ;;
  run)
    shift; while [ "$1" != --name ]; do shift; done; name=$2
    sleep "${CREATE_S:-0}"                 # creating: the name does not exist yet
    echo "0 false running" > "$d/$name"
    echo "container running"
    while [ ! -e "$d/$name.stop" ]; do sleep 0.1; done
    echo "143 false exited" > "$d/$name"; exit 143 ;;
  stop) name=${@: -1}; [ -e "$d/$name" ] || exit 1; echo "stop" >> "$d/stops"; touch "$d/$name.stop"
        while grep -q running "$d/$name"; do sleep 0.1; done ;;
  kill) touch "$d/$(echo ${@: -1}).stop" ;;
  rm) rm -f "$d/${@: -1}" ;;
esac
"""


def run_script(tmp_path, create_s: float, term_after: float, post_stop_wait: int = 0):
    import os
    import signal
    import time

    (tmp_path / "docker").write_text(FAKE_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    p = plan(phase_dir=str(tmp_path / "phase"), gpus=0, stop_grace=0)
    text = job_script(p, SlurmSettings(docker=[str(tmp_path / "docker")]), "tok")
    # the wait for Slurm to end the job after a stop (grace 0 + margin + wait): no Slurm here
    text = text.replace(f"sleep {SIGNAL_MARGIN_S + POST_STOP_WAIT_S} &", f"sleep {post_stop_wait} &")
    (tmp_path / "phase" / "slurm").mkdir(parents=True)
    (tmp_path / "phase" / "slurm" / "runner-r1-phase1.token").write_text("tok")
    (tmp_path / "job.sh").write_text(text)
    proc = subprocess.Popen(["bash", str(tmp_path / "job.sh")], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "CREATE_S": str(create_s), "SLURMD_NODENAME": "n1"})
    time.sleep(term_after)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out, json.loads((tmp_path / "phase" / "slurm" / "runner-r1-phase1.exit.json").read_text())


def test_a_term_while_the_container_is_being_created_still_stops_it(tmp_path):
    rc, out, record = run_script(tmp_path, create_s=2, term_after=0.5)
    assert (rc, record["exit_code"], record["stage"]) == (143, 143, "ran"), out
    assert "SIGTERM: stopping container" in out


def test_a_term_while_it_runs_stops_it_once(tmp_path):
    rc, out, record = run_script(tmp_path, create_s=0, term_after=1.5)
    assert (rc, record["exit_code"]) == (143, 143), out
    assert (tmp_path / "state" / "stops").read_text().count("stop") == 1
    assert not (tmp_path / "state" / "runner-r1-phase1").exists()  # removed: nothing of it outlives the job


def test_a_node_without_a_gpu_runtime_is_named():
    record = {"exit_code": 125, "oom_killed": False, "node": "n1", "stage": "run-failed"}
    tail = 'docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]]'
    state = container_state(job(state="FAILED", exit_code=125), record, tail)
    assert state.error.startswith("node n1 has no GPU runtime") and "NVIDIA Container Toolkit" in state.error


def test_a_missing_slurm_conf_is_said_before_any_command_runs(monkeypatch, tmp_path):
    from runner.backends.slurm import SlurmBackend
    from runner.errors import EngineUnavailable

    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "nope.conf"))
    with pytest.raises(EngineUnavailable, match="nope.conf: no such file"):
        SlurmBackend().ping()


@pytest.mark.parametrize("gpus,words", [("all", "all: under Slurm give a count"),
                                        ("[0, 1]", "device ids 0, 1: under Slurm give a count")])
def test_gpu_ids_or_all_are_a_located_spec_error_under_slurm(write_spec, tmp_path, gpus, words):
    from runner.backends.select import SlurmFactory
    from runner.engine import Engine
    from runner.settings import Settings
    from runner.spec import load_spec
    from runner.store import Store

    path = write_spec(f"""
        apiVersion: runner/v1
        kind: Phase
        name: g
        container:
          image: trainer:latest
          command: [python3, train.py]
          gpus: {gpus}
        """)
    engine = Engine(Store(tmp_path / "runs" / "runner.db"), SlurmFactory(Settings.model_validate({"backend": "slurm"})),
                    tmp_path / "runs")
    with pytest.raises(SpecError) as err:
        engine.plan(load_spec(path), {}, "r1")
    assert f"{path}:7:9: container.gpus: {words}" in str(err.value)
