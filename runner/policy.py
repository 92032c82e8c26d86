"""What the server lets a spec mount.  Pure path arithmetic on the planned request.

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

from runner.errors import Problem
from runner.plan import LaunchPlan
from runner.spec.loader import LoadedSpec

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
        return self._check(loaded, [(i, os.path.normpath(os.path.join(loaded.folder, os.path.expanduser(m.source))))
                                    for i, m in enumerate(loaded.phase.container.mounts) if "${{" not in m.source])

    def _check(self, loaded: LoadedSpec, sources: list[tuple[int, str]]) -> list[Problem]:
        sockets = {_real(s) for s in self.sockets} | set(self.sockets)
        out = []
        for i, source in sources:
            mount_source = source
            real = _real(mount_source)
            shown = mount_source if real == mount_source else f"{mount_source} (resolves to {real})"
            if any(_within(sock, real) for sock in sockets):
                why = "is the Docker socket" if real in sockets else "contains the Docker socket"
                message = f"{shown} {why}: a container with the socket controls the host, so runner never mounts it"
            elif not any(_within(real, root) for root in self.roots):
                message = (f"{shown} is outside the folders this server mounts from ({', '.join(self.roots)}); "
                           "add the folder with `runner serve --allow-mount DIR`")
            else:
                continue
            line, col = loaded.doc.position(("container", "mounts", i, "source"))
            out.append(Problem(str(loaded.path), line, col, f"container.mounts[{i}].source", message))
        return out
