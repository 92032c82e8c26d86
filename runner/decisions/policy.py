"""What a container may mount.  Pure path arithmetic on the planned request.

The server holds the Docker socket, which is root on the host: a spec that could
bind-mount ``/`` or the socket could take the machine.  Fields that weaken
isolation (privileged, capabilities, host namespaces, devices) do not exist in the
spec model at all (the loader names them as refused); what remains to check is
where bind mounts come from.  Sources are resolved (symlinks and ``..``) before
they are compared, so a link inside an allowed root cannot point out of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runner.paths import spec_relative
from runner.errors import Problem, SpecError
from runner.plan import LABEL_SHA, LaunchPlan, vault_root
from runner.spec import interpolate
from runner.spec.loader import LoadedSpec, load_spec

DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


def _real(path: str | Path) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class MountPolicy:
    """Bind sources must lie under one of ``roots``; none may be or contain a Docker socket."""

    roots: tuple[str, ...]
    sockets: tuple[str, ...] = DOCKER_SOCKETS

    @classmethod
    def of(cls, roots: list[str | Path]) -> "MountPolicy":
        host = os.environ.get("DOCKER_HOST", "")
        extra = (host.removeprefix("unix://"),) if host.startswith("unix://") else ()
        return cls(tuple(dict.fromkeys(_real(r) for r in roots)), DOCKER_SOCKETS + extra)

    def problems(self, loaded: LoadedSpec, plan: LaunchPlan) -> list[Problem]:
        """Located problems for every bind mount the policy refuses (empty: allowed)."""
        return self._check(loaded, [(i, m.source) for i, m in enumerate(plan.mounts)])

    def literal_problems(self, loaded: LoadedSpec) -> list[Problem]:
        """The same, before planning, for mounts whose source has no ``${{ }}`` (a chained spec,
        checked when the first one is accepted)."""
        return self._check(loaded, [(i, str(spec_relative(loaded.folder, m.source)))
                                    for i, m in enumerate(loaded.phase.container.mounts) if "${{" not in m.source])

    def source_problem(self, source: str) -> str:
        """Why the policy refuses ``source`` as a bind source ('' when it allows it)."""
        sockets = {_real(s) for s in self.sockets} | set(self.sockets)
        real = _real(source)
        shown = source if real == source else f"{source} (resolves to {real})"
        if any(_within(sock, real) for sock in sockets):
            why = "is the Docker socket" if real in sockets else "contains the Docker socket"
            return f"{shown} {why}: a container with the socket controls the host, so runner never mounts it"
        if not any(_within(real, root) for root in self.roots):
            return (f"{shown} is outside the folders this server mounts from ({', '.join(self.roots)}); "
                    "add the folder with `runner serve --allow-mount DIR`")
        return ""

    def _check(self, loaded: LoadedSpec, sources: list[tuple[int, str]]) -> list[Problem]:
        out = []
        for i, source in sources:
            message = self.source_problem(source)
            if message:
                line, col = loaded.doc.position(("container", "mounts", i, "source"))
                out.append(Problem(str(loaded.path), line, col, f"container.mounts[{i}].source", message))
        return out


def source_findings(loaded: LoadedSpec, inputs: dict[str, str] | None = None,
                    first: bool | None = None) -> tuple[list[Problem], list[Problem]]:
    """Bind sources that do not exist now, before anything runs (`runner validate`, `runner plan`): located
    (problems, warnings).  A source runner makes (``create: true``) is fine.  A problem: the launch would be
    refused — a path inside the phase's own folder (made when its container is created, after the mounts are
    checked), or, for the first phase (``first``; None: a spec on its own), a literal path or an ``--input``
    value given here that is not there, or the run's folder, which nothing has written yet.  A warning: it may
    appear later — under ``${{ run.dir }}`` of a later phase (an earlier phase may write it), from an input's
    default (``--input`` may name another), or any source of a spec later in the chain."""
    declared = (loaded.doc.data or {}).get("inputs") or {}
    given = {k: v for k, v in (inputs or {}).items() if k in declared}
    values = {**declared, **given}
    run_dir, phase_dir = "/\0run", "/\0run/\0phase"  # stand-ins: the run's folders exist only once it runs
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for i, m in enumerate(loaded.phase.container.mounts):
        if m.create:
            continue
        refs = interpolate.references(m.source)
        try:
            text = interpolate.substitute(m.source, {"inputs": values, "run": {"id": "RUN", "dir": run_dir},
                                                     "phase": {"name": loaded.phase.name, "dir": phase_dir}})
        except KeyError:
            continue  # a required input not given here: known when the run is applied
        source = str(spec_relative(loaded.folder, text))
        defaults = sorted(k for ns, k in refs if ns == "inputs" and k not in given)
        if _within(source, phase_dir):
            bad, why = True, "is in the phase's own folder, which is made when its container is created; set create: true"
        elif _within(source, run_dir):
            bad = first is True
            why = ("is in the run's folder, which nothing has written before the run's first phase; set create: true"
                   if bad else "is in the run's folder: an earlier phase must write it, or set create: true")
        elif os.path.exists(source):
            continue
        elif defaults:
            bad, why = False, (f"does not exist here (from the default of input {', '.join(defaults)}; "
                               "--input may name another)")
        else:
            bad = first is not False
            why = ("does not exist; create it, or set create: true on the mount for an output folder" if bad else
                   "does not exist now: an earlier phase of the chain must create it, or set create: true")
        line, col = loaded.doc.position(("container", "mounts", i, "source"))
        shown = m.source if source == m.source or _within(source, run_dir) else f"{m.source} ({source})"
        (problems if bad else warnings).append(Problem(str(loaded.path), line, col, f"container.mounts[{i}].source",
                                                       ("" if bad else "warning: ") + f"{shown} {why}"))
    return problems, warnings


def missing_sources(plan: LaunchPlan, spec_path: str) -> list[Problem]:
    """At launch: every bind source that does not exist and that runner does not create (``create: true``),
    located at the spec's mount (a spec error: the spec names it, the machinery is fine)."""
    missing = [(i, m) for i, m in enumerate(plan.mounts) if not m.create and not os.path.exists(m.source)]
    if not missing:
        return []
    try:
        loaded: LoadedSpec | None = load_spec(spec_path)
    except SpecError:
        loaded = None
    if loaded is not None and loaded.sha256 != plan.labels.get(LABEL_SHA):
        loaded = None  # the file changed since the run was planned: its lines say nothing about this plan
    out = []
    for i, m in missing:
        line, col = loaded.doc.position(("container", "mounts", i, "source")) if loaded is not None else (0, 0)
        out.append(Problem(spec_path, line, col, f"container.mounts[{i}].source",
                           f"mount source {m.source} does not exist; create it, or set create: true on the mount "
                           "for an output folder"))
    return out


