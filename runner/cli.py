"""Command line: parse arguments, call the engine, render, map errors to exit codes.

Exit codes: 0 ok; 1 invalid spec, failed phase or unknown run; 2 usage;
3 infrastructure error (engine unreachable, image missing, ...); 130 cancelled.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from runner import __version__
from runner.errors import EngineUnavailable, RunnerError, SpecError
from runner.store import ACTIVE, Store
from runner.views import iso, queue_rows, run_view

DEFAULT_STATE = "runs/runner.db"
STATUS_WIDTH = 120  # the `runner status` table never needs a wider terminal
EXIT = {"succeeded": 0, "detached": 0, "running": 0, "failed": 1, "blocked": 1, "lost": 1, "error": 3, "cancelled": 130}


class TerminalReporter:
    """Engine output on a terminal: the container's output and runner's messages scroll, one status
    area stays at the bottom and is redrawn in place.

    Everything that reaches the terminal while the status area is shown goes through the one console
    that draws it (rich's Live prints it above the area and redraws the area below): a second writer
    to the same terminal would move the cursor behind its back and leave stale copies of the area.
    Not a terminal (a pipe, a CI log): plain lines, one per event, and no status area.

    If the terminal goes away (SIGHUP, a dropped SSH session), writes are silently dropped: losing
    the terminal must never disturb the phase."""

    def __init__(self, out: Console, err: Console):
        self.out = out  # the container's output
        self.console = err  # runner's own messages and the status area
        self.dead = False
        self._status: Live | None = None
        self._view: dict | None = None
        self._lock = threading.RLock()  # the log pump calls log_line from its own thread

    def _safe(self, fn, *args, **kwargs) -> None:
        if self.dead:
            return
        try:
            fn(*args, **kwargs)
        except (OSError, ValueError):
            self.dead = True

    def info(self, message: str) -> None:
        with self._lock:
            self._safe(say, self.console, message)

    def log_line(self, line: str) -> None:
        with self._lock:
            if self._status is not None and self.out.is_terminal:
                # the same terminal: above the status area, through the console that draws it
                self._safe(self.console.print, Text(line), highlight=False, overflow="fold")
            else:
                self._safe(say, self.out, line)

    def progress(self, text: str) -> None:
        if self._view is None:
            self._show(Text(text))

    def live(self, phase: str, view: dict) -> None:
        self._view = view
        self._show(render_view(phase, view))

    def _show(self, renderable) -> None:
        if not self.console.is_terminal or self.dead:
            return
        with self._lock:
            if self._status is None:
                # redrawn only when the view changes: no timer thread writing behind the log pump's back
                self._status = Live(renderable, console=self.console, auto_refresh=False, transient=True,
                                    redirect_stdout=True, redirect_stderr=False, vertical_overflow="crop")
                self._safe(self._status.start)
            self._safe(self._status.update, renderable, refresh=True)

    def close(self) -> None:
        with self._lock:
            if self._status is not None:
                self._safe(self._status.stop)
                self._status = None
            self._view = None


def render_view(phase: str, view: dict):
    """The live status area: step, rate, ETA; metrics with trends; guards; criteria's standing now.
    Text from the store, the engine or the trainer is never read as markup."""
    from runner.units import format_duration

    step, total = view.get("step"), view.get("total")
    head = Text()
    head.append(phase, style="bold")
    head.append(f"  {view.get('state', '')}  elapsed {format_duration(view.get('elapsed', 0))}")
    if step is not None:
        head.append(f"  step {step:,}" + (f"/{total:,}" if total else ""))
    if view.get("rate"):
        head.append(f"  {view['rate']:.1f} steps/s")
    if view.get("eta") is not None:
        head.append(f"  ETA {format_duration(view['eta'])}")
    table = Table(box=None, pad_edge=False, show_header=True)
    table.add_column("metric")
    table.add_column("step", justify="right")
    table.add_column("latest", justify="right")
    table.add_column("trend")
    for m in view.get("metrics", []):
        _add_row(table, Text(m["name"]), str(m["step"]), f"{m['value']:.5g}", m["trend"])
    parts = [head, table]
    for g in view.get("guards", []):
        style = "red" if g["state"].startswith("TRIPPED") else "dim"
        parts.append(Text(f"guard {g['guard']}: {g['state']}", style=style))
    lines = view.get("criteria", [])
    if lines:
        parts.append(Text("success criteria now (measured vs threshold):"))
        parts += [Text(f"  {line}") for line in lines]
    return Group(*parts)


def _add_row(table: Table, *cells) -> None:
    """A table row whose cells are plain text: names, reasons and paths from the store or the engine
    are never read as rich markup (an error mentioning `capabilities: [[gpu]]` shows as written)."""
    table.add_row(*(c if isinstance(c, Text) else Text("" if c is None else str(c)) for c in cells))


def say(console: Console, text: str) -> None:
    """One plain line: no markup, no highlighting, never wrapped (errors stay one line per problem)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runner", description="Declarative job-spec runner for long GPU training runs.")
    p.add_argument("--state", default=None, help=f"run store (default $RUNNER_STATE or {DEFAULT_STATE}); runs/ is its folder")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"runner {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check spec files; every problem is listed with file:line:col")
    v.add_argument("files", nargs="+", metavar="FILE")

    sub.add_parser("schema", help="print the JSON Schema of a phase spec (Draft 2020-12)")

    a = sub.add_parser("apply", help="run a phase spec in a container")
    a.add_argument("file", metavar="FILE")
    a.add_argument("--input", "-i", action="append", default=[], metavar="NAME=VALUE", help="set an input (repeatable)")
    a.add_argument("--detach", "-d", action="store_true", help="start the phase and return at once")
    a.add_argument("--priority", type=int, default=0, help="queue priority when a server runs (higher first; default 0)")
    a.add_argument("--local", action="store_true",
                   help="run in this terminal even if a server (runner serve) runs for this run store")

    sv = sub.add_parser("serve", help="run as a server: inbox, queue, GPU slots; re-adopts running containers on start")
    sv.add_argument("--inbox", default=os.environ.get("RUNNER_INBOX"), metavar="DIR",
                    help="watch DIR for dropped spec files (default $RUNNER_INBOX; none: only `runner apply` submits)")
    sv.add_argument("--specs", action="append", default=None, metavar="DIR",
                    help="spec library (repeatable; default ./specs): mounts from it are allowed, and a dropped copy of "
                         "one of its files runs as that file")
    sv.add_argument("--allow-mount", action="append", default=[], metavar="DIR",
                    help="also allow bind mounts from under DIR (repeatable; also $RUNNER_ALLOW_MOUNTS, ':'-separated)")
    sv.add_argument("--gpus", default=os.environ.get("RUNNER_GPUS"), metavar="IDS",
                    help="GPU ids to schedule, e.g. 0,1,3, or 'none' (default $RUNNER_GPUS, else ask nvidia-smi)")
    sv.add_argument("--cpu-slots", type=int, default=None, metavar="N",
                    help="CPU-only phases that may run at once (default $RUNNER_CPU_SLOTS or 4)")
    sv.add_argument("--notify", default=os.environ.get("RUNNER_NOTIFY"), metavar="URL",
                    help="POST a JSON message to URL on verdicts, guard trips and lost phases (default $RUNNER_NOTIFY)")
    sv.add_argument("--http", default=os.environ.get("RUNNER_HTTP"), metavar="HOST:PORT",
                    help="also serve a read-only web page (runs, queue, reports) and JSON under /api/ "
                         "(e.g. 127.0.0.1:8080; default $RUNNER_HTTP, none)")
    sv.add_argument("--quiet", type=float, default=10.0, metavar="SECONDS",
                    help="with no file events, an inbox file is read once unchanged this long (default 10)")

    q = sub.add_parser("queue", help="list the server's waiting work, in the order it will start")
    q.add_argument("--output", "-o", choices=["table", "json"], default="table")

    s = sub.add_parser("status", help="show runs and their phases")
    s.add_argument("run", nargs="?", metavar="RUN", help="run id or unique prefix (default: recent runs)")
    s.add_argument("--output", "-o", choices=["table", "json"], default="table")

    lg = sub.add_parser("logs", help="print a phase's container output")
    lg.add_argument("run", metavar="RUN")
    lg.add_argument("phase", nargs="?", metavar="PHASE")
    lg.add_argument("--follow", "-f", action="store_true")

    st = sub.add_parser("stop", help="stop a run's running phases (SIGTERM, grace period, SIGKILL)")
    st.add_argument("run", metavar="RUN")

    at = sub.add_parser("attach", help="re-adopt a detached phase: guards, verdict and chain continue where they were")
    at.add_argument("run", metavar="RUN")

    ck = sub.add_parser("checkpoints", help="list a phase's checkpoints: step, score, sha256, state (best, kept, pruned)")
    ck.add_argument("run", metavar="RUN")
    ck.add_argument("phase", nargs="?", metavar="PHASE")
    ck.add_argument("--output", "-o", choices=["table", "json"], default="table")

    ex = sub.add_parser("export", help="copy a phase's best checkpoint out of the vault and verify its sha256")
    ex.add_argument("run", metavar="RUN")
    ex.add_argument("phase", nargs="?", metavar="PHASE")
    ex.add_argument("--best", required=True, metavar="DEST", help="destination file or folder")

    m = sub.add_parser("metrics", help="print the scalars runner reads from a logdir, event file or JSONL file")
    m.add_argument("path", metavar="PATH")
    m.add_argument("--tag", action="append", default=[], help="only these tags (repeatable)")
    m.add_argument("--format", choices=["table", "csv", "json"], default="table")

    pl = sub.add_parser("plan", help="validate a spec and every spec its next: rules reach; print the graph")
    pl.add_argument("file", metavar="FILE")
    pl.add_argument("--format", choices=["text", "mermaid"], default="text")

    rr = sub.add_parser("report", help="write a run's report: plots, verdicts, chain and timeline in one HTML file")
    rr.add_argument("run", nargs="?", metavar="RUN", help="run id or unique prefix (default: the newest run)")
    rr.add_argument("--output", "-o", default=None, metavar="FILE", help="the HTML file (default report-RUN.html)")
    rr.add_argument("--png", default=None, metavar="DIR", help="also write each plot as a PNG file into DIR")

    rp = sub.add_parser("replay", help="run a spec's guards, criteria and next rules over an existing logdir")
    rp.add_argument("file", metavar="FILE")
    rp.add_argument("--logdir", required=True)
    rp.add_argument("--input", "-i", action="append", default=[], metavar="NAME=VALUE")
    rp.add_argument("--output", "-o", choices=["text", "json"], default="text")
    return p


