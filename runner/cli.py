"""Command line: parse arguments, call the engine, render, map errors to exit codes.

Exit codes: 0 ok; 1 invalid spec, failed phase or unknown run; 2 usage;
3 infrastructure error (engine unreachable, image missing, ...); 130 cancelled.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from runner import __version__
from runner.errors import EngineUnavailable, RunnerError, SpecError
from runner.store import ACTIVE, Store, run_status

DEFAULT_STATE = "runs/runner.db"
EXIT = {"succeeded": 0, "detached": 0, "running": 0, "failed": 1, "blocked": 1, "lost": 1, "error": 3, "cancelled": 130}


class TerminalReporter:
    """Engine output on a terminal: log lines scroll, one progress line stays at the bottom.

    If the terminal goes away (SIGHUP, a dropped SSH session), writes are
    silently dropped: losing the terminal must never disturb the phase."""

    def __init__(self, out: Console, err: Console):
        self.out = out  # the container's output
        self.console = err  # runner's own messages and the progress line
        self.dead = False
        self._status = None

    def _safe(self, fn, *args, **kwargs) -> None:
        if self.dead:
            return
        try:
            fn(*args, **kwargs)
        except (OSError, ValueError):
            self.dead = True

    def info(self, message: str) -> None:
        self._safe(say, self.console, message)

    def log_line(self, line: str) -> None:
        self._safe(say, self.out, line)

    def progress(self, text: str) -> None:
        if not self.console.is_terminal:
            return
        if self._status is None:
            self._status = self.console.status(text)
            self._safe(self._status.start)
        else:
            self._safe(self._status.update, text)

    def close(self) -> None:
        if self._status is not None:
            self._safe(self._status.stop)
            self._status = None


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

    s = sub.add_parser("status", help="show runs and their phases")
    s.add_argument("run", nargs="?", metavar="RUN", help="run id or unique prefix (default: recent runs)")
    s.add_argument("--output", "-o", choices=["table", "json"], default="table")

    lg = sub.add_parser("logs", help="print a phase's container output")
    lg.add_argument("run", metavar="RUN")
    lg.add_argument("phase", nargs="?", metavar="PHASE")
    lg.add_argument("--follow", "-f", action="store_true")

    st = sub.add_parser("stop", help="stop a run's running phases (SIGTERM, grace period, SIGKILL)")
    st.add_argument("run", metavar="RUN")
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
        result = engine.apply(args.file, _parse_inputs(args.input), detach=args.detach)
    finally:
        reporter.close()
    line = f"run {result.run_id}: phase {result.phase} {result.status}" + (f" ({result.reason})" if result.reason else "")
    reporter.info(line)
    if args.detach:
        say(console, result.run_id)
    return EXIT.get(result.status, 1)


def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds") if ts else None


def _run_view(store: Store, run_id: str, events: bool = False) -> dict[str, Any]:
    run = store.run(run_id)
    phases = store.phases(run_id)
    view = {
        "id": run_id,
        "spec": run["spec_path"],
        "status": run_status(phases),
        "created_at": _iso(run["created_at"]),
        "phases": [
            {
                "name": p["name"],
                "status": p["status"],
                "reason": p["reason"],
                "exit_code": p["exit_code"],
                "oom_killed": p["oom_killed"],
                "container_id": p["container_id"],
                "container_name": p["container_name"],
                "spec": p["spec_path"],
                "spec_sha256": p["spec_sha256"],
                "inputs": p["inputs"],
                "log": p["log_path"],
                "started_at": _iso(p["started_at"]),
                "finished_at": _iso(p["finished_at"]),
            }
            for p in phases
        ],
    }
    if events:
        view["events"] = [{"at": _iso(e["at"]), "kind": e["kind"], "message": e["message"]} for e in store.events(run_id)]
    return view


def cmd_status(args, console: Console) -> int:
    state = _state_path(args)
    if not state.exists():
        raise RunnerError(f"no run store at {state}", "start a run with `runner apply SPEC`, or pass --state")
    engine = _engine(args)
    store = engine.store
    run_ids = [store.resolve_run(args.run)] if args.run else [r["id"] for r in store.runs()]
    note = ""
    for run_id in run_ids:
        if any(p["status"] in ACTIVE for p in store.phases(run_id)):
            try:
                engine.refresh(run_id)
            except EngineUnavailable as exc:
                note = f"note: {exc}; statuses may be stale"
    views = [_run_view(store, r, events=bool(args.run)) for r in run_ids]
    if args.output == "json":
        doc: Any = views[0] if args.run else {"runs": views}
        if note:
            doc = {**doc, "note": note}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    table = Table(box=None, pad_edge=False)
    for col in ("RUN", "PHASE", "STATUS", "EXIT", "STARTED"):
        table.add_column(col, no_wrap=True)
    table.add_column("REASON", overflow="fold", min_width=20)
    for view in views:
        for p in view["phases"] or [{"name": "-", "status": view["status"], "exit_code": None, "reason": "", "started_at": None}]:
            table.add_row(view["id"], p["name"], p["status"], "" if p["exit_code"] is None else str(p["exit_code"]),
                          p["started_at"] or "", p["reason"])
    console.print(table)
    if args.run:
        console.print()
        for e in views[0]["events"]:
            say(console, f"{e['at']}  {e['message']}")
    if note:
        say(console, note)
    return 0


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
    results = engine.stop_run(run_id)
    if not results:
        say(console, f"run {run_id}: nothing running")
    for r in results:
        say(console, f"run {run_id}: phase {r.phase} {r.status}")
    return 0


COMMANDS = {"validate": cmd_validate, "schema": cmd_schema, "apply": cmd_apply, "status": cmd_status,
            "logs": cmd_logs, "stop": cmd_stop}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(highlight=False)
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
