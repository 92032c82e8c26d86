"""Rendering for the terminal: the live status area, tables whose cells are never read as markup, one-line messages."""
from __future__ import annotations

import threading
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.control import strip_control_codes
from rich.live import Live
from rich.table import Table
from rich.text import Text

from runner.errors import RunnerError

STATUS_WIDTH = 200  # the `runner status` table: wider terminals leave the rest empty (`--wide`: no limit)


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
        self._view: dict[str, Any] | None = None
        self._lock = threading.RLock()  # the log pump calls log_line from its own thread
        self._out_is_terminal = out.is_terminal  # asked once: rich works it out again at every call

    def _safe(self, fn: Any, *args: Any, **kwargs: Any) -> None:
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
            if self._status is not None and self._out_is_terminal:
                # the same terminal: above the status area, through the console that draws it
                self._safe(self.console.print, Text(line), highlight=False, overflow="fold")
            else:
                # What `say` prints (control codes stripped, never markup, never wrapped), written directly: a
                # trainer printing 200,000 lines cost 27 CPU-seconds of rendering through rich, one line each.
                self._safe(self._write_out, strip_control_codes(line) + "\n")

    def _write_out(self, text: str) -> None:
        file = self.out.file
        file.write(text)
        file.flush()

    def progress(self, text: str) -> None:
        if self._view is None:
            self._show(Text(text))

    def live(self, phase: str, view: dict[str, Any]) -> None:
        self._view = view
        self._show(render_view(phase, view))

    def _show(self, renderable: RenderableType) -> None:
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


def render_view(phase: str, view: dict[str, Any]) -> Group:
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
        add_row(table, Text(m["name"]), str(m["step"]), f"{m['value']:.5g}", m["trend"])
    parts: list[RenderableType] = [head, table] if view.get("metrics") else [head]
    if view.get("hint"):
        parts.append(Text(view["hint"], style="dim"))
    for g in view.get("guards", []):
        style = "red" if g["state"].startswith("TRIPPED") else "dim"
        parts.append(Text(f"guard {g['guard']}: {g['state']}", style=style))
    lines = view.get("criteria", [])
    if lines:
        parts.append(Text("success criteria now (measured vs threshold):"))
        parts += [Text(f"  {line}") for line in lines]
    return Group(*parts)


def add_row(table: Table, *cells: Any) -> None:
    """A table row whose cells are plain text: names, reasons and paths from the store or the engine
    are never read as rich markup (an error mentioning `capabilities: [[gpu]]` shows as written)."""
    table.add_row(*(c if isinstance(c, Text) else Text("" if c is None else str(c)) for c in cells))


def say(console: Console, text: str) -> None:
    """One plain line: no markup, no highlighting, never wrapped (errors stay one line per problem)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def short_time(stamp: str | None) -> str:
    """2026-11-27T06:08:39+00:00 → 11-27 06:08 (UTC; the JSON output has the full time)."""
    return f"{stamp[5:10]} {stamp[11:16]}" if stamp else ""


def progress_text(engine: Any, row: dict[str, Any]) -> str:
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


def server_line(server: dict[str, Any] | None) -> str:
    if server is None:
        return "server: none running for this run store (`runner serve`, or `docker compose up -d`)"
    sched = server.get("scheduler") or {}
    gpus = sched.get("gpus") or {}
    used = sum(1 for v in gpus.values() if v is not None)
    return (f"server: pid {server['pid']} on {server['host']}, heartbeat {server['heartbeat_age']:.0f}s ago; "
            f"GPUs {used}/{len(gpus)} in use ({server.get('gpu_source', '')}); "
            f"CPU slots {len(sched.get('cpu_in_use') or [])}/{sched.get('cpu_slots', '?')}; inbox {server.get('inbox') or '-'}"
            + "".join(f"\ninbox: {name}: not read yet: {why}" for name, why in (server.get("inbox_waiting") or {}).items()))
