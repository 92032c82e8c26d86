"""Smoke tests of the Slurm test cluster (tests/slurm/cluster.py): it is a real cluster, and Slurm behaves
there the way the Slurm backend counts on.  What they found is written down in tests/slurm/README.md (the JSON
fields of ``squeue --json`` / ``sacct --json``, the GPU variables a job sees, signals, node failure)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import wait_for as poll

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


@pytest.fixture
def jobdir(slurm_cluster, request):
    """A fresh folder under the cluster's shared base for this test's job scripts and their output."""
    path = slurm_cluster.base / "jobs" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path


def submit(cluster, jobdir: Path, script: str, *opts: str) -> int:
    path = jobdir / f"job{len(list(jobdir.glob('job*.sh')))}.sh"
    path.write_text("#!/bin/bash\n" + script + "\n")
    proc = cluster.run("sbatch", "--parsable", f"--chdir={jobdir}", f"--output={jobdir}/slurm-%j.out", *opts, str(path),
                       check=True)
    return int(proc.stdout.strip().split(";")[0])


def sacct_state(cluster, job: int) -> str:
    """The job's state in the accounting database, "" until slurmdbd has the job's whole record.

    slurmctld sends a job's start record to slurmdbd in a background pass every 4 s, and its steps' records
    right away: for up to ~4 s after submission sacct knows the job not at all or by a placeholder made from
    its step (name "allocation", empty partition, eligible time 0).  An empty partition tells the placeholder.
    """
    out = cluster.run("sacct", "-X", "-n", "-P", "-o", "State,Partition", "-j", str(job)).stdout.splitlines()
    if not out:
        return ""
    state, _, partition = out[0].strip().partition("|")
    return state if partition else ""


def wait_final(cluster, job: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = sacct_state(cluster, job)
        if state in TERMINAL or state.startswith("CANCELLED"):
            return state
        time.sleep(0.3)
    raise AssertionError(f"job {job} not finished after {timeout} s (sacct state {state!r})\n{cluster.log_tails()}")


def sacct_json(cluster, job: int) -> dict:
    data = json.loads(cluster.run("sacct", "--json", "-j", str(job), check=True).stdout)
    [record] = [j for j in data["jobs"] if j["job_id"] == job]
    return record


def squeue_json(cluster) -> dict[int, dict]:
    data = json.loads(cluster.run("squeue", "--json", check=True).stdout)
    return {j["job_id"]: j for j in data["jobs"]}


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """The shared poll (tests/integration/conftest.py), in this module's argument order."""
    return poll(what, predicate, timeout=timeout, every=interval)


def slurm_version(cluster) -> tuple[int, int]:
    out = cluster.run("sinfo", "--version").stdout.split()[-1]  # "slurm 22.05.8"
    major, minor = out.split(".")[:2]
    return int(major), int(minor)


def test_a_batch_job_runs_on_each_node_and_sacct_json_reports_it(slurm_cluster, jobdir):
    jobs = {}
    for node in slurm_cluster.nodes:
        jobs[node] = submit(slurm_cluster, jobdir, 'echo "$SLURMD_NODENAME" > "node.$SLURM_JOB_ID"',
                            "-w", node, "-J", f"smoke-{node}", f"--comment=phase {node}")
    for node, job in jobs.items():
        assert wait_final(slurm_cluster, job) == "COMPLETED"
        assert (jobdir / f"node.{job}").read_text().strip() == node
        rec = sacct_json(slurm_cluster, job)
        assert rec["state"]["current"] == "COMPLETED"
        assert rec["exit_code"] == {"status": "SUCCESS", "return_code": 0}
        assert rec["nodes"] == node
        assert rec["name"] == f"smoke-{node}"
        assert rec["comment"]["job"] == f"phase {node}"  # AccountingStoreFlags=job_comment
        assert rec["steps"][0]["step"]["name"] == "batch"
        assert rec["steps"][0]["nodes"]["list"] == [node]