# Top-level entries of the run store's folder that are runner's own state (everything there but the runs'
# folders): a container that could write them could rewrite what runner launches next.
_STATE_NAMES = ("runner.db", "vault", "backend.yaml")


@dataclass(frozen=True)
class StatePaths:
    """runner's own state, which no container may mount whatever the spec or the stored plan says: the run
    store's folder (runner.db, the server's lock and files) and every parent of it, the inbox and its parents,
    the vault except read-only.  Holds in the foreground too: a plan stored in the run store is only as
    trustworthy as every container that could have reached the store."""

    runs_dir: str
    inbox: str | None = None

    @classmethod
    def of(cls, runs_dir: str | Path, inbox: str | Path | None = None) -> "StatePaths":
        return cls(_real(runs_dir), _real(inbox) if inbox else None)

    def source_problem(self, source: str, read_only: bool) -> str:
        real = _real(source)
        shown = source if real == source else f"{source} (resolves to {real})"
        vault = _real(vault_root(self.runs_dir))
        if _within(self.runs_dir, real):
            return (f"{shown} holds runner's run store ({self.runs_dir}: runner.db, the vault): a container that could "
                    "write it could change what runner launches; mount a run's folder (${{ run.dir }}) instead")
        if _within(real, vault):
            if read_only:
                return ""
            return f"{shown} is in runner's vault: vaulted checkpoints are mounted read-only only"
        if _within(real, self.runs_dir):
            top = Path(os.path.relpath(real, self.runs_dir)).parts[0]
            if top.startswith(_STATE_NAMES) or top.startswith("."):
                return f"{shown} is runner's own state in {self.runs_dir}; only the runs' folders may be mounted"
        if self.inbox and (_within(self.inbox, real) or _within(real, self.inbox)):
            return f"{shown} is (or holds) the server's inbox {self.inbox}: a container that could write it could submit specs"
        return ""


RUNNER_LABELS = frozenset({"runner.run-id", "runner.phase", "runner.spec-sha256", "runner.validation-step"})


def launch_problems(plan: LaunchPlan, state: StatePaths, policy: MountPolicy | None,
                    host_memory: int | None = None) -> list[str]:
    """Every reason to refuse creating ``plan``'s container, checked where the container is created
    (first launch, retry, chain step, a pending phase re-adopted from the store, validation runs): a
    stored plan is never trusted to have been checked when it was written."""
    out = []
    for m in plan.mounts:
        why = state.source_problem(m.source, m.read_only) or (policy.source_problem(m.source) if policy else "")
        if why:
            out.append(f"mount {m.source} → {m.target}: {why}")
    reserved = sorted(k for k in plan.labels if k.startswith("com.docker.compose.")
                      or (k.startswith("runner.") and k not in RUNNER_LABELS))
    if reserved:
        out.append(f"labels {', '.join(reserved)} are reserved (runner's own, or docker compose's)")
    for what, size in (("shm_size", plan.shm_size), ("memory", plan.memory)):
        if host_memory and size and size > host_memory:
            out.append(f"{what} {size / 2**30:.1f} GiB is more than this host's memory ({host_memory / 2**30:.1f} GiB)")
    return out


def host_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None

