"""An in-memory backend for unit tests of the engine's decisions.

Containers are scripted: ``FakeBackend(script=...)`` maps a phase name to what its container does (log
lines, exit code, OOM, how long it runs).  It honours the backend contract that tests/contract checks
against the Docker and Slurm backends too: a second container with the same name is refused, ``find`` only
looks (it never moves a script on), ``logs(since=)`` gives the lines logged in that second and after, and
``started_at`` / ``finished_at`` are Docker-style time stamps.

Two ways a scripted container runs:

* by polls (the default, for the engine's unit tests): it runs for ``polls`` inspections and exits at the
  next one; its lines are all logged at its start, and a follow stream gives them and ends (the engine's
  poll loop, not the stream, sees the end);
* by the clock (``Script(seconds=...)``): it runs that long; a line given as ``(offset, text)`` is logged
  ``offset`` seconds after the start, and a follow stream waits for the lines and for the end.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

from runner.backends.base import ContainerState
from runner.errors import ContainerNotFound, EngineUnavailable, GpuUnavailable, ImageMissing, LaunchError
from runner.plan import LaunchPlan

SIGTERM_EXIT = 143  # 128 + SIGTERM: what a stopped container exits with
FOLLOW_TICK_S = 0.05


@dataclass
class Script:
    """What a fake container does: run for ``polls`` inspections (or ``seconds`` on the clock), print
    ``lines`` (text, or ``(offset_seconds, text)``), exit."""

    lines: Sequence[str | tuple[float, str]] = field(default_factory=lambda: ["hello"])
    exit_code: int = 0
    oom: bool = False
    polls: int = 2
    seconds: float | None = None


@dataclass
class _Container:
    id: str
    plan: LaunchPlan
    script: Script
    polls_left: int
    status: str = "running"
    exit_code: int | None = None
    oom: bool = False
    stop_grace: float | None = None
    started: float | None = field(default_factory=time.time)
    finished: float | None = None

    def lines(self) -> list[tuple[float, str]]:
        """(time logged, text) of every line the script prints (by polls: all at the start)."""
        start = self.started if self.started is not None else time.time()
        timed = self.script.seconds is not None
        out = []
        for line in self.script.lines:
            offset, text = line if isinstance(line, tuple) else (0.0, line)
            out.append((start + (offset if timed else 0.0), text))
        return sorted(out, key=lambda line: line[0])  # stable: lines of one time keep their order


def _stamp(t: float | None) -> str | None:
    """Docker's form: RFC 3339 in UTC with nanoseconds."""
    if t is None:
        return None
    whole, nanos = divmod(round(t * 1e9), 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{nanos:09d}Z"


class FakeBackend:
    remote = False

    def __init__(self, images: set[str] | None = None, gpu: bool = False, reachable: bool = True,
                 script: dict[str, Script] | None = None, live_restore: bool | None = None):
        self.images = images if images is not None else {"trainer:latest"}
        self.restores = live_restore
        self.gpu = gpu
        self.reachable = reachable
        self.script = script or {}
        self.containers: dict[str, _Container] = {}
        self.launched: list[LaunchPlan] = []
        self.removed: list[_Container] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _check(self) -> None:
        if not self.reachable:
            raise EngineUnavailable("fake engine unreachable")

    def ping(self) -> None:
        self._check()

    def live_restore(self) -> bool | None:
        return self.restores if self.reachable else None

    def check_image(self, image: str) -> None:
        self._check()
        if image not in self.images:
            raise ImageMissing(f"image {image!r} not found")

    def launch(self, plan: LaunchPlan) -> str:
        self._check()
        self.check_image(plan.image)
        if plan.wants_gpu and not self.gpu:
            raise GpuUnavailable("GPUs requested but the fake engine has no GPU runtime")
        with self._lock:
            if any(c.plan.container_name == plan.container_name for c in self.containers.values()):
                raise LaunchError(f"a container named {plan.container_name} already exists")
            cid = f"fake{next(self._ids):060d}"
            script = self.script.get(plan.phase, Script())
            self.containers[cid] = _Container(cid, plan, script, script.polls)
            self.launched.append(plan)
        return cid

    def _get(self, cid: str) -> _Container:
        self._check()
        if cid not in self.containers:
            raise ContainerNotFound(f"no container {cid}")
        return self.containers[cid]

    def _end(self, c: _Container, exit_code: int | None, oom: bool, at: float) -> None:
        c.status, c.exit_code, c.oom, c.finished = "exited", exit_code, oom, at

    def _by_clock(self, c: _Container) -> None:
        """A container that runs by the clock ends when its time is up (whoever asks)."""
        if c.status == "running" and c.script.seconds is not None and c.started is not None:
            end = c.started + c.script.seconds
            if time.time() >= end:
                self._end(c, c.script.exit_code, c.script.oom, end)

    def _state(self, c: _Container) -> ContainerState:
        return ContainerState(c.id, c.plan.container_name, c.status, c.status == "running", c.exit_code, c.oom,
                              started_at=_stamp(c.started), finished_at=_stamp(c.finished),
                              labels=dict(c.plan.labels))

    def inspect(self, cid: str) -> ContainerState:
        """The container's state; an inspection is one of the polls a polled script runs for."""
        with self._lock:
            c = self._get(cid)
            self._by_clock(c)
            if c.status == "running" and c.script.seconds is None:
                c.polls_left -= 1
                if c.polls_left < 0:
                    self._end(c, c.script.exit_code, c.script.oom, time.time())
            return self._state(c)

    def stop(self, cid: str, grace: float) -> None:
        with self._lock:
            c = self._get(cid)
            c.stop_grace = grace
            self._by_clock(c)
            if c.status == "running":
                self._end(c, SIGTERM_EXIT, False, time.time())

    def logs(self, cid: str, follow: bool = False, since: int | None = None) -> Iterator[bytes]:
        """The lines logged so far (from the unix time ``since``: those logged in that second and after);
        with ``follow``, a container that runs by the clock is followed to its end."""
        given = 0
        while True:
            with self._lock:
                c = self._get(cid)
                self._by_clock(c)
                now = time.time()
                upto = min(now, c.finished) if c.finished is not None else now
                logged = [(t, text) for t, text in c.lines() if t <= upto]
                waiting = follow and c.status == "running" and c.script.seconds is not None
            for t, text in logged[given:]:
                if since is None or t >= since:
                    yield (text + "\n").encode()
            given = len(logged)
            if not waiting:
                return
            time.sleep(FOLLOW_TICK_S)

    def find(self, labels: Mapping[str, str | None]) -> list[ContainerState]:
        """Containers carrying all ``labels`` (None: any value).  Only looks: a polled script is not moved on."""
        with self._lock:
            self._check()
            out = []
            for c in list(self.containers.values()):
                if all(k in c.plan.labels if v is None else c.plan.labels.get(k) == v for k, v in labels.items()):
                    self._by_clock(c)
                    out.append(self._state(c))
            return out

    def remove(self, cid: str) -> None:
        with self._lock:
            self.removed.append(self._get(cid))  # gone from the engine, as with Docker; tests can still look at it
            del self.containers[cid]

    def never_started(self, cid: str) -> None:
        """Test helper: the container was created but the runner died before starting it."""
        c = self.containers[cid]
        c.status, c.started = "created", None

    def vanish(self, cid: str) -> None:
        """Test helper: the container is removed behind runner's back."""
        del self.containers[cid]