def test_a_failing_job_is_failed_with_its_exit_code(slurm_cluster, jobdir):
    job = submit(slurm_cluster, jobdir, "exit 3", "-w", slurm_cluster.nodes[0])
    # squeue --json keeps a finished job for MinJobAge (10 s here): exit_code is the raw wait status.
    rec = wait_for(lambda: (j := squeue_json(slurm_cluster).get(job)) and j["job_state"] == "FAILED" and j, 20,
                   "squeue --json to show the job FAILED")
    assert rec["exit_code"] == 3 << 8
    assert rec["state_reason"] == "NonZeroExitCode"
    assert rec["nodes"] == slurm_cluster.nodes[0]
    assert wait_final(slurm_cluster, job) == "FAILED"
    # The plain ExitCode column is "return code:signal".
    out = slurm_cluster.run("sacct", "-X", "-n", "-P", "-o", "State,ExitCode", "-j", str(job)).stdout.strip()
    assert out == "FAILED|3:0"
    js = sacct_json(slurm_cluster, job)
    assert js["state"]["current"] == "FAILED"
    if slurm_version(slurm_cluster) == (22, 5):
        # Slurm 22.05's sacct --json (openapi/dbv0.0.38) reports every normal exit as SUCCESS with return code 0
        # (its dumper sets 0 whenever WIFEXITED): the exit code has to come from the plain columns.
        assert js["exit_code"] == {"status": "SUCCESS", "return_code": 0}
    else:
        assert js["exit_code"]["return_code"] == 3


def test_a_job_runs_a_container_through_the_docker_socket(slurm_cluster, jobdir):
    image = os.environ.get("RUNNER_BASE_IMAGE", "runner-base:bookworm")
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        pytest.fail(f"{image} is not built (bash images/build-offline.sh)", pytrace=False)
    job = submit(slurm_cluster, jobdir, f"docker run --rm {image} true && echo ok > docker.$SLURM_JOB_ID",
                 "-w", slurm_cluster.nodes[1])
    assert wait_final(slurm_cluster, job, timeout=60) == "COMPLETED", (jobdir / f"slurm-{job}.out").read_text()
    assert (jobdir / f"docker.{job}").read_text().strip() == "ok"


GPU_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "GPU_DEVICE_ORDINAL", "SLURM_GPUS_ON_NODE",
            "SLURM_GPUS", "ROCR_VISIBLE_DEVICES")
DUMP_GPU_ENV = "for v in " + " ".join(GPU_VARS) + ' ; do echo "$v=${!v-<unset>}"; done > "gpuenv.$SLURM_JOB_ID"'


def gpu_env(jobdir: Path, job: int) -> dict[str, str]:
    lines = (jobdir / f"gpuenv.{job}").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_two_gpu_jobs_fill_the_cluster_and_a_third_waits_for_resources(slurm_cluster, jobdir):
    # Each job holds its node's 2 GPUs until the file "release.<job>" appears.
    script = DUMP_GPU_ENV + '\nwhile [ ! -e "release.$SLURM_JOB_ID" ]; do sleep 0.1; done'
    jobs = [submit(slurm_cluster, jobdir, script, "--gres=gpu:2", "-J", f"gpu{i}") for i in range(3)]

    def two_running_one_pending():
        q = squeue_json(slurm_cluster)
        states = [q[j]["job_state"] for j in jobs if j in q]
        reasons = [q[j]["state_reason"] for j in jobs if j in q and q[j]["job_state"] == "PENDING"]
        return states.count("RUNNING") == 2 and reasons == ["Resources"] and q

    # A pending job's reason is "None", then "Priority" until the scheduler has tried it: then "Resources".
    q = wait_for(two_running_one_pending, 15, "two jobs RUNNING and one PENDING for Resources")
    running = [j for j in jobs if q[j]["job_state"] == "RUNNING"]
    [pending] = [j for j in jobs if q[j]["job_state"] == "PENDING"]
    assert q[pending]["state_reason"] == "Resources"
    assert sorted(q[j]["nodes"] for j in running) == sorted(slurm_cluster.nodes)
    assert q[pending]["nodes"] == ""
    for j in running:
        wait_for(lambda j=j: (jobdir / f"gpuenv.{j}").exists(), 10, "the job's GPU variables")
        env = gpu_env(jobdir, j)
        print(f"job {j} on {q[j]['nodes']} (--gres=gpu:2):", env)
        assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
        assert env["SLURM_JOB_GPUS"] == "0,1"
        assert env["GPU_DEVICE_ORDINAL"] == "0,1"

    freed = running[0]
    (jobdir / f"release.{freed}").touch()
    assert wait_final(slurm_cluster, freed) == "COMPLETED"
    wait_for(lambda: squeue_json(slurm_cluster)[pending]["job_state"] == "RUNNING", 10, "the pending job to start")
    assert squeue_json(slurm_cluster)[pending]["nodes"] == q[freed]["nodes"]
    for j in jobs:
        (jobdir / f"release.{j}").touch()
    for j in jobs:
        assert wait_final(slurm_cluster, j) == "COMPLETED"


