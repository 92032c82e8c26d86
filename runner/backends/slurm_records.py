"""What Slurm says about a job, read (pure): ``squeue --json`` and ``sacct`` text parsed into ``Job`` records, a job's
labels from its comment (JSON), its ``ContainerState`` from the job and the ``.exit.json`` its script wrote, and the
job's output clock (``.times``) that ``logs(since=)`` reads.  runner.backends.slurm runs the commands."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from runner.backends.base import ContainerState
from runner.backends.slurm_job import STAGES


PREFIX = "slurm:"
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT"}
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
# Job states in which the job ended because of the infrastructure, not the container: a phase that ends
# so is an infrastructure interruption (retry `on: [interrupted]`).
INFRASTRUCTURE = {"NODE_FAIL": "its node stopped answering", "PREEMPTED": "it was preempted",
                  "BOOT_FAIL": "its node failed to boot", "DEADLINE": "it passed its deadline"}
EXPLAIN = {"TIMEOUT": "the job reached its Slurm time limit", "CANCELLED": "the job was cancelled (scancel)",
           "OUT_OF_MEMORY": "Slurm killed the job for exceeding its memory", "FAILED": "the job failed",
           "COMPLETED": "", **INFRASTRUCTURE}
HISTORY = "now-30days"  # how far back sacct looks for a phase's job
# Pending reasons under which the job will not start as submitted: said in the phase's reason.
STUCK = {"PartitionTimeLimit": "its --time exceeds the partition's limit: lower the phase's timeout or time_margin",
         "PartitionNodeLimit": "it asks for more nodes than the partition has",
         "BadConstraints": "no node has what it asks for (GPUs, CPUs, memory, constraints)",
         "InvalidAccount": "the account is not valid", "InvalidQOS": "the QOS is not valid",
         "AssocMaxWallDurationPerJobLimit": "its --time exceeds the association's limit",
         "QOSMaxWallDurationPerJobLimit": "its --time exceeds the QOS's limit"}
# Ended states in which the container did not end of itself: exit code 0 there is no success.
NOT_OF_ITSELF = {"CANCELLED", "TIMEOUT", "DEADLINE"}
CONTROLLER_DOWN = ("Unable to contact slurm controller", "Socket timed out", "Connection refused",
                   "Zero Bytes were transmitted", "Slurm backup controller in standby mode", "slurm_load_jobs error")


@dataclass(frozen=True)
class Job:
    """What squeue or sacct says about one job, in one shape."""

    id: str
    name: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...
    reason: str = ""  # why a job is pending (Resources, Priority, ...)
    exit_code: int | None = None  # the batch script's exit code (128+N when a signal N ended it)
    nodes: str = ""
    workdir: str = ""
    comment: str = ""
    started: float | None = None
    ended: float | None = None


def job_id(container_id: str) -> str:
    return container_id.removeprefix(PREFIX)


def _number(value: Any) -> Any:
    """Slurm >= 23.02 wraps numbers as {"set": true, "number": N}; 22.05 gives them bare."""
    if isinstance(value, dict):
        return value.get("number") if value.get("set", True) and not value.get("infinite") else None
    return value


def _state(value: Any) -> str:
    if isinstance(value, dict):  # sacct: {"current": "COMPLETED", "reason": "None"}
        value = value.get("current")
    if isinstance(value, list):  # >= 23.02: ["RUNNING"] or ["CANCELLED", "..."]
        value = value[0] if value else ""
    return str(value or "").split()[0] if value else ""


def _exit_code(value: Any) -> int | None:
    """squeue's exit code → an int (128+signal when a signal ended it).  Slurm 22.05 gives the raw wait
    status (``exit 3`` is 768); later versions {"return_code", "signal"}."""
    if isinstance(value, int):
        signal, code = value & 0x7F, value >> 8
        return 128 + signal if signal else code
    if isinstance(value, dict):
        signal = _number((value.get("signal") or {}).get("signal_id") or (value.get("signal") or {}).get("id"))
        code = _number(value.get("return_code"))
        if signal:
            return 128 + int(signal)
        return int(code) if code is not None else None
    value = _number(value)
    return int(value) if value is not None else None


def parse_squeue(text: str) -> list[Job]:
    jobs = []
    for j in json.loads(text).get("jobs", []):
        start = _number(j.get("start_time"))
        end = _number(j.get("end_time"))
        state = _state(j.get("job_state"))
        jobs.append(Job(id=str(_number(j.get("job_id"))), name=j.get("name", ""), state=state,
                        reason=str(j.get("state_reason") or ""), exit_code=_exit_code(j.get("exit_code")),
                        nodes=str(j.get("nodes") or ""), workdir=str(j.get("current_working_directory") or ""),
                        comment=str(j.get("comment") or ""),
                        started=float(start) if start and state not in QUEUED else None,
                        ended=float(end) if end and state not in QUEUED | RUNNING else None))
    return jobs


SACCT_FIELDS = "JobIDRaw,JobName,State,ExitCode,NodeList,WorkDir,Start,End,Partition,Comment"  # Comment last: it may hold "|"


def parse_sacct(text: str) -> list[Job]:
    """``sacct -X -n -P -o SACCT_FIELDS``.  Not ``sacct --json``: Slurm 22.05's JSON gives every normal exit
    as return code 0 (``exit 3`` included); the parsable text has ``3:0`` (code:signal)."""
    jobs = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 10:
            continue
        jid, name, state, code, nodes, workdir, start, end, partition = parts[:9]
        comment = "|".join(parts[9:])
        if name == "allocation" and not partition:
            continue  # accounting's placeholder until slurmctld sends the job's record (a few seconds)
        exit_code = None
        if ":" in code:
            c, _, sig = code.partition(":")
            exit_code = 128 + int(sig) if sig.isdigit() and int(sig) else (int(c) if c.isdigit() else None)
        jobs.append(Job(id=jid, name=name, state=_state(state), exit_code=exit_code, nodes=nodes if nodes != "None assigned" else "",
                        workdir=workdir, comment=comment, started=_epoch(start), ended=_epoch(end)))
    return jobs


def _epoch(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None  # Unknown, None


def labels_of(job: Job) -> dict[str, str]:
    """The labels of a job: the JSON object of its comment (slurm_job.job_comment: every label of the plan; a
    job submitted before that has runner's two only), else runner's two from its folder (RUNS/RUN/PHASE[.N]/slurm)."""
    try:
        found = json.loads(job.comment) if job.comment.startswith("{") else {}
    except ValueError:
        found = {}
    if not isinstance(found, dict):
        found = {}
    if not found and job.workdir.endswith("/slurm"):
        phase_dir = Path(job.workdir).parent
        found = {"runner.run-id": phase_dir.parent.name, "runner.phase": phase_dir.name.split(".")[0]}
    return {str(k): str(v) for k, v in found.items()}


def container_state(job: Job, exit_record: dict | None, out_tail: str = "", wrote: bool = True) -> ContainerState:
    """Pure: the engine's view of a job (and of what its script recorded when the container ended;
    ``wrote``: the job left its output file in the phase folder)."""
    cid, name, labels = PREFIX + job.id, job.name, labels_of(job)
    started = _iso(job.started)
    if job.state in QUEUED:
        why = job.reason if job.reason and job.reason != "None" else "waiting"
        stuck = f" — it will not start as submitted: {STUCK[why]}" if why in STUCK else ""
        return ContainerState(status="queued", running=False, error=f"Slurm job {job.id} PENDING ({why}){stuck}",
                              id=cid, name=name, labels=labels)
    if job.state in RUNNING or not job.state:
        where = f" on {job.nodes}" if job.nodes else ""
        return ContainerState(status="running", running=True, started_at=started,
                              error=f"Slurm job {job.id} {job.state or 'RUNNING'}{where}", id=cid, name=name, labels=labels)
    record = exit_record or {}
    code = record.get("exit_code", job.exit_code) if record.get("stage") == "ran" else job.exit_code
    if job.state in NOT_OF_ITSELF and code == 0:
        code = None  # cancelled or out of time, the trainer exited 0 on its TERM: not an exit of its own
    oom = bool(record.get("oom_killed")) or job.state == "OUT_OF_MEMORY"
    parts = [f"Slurm job {job.id} {job.state}" + (f" on {job.nodes}" if job.nodes and job.nodes != "None assigned" else "")]
    if EXPLAIN.get(job.state):
        parts.append(EXPLAIN[job.state])
    stage_code = job.exit_code if record.get("stage") != "ran" else None
    if stage_code in STAGES:
        parts = [f"the job script stopped before the container ran: {STAGES[stage_code]}"] + parts
    elif record.get("stage") == "run-failed" and "could not select device driver" in out_tail:
        parts = [f"node {record.get('node') or job.nodes} has no GPU runtime: Docker refused the GPU request (install "
                 "the NVIDIA Container Toolkit on the node, or keep GPU phases off it with sbatch_args)"] + parts
    elif record.get("stage") == "run-failed":
        parts = ["docker run failed on the node" + (f": {out_tail}" if out_tail else "")] + parts
    elif not record and not wrote and job.state not in ("CANCELLED",):
        parts = ["the job left nothing in the phase folder (no output, no exit record): is the folder on a "
                 "filesystem the node shares? (Slurm could not open the job's --output there)"] + parts
    return ContainerState(status="exited", running=False, exit_code=code, oom_killed=oom, started_at=started,
                          finished_at=_iso(job.ended), error="; ".join(parts),
                          infrastructure=INFRASTRUCTURE.get(job.state, ""), id=cid, name=name, labels=labels)


def _iso(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else None

# A sample of the job's output clock taken this late into its second still counts as the second's start.
SINCE_SLACK_S = 0.1


def since_offset(times: str, since: float) -> int:
    """Pure: from a job's ``NAME.times`` (lines ``UNIX_TIME SIZE``, in time order, written just after a second
    begins when the output has grown), the output's size as the unix second ``since`` began: the last sample
    before it (or taken within ``SINCE_SLACK_S`` of its start).  0 when none is: all the output is as late."""
    offset = 0
    for line in times.splitlines():
        parts = line.split()
        try:
            at, size = float(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            continue  # a line being written
        if at >= since + SINCE_SLACK_S:
            break
        offset = size
    return offset


def line_start(handle: BinaryIO, offset: int) -> int:
    """The start of the line that holds byte ``offset`` of a file: a line begun before a second and ended in it
    is of that second (Docker stamps a line when its end is read)."""
    pos = min(offset, handle.seek(0, os.SEEK_END))
    while pos > 0:
        step = min(pos, 65536)
        handle.seek(pos - step)
        newline = handle.read(step).rfind(b"\n")
        if newline >= 0:
            return pos - step + newline + 1
        pos -= step
    return 0


def _last_lines(path: str, n: int) -> str:
    try:
        lines = [x for x in Path(path).read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])
