"""The backend interface: what the engine needs from a container engine.

Kept narrow (launch, inspect, stop, logs, find by label): backends/docker.py (the local engine) and
backends/slurm.py (a batch job that runs the container on an allocated node) implement it.
Implementations translate their own exceptions into runner.errors.
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Mapping, Protocol

if TYPE_CHECKING:
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

    @property
    def started_s(self) -> float | None:
        """``started_at`` as a unix time (None: not started, or no time the backend gave)."""
        return epoch_seconds(self.started_at)

    @property
    def finished_s(self) -> float | None:
        """``finished_at`` as a unix time (None: not ended, or no time the backend gave)."""
        return epoch_seconds(self.finished_at)


_STAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?")


def epoch_seconds(stamp: str | None) -> float | None:
    """THE one reading of a backend's time stamp as a unix time (seconds, with the fraction it has).

    Docker: RFC 3339 in UTC with nanoseconds (``2026-11-27T07:25:40.123456789Z``), and its zero value
    ``0001-01-01T00:00:00Z`` for "never" (a container not started, or not ended): None.  Slurm (slurm.py):
    whole seconds in UTC (``2026-11-27T07:25:40Z``).  An offset (``+02:00``) is honoured; a stamp without
    one is UTC.  Anything else (None, "", a text that is no time stamp): None.
    """
    if not stamp:
        return None
    m = _STAMP.fullmatch(stamp.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if year <= 1:  # Docker's zero time: never happened
        return None
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1] and hour <= 23 and minute <= 59
            and second <= 60):
        return None
    whole = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    frac = m.group(7) or ""
    zone = m.group(8) or "Z"
    offset = 0
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return whole - offset + (int(frac) / 10 ** len(frac) if frac else 0.0)


class Backend(Protocol):
    # True when containers run on other machines (Slurm's nodes): no local GPU ids, memory or image checks,
    # and checkpoint folders are watched by polling.
    remote: bool

    def ping(self) -> None:
        """Raise EngineUnavailable unless the engine answers."""

    def live_restore(self) -> bool | None:
        """Whether containers outlive a stop or restart of the engine (Docker's live-restore); None when unknown
        (the engine not answering) or not a question for this backend (Slurm's nodes)."""

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

    def find(self, labels: Mapping[str, str | None]) -> list[ContainerState]:
        """Containers (running or not) carrying all ``labels`` (a value of None: the key, any value)."""

    def remove(self, container_id: str) -> None:
        """Remove an ended container (runner's own helpers only, e.g. validation runs)."""