def test_one_gpu_jobs_on_one_node_get_distinct_devices(slurm_cluster, jobdir):
    node = slurm_cluster.nodes[0]
    script = DUMP_GPU_ENV + "\nsleep 1"
    jobs = [submit(slurm_cluster, jobdir, script, "--gres=gpu:1", "-w", node) for _ in range(2)]
    for j in jobs:
        assert wait_final(slurm_cluster, j) == "COMPLETED"
    envs = [gpu_env(jobdir, j) for j in jobs]
    print("two --gres=gpu:1 jobs on one node:", envs)
    assert sorted(e["CUDA_VISIBLE_DEVICES"] for e in envs) == ["0", "1"]
    assert sorted(e["SLURM_JOB_GPUS"] for e in envs) == ["0", "1"]


def test_scancel_batch_signal_reaches_the_scripts_trap(slurm_cluster, jobdir):
    script = ('trap \'echo TERM > "trapped.$SLURM_JOB_ID"; exit 0\' TERM\n'
              'echo ready > "ready.$SLURM_JOB_ID"\n'
              'while true; do sleep 0.1; done')
    signalled, cancelled = (submit(slurm_cluster, jobdir, script) for _ in range(2))
    for job in (signalled, cancelled):
        wait_for(lambda job=job: (jobdir / f"ready.{job}").exists(), 15, "the jobs to start")
    slurm_cluster.run("scancel", "--batch", "--signal=TERM", str(signalled), check=True)
    # A plain scancel sends TERM to the script too (then KILL after KillWait); the job ends CANCELLED.
    slurm_cluster.run("scancel", str(cancelled), check=True)
    # Only a signal: the job goes on to end by itself, here with the trap's exit 0.
    assert wait_final(slurm_cluster, signalled) == "COMPLETED"
    assert (jobdir / f"trapped.{signalled}").read_text().strip() == "TERM"
    assert wait_final(slurm_cluster, cancelled) == "CANCELLED by 0"
    assert (jobdir / f"trapped.{cancelled}").read_text().strip() == "TERM"


def test_a_node_failure_ends_its_job_node_fail_and_the_node_comes_back(slurm_cluster, jobdir):
    node = slurm_cluster.nodes[1]
    job = submit(slurm_cluster, jobdir, 'echo ready > "ready.$SLURM_JOB_ID"\nwhile true; do sleep 0.2; done',
                 "-w", node, "--no-requeue")
    wait_for(lambda: (jobdir / f"ready.{job}").exists(), 15, "the job to start")
    t0 = time.monotonic()
    slurm_cluster.stop_slurmd(node)
    try:
        wait_for(lambda: slurm_cluster.node_states().get(node, "").startswith("down"), slurm_cluster.slurmd_timeout * 4 + 5,
                 f"{node} to be down", interval=0.5)  # SlurmdTimeout + up to a ping period
        print(f"{node} down {time.monotonic() - t0:.1f} s after its slurmd was killed")
        assert wait_final(slurm_cluster, job, timeout=15) == "NODE_FAIL"
        rec = sacct_json(slurm_cluster, job)
        assert rec["state"]["current"] == "NODE_FAIL"
        # The job's script survives its slurmd (orphaned slurmstepd): still in the node's namespace.
        assert len(slurm_cluster.node_pids(node)) >= 1
        assert slurm_cluster.node_states()[slurm_cluster.nodes[0]] == "idle"
    finally:
        slurm_cluster.kill_node_jobs(node)
        slurm_cluster.start_slurmd(node)
        slurm_cluster.wait_idle(30)
    assert slurm_cluster.node_pids(node) == [slurm_cluster._recorded(f"slurmd-{node}")[0]]
