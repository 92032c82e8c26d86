"""The backend interface: what the engine needs from a container engine.

Kept narrow (launch, inspect, stop, logs, find by label): backends/docker.py (the local engine) and
backends/slurm.py (a batch job that runs the container on an allocated node) implement it.
Implementations translate their own exceptions into runner.errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

from runner.plan import LaunchPlan


@dataclass(frozen=True)
class ContainerState:
    """What the engine says about one container right now."""

    id: str
    name: str
    status: str  # created | queued (a Slurm job waiting for resources) | running | exited | dead | paused | ...
    running: bool
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    error: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    # Non-empty when the container ended because of the infrastructure, not of itself (a Slurm node that
    # failed, a preemption): the phase is an infrastructure interruption whatever the exit code.
    infrastructure: str = ""

    @property
    def ended(self) -> bool:
        return self.status in ("exited", "dead")


class Backend(Protocol):
    def ping(self) -> None:
        """Raise EngineUnavailable unless the engine answers."""

    def check_image(self, image: str) -> None:
        """Raise ImageMissing unless the image is present locally."""

    def launch(self, plan: LaunchPlan) -> str:
        """Create and start the container; return its id.  Raises GpuUnavailable,
        LaunchError, ImageMissing.  A container that failed to start is removed."""

    def inspect(self, container_id: str) -> ContainerState:
        """Current state; raises ContainerNotFound."""

    def stop(self, container_id: str, grace: float) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL.  Returns when stopped."""

    def logs(self, container_id: str, follow: bool = False, since: int | None = None) -> Iterator[bytes]:
        """The container's output (stdout and stderr) as chunks, from its start (or from the unix
        time ``since``: lines logged in that second and after)."""

    def find(self, labels: dict[str, str]) -> list[ContainerState]:
        """Containers (running or not) carrying all ``labels`` (a value of None: the key, any value)."""

    def remove(self, container_id: str) -> None:
        """Remove an ended container (runner's own helpers only, e.g. validation runs)."""
