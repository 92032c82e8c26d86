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
from pathlib import Path
from typing import Iterator, Mapping

from runner import faults
from runner.backends.base import ContainerState
from runner.backends.slurm_job import job_files, job_script, sbatch_argv, slurm_dir
from runner.errors import ContainerNotFound, EngineUnavailable, LaunchError, RunnerError
from runner.plan import LaunchPlan
from runner.settings import SlurmSettings
from runner.backends.slurm_records import CONTROLLER_DOWN, HISTORY, Job, PREFIX, QUEUED, RUNNING, SACCT_FIELDS, _last_lines, container_state, job_id, labels_of, line_start, parse_sacct, parse_squeue, since_offset


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

    def live_restore(self) -> bool | None:
        return None  # each node's engine is its own; a job's end is Slurm's to tell (JobState)

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
