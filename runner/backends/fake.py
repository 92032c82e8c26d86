"""An in-memory backend for unit tests of the engine's decisions.

Containers are scripted: ``FakeBackend(script=...)`` maps a container name
to what it does (log lines, exit code, OOM, how many polls it runs).  It
honours the same contract as the Docker backend, including refusing a second
container with the same name.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Iterator

from runner.backends.base import ContainerState
from runner.errors import ContainerNotFound, EngineUnavailable, GpuUnavailable, ImageMissing, LaunchError
from runner.plan import LaunchPlan


@dataclass
class Script:
    """What a fake container does: run for ``polls`` inspections, print ``lines``, exit."""

    lines: list[str] = field(default_factory=lambda: ["hello"])
    exit_code: int = 0
    oom: bool = False
    polls: int = 2


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


class FakeBackend:
    def __init__(self, images: set[str] | None = None, gpu: bool = False, reachable: bool = True,
                 script: dict[str, Script] | None = None):
        self.images = images if images is not None else {"trainer:latest"}
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

    def check_image(self, image: str) -> None:
        self._check()
        if image not in self.images:
            raise ImageMissing(f"image {image!r} not found")

    def launch(self, plan: LaunchPlan) -> str:
        self._check()
        self.check_image(plan.image)
        if plan.wants_gpu and not self.gpu:
            raise GpuUnavailable("GPUs requested but the fake engine has no GPU runtime")
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

    def inspect(self, cid: str) -> ContainerState:
        with self._lock:
            c = self._get(cid)
            if c.status == "running":
                c.polls_left -= 1
                if c.polls_left < 0:
                    c.status, c.exit_code, c.oom = "exited", c.script.exit_code, c.script.oom
            return ContainerState(c.id, c.plan.container_name, c.status, c.status == "running", c.exit_code, c.oom,
                                  labels=dict(c.plan.labels))

    def stop(self, cid: str, grace: float) -> None:
        with self._lock:
            c = self._get(cid)
            c.stop_grace = grace
            if c.status == "running":
                c.status, c.exit_code = "exited", 143

    def logs(self, cid: str, follow: bool = False, since: int | None = None) -> Iterator[bytes]:
        c = self._get(cid)
        for line in c.script.lines:
            yield (line + "\n").encode()

    def find(self, labels: dict[str, str]) -> list[ContainerState]:
        return [self.inspect(c.id) for c in list(self.containers.values())
                if all(k in c.plan.labels if v is None else c.plan.labels.get(k) == v for k, v in labels.items())]

    def remove(self, cid: str) -> None:
        self.removed.append(self._get(cid))  # gone from the engine, as with Docker; tests can still look at it
        del self.containers[cid]

    def never_started(self, cid: str) -> None:
        """Test helper: the container was created but the runner died before starting it."""
        self.containers[cid].status = "created"

    def vanish(self, cid: str) -> None:
        """Test helper: the container is removed behind runner's back."""
        del self.containers[cid]
