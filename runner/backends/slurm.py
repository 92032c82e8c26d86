"""Slurm backend: a phase is a batch job that runs its container on the allocated node.  The only
module that runs Slurm's commands (sbatch, squeue, sacct, scancel, scontrol); their failures are
translated here into runner.errors (a controller that does not answer is temporary).

The "container id" the engine records is ``slurm:JOBID``.  A job is found again by its name (the
container's deterministic name, ``runner-RUN-PHASE``), so a runner restarted anywhere re-adopts it
and never submits a phase twice.  State comes from ``squeue --json`` while Slurm holds the job, and
from ``sacct`` after (its parsable text: 22.05's ``--json`` loses exit codes); the container's own exit code and OOM kill from the ``.exit.json`` file
the job writes (see slurm_job).  Logs are the job's output file, followed like ``tail -f``; ``since`` finds
its second in the output's clock the job keeps next to it (``.times``).  Labels: the job's comment (JSON).
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

from runner import faults
from runner.backends.base import ContainerState
from runner.backends.slurm_job import STAGES, job_files, job_script, sbatch_argv, slurm_dir
from runner.errors import ContainerNotFound, EngineUnavailable, LaunchError, RunnerError
from runner.plan import LaunchPlan
from runner.settings import SlurmSettings

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


class SlurmBackend:
    """Backend implementation on a Slurm cluster (see module docstring)."""

    remote = True  # the container runs elsewhere: checkpoint folders are watched by polling

    def __init__(self, settings: SlurmSettings | None = None):
        self.settings = settings or SlurmSettings.model_validate({})
        self._files: dict[str, dict[str, str]] = {}  # job id → its files (found again from Slurm when unknown)
        self._recent: dict[str, tuple[float, ContainerState]] = {}
        self._known: set[str] = set()  # jobs squeue has shown: one it forgets before sacct has it is not lost
        self._log_offsets: dict[str, int] = {}  # job id → bytes of its output already given to logs()

    # ------------------------------------------------------------------ commands

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        conf = os.environ.get("SLURM_CONF")
        if conf and not os.path.isfile(conf):
            raise EngineUnavailable(f"SLURM_CONF={conf}: no such file", "point SLURM_CONF at the cluster's slurm.conf")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.settings.command_timeout)
        except FileNotFoundError:
            raise EngineUnavailable(f"{argv[0]} not found on PATH: runner's host needs Slurm's client commands",
                                    "install slurm-client (or slurm-wlm) and point SLURM_CONF at the cluster's slurm.conf") from None
        except subprocess.TimeoutExpired:
            raise EngineUnavailable(f"{argv[0]} did not answer within {self.settings.command_timeout:g}s "
                                    "(Slurm controller busy or down)") from None
        if check and done.returncode != 0:
            raise self._failure(argv, done)
        return done

    @staticmethod
    def _failure(argv: list[str], done: subprocess.CompletedProcess) -> RunnerError:
        """The runner error for a Slurm command that failed (temporary when the controller is the cause)."""
        text = (done.stderr or done.stdout).strip().splitlines()
        first = text[-1] if text else f"exit code {done.returncode}"
        if "Could not establish a configuration source" in (done.stderr or "") or "resolve_ctls_from_dns_srv" in (done.stderr or ""):
            return EngineUnavailable(f"{argv[0]} finds no Slurm configuration ({first})",
                                     "set SLURM_CONF to the cluster's slurm.conf")
        if any(s in (done.stderr or "") for s in CONTROLLER_DOWN):
            return EngineUnavailable(f"Slurm controller not reachable ({argv[0]}: {first})",
                                     "check `scontrol ping` and SLURM_CONF")
        return LaunchError(f"{argv[0]} failed: {first}")

    def ping(self) -> None:
        done = self._run(["scontrol", "ping"], check=False)
        if done.returncode != 0 or "UP" not in done.stdout:
            text = [line for line in (done.stdout or done.stderr).strip().splitlines() if line.strip()]
            if any("resolve_ctls_from_dns_srv" in line or "configuration source" in line for line in text):
                raise EngineUnavailable("scontrol finds no Slurm configuration", "set SLURM_CONF to the cluster's slurm.conf")
            raise EngineUnavailable(f"Slurm controller not reachable: {text[-1] if text else 'no answer'}",
                                    "check `scontrol ping` and SLURM_CONF")

    def check_image(self, image: str) -> None:
        """Images live on the nodes: the job checks (``docker run --pull never``), and a missing image
        ends the phase with docker's own sentence."""

    # ------------------------------------------------------------------ jobs

    def _squeue(self, job: str | None = None) -> list[Job]:
        argv = ["squeue", "--json"] + (["--jobs", job] if job else [])
        done = self._run(argv, check=False)
        if done.returncode != 0:
            if job and "Invalid job id" in (done.stderr or ""):
                return []
            raise self._failure(argv, done)
        return parse_squeue(done.stdout)

    def _sacct(self, job: str | None = None, name: str | None = None) -> list[Job]:
        argv = ["sacct", "-X", "-n", "-P", "-o", SACCT_FIELDS, "--starttime", HISTORY]
        if job:
            argv += ["--jobs", job]
        if name:
            argv += ["--name", name]
        return parse_sacct(self._run(argv).stdout)

    def _job(self, jid: str) -> Job:
        for job in self._squeue(jid):
            if job.id == jid:
                self._known.add(jid)
                return job
        for job in self._sacct(jid):
            if job.id == jid:
                return job
        if jid in self._known:
            # squeue forgot it (MinJobAge) and accounting has no record yet (slurmdbd behind or down)
            raise EngineUnavailable(f"Slurm job {jid} has left squeue and sacct has no record of it yet")
        raise ContainerNotFound(f"Slurm job {jid} is known neither to squeue nor to sacct")

    def _files_of(self, job: Job) -> dict[str, str]:
        if job.id not in self._files and job.workdir and job.name:
            base = f"{job.workdir}/{job.name}"
            self._files[job.id] = {"out": f"{base}.out", "exit": f"{base}.exit.json", "script": f"{base}.sh",
                                   "times": f"{base}.times"}
        return self._files.get(job.id, {})

    def launch(self, plan: LaunchPlan) -> str:
        """Write the job script and submit it; return ``slurm:JOBID``.  A phase whose job already exists
        (pending, running or ended) is never submitted again."""
        argv = sbatch_argv(plan, self.settings)  # before anything is written: labels too long are refused
        # squeue with --states=all: pending, running and ended jobs slurmctld still holds (MinJobAge), so a job
        # that has just ended is seen before accounting has it (sacct lags a few seconds); sacct for older ones.
        listed = self._run(["squeue", "--noheader", "--states=all", "--name", plan.container_name,
                            "--format", "%i %T"]).stdout.split()
        existing = list(zip(listed[::2], listed[1::2]))
        existing += [(j.id, j.state) for j in self._sacct(name=plan.container_name) if j.name == plan.container_name]
        if existing:
            jid, state = existing[0]
            raise LaunchError(f"a Slurm job named {plan.container_name} already exists (job {jid}, {state}): "
                              "this phase was launched before")
        files = job_files(plan)
        folder = Path(slurm_dir(plan))
        token = secrets.token_hex(16)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            Path(files["token"]).write_text(token)
            Path(files["script"]).write_text(job_script(plan, self.settings, token))
            os.chmod(files["script"], 0o755)
            for stale in (files["exit"], files["out"], files["times"]):
                Path(stale).unlink(missing_ok=True)
        except OSError as exc:
            raise LaunchError(f"cannot write the job script in {folder}: {exc}") from None
        done = self._run(argv)
        jid = done.stdout.strip().split(";")[0]
        if not jid.isdigit():
            raise LaunchError(f"sbatch gave no job id: {done.stdout.strip()!r}")
        faults.point("created")
        self._files[jid] = files
        return PREFIX + jid

    def inspect(self, container_id: str) -> ContainerState:
        # squeue is asked at most every poll_interval per job: supervision polls twice a second, and a
        # controller serving a cluster should not answer that for every phase.
        cached = self._recent.get(container_id)
        if cached is not None and time.monotonic() - cached[0] < self.settings.poll_interval:
            return cached[1]
        state = self._inspect(container_id)
        self._recent[container_id] = (time.monotonic(), state)
        return state

    def _inspect(self, container_id: str) -> ContainerState:
        job = self._job(job_id(container_id))
        files = self._files_of(job)
        record = None
        tail = ""
        wrote = True
        if job.state not in QUEUED | RUNNING and files:
            try:
                record = json.loads(Path(files["exit"]).read_text())
            except (OSError, ValueError):
                record = None
            if record and record.get("stage") == "run-failed":
                tail = _last_lines(files.get("out", ""), 2)
            wrote = Path(files["out"]).exists()
        return container_state(job, record, tail, wrote)

    def stop(self, container_id: str, grace: float) -> None:
        """TERM to the batch shell (its trap runs ``docker stop -t GRACE``); a job still queued is
        cancelled.  Returns once Slurm reports the job ended (a plain scancel after the grace period
        and a margin, should the script not have ended it)."""
        jid = job_id(container_id)
        job = self._job(jid)
        if job.state in QUEUED:
            self._run(["scancel", jid], check=False)
        elif job.state in RUNNING:
            self._run(["scancel", "--batch", "--signal=TERM", jid], check=False)
        else:
            return
        self._recent.pop(container_id, None)
        files = self._files_of(job)
        deadline = time.monotonic() + grace + 30
        escalated = cancelled = False
        while True:
            time.sleep(min(1.0, self.settings.poll_interval))
            job = self._job(jid)
            if job.state not in QUEUED | RUNNING:
                self._recent.pop(container_id, None)
                return
            if not cancelled and files and Path(files["exit"]).exists():
                # The container has ended and is removed: cancel the job, so Slurm records CANCELLED.
                self._run(["scancel", jid], check=False)
                cancelled = True
            if time.monotonic() > deadline:
                if escalated:
                    raise RunnerError(f"Slurm job {jid} did not end after scancel ({job.state})")
                self._run(["scancel", jid], check=False)
                escalated, deadline = True, time.monotonic() + 60

    def logs(self, container_id: str, follow: bool = False, since: int | None = None) -> Iterator[bytes]:
        """The job's output file from its start, or (``since``: a unix time) from the first line logged in
        that second or after, as Docker's ``since``; with ``follow``, until the job has ended.

        Where the output stood as each second began is the job's ``NAME.times`` (written on the node by the
        job script, slurm_job.py): the stream starts at the line that holds that offset.  Exact to the
        clock's lateness (milliseconds; a sample over ``SINCE_SLACK_S`` late is not used, and the stream
        starts earlier, never later) and to the node's clock agreeing with this host's.  A job submitted
        before the script kept the clock has no ``NAME.times``: a stream with ``since`` goes on from where
        this process's last stream of it stopped (its whole output in a new process)."""
        jid = job_id(container_id)
        files = self._files.get(jid) or self._files_of(self._job(jid))
        path = files.get("out")
        if not path:
            return
        offset = 0 if since is None else self._since_offset(jid, files, since)
        handle = None
        try:
            while handle is None:
                try:
                    handle = open(path, "rb")
                except FileNotFoundError:
                    if not follow or self._ended(jid):
                        return
                    time.sleep(0.5)
            offset = line_start(handle, offset)
            handle.seek(offset)
            while True:
                chunk = handle.read(65536)
                if chunk:
                    offset += len(chunk)
                    self._log_offsets[jid] = max(offset, self._log_offsets.get(jid, 0))
                    yield chunk
                    continue
                if not follow:
                    return
                if self._ended(jid):
                    rest = handle.read()
                    if rest:
                        yield rest
                    return
                time.sleep(0.3)
        finally:
            if handle is not None:
                handle.close()

    def _since_offset(self, jid: str, files: dict[str, str], since: float) -> int:
        """Where in the job's output the unix second ``since`` begins (see logs)."""
        try:
            return since_offset(Path(files["times"]).read_text(errors="replace"), since)
        except (OSError, KeyError):
            pass
        try:
            keeps_time = "times_file=" in Path(files["script"]).read_text(errors="replace")
        except (OSError, KeyError):
            keeps_time = False
        # No clock yet (no second has begun with output in the file): from the start.  A job from before the
        # clock: on from where this process's last stream stopped.
        return 0 if keeps_time else self._log_offsets.get(jid, 0)

    def _ended(self, jid: str) -> bool:
        """For logs(): has the job ended?  Asked through inspect's cache (the controller is not polled
        faster than poll_interval); a controller that does not answer is not an end."""
        try:
            ended = self.inspect(PREFIX + jid).ended
        except ContainerNotFound:
            return True
        except EngineUnavailable:
            return False
        return ended

    def find(self, labels: Mapping[str, str | None]) -> list[ContainerState]:
        """runner's jobs (named runner-…) carrying all ``labels``, queued, running or ended."""
        seen: dict[str, Job] = {}
        for job in self._sacct() + self._squeue():  # squeue last: the freshest state wins
            if job.name.startswith("runner-"):
                seen[job.id] = job
        out = []
        for job in seen.values():
            have = labels_of(job)
            if all(k in have and (v is None or have[k] == v) for k, v in labels.items()):
                out.append(container_state(job, None))
        return out

    def remove(self, container_id: str) -> None:
        """Nothing to remove: the job script removes its container when it ends (the job's files stay)."""


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