def _state_path(args: argparse.Namespace) -> Path:
    return Path(args.state or os.environ.get("RUNNER_STATE") or DEFAULT_STATE)


def _engine(args: argparse.Namespace, reporter=None):
    from runner.backends.docker import DockerBackend
    from runner.engine import Engine

    state = _state_path(args)
    return Engine(Store(state), DockerBackend, state.parent, reporter)


def _parse_inputs(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise RunnerError(f"--input {pair!r}: expected NAME=VALUE")
        out[name] = value
    return out


# ---------------------------------------------------------------------- commands


def cmd_validate(args, console: Console) -> int:
    from runner.spec import load_spec

    bad = 0
    for f in args.files:
        try:
            loaded = load_spec(f)
        except SpecError as exc:
            bad += 1
            for problem in exc.problems:
                say(console, str(problem))
        else:
            say(console, f"{f}: ok (phase {loaded.phase.name})")
    return 1 if bad else 0


def cmd_schema(args, console: Console) -> int:
    from runner.spec.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def cmd_apply(args, console: Console) -> int:
    from runner.daemon import find_server

    server = None if args.local else find_server(_state_path(args).parent)
    if server is not None:
        return _submit_to_server(args, console, server)
    return _foreground(args, console, lambda engine: engine.apply(args.file, _parse_inputs(args.input), detach=args.detach))


def cmd_attach(args, console: Console) -> int:
    return _foreground(args, console, lambda engine: engine.attach(engine.store.resolve_run(args.run)))


def _foreground(args, console: Console, work) -> int:
    """Run engine work in the foreground: live view, Ctrl-C stops, SIGHUP/SIGTERM detach."""
    reporter = TerminalReporter(console, Console(stderr=True, highlight=False))
    engine = _engine(args, reporter)

    def leave(signum, frame):
        # Losing the terminal or the runner being stopped never stops training.
        if signum == signal.SIGHUP:
            reporter.dead = True
        engine.detach_requested.set()

    signal.signal(signal.SIGHUP, leave)
    signal.signal(signal.SIGTERM, leave)
    try:
        run = work(engine)
    finally:
        reporter.close()
    for r in run.phases:
        reporter.info(f"run {r.run_id}: phase {r.phase} {r.status}" + (f" ({r.reason})" if r.reason else ""))
    if getattr(args, "detach", False):
        say(console, run.run_id)
    return EXIT.get(run.last.status, 1)


def _submit_to_server(args, console: Console, server: dict) -> int:
    """Queue the spec for the running server (found through its heartbeat file) instead of running it here."""
    from runner.policy import MountPolicy

    path = Path(args.file).resolve()
    roots = [Path(r) for r in server.get("mount_roots") or []]
    if roots and not any(path == r or r in path.parents for r in roots):
        raise RunnerError(f"the server cannot see {path}: it reads specs under {', '.join(map(str, roots))}",
                          "move the spec under one of them, or run it here with --local")
    engine = _engine(args)
    engine.policy = MountPolicy(tuple(server.get("mount_roots") or ())) if server.get("mount_roots") else None
    run_id = engine.submit(path, _parse_inputs(args.input), source="apply-server", priority=args.priority)
    waiting = [s for s in engine.store.submissions(("queued",)) if s["source"] != "apply"]
    position = next((i + 1 for i, s in enumerate(waiting) if s["run_id"] == run_id), None)
    say(Console(stderr=True, highlight=False),
        f"submitted to the server (pid {server['pid']} on {server['host']}, found by its lock on "
        f"{Path(server['path']).with_name('server.lock')} and its heartbeat file {server['path']}, "
        f"heartbeat {server['heartbeat_age']:.0f}s ago): run {run_id}"
        + (f", queue position {position}" if position else "")
        + f"; follow with `runner status {run_id}` or `runner logs {run_id} -f` (--local runs it here instead)")
    say(console, run_id)
    return 0


def cmd_serve(args, console: Console) -> int:
    from runner.backends.docker import DockerBackend
    from runner.daemon import Server, ServerLock, find_server
    from runner.policy import MountPolicy
    from runner.scheduler import detect_gpus, parse_gpus

    state = _state_path(args)
    runs_dir = state.parent.resolve()
    lock = ServerLock(runs_dir)
    if not lock.acquire():
        running = find_server(runs_dir) or {}
        raise RunnerError(f"a server already serves {runs_dir} (pid {running.get('pid', '?')} on {running.get('host', '?')})",
                          "stop it first; one server per run store")
    specs = [Path(p) for p in (args.specs or (["specs"] if Path("specs").is_dir() else []))]
    inbox = Path(args.inbox).resolve() if args.inbox else None
    extra = [p for p in os.environ.get("RUNNER_ALLOW_MOUNTS", "").split(":") if p]
    roots = [runs_dir, *specs, *([inbox] if inbox else []), *args.allow_mount, *extra]
    configured = parse_gpus(args.gpus)
    gpus, gpu_source = configured if configured is not None else detect_gpus()
    if args.cpu_slots is None:
        try:
            args.cpu_slots = int(os.environ.get("RUNNER_CPU_SLOTS") or 4)
        except ValueError:
            raise RunnerError(f"RUNNER_CPU_SLOTS={os.environ['RUNNER_CPU_SLOTS']!r} is not a number") from None
    if args.cpu_slots < 1:
        raise RunnerError("--cpu-slots must be at least 1")
    DockerBackend().ping()  # fail now, with the one-line reason, not in the first run
    web = None
    if args.http:
        from runner.web import WebServer, make_app

        web = WebServer(make_app(Store(state), runs_dir, lambda: find_server(runs_dir)), args.http)
    server = Server(Store(state), DockerBackend, runs_dir, inbox, specs, gpus, gpu_source, args.cpu_slots,
                    policy=MountPolicy.of(roots), notify=args.notify, quiet=args.quiet)

    def leave(signum, frame):
        # SIGTERM (docker stop, compose down) or Ctrl-C: stop supervising; containers keep running.
        server.say(f"signal {signal.Signals(signum).name}: leaving; training containers keep running")
        server.stop()

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        if web is not None:
            web.start()
            server.say(f"web page (read-only): {web.url}  JSON: {web.url}api/runs, {web.url}api/queue")
        server.serve()
    finally:
        if web is not None:
            web.stop()
        lock.release()
    return 0


def cmd_queue(args, console: Console) -> int:
    from runner.daemon import find_server

    state = _state_path(args)
    if not state.exists():
        raise RunnerError(f"no run store at {state}", "start a server with `runner serve`, or pass --state")
    server = find_server(state.parent)
    rows = queue_rows(Store(state))
    if args.output == "json":
        sys.stdout.write(json.dumps({"server": server, "queue": rows}, indent=2, default=str) + "\n")
        return 0
    say(console, _server_line(server))
    if not rows:
        say(console, "queue: empty")
        return 0
    table = Table(box=None, pad_edge=False)
    for col in ("#", "RUN", "PRIO", "PHASE", "SUBMITTED", "SOURCE"):
        table.add_column(col, no_wrap=True)
    table.add_column("WAITING FOR", overflow="fold", min_width=20)
    for i, r in enumerate(rows, 1):
        _add_row(table, str(i), r["run"], str(r["priority"]), r["phase"] or Path(r["spec"]).name, r["submitted_at"] or "",
                      r["source"], r["waiting_for"])
    console.print(table)
    return 0


def _server_line(server: dict | None) -> str:
    if server is None:
        return "server: none running for this run store (`runner serve`, or `docker compose up -d`)"
    sched = server.get("scheduler") or {}
    gpus = sched.get("gpus") or {}
    used = sum(1 for v in gpus.values() if v is not None)
    return (f"server: pid {server['pid']} on {server['host']}, heartbeat {server['heartbeat_age']:.0f}s ago; "
            f"GPUs {used}/{len(gpus)} in use ({server.get('gpu_source', '')}); "
            f"CPU slots {len(sched.get('cpu_in_use') or [])}/{sched.get('cpu_slots', '?')}; inbox {server.get('inbox') or '-'}"
            + "".join(f"\ninbox: {name}: not read yet: {why}" for name, why in (server.get("inbox_waiting") or {}).items()))


def cmd_status(args, console: Console) -> int:
    state = _state_path(args)
    if not state.exists():
        raise RunnerError(f"no run store at {state}", "start a run with `runner apply SPEC`, or pass --state")
    engine = _engine(args)
    store = engine.store
    run_ids = [store.resolve_run(args.run)] if args.run else [r["id"] for r in store.runs()]
    note = ""
    from runner.daemon import find_server

    server = find_server(state.parent)
    served = server is not None  # a live server judges its own phases
    for run_id in run_ids:
        if not served and any(p["status"] in ACTIVE for p in store.phases(run_id)):
            try:
                engine.refresh(run_id)
            except EngineUnavailable as exc:
                note = f"note: {exc}; statuses may be stale"
    views = [run_view(store, r, events=bool(args.run)) for r in run_ids]
    if args.output == "json":
        if args.run:
            for p, row in zip(views[0]["phases"], store.phases(views[0]["id"])):
                if row["status"] in ACTIVE:
                    p["live"] = engine.view(row["id"])
        doc: Any = views[0] if args.run else {"runs": views}
        if note:
            doc = {**doc, "note": note}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    if not args.run:
        waiting = queue_rows(store)
        if server is not None or waiting:
            say(console, _server_line(server))
            say(console, f"queue: {len(waiting)} waiting" + (" (`runner queue` lists them)" if waiting else ""))
            console.print()
    # At most 120 columns: long progress and reasons wrap (`runner status RUN` has them in full).
    table = Table(box=None, pad_edge=False, width=min(console.width, STATUS_WIDTH))
    for col in ("RUN", "PHASE", "STATUS", "VERDICT", "EXIT", "STARTED"):
        table.add_column(col, no_wrap=True)
    table.add_column("PROGRESS", overflow="fold", max_width=36)
    table.add_column("REASON", overflow="fold", min_width=20, ratio=1)
    for view in views:
        rows = {r["name"]: r for r in store.phases(view["id"])}
        for p in view["phases"] or [{"name": "-", "status": view["status"], "exit_code": None, "reason": "", "started_at": None}]:
            row = rows.get(p["name"])
            progress = _progress(engine, row) if row and row["status"] in ("running", "detached") else ""
            _add_row(table, view["id"], p["name"], p["status"], p.get("verdict") or "",
                          "" if p["exit_code"] is None else str(p["exit_code"]), _short_time(p["started_at"]), progress, p["reason"])
    console.print(table)
    if args.run:
        for p in views[0]["phases"]:
            if p["explanation"] or p["decision"]:
                console.print()
                say(console, f"phase {p['name']}: verdict {p['verdict'] or '-'}")
                for line in (p["explanation"] or "").splitlines():
                    say(console, f"  {line}")
                if p["decision"]:
                    say(console, f"  next: {p['decision']}")
        for row in engine.store.phases(views[0]["id"]):
            if row["status"] in ACTIVE:
                console.print()
                console.print(render_view(row["name"], {**engine.view(row["id"]), "state": row["status"]}))
        console.print()
        for e in views[0]["events"]:
            say(console, f"{e['at']}  {e['message']}")
    if note:
        say(console, note)
    return 0


def _short_time(stamp: str | None) -> str:
    """2026-11-27T06:08:39+00:00 → 11-27 06:08 (UTC; the JSON output has the full time)."""
    return f"{stamp[5:10]} {stamp[11:16]}" if stamp else ""


def _progress(engine, row: dict) -> str:
    """step/total, ETA, GPUs and the latest metrics of a running phase, rebuilt from the store."""
    from runner.units import format_duration

    try:
        v = engine.view(row["id"])
    except (RunnerError, OSError, ValueError):
        return ""
    parts = []
    if v.get("step") is not None:
        parts.append(f"step {v['step']:,}" + (f"/{v['total']:,}" if v.get("total") else ""))
    if v.get("eta") is not None:
        parts.append(f"ETA {format_duration(v['eta'])}")
    gpus = v.get("gpus")
    parts.append(f"GPUs {','.join(map(str, gpus))}" if isinstance(gpus, list) else ("CPU" if not gpus else f"GPUs {gpus}"))
    parts += [f"{m['name']} {m['value']:.4g}" for m in v.get("metrics", [])[:2]]
    return ", ".join(parts)


def _pick_phase(store: Store, run_id: str, name: str | None) -> dict[str, Any]:
    phases = store.phases(run_id)
    if name:
        matching = [p for p in phases if p["name"] == name]
        if not matching:
            raise RunnerError(f"run {run_id} has no phase {name!r} (phases: {', '.join(p['name'] for p in phases)})")
        return matching[-1]
    if not phases:
        raise RunnerError(f"run {run_id} has no phases")
    return phases[-1]


def cmd_logs(args, console: Console) -> int:
    engine = _engine(args)
    run_id = engine.store.resolve_run(args.run)
    phase = _pick_phase(engine.store, run_id, args.phase)
    out = sys.stdout.buffer
    if phase["container_id"]:
        try:
            for chunk in engine.backend.logs(phase["container_id"], follow=args.follow):
                out.write(chunk)
                out.flush()
            return 0
        except RunnerError:
            pass  # container removed or engine down: fall back to the saved copy
    log = Path(phase["log_path"] or "")
    if not log.is_file():
        raise RunnerError(f"no logs for phase {phase['name']} of run {run_id} (it never started)")
    out.write(log.read_bytes())
    return 0


def cmd_stop(args, console: Console) -> int:
    engine = _engine(args)
    run_id = engine.store.resolve_run(args.run)
    queued = engine.store.submission_state(run_id) == "queued"
    results = engine.stop_run(run_id)
    if not results:
        say(console, f"run {run_id}: " + ("cancelled while queued; nothing will start" if queued else "nothing running"))
    for r in results:
        say(console, f"run {run_id}: phase {r.phase} {r.status}")
    return 0


def _read_metrics(path: Path, tags: list[str]):
    from runner.metrics.series import MetricSet
    from runner.metrics.sources import JsonlReader, LogdirReader

    if not path.exists():
        raise RunnerError(f"{path} does not exist")
    if path.is_file() and path.suffix in (".jsonl", ".json", ".ndjson"):
        reader = JsonlReader(path)
    elif path.is_file():
        reader = LogdirReader(path.parent, only=path)
    else:
        reader = LogdirReader(path)
    metrics = MetricSet()
    for name, (st, v, w) in reader.poll().items():
        if not tags or name in tags:
            metrics.add(name, st, v, w)
    return metrics, reader.problems


def cmd_metrics(args, console: Console) -> int:
    metrics, problems = _read_metrics(Path(args.path), args.tag)
    err = Console(stderr=True)
    for p in problems:
        say(err, f"warning: {p}")
    names = sorted(metrics.series)
    if args.format == "csv":
        out = ["tag,step,value"]
        for name in names:
            s = metrics.series[name]
            out += [f"{name},{st},{v!r}" for st, v in zip(s.steps.tolist(), s.values.tolist())]
        sys.stdout.write("\n".join(out) + "\n")
    elif args.format == "json":
        doc = {name: {"steps": metrics.series[name].steps.tolist(),
                      "values": [v if v == v and abs(v) != float("inf") else str(v) for v in metrics.series[name].values.tolist()]}
               for name in names}
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("TAG", "POINTS", "FIRST STEP", "LAST STEP", "LAST", "MIN", "MAX"):
            table.add_column(col, no_wrap=True)
        for name in names:
            s = metrics.series[name]
            import numpy as np

            fin = s.values[np.isfinite(s.values)]
            _add_row(table, name, str(len(s)), str(int(s.steps[0])), str(int(s.steps[-1])), f"{s.values[-1]:.6g}",
                          f"{fin.min():.6g}" if fin.size else "-", f"{fin.max():.6g}" if fin.size else "-")
        console.print(table)
        if not names:
            say(console, f"no scalars found under {args.path}")
    return 0


def cmd_plan(args, console: Console) -> int:
    from runner import graph

    g = graph.build(args.file)
    if args.format == "mermaid":
        say(console, graph.render_mermaid(g))
    else:
        say(console, graph.render_tree(g))
        say(console, f"{len(g.specs)} spec(s), {len(g.edges)} rule(s): all valid")
    return 0


def cmd_replay(args, console: Console) -> int:
    from runner.replay import replay

    report = replay(args.file, args.logdir, _parse_inputs(args.input))
    if args.output == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    for p in report["problems"]:
        say(console, f"warning: {p}")
    for name, m in report["metrics"].items():
        say(console, f"metric {name}: {m['points']} points, steps {m['first_step']}..{m['last_step']}")
    for g in report["guards"]:
        where = f"trips at step {g['step']}: {g['reason']}" if g["step"] is not None else "would not trip"
        say(console, f"guard {g['guard']}: {where}")
    if report["stopped_at"] is not None:
        say(console, f"the run would have been stopped at step {report['stopped_at']}")
    say(console, f"verdict: {report['verdict']}")
    for line in report["explanation"].splitlines():
        say(console, f"  {line}")
    say(console, f"next: {report['next']}")
    return 0


def cmd_report(args, console: Console) -> int:
    from runner.report import render_run, write_pngs

    state = _state_path(args)
    if not state.exists():
        raise RunnerError(f"no run store at {state}", "pass --state, or run from the folder that holds runs/")
    store = Store(state)
    run_id = store.resolve_run(args.run)
    out = Path(args.output or f"report-{run_id}.html")
    text = render_run(store, run_id)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    say(console, f"report of run {run_id}: {out} ({len(text) // 1024} KiB, self-contained)")
    if args.png:
        written = write_pngs(store, run_id, Path(args.png))
        say(console, f"{len(written)} plot(s) as PNG in {args.png}")
    return 0


def _checkpoint_rows(store: Store, run_id: str, phase: str | None) -> tuple[dict, list[dict]]:
    if phase is None:
        with_ck = [p for p in store.phases(run_id) if store.checkpoints(p["id"])]
        if not with_ck:
            raise RunnerError(f"run {run_id} has no recorded checkpoints")
        row = with_ck[-1]
    else:
        row = _pick_phase(store, run_id, phase)
    return row, store.checkpoints(row["id"])


def cmd_checkpoints(args, console: Console) -> int:
    store = _engine(args).store
    run_id = store.resolve_run(args.run)
    row, cks = _checkpoint_rows(store, run_id, args.phase)
    if args.output == "json":
        doc = {"run": run_id, "phase": row["name"], "checkpoints": [
            {"step": c["step"], "name": c["name"], "state": c["state"], "ever_best": c["ever_best"], "score": c["score"],
             "sha256": c["sha256"], "size": c["size"], "vault_path": c["vault_path"], "source": c["source"],
             "how": c["how"], "metrics": c["metrics"], "files": c["files"]} for c in cks]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    table = Table(box=None, pad_edge=False)
    for col in ("STEP", "STATE", "SCORE", "SIZE", "SHA256", "VAULT"):
        table.add_column(col, no_wrap=True)
    for c in cks:
        _add_row(table, str(c["step"]), c["state"] + (" (was best)" if c["ever_best"] and c["state"] != "best" else ""),
                      "" if c["score"] is None else f"{c['score']:.5g}", str(c["size"] or ""), (c["sha256"] or "")[:16],
                      c["vault_path"])
    say(console, f"run {run_id}, phase {row['name']}")
    console.print(table)
    return 0


def cmd_export(args, console: Console) -> int:
    store = _engine(args).store
    run_id = store.resolve_run(args.run)
    row, cks = _checkpoint_rows(store, run_id, args.phase)
    best = [c for c in cks if c["state"] == "best" and c["score"] is not None]
    if not best:
        raise RunnerError(f"phase {row['name']} of run {run_id} has no scored best checkpoint")
    mode = json.loads(row["phase_json"] or "{}").get("checkpoints", {}).get("keep", {}).get("mode", "min")
    sign = 1 if mode == "min" else -1
    c = min(best, key=lambda c: (sign * c["score"], c["step"]))
    src = Path(c["vault_path"])
    dest = Path(args.best)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists():
        raise RunnerError(f"{dest} exists; runner does not overwrite")
    from runner.checkpoints.vault import export

    got = export(src, dest, c["sha256"], c["files"])
    say(console, f"exported {c['name']} (step {c['step']}, score {c['score']:.5g}) to {dest}; sha256 {got} verified" + (f" ({len(c['files'])} files, each checked)" if c["files"] and src.is_dir() else ""))
    return 0


COMMANDS = {"validate": cmd_validate, "schema": cmd_schema, "apply": cmd_apply, "status": cmd_status,
            "serve": cmd_serve, "queue": cmd_queue,
            "logs": cmd_logs, "stop": cmd_stop, "attach": cmd_attach, "checkpoints": cmd_checkpoints, "export": cmd_export, "metrics": cmd_metrics, "plan": cmd_plan, "replay": cmd_replay,
            "report": cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)  # piped: do not squeeze tables to 80 columns
    err = Console(stderr=True, highlight=False)
    try:
        return COMMANDS[args.cmd](args, console)
    except SpecError as exc:
        for problem in exc.problems:
            say(err, str(problem))
        return exc.exit_code
    except RunnerError as exc:
        if args.debug:
            traceback.print_exc()
        say(err, f"runner: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        say(err, "runner: interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: one line unless --debug, never a bare traceback
        if args.debug:
            traceback.print_exc()
        say(err, f"runner: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return 3


if __name__ == "__main__":
    sys.exit(main())
