"""`runner serve`: the long-running server.  Inbox, queue, GPU slots, reconcile on start.

It runs the same core as `runner apply` (Engine.drive), one thread per run.
Training containers never depend on this process: stopping the server (SIGTERM,
or even SIGKILL) leaves them running, and the next start reconciles from the
store and container labels:

* a phase whose container still runs is re-adopted (logs, metric offsets and
  checkpoint watching continue where they stopped);
* a container that ended meanwhile is judged from what it left;
* a container that vanished makes the phase *lost* (never success, never relaunched);
* a phase recorded *launching* is matched to its container by its deterministic
  name before anything is launched; nothing is launched twice;
* a judged phase without a chain decision is decided once; a decision whose next
  phase was not created yet is carried out.

Discovery: the server writes ``RUNS/server.json`` (pid, host, inbox, GPUs, queue)
and refreshes its heartbeat every couple of seconds; `runner apply` with the same
run store finds it there and submits instead of running in the foreground.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Callable

from runner.lifecycle import S, SubmissionState
from runner import __version__
from runner.decisions import graph
from runner.backends.select import is_remote
from runner.engine import Engine, EngineConfig, QuietReporter, new_run_id, stored_plan
from runner.errors import NotFound, Problem, RunnerError, SpecError
from runner.server.inbox import Inbox, Outcome, sha256_bytes
from runner.server.lock import info_path
from runner.decisions.policy import StatePaths
from runner.server.scheduler import Scheduler
from runner.spec.loader import load_spec_bytes
from runner.store import Store
from runner.supervisor import Role

HEARTBEAT_S = 2.0
NOTIFY_KINDS = ("phase.succeeded", "phase.failed", "phase.inconclusive", "phase.lost", "phase.error", "phase.blocked",
                "guard.tripped", "checkpoint.missed")
RETRY_DRIVE_S = 30.0  # a run whose thread ended on an error while its phase is active is carried on after this
HANDOVER_WAIT_S = 15.0
SERVER_SOURCES_SKIPPED = ("apply",)  # runs a foreground `runner apply` owns (re-adopt them with `runner attach`)


def _next_specs_beside(loaded) -> None:
    """A dropped file that is no library spec resolves relative `next:` specs beside its accepted
    copy (inbox/accepted/); say so where they are missing, instead of "no such file"."""
    problems = []
    for i, rule in enumerate(loaded.phase.next):
        if "${{" in rule.apply or os.path.isabs(rule.apply) or (loaded.folder / rule.apply).exists():
            continue
        line, col = loaded.doc.position(("next", i, "apply"))
        problems.append(Problem(str(loaded.path), line, col, f"next[{i}].apply",
                                f"{rule.apply} not found beside the accepted copy ({loaded.folder}): a dropped spec "
                                "that is not an exact copy of a library spec resolves relative paths there; use an "
                                "absolute path, or `runner apply` the spec where it lives"))
    if problems:
        raise SpecError(problems)


class LogReporter(QuietReporter):
    """The server's own log: one timestamped line per engine message (container output goes to container.log)."""

    def __init__(self, say: Callable[[str], None], prefix: str = ""):
        self.say = say
        self.prefix = prefix

    def info(self, message: str) -> None:
        for line in message.splitlines():
            self.say(f"{self.prefix}{line}")


def _print(line: str) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%S ") + line, flush=True)


