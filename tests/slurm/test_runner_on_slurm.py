"""runner on a real two-node Slurm cluster (the ``slurm_cluster`` fixture): the same specs, guards, vault,
verdicts and chaining, with Slurm placing the phases and allocating their GPUs.

Every test uses its own run store with ``backend: slurm`` in its folder's backend.yaml, and drives the
runner CLI as a user would (separate processes, SLURM_CONF pointing at the test cluster).  The job scripts
run ``docker`` on the node: the nodes share this machine's Docker engine (a unix socket), or the private
engine with the stand-in NVIDIA hook for the GPU test (tests/integration/gpu_engine.py)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import docker

from tests.conftest import REPO
from tests.integration.conftest import BASE_IMAGE, stop_server, wait_for
from tests.integration.gpu_engine import gpu_engine  # noqa: F401  (the private engine with a stand-in NVIDIA hook)
from tests.integration.test_checkpoint_guard import check_best_survived
from tests.slurm.conftest import Store


def spec(folder: Path, name: str, command: list[str], extra: str = "", image: str = BASE_IMAGE, container: str = "") -> str:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: runner/v1
        kind: Phase
        name: {name}
        container:
          image: {image}
          command: {json.dumps(command)}
          stop_grace_period: 5s
        """) + textwrap.indent(textwrap.dedent(container), "  ") + textwrap.dedent(extra))
    return str(path)


def containers_of(run: str) -> list:
    return docker.from_env().containers.list(all=True, ignore_removed=True, filters={"label": f"runner.run-id={run}"})


def only_run(store: Store) -> str:
    (run,) = store.status()["runs"]
    return run["id"]


def launched(store: Store) -> str | None:
    """The id of the store's one run once its first phase has a job recorded (None before)."""
    from tests.integration.conftest import peek

    runs = (peek(store.state) or {}).get("runs")
    if not runs:
        return None
    phases = runs[0]["phases"]  # the list's run views carry their phases
    return runs[0]["id"] if phases and phases[0]["container_id"] else None


def running_node(store: Store, name: str) -> str | None:
    jobs = store.jobs(name, wait=False)
    if not jobs:
        return None
    state = jobs[0]["state"]
    return jobs[0]["nodes"] if (state["current"] if isinstance(state, dict) else state) == "RUNNING" else None


# ---------------------------------------------------------------------------------------------------------


def test_the_shipped_checkpoint_guard_chain_runs_on_slurm(store, tmp_path):
    """specs/demo/checkpoint-guard.yaml, unchanged: the trainer diverges, the guard stops it through Slurm
    (TERM to the job, docker stop on the node, no container left), the vault keeps the best checkpoint the
    trainer's keep-last-2 deleted, and the chained phase 2 — another Slurm job — resumes from it."""
    out = store("apply", str(REPO / "specs/demo/checkpoint-guard.yaml"), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = only_run(store)
    p1, p2 = store.phases(run)
    assert p1["container_id"].startswith("slurm:") and p2["container_id"].startswith("slurm:")
    assert p1["reason"].startswith("guard tripped (text_loss diverges)"), p1["reason"]
    best = check_best_survived(store, run, tmp_path)
    assert best["step"] <= 150  # before the divergence
    assert p2["status"] == "succeeded", p2["explanation"]
    # Slurm's own record: the guard's stop cancelled phase 1's job; phase 2's job completed; each ran on a node
    j1, = store.jobs(p1["container_name"])
    j2, = store.jobs(p2["container_name"])
    assert store.job_state(p1["container_name"]) == "CANCELLED"
    assert store.job_state(p2["container_name"]) == "COMPLETED"
    assert {j1["nodes"], j2["nodes"]} <= set(store.cluster.nodes)
    assert containers_of(run) == []  # no container outlives its job
    # What ran is on record: the job script, the argv quoted, and the job's output as the phase's log
    script = Path(p1["log"]).parent / "slurm" / f"{p1['container_name']}.sh"
    assert "'--diverge-after' 150" in script.read_text() or "--diverge-after 150" in script.read_text()
    logs = store("logs", run, "demo-keep-best")
    assert logs.returncode == 0 and "runner-slurm: SIGTERM: stopping container" in logs.stdout


def test_three_two_gpu_phases_on_two_two_gpu_nodes(store, gpu_engine):  # noqa: F811
    """Slurm allocates: two 2-GPU phases run (one per node), the third waits PENDING (Resources) — shown by
    `runner status` and `runner queue` with Slurm's reason — and starts when one ends.  Each container is
    given its allocation's GPUs through Docker's NVIDIA path (the private engine's stand-in hook)."""
    store.settings(poll_interval=0.5, node_env={"DOCKER_HOST": gpu_engine.host})
    folder = store.runs.parent
    runs = []
    for i in range(3):
        path = spec(folder, f"gpu{i}", ["sh", "-c", "echo visible=$NVIDIA_VISIBLE_DEVICES; sleep 20"],
                    image=gpu_engine.image, container="gpus: 2\n")
        out = store("apply", "--detach", path, timeout=60)  # each handed to a background supervisor of its own
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(store("status", "--output", "json").stdout)["runs"][0]["id"])
    waiting = wait_for("a phase waiting for resources", lambda: [
        p for r in runs for p in store.peek_phases(r) if "PENDING (Resources)" in p["reason"]], timeout=30)
    assert len(waiting) == 1, waiting
    queue = json.loads(store("queue", "--output", "json").stdout)
    assert any("PENDING (Resources)" in (row["waiting_for"] or "") for row in queue["queue"]), queue
    wait_for("all three to succeed", lambda: all(store.peek_phases(r)[0]["status"] == "succeeded" for r in runs), timeout=120)
    jobs = [store.jobs(store.phases(r)[0]["container_name"])[0] for r in runs]
    starts = sorted((j["time"]["start"], j["time"]["end"]) for j in jobs)
    assert starts[2][0] >= min(starts[0][1], starts[1][1]) - 1  # the third started when one of the first ended
    assert {j["nodes"] for j in jobs} == {"n1", "n2"}
    for r in runs:
        log = store("logs", r).stdout  # detached: the job's output file, through the backend
        assert "visible=0,1" in log, log  # the allocation's GPUs (each node's gpu0 and gpu1)
    calls = [c["NVIDIA_VISIBLE_DEVICES"] for c in gpu_engine.hook_calls()]
    assert calls.count("0,1") >= 3


