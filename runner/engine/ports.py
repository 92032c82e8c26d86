"""What every part of the engine works with: ``Core`` (the store, the backend behind the launch check, the
configuration given at construction), the results it returns, and the ports it calls out through (a
``Reporter`` for people, ``Slots`` for who may launch now).

The engine's parts (driver, launch, follow, judge, stop, ...) are functions of a ``Core``; none of them
imports another part above it (the layers are in pyproject.toml), so the flow runs one way."""
from __future__ import annotations

import dataclasses
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, cast

from runner.backends.base import Backend
from runner.backends.select import is_remote
from runner.errors import LaunchRefused
from runner.store import Store
from runner.supervisor import Role

if TYPE_CHECKING:
    from runner.decisions.chain import Decision
    from runner.decisions.policy import MountPolicy, StatePaths
    from runner.plan import LaunchPlan

# runner.plan and runner.decisions.policy (pydantic, the spec loader: a quarter second) are imported where a launch
# is checked: an Engine that only reads the store (`runner status`, `logs`, `checkpoints`) never needs them.

POLL_S = 0.5
ENGINE_RETRY_S = 120.0  # how long supervision (and a log stream) rides out an unreachable engine


class Reporter(Protocol):
    """Where the engine tells a person what is happening (a terminal, a log, a test)."""

    def info(self, message: str) -> None: ...
    def log_line(self, line: str) -> None: ...
    def progress(self, text: str) -> None: ...
    def live(self, phase: str, view: dict[str, Any]) -> None: ...


class QuietReporter:
    def info(self, message: str) -> None:
        pass

    def log_line(self, line: str) -> None:
        pass

    def progress(self, text: str) -> None:
        pass

    def live(self, phase: str, view: dict[str, Any]) -> None:
        pass


@dataclass
class PhaseResult:
    run_id: str
    phase_id: int
    phase: str
    status: str
    reason: str = ""
    exit_code: int | None = None
    container_id: str | None = None
    verdict: str | None = None
    decision: Decision | None = None


@dataclass
class RunResult:
    run_id: str
    phases: list[PhaseResult] = field(default_factory=list)

    @property
    def last(self) -> PhaseResult:
        return self.phases[-1]

    def record(self, result: PhaseResult) -> RunResult:
        """Add a phase's latest result (replacing an earlier result of the same phase)."""
        if self.phases and self.phases[-1].phase_id == result.phase_id:
            self.phases[-1] = result
        else:
            self.phases.append(result)
        return self


class Slots(Protocol):
    """Who may launch now.  The server's scheduler hands out GPU ids and CPU slots in queue order."""

    def acquire(self, phase_id: int, plan: LaunchPlan) -> LaunchPlan | None:
        """Block until the phase may launch; return the plan with the granted devices
        (None: the server is shutting down and the phase stays pending)."""

    def claim(self, phase_id: int, plan: LaunchPlan) -> None:
        """Record that an already running phase holds its plan's devices (re-adoption)."""

    def release(self, phase_id: int) -> None:
        """The phase no longer runs (idempotent)."""


class PassThrough:
    """A remote backend's slots: the plan goes as written (a GPU count stays a count: Slurm picks the
    devices on the node it allocates), and waiting for resources is the cluster's queue."""

    def acquire(self, phase_id: int, plan: LaunchPlan) -> LaunchPlan:
        return plan

    def claim(self, phase_id: int, plan: LaunchPlan) -> None:
        pass

    def release(self, phase_id: int) -> None:
        pass


class Unlimited:
    """The foreground: every phase may launch at once, with the devices its spec asks for.

    A count N becomes the device ids 0..N-1, the ones Docker's NVIDIA driver gives a count:
    asked for by id, the recorded plan names exactly the devices the container gets (and
    gpu_memory_free checks those).  ``all`` stays ``all`` (the foreground keeps no inventory)."""

    def acquire(self, phase_id: int, plan: LaunchPlan) -> LaunchPlan:
        if isinstance(plan.gpus, int) and plan.gpus > 0:
            return dataclasses.replace(plan, gpus=tuple(str(i) for i in range(plan.gpus)))
        return plan

    def claim(self, phase_id: int, plan: LaunchPlan) -> None:
        pass

    def release(self, phase_id: int) -> None:
        pass