class Server:
    def __init__(self, store: Store, backend_factory: Callable, runs_dir: Path, inbox: Path | None, specs: list[Path],
                 gpus: list[str], gpu_source: str, cpu_slots: int, policy=None, notify: str | None = None,
                 tick: float = 0.5, quiet: float = 10.0, say: Callable[[str], None] = _print):
        self.store = store
        self.backend_factory = backend_factory
        self.runs_dir = Path(runs_dir).resolve()
        self.specs = [Path(s).resolve() for s in specs]
        self.policy = policy
        self.notify = notify
        self.tick = tick
        self.say = say
        self.gpu_source = gpu_source
        self.stopping = threading.Event()
        self.scheduler = Scheduler(gpus, cpu_slots, self._rank, self._note)
        self.inbox = Inbox(inbox, store, quiet=quiet) if inbox else None
        self.threads: dict[str, threading.Thread] = {}
        self._retry_at: dict[str, float] = {}  # run id → monotonic time before which an ended thread is not restarted
        self.started_at = time.time()
        self._notified = 0

    # ------------------------------------------------------------------ engines

    def engine(self, prefix: str = "") -> Engine:
        """An engine for one thread (its own Docker client), sharing the store, slots and policy."""
        # waits for a terminal that is handing a run over to leave (runner.handover)
        return Engine(self.store, self.backend_factory, self.runs_dir, LogReporter(self.say, prefix), EngineConfig(
            role=Role.SERVER, lock_wait_s=HANDOVER_WAIT_S, persistent=True, detach_requested=self.stopping,
            slots=None if is_remote(self.backend_factory) else self.scheduler,  # under Slurm, Slurm queues and allocates
            policy=self.policy,
            state_paths=StatePaths.of(self.runs_dir, self.inbox.folder if self.inbox is not None else None)))

    def _rank(self, run_id: str) -> tuple:
        try:
            sub = self.store.submission(run_id)
        except NotFound:
            return (0, float("inf"))
        return (-sub["priority"], sub["submitted_at"])

    def _note(self, phase_id: int, text: str) -> None:
        self.store.update(phase_id, reason=text)

    # ------------------------------------------------------------------ main loop

    def serve(self) -> None:
        """Run until ``stop()`` (SIGTERM/SIGINT): reconcile, then intake, queue and heartbeat."""
        self.say(f"runner {__version__} serving: runs {self.runs_dir}, store {self.store.path}, "
                 f"inbox {self.inbox.folder if self.inbox else '-'}, GPUs [{', '.join(self.scheduler.gpus)}] "
                 f"({self.gpu_source}), CPU slots {self.scheduler.cpu_slots}")
        self._notified = self.store.last_event_id()
        self._write_info()
        self.reconcile()
        if self.inbox is not None:
            self.inbox.start()
        beat = 0.0
        try:
            while not self.stopping.is_set():
                try:
                    self._tick()
                    if time.monotonic() - beat >= HEARTBEAT_S:
                        beat = time.monotonic()
                        self._write_info()
                except Exception as exc:  # a bug or a full disk: say so and keep serving the runs in flight
                    self.say(f"server loop error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
                    self.stopping.wait(5)
                if self.inbox is not None:
                    self.inbox.watcher.changed.wait(self.tick)
                else:
                    self.stopping.wait(self.tick)
        finally:
            self._shutdown()

    def _tick(self) -> None:
        if self.inbox is not None:
            for outcome in self.inbox.scan(self._accept):
                self._log_outcome(outcome)
        self._start_queued()
        self._post_notifications()

    def stop(self) -> None:
        """Leave: supervision stops, containers keep running, pending phases stay queued."""
        self.stopping.set()
        self.scheduler.stop()
        if self.inbox is not None:
            self.inbox.watcher.changed.set()

    def _shutdown(self) -> None:
        self.stop()
        for t in list(self.threads.values()):
            t.join(timeout=20)
        if self.inbox is not None:
            self.inbox.stop()
        self._write_info(state="stopped")
        self.say("server stopped; training containers keep running and are re-adopted on the next start")

    # ------------------------------------------------------------------ reconcile

    def reconcile(self) -> None:
        """Before any thread starts: every phase that has (or may have) a container claims its devices,
        so queued phases cannot be handed GPUs that re-adopted containers still use."""
        adopted = 0
        for row in self.store.active_phases():
            if not self._owned(row["run_id"]):
                continue
            if row["status"] in (S.RUNNING, S.DETACHED, S.LAUNCHING):
                plan = stored_plan(row)
                if plan is not None:
                    self.scheduler.claim(row["id"], plan)
                adopted += 1
        queued = len([s for s in self.store.submissions() if s["source"] not in SERVER_SOURCES_SKIPPED])
        self.say(f"reconcile: {adopted} phase(s) with containers to re-adopt, {queued} run(s) to carry on")
        self._report_strangers()

    def _report_strangers(self) -> None:
        """Running containers with runner's labels that this store does not know (another store, or a
        lost one): named in the log, never touched."""
        try:
            found = self.backend_factory().find({"runner.run-id": None})
        except RunnerError as exc:
            self.say(f"reconcile: cannot list containers: {exc}")
            return
        for c in found:
            if not c.running:
                continue
            run_id = c.labels.get("runner.run-id", "")
            try:
                self.store.run(run_id)
            except NotFound:
                self.say(f"reconcile: container {c.name} ({c.id[:12]}, run {run_id}) is not in this run store; "
                         "leaving it alone")

    def _owned(self, run_id: str) -> bool:
        try:
            return self.store.submission(run_id)["source"] not in SERVER_SOURCES_SKIPPED
        except NotFound:
            return False

    # ------------------------------------------------------------------ runs

    def _start_queued(self) -> None:
        runs = [sub["run_id"] for sub in self.store.submissions(("queued", "started"))
                if sub["source"] not in SERVER_SOURCES_SKIPPED]
        # A run this server owns whose phase is still active is driven whatever its submission says (a thread
        # that ended on an error — the store locked for too long — must not orphan a running phase): after a
        # pause, so a fault that persists is not retried in a tight loop.
        now = time.monotonic()
        for row in self.store.active_phases():
            if row["run_id"] not in runs and self._owned(row["run_id"]) and self._retry_at.get(row["run_id"], 0.0) <= now:
                runs.append(row["run_id"])
        for run_id in runs:
            if run_id in self.threads and self.threads[run_id].is_alive():
                continue
            if run_id in self.threads and self._retry_at.get(run_id, 0.0) > now:
                continue
            t = threading.Thread(target=self._drive, args=(run_id,), name=f"run-{run_id}", daemon=True)
            self.threads[run_id] = t
            t.start()

    def _drive(self, run_id: str) -> None:
        if self.store.submission(run_id)["state"] == "queued":
            self.store.set_submission(run_id, "started")
        engine = self.engine(prefix=f"[{run_id}] ")
        try:
            result = engine.drive(run_id)
        except (SpecError, RunnerError) as exc:
            if self.stopping.is_set():
                return
            self._retry_at[run_id] = time.monotonic() + RETRY_DRIVE_S
            if any(p["status"] in (S.LAUNCHING, S.RUNNING, S.DETACHED) for p in self.store.phases(run_id)):
                self.say(f"[{run_id}] {exc}; its phase is still active: carried on in {RETRY_DRIVE_S:.0f} s")
                return
            self.store.set_submission(run_id, "done", f"error: {exc}")
            self.say(f"[{run_id}] run ended with an error: {exc}")
            return
        except Exception as exc:  # a bug: record it, keep serving the other runs
            self._retry_at[run_id] = time.monotonic() + RETRY_DRIVE_S
            self.say(f"[{run_id}] internal error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            if not self.stopping.is_set():
                self.store.set_submission(run_id, "done", f"internal error: {type(exc).__name__}: {exc}")
            return
        if self.stopping.is_set():
            return  # carried on after the restart
        if self.store.submission_state(run_id) == SubmissionState.CANCELLED:
            self.say(f"[{run_id}] run stopped on request")
            return
        last = result.last
        self.store.set_submission(run_id, "done", f"phase {last.phase} {last.status}")
        self.say(f"[{run_id}] run done: last phase {last.phase} {last.status}")

    # ------------------------------------------------------------------ inbox

    def library_twin(self, sha: str) -> Path | None:
        """A spec in the library (--specs) with exactly these bytes: a dropped copy of it runs as
        that file, so its relative paths (next: specs, mounts) mean what they mean there.  Files in the
        inbox and the run store's folder are never library files (an inbox inside --specs would find the
        dropped file itself, which is about to be moved)."""
        own = [d for d in (self.inbox.folder if self.inbox else None, self.runs_dir) if d is not None]
        for root in self.specs:
            for path in sorted(root.rglob("*.y*ml")):
                if any(path.is_relative_to(d) for d in own):
                    continue
                try:
                    if path.is_file() and not path.is_symlink() and sha256_bytes(path.read_bytes()) == sha:
                        return path
                except OSError:
                    continue
        return None

    def _accept(self, name: str, data: bytes, sha: str, path: Path) -> tuple[str, str, str | None]:
        """Validate a complete inbox file; record it accepted (then move it) or say why not."""
        assert self.inbox is not None
        dup = self.store.duplicate_of(sha, {})
        if dup is not None:
            state = self.store.submission(dup)["state"]
            return "duplicate", f"same content as run {dup} ({state}); not run twice", dup
        run_id = new_run_id()
        dest = self.inbox.target("accepted", name, run_id)
        twin = self.library_twin(sha)
        spec_path = twin or dest
        try:
            loaded = load_spec_bytes(data, spec_path)
            if twin is None:
                _next_specs_beside(loaded)
            chain = graph.build(spec_path, root=loaded)  # every next: spec must exist and be valid
            self.engine().plan(loaded, {}, run_id)  # inputs, interpolation and the mount policy
            later = [p for path, spec in chain.specs.items() if path != chain.root and self.policy is not None
                     for p in self.policy.literal_problems(spec)]
            if later:
                raise SpecError(later)
        except SpecError as exc:  # located in the file where the person will find it: rejected/NAME
            shown = str(self.inbox.folder / "rejected" / name)
            raise SpecError([Problem(shown, p.line, p.col, p.path, p.message) if p.file == str(spec_path) else p
                             for p in exc.problems]) from None
        reason = f"queued as run {run_id}" + (f" (same content as {twin}: runs as that file)" if twin else "")
        intake_id = self.store.submit(run_id, str(spec_path), loaded.sha256, {}, f"inbox:{name}", 0, "queued",
                                      intake=dict(name=name, state="accepted", reason=reason, moved_to=str(dest),
                                                  source="inbox", sha256=sha))
        assert intake_id is not None  # submit returns the intake record's id when given one
        self.inbox.move_accepted(intake_id, name, dest)
        return "accepted", reason, run_id

    def _log_outcome(self, o: Outcome) -> None:
        first = o.reason.splitlines()[0] if o.reason else ""
        more = f" (+{len(o.reason.splitlines()) - 1} more, see {o.moved_to}.error.txt)" if "\n" in o.reason else ""
        self.say(f"inbox: {o.name}: {o.state}: {first}{more}")

    # ------------------------------------------------------------------ visibility

    def _write_info(self, state: str = "serving") -> None:
        info = {
            "state": state,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": __version__,
            "started_at": self.started_at,
            "heartbeat_at": time.time(),
            "store": str(self.store.path.resolve()),
            "runs": str(self.runs_dir),
            "inbox": str(self.inbox.folder.resolve()) if self.inbox else None,
            "inbox_waiting": dict(self.inbox.waiting) if self.inbox else {},
            "specs": [str(s) for s in self.specs],
            "mount_roots": list(self.policy.roots) if self.policy else [],
            "gpu_source": self.gpu_source,
            "scheduler": self.scheduler.snapshot(),
        }
        path = info_path(self.runs_dir)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, path)

    def _post_notifications(self) -> None:
        if not self.notify:
            return
        for e in self.store.events_since(self._notified, NOTIFY_KINDS):
            self._notified = e["id"]
            phase = self.store.phase(e["phase_id"])["name"] if e["phase_id"] else None
            body = {"event": e["kind"], "run": e["run_id"], "phase": phase, "message": e["message"], "at": e["at"],
                    "data": e["data"]}
            threading.Thread(target=self._post, args=(body,), daemon=True).start()

    def _post(self, body: dict) -> None:
        assert self.notify is not None  # _post_notifications starts it only when a URL is set
        req = urllib.request.Request(self.notify, data=json.dumps(body, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": f"runner/{__version__}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
        except Exception as exc:  # a webhook that is down never disturbs a run
            self.say(f"notify: POST {self.notify} failed: {exc}")
