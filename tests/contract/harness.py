"""The contract suite's harness: what a test's container does (``Program``), and one backend under test
(``Contract``) with the helpers every test uses.  The fixtures that make them: conftest.py."""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from runner.backends.base import Backend, ContainerState
from runner.backends.fake import FakeBackend, Script
from runner.plan import LaunchPlan
from tests.integration.conftest import BASE_IMAGE

CONTRACT_LABEL = "runner-contract.id"
MISSING_IMAGE = "runner-contract-missing:none"


@dataclass(frozen=True)
class Program:
    """What a contract container does: print ``before``, wait ``pause`` seconds, print ``after``, exit with
    ``exit_code``; on SIGTERM it exits 143 at once.  ``stderr`` lines go to stderr right after ``before``."""

    before: tuple[str, ...] = ("start",)
    pause: float = 0.0
    after: tuple[str, ...] = ()
    exit_code: int = 0
    stderr: tuple[str, ...] = ()

    def command(self) -> tuple[str, ...]:
        say = [f"echo {shlex.quote(line)}" for line in self.before]
        say += [f"echo {shlex.quote(line)} >&2" for line in self.stderr]
        wait = [f"sleep {self.pause:g} & wait $!"] if self.pause else []
        body = ["trap 'exit 143' TERM", *say, *wait, *[f"echo {shlex.quote(line)}" for line in self.after],
                f"exit {self.exit_code}"]
        return ("sh", "-c", "; ".join(body))

    def script(self) -> Script:
        lines: list[str | tuple[float, str]] = [(0.0, line) for line in (*self.before, *self.stderr)]
        lines += [(self.pause, line) for line in self.after]
        return Script(lines=lines, exit_code=self.exit_code, seconds=self.pause + 0.2, polls=0)


@dataclass
class Contract:
    """One backend under the contract, with what its tests need to know of it."""

    kind: str
    backend: Backend
    uid: str
    phase_root: Path
    unknown_id: str
    plans: list[LaunchPlan] = field(default_factory=list)
    own_line: Callable[[str], bool] = lambda line: False  # a line the backend adds to the container's output
    gone: Callable[[LaunchPlan], bool] = lambda plan: True  # after remove(): is the container gone?
    # Ended jobs stay in the scheduler's records (Slurm's accounting): remove() leaves them found.
    records_stay: bool = False

    @property
    def run_id(self) -> str:
        return f"ct{self.uid}"

    def plan(self, program: Program, phase: str = "p", image: str = BASE_IMAGE, labels: dict[str, str] | None = None,
             stop_grace: float = 5.0) -> LaunchPlan:
        """A LaunchPlan as build_plan makes one (runner's labels, the deterministic name, a phase folder)."""
        if isinstance(self.backend, FakeBackend):
            self.backend.script[phase] = program.script()
            self.backend.images.add(BASE_IMAGE)
        base = {"runner.run-id": self.run_id, "runner.phase": phase, CONTRACT_LABEL: self.uid}
        return LaunchPlan(
            run_id=self.run_id, phase=phase, container_name=f"runner-{self.run_id}-{phase}", image=image,
            command=program.command(), env={}, mounts=(), workdir=None, gpus=0, shm_size=None, memory=None,
            cpus=None, user=None, labels={**base, **(labels or {})}, stop_grace=stop_grace, timeout=None,
            phase_dir=str(self.phase_root / phase))

    def launch(self, program: Program, **kwargs: Any) -> tuple[str, LaunchPlan]:
        plan = self.plan(program, **kwargs)
        self.plans.append(plan)
        return self.backend.launch(plan), plan

    def wait(self, cid: str, what: str, check: Callable[[ContainerState], bool], timeout: float = 60.0) -> ContainerState:
        deadline = time.monotonic() + timeout
        while True:
            state = self.backend.inspect(cid)
            if check(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind}: timed out waiting for {what}; last state {state}")
            time.sleep(0.1)

    def running(self, cid: str) -> ContainerState:
        """Waits out a queue (Slurm's PENDING); fails if the container ends first."""
        state = self.wait(cid, "running", lambda s: s.running or s.ended)
        assert state.running, f"{self.kind}: {cid} ended before it was seen running: {state}"
        return state

    def ended(self, cid: str, timeout: float = 60.0) -> ContainerState:
        return self.wait(cid, "its end", lambda s: s.ended, timeout)

    def logged(self, cid: str, line: str, timeout: float = 60.0) -> float:
        """Wait until ``line`` is in the container's output; the wall-clock time it was seen."""
        deadline = time.monotonic() + timeout
        while line not in self.lines(self.backend.logs(cid)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind}: {line!r} never logged by {cid}")
            time.sleep(0.1)
        return time.time()

    def lines(self, chunks: Iterable[bytes]) -> list[str]:
        """The container's own lines (without those the backend adds, e.g. Slurm's job script)."""
        return [line for line in b"".join(chunks).decode().splitlines() if not self.own_line(line)]