def test_runner_stop_cancels_the_job_and_no_container_is_left(store):
    path = spec(store.runs.parent, "long", ["sh", "-c", "echo started; sleep 300"])
    out = store("apply", "--detach", path, timeout=60)
    assert out.returncode == 0, out.stderr
    run = only_run(store)
    name = store.phases(run)[0]["container_name"]
    wait_for("the container to run", lambda: [c for c in containers_of(run) if c.status == "running"], timeout=60)
    out = store("stop", run, timeout=120)
    assert out.returncode == 0, out.stderr
    (phase,) = store.phases(run)
    assert phase["status"] == "cancelled", phase
    assert wait_for("Slurm to record the job CANCELLED", lambda: store.job_state(name) == "CANCELLED", timeout=30)
    assert containers_of(run) == []


def test_a_runner_killed_mid_phase_readopts_the_same_job_once(store):
    path = spec(store.runs.parent, "steady",
                ["sh", "-c", "for i in $(seq 1 15); do echo step=$i loss=$((20 - i)); sleep 1; done"],
                extra="""\
                    metrics:
                      stdout: {step: 'step=(\\d+)', patterns: {loss: 'loss=(\\S+)'}}
                    success:
                      all:
                        - {metric: loss, reduce: last, below: 10}
                    """)
    proc = store.popen("apply", path)
    try:
        run = wait_for("the phase to run", lambda: launched(store), timeout=60)
        job_before = store.phases(run)[0]["container_id"]
        wait_for("the job to run", lambda: running_node(store, store.peek_phases(run)[0]["container_name"]), timeout=60)
        time.sleep(3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    out = store("attach", run, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (phase,) = store.phases(run)
    assert phase["container_id"] == job_before  # the same job, re-adopted
    assert phase["status"] == "succeeded", phase
    assert len(store.jobs(phase["container_name"])) == 1  # never submitted twice
    verdicts = [e for e in store.status(run).get("events", []) if e["kind"] == "phase.succeeded"]
    assert len(verdicts) <= 1


def test_killed_right_after_sbatch_the_job_is_found_by_name_not_submitted_again(store):
    path = spec(store.runs.parent, "once", ["sh", "-c", "echo hi; sleep 3"])
    out = store("apply", path, env={"RUNNER_FAULT_POINT": "created"}, timeout=60)
    assert out.returncode == 137  # died between sbatch and recording the job id
    import sqlite3  # the record as the dead runner left it (`runner status` would already look the job up)

    con = sqlite3.connect(f"file:{store.state}?mode=ro", uri=True)
    ((run, status, container),) = con.execute("SELECT run_id, status, container_id FROM phases").fetchall()
    con.close()
    assert status == "launching" and not container
    out = store("attach", run, timeout=120)
    assert out.returncode == 0, out.stderr
    (phase,) = store.phases(run)
    assert phase["status"] == "succeeded" and phase["container_id"].startswith("slurm:")
    assert len(store.jobs(phase["container_name"])) == 1


def test_a_failing_job_is_failed_with_its_exit_code_and_slurms_state(store):
    path = spec(store.runs.parent, "bad", ["sh", "-c", "echo failing; exit 3"])
    out = store("apply", path, timeout=120)
    assert out.returncode != 0
    (phase,) = store.phases(only_run(store))
    assert phase["status"] == "failed" and phase["exit_code"] == 3
    assert "exit code 3" in phase["reason"] and "FAILED" in phase["reason"], phase["reason"]
    assert store.job_state(phase["container_name"]) == "FAILED"
    # gpus: all means nothing under Slurm: a located spec error (exit 1) before anything is submitted
    path = spec(store.runs.parent, "allgpus", ["true"], container="gpus: all\n")
    out = store("apply", path, timeout=60)
    assert out.returncode == 1 and f"{path}:" in out.stderr and "container.gpus: all: under Slurm give a count" in out.stderr


def test_slurms_time_limit_stops_the_container_and_the_phase_fails_with_timeout(store):
    """runner detached --unsupervised (nobody to apply the phase's own timeout): Slurm's --time is the backstop.  Its
    TERM before the limit stops the container (the trainer gets its grace), and Slurm records TIMEOUT."""
    store.settings(poll_interval=0.5, time_margin=0)
    path = spec(store.runs.parent, "slow", ["sh", "-c", "echo started; sleep 600"], extra="timeout: 5s\n")
    out = store("apply", "--detach", "--unsupervised", path, timeout=60)
    assert out.returncode == 0, out.stderr
    run = only_run(store)
    name = store.phases(run)[0]["container_name"]
    wait_for("Slurm to end the job at its time limit", lambda: store.job_state(name) == "TIMEOUT", timeout=200, every=2)
    (phase,) = store.phases(run)  # `status` judges the phase nobody supervised
    assert phase["status"] == "failed" and "TIMEOUT" in phase["reason"] and "time limit" in phase["reason"], phase
    assert containers_of(run) == []
    assert "runner-slurm: SIGTERM: stopping container" in Path(phase["log"]).parent.joinpath(
        "slurm", f"{name}.out").read_text()


def test_a_node_that_dies_is_an_infrastructure_interruption_and_retry_moves_on(store, slurm_cluster):
    """The node's slurmd dies mid-phase: Slurm ends the job NODE_FAIL; runner records an infrastructure
    interruption, and the spec's `retry: {on: [interrupted]}` relaunches it — on the other node."""
    marks = store.runs.parent / "marks"
    marks.mkdir()
    # The first attempt runs long (its node dies under it); the retry finds the mark and ends soon.
    path = spec(store.runs.parent, "fragile",
                ["sh", "-c", "if [ -e /marks/first ]; then echo retry; sleep 2; else touch /marks/first; sleep 120; fi"],
                container=f"mounts: [{{source: {marks}, target: /marks}}]\n",
                extra="retry: {on: [interrupted], max: 1}\n")
    proc = store.popen("apply", path)
    try:
        run = wait_for("the job to be submitted", lambda: launched(store), timeout=60)
        name = store.phases(run)[0]["container_name"]
        node = wait_for("the job to run on a node", lambda: running_node(store, name), timeout=60)
        wait_for("its container", lambda: containers_of(run), timeout=30)
        slurm_cluster.stop_slurmd(node)
        try:
            assert proc.wait(timeout=240) == 0
        finally:
            slurm_cluster.start_slurmd(node)
            slurm_cluster.wait_idle(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The restarted slurmd is told to end the job Slurm no longer runs: its script's trap stops the
    # container (no container outlives its job, even when its node died under it).
    wait_for("the dead node's container to be stopped", lambda: not [
        c for c in containers_of(run) if c.name == name], timeout=60)
    first, second = store.phases(run)
    assert first["status"] == "failed" and "NODE_FAIL" in first["reason"], first
    assert "infrastructure interruption" in first["reason"]
    assert second["status"] == "succeeded", second
    (retried,) = store.jobs(second["container_name"])
    assert retried["nodes"] != node


def test_runner_serve_hands_dropped_specs_to_slurm_and_readopts_the_job_after_a_sigkill(store, tmp_path):
    """`runner serve` on a run store with backend: slurm: a spec dropped in the inbox becomes a job at once
    (no local GPU inventory or CPU slots); a server SIGKILLed mid-phase and started again re-adopts that job."""
    inbox = store.runs / "inbox"
    log = tmp_path / "serve.log"

    def serve() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(store.state), "serve",
                                 "--inbox", str(inbox), "--specs", str(store.runs.parent)],
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=store.env(), cwd=REPO)

    path = spec(store.runs.parent, "served", ["sh", "-c", "for i in $(seq 1 15); do echo tick $i; sleep 1; done"])
    server = serve()
    try:
        wait_for("the inbox", lambda: inbox.is_dir(), timeout=30)
        (inbox / "served.yaml").write_text(Path(path).read_text())
        run = wait_for("the job", lambda: launched(store), timeout=60)
        job = store.phases(run)[0]["container_id"]
        wait_for("the job to run", lambda: running_node(store, store.peek_phases(run)[0]["container_name"]), timeout=60)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        server = serve()
        wait_for("the phase to succeed", lambda: store.peek_phases(run)[0]["status"] == "succeeded", timeout=120)
    finally:
        stop_server(server)
    (phase,) = store.phases(run)
    assert phase["container_id"] == job  # the same job, re-adopted by the restarted server
    assert len(store.jobs(phase["container_name"])) == 1
    assert "GPUs [] (Slurm allocates them)" in log.read_text()
    assert "tick 15" in Path(phase["log"]).read_text()