@dataclass
class EngineConfig:
    """How an engine works, given at construction (the CLI's defaults; the server sets its own)."""

    poll_s: float = POLL_S  # how often the container's state is asked (metrics wake on their data)
    role: str = Role.TERMINAL  # who supervises: `runner status` shows it
    lock_wait_s: float = 0.0  # how long `drive` waits for a supervisor that is leaving (attach, a hand-over)
    persistent: bool = False  # the server: rides out engine outages instead of detaching, never cancels on Ctrl-C
    retry_base_s: float = 1.0  # temporary launch errors: first wait, doubling up to a minute
    launch_retry_s: float | None = None  # how long they are retried (None: RUNNER_LAUNCH_RETRY_S, else 600 s / 30 s)
    policy: MountPolicy | None = None  # the server's mount policy; None in the foreground
    slots: Slots | None = None  # None: PassThrough for a remote backend, else Unlimited
    state_paths: StatePaths | None = None  # runner's own state, never mountable (None: the run store's)
    detach_requested: threading.Event | None = None  # set: every supervision records its phase detached and returns


class LaunchChecked:
    """A backend whose ``launch`` refuses a plan the policy refuses (LaunchRefused, recorded by the caller);
    everything else is the backend's own."""

    def __init__(self, inner: Backend, check: Callable[[LaunchPlan], list[str]]):
        self.inner = inner
        self._check = check

    def launch(self, plan: LaunchPlan) -> str:
        problems = self._check(plan)
        if problems:
            raise LaunchRefused("refused to create " + plan.container_name + ": " + "; ".join(problems),
                                "the policy is checked again where every container is created")
        return self.inner.launch(plan)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Core:
    """The engine's shared state: what its parts are given.  Settings come from ``EngineConfig`` (or the same
    names as keywords); ``slots``, ``policy`` and ``persistent`` stay attributes the server may set."""

    def __init__(self, store: Store, backend: Backend | Callable[[], Backend], runs_dir: str | Path,
                 reporter: Reporter | None = None, config: EngineConfig | None = None, **settings: object):
        cfg = dataclasses.replace(config or EngineConfig(), **settings)  # type: ignore[arg-type]
        self.store = store
        self._backend = backend
        self.runs_dir = Path(runs_dir).resolve()
        self.reporter: Reporter = reporter or QuietReporter()
        self.poll_s = cfg.poll_s
        self.role = cfg.role
        self.lock_wait_s = cfg.lock_wait_s
        self.persistent = cfg.persistent
        self.retry_base_s = cfg.retry_base_s
        self.launch_retry_s_set = cfg.launch_retry_s
        self.policy = cfg.policy
        self.slots: Slots = cfg.slots or (PassThrough() if self.remote else Unlimited())
        self._state_paths = cfg.state_paths
        self.detach_requested = cfg.detach_requested or threading.Event()
        self._checked: LaunchChecked | None = None
        self.interrupt_pending = False  # a Ctrl-C deferred through a launch, acted on by the follow loop

    @property
    def remote(self) -> bool:
        """Containers run on other machines (Slurm): no local GPU ids, memory, images or live-restore."""
        return is_remote(self._backend)

    @property
    def backend(self) -> Backend:
        """The backend, connected on first use (validate/status work without an engine), behind the launch
        check: every container runner creates (phase, retry, chain step, re-adopted pending phase,
        validation run) passes ``launch_problems`` where it is created, whatever plan the store held."""
        if isinstance(self._backend, type) or not hasattr(self._backend, "launch"):
            self._backend = cast(Callable[[], Backend], self._backend)()
        backend = cast(Backend, self._backend)
        if self._checked is None or self._checked.inner is not backend:
            self._checked = LaunchChecked(backend, self.launch_problems)
        return cast(Backend, self._checked)

    @property
    def state_paths(self) -> StatePaths:
        """runner's own state, never mountable: the configured one, else the run store's folder."""
        if self._state_paths is None:
            from runner.decisions.policy import StatePaths

            self._state_paths = StatePaths.of(self.runs_dir)
        return self._state_paths

    def launch_problems(self, plan: LaunchPlan) -> list[str]:
        from runner.decisions.policy import host_memory, launch_problems

        # a Slurm node's memory is not this host's
        return launch_problems(plan, self.state_paths, self.policy, None if self.remote else host_memory())

    @property
    def launch_retry_s(self) -> float:
        """How long temporary launch errors are retried: RUNNER_LAUNCH_RETRY_S, else 10 minutes for the
        server (nobody watches it) and 30 s in the foreground (a person does)."""
        if self.launch_retry_s_set is not None:
            return self.launch_retry_s_set
        env = os.environ.get("RUNNER_LAUNCH_RETRY_S")
        return float(env) if env else (600.0 if self.persistent else 30.0)

    @launch_retry_s.setter
    def launch_retry_s(self, value: float) -> None:
        self.launch_retry_s_set = value


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
