"""Error types.  Every error runner raises on purpose derives from RunnerError.

Retry decisions live in the type: ``Temporary`` errors may succeed if tried
again later (engine restarting, socket busy); ``Permanent`` ones will not (a
bad spec, a missing image).  Third-party exceptions are translated into these
where they enter (backends/docker.py, the loader), so callers never catch
docker or yaml exceptions.
"""
from __future__ import annotations

from dataclasses import dataclass


class RunnerError(Exception):
    """Root of runner's errors.  ``str(err)`` is one line a person can act on;
    ``hint`` optionally says what to do about it.

    The type decides the command line's exit code (README, "Exit codes"): 1 for what
    was asked (``SpecError``, ``NotFound``, ``Refused``), 2 for how it was asked
    (``UsageError``), 3 for the machinery underneath (everything else: engine,
    images, GPUs, disks, nvidia-smi), 4 for a bug (``InvalidTransition``)."""

    exit_code = 3

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class Temporary(RunnerError):
    """Trying again later may succeed."""


class Permanent(RunnerError):
    """Trying again will fail the same way until something is changed."""


@dataclass(frozen=True)
class Problem:
    """One located problem in a spec file."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(Permanent):
    """A spec is invalid.  Holds every problem found, not just the first."""

    exit_code = 1

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class EngineUnavailable(Temporary):
    """The container engine cannot be reached."""


class ImageMissing(Permanent):
    """The image a spec names is not present locally."""


class GpuUnavailable(Permanent):
    """GPUs were requested but the engine cannot provide them."""


class LaunchError(Permanent):
    """The engine refused to create or start a container."""


class LaunchRefused(LaunchError):
    """runner's policy refused to create the container (a mount of its own state, a source outside the
    allowed folders, a reserved label): nothing was created."""

    exit_code = 1


class ContainerNotFound(Permanent):
    """A container the store knows about is gone from the engine."""


class NotFound(Permanent):
    """What a command names does not exist: a run, a phase, a path, a recorded
    checkpoint, a run store, a phase's logs."""

    exit_code = 1


class Refused(Permanent):
    """The request conflicts with what exists: an export destination that exists, attaching
    to a run with nothing running, a second server for one run store, a spec the server
    cannot see.  Nothing was changed."""

    exit_code = 1


class UsageError(Permanent):
    """The command line itself is wrong (``--input NAME`` without ``=VALUE``, a malformed
    option value); argparse's own errors exit 2 the same way."""

    exit_code = 2


class InvalidTransition(Permanent):
    """A phase asked to move between statuses the lifecycle table does not allow: a bug, never a user error."""

    exit_code = 4  # internal error (README, "Exit codes")


class StoreCorrupt(Permanent):
    """The run store fails SQLite's quick_check: nothing is written into it."""


class StoreBusy(Temporary):
    """Another process held the run store's lock for longer than runner waits."""


class StoreFull(Temporary):
    """The run store's disk is full: the write was not recorded; freeing space makes it work again."""
