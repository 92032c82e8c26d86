"""Which backend a run store uses (runner.settings: ``backend.yaml`` in its folder), as a factory the
engine calls on first use — so `validate`, `status` of finished runs and the web page never connect."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from runner.backends.base import Backend
from runner.paths import SETTINGS_FILE

if TYPE_CHECKING:
    from runner.settings import Settings


class SlurmFactory:
    """Makes the Slurm backend; ``remote``: containers run on other machines (no local GPU ids or
    slots: Slurm places and allocates)."""

    remote = True

    def __init__(self, settings: Settings):
        self.settings = settings

    def __call__(self) -> Backend:
        from runner.backends.slurm import SlurmBackend

        return SlurmBackend(self.settings.slurm)


def docker_factory() -> Backend:
    from runner.backends.docker import DockerBackend

    return DockerBackend()


def backend_factory(runs_dir: Path | str, settings: Settings | None = None) -> Callable[[], Backend]:
    """The backend factory for the run store in ``runs_dir`` (SpecError for a bad backend.yaml)."""
    if settings is None:
        if not os.path.lexists(Path(runs_dir) / SETTINGS_FILE):
            # No settings file: the defaults, whose backend is the local Docker engine; the settings' models
            # (pydantic, the spec loader: a quarter second) are not imported by `runner status` and the like.
            return docker_factory
        from runner.settings import load_settings

        settings = load_settings(runs_dir)
    if settings.backend == "slurm":
        return SlurmFactory(settings)
    return docker_factory


def is_remote(backend: object) -> bool:
    return bool(getattr(backend, "remote", False))
