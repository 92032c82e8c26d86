"""Where phases run: the run store's backend settings, ``backend.yaml`` in the run store's folder.

One place for every command and the server: `runner apply`, `status`, `stop`, `attach`, `logs` and
`runner serve` on the same run store all use the backend named there, so a phase launched as a Slurm
job is also inspected, stopped and re-adopted as one.  No file (the default): the local Docker engine.

    # runs/backend.yaml
    backend: slurm
    slurm:
      partition: gpu
      account: speech

Errors in the file are located (file:line, field) like spec errors.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from runner.errors import Problem, SpecError
from runner.paths import SETTINGS_FILE
from runner.spec.loader import parse_yaml, problems_from_validation
from runner.spec.models_base import Model
from runner.spec.types import Duration



class SlurmSettings(Model):
    """How phases are submitted to Slurm (see README, "Slurm")."""

    partition: str | None = Field(None, description="sbatch --partition; none: the cluster's default partition.")
    account: str | None = Field(None, description="sbatch --account; none: the user's default account.")
    qos: str | None = Field(None, description="sbatch --qos; none: the default.")
    sbatch_args: list[str] = Field(default_factory=list, description="More sbatch options, one argv element each "
                                   "(e.g. [\"--constraint=a100\", \"--exclusive\"]); never passed through a shell.")
    runtime: Literal["docker"] = Field("docker", description="The container runtime the job script uses on the node. "
                                       "Only docker is implemented and tested.")
    docker: list[str] = Field(default_factory=lambda: ["docker"], min_length=1,
                              description="The docker command on the nodes, as argv (e.g. [\"sudo\", \"-n\", \"docker\"]).")
    node_env: dict[str, str] = Field(default_factory=dict, description="Environment for the docker command on the node "
                                     "(e.g. DOCKER_HOST); not passed into the container.")
    @field_validator("node_env")
    @classmethod
    def _identifiers(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
        if bad:
            raise ValueError(f"not environment variable names: {', '.join(map(repr, bad))}")
        return value

    time_margin: Duration = Field(300, description="Added to a phase's timeout for the job's --time, so runner's own "
                                  "timeout (with its grace period) acts first; Slurm's limit is the backstop when runner "
                                  "is not running.")
    poll_interval: Duration = Field(2.0, description="How often squeue/sacct are asked about a job (seconds).")
    command_timeout: Duration = Field(30, description="How long one sbatch/squeue/sacct/scancel call may take before "
                                      "it counts as the controller not answering (a temporary error).")


class Settings(Model):
    """The run store's backend settings."""

    backend: Literal["docker", "slurm"] = Field("docker", description="Where phases run: the local Docker engine "
                                                "(default), or Slurm jobs that run the container on an allocated node.")
    slurm: SlurmSettings = Field(default_factory=lambda: SlurmSettings.model_validate({}), description="Slurm settings (backend: slurm).")
    keep_containers: bool = Field(False, description="Keep a finished phase's container (docker ps -a) instead of "
                                  "removing it once its supervisor has saved its whole log to the phase folder "
                                  "(container.log; `runner logs` reads it). `runner rm`/`prune` remove kept ones.")


def settings_path(runs_dir: Path | str) -> Path:
    return Path(runs_dir) / SETTINGS_FILE


def load_settings(runs_dir: Path | str) -> Settings:
    """The settings in ``runs_dir/backend.yaml``; defaults (Docker) when there is no such file.
    Raises SpecError with located problems."""
    path = settings_path(runs_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings.model_validate({})
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Problem(str(path), 1, 1, "", f"cannot read the backend settings: {exc}")]) from None
    if not text.strip():
        return Settings.model_validate({})
    doc, problems = parse_yaml(text, str(path))
    if problems:
        raise SpecError(problems)
    if not isinstance(doc.data, dict):
        raise SpecError([Problem(str(path), 1, 1, "", "backend settings must be a mapping (backend: docker|slurm)")])
    try:
        return Settings.model_validate(doc.data)
    except ValidationError as exc:
        raise SpecError(problems_from_validation(exc, doc, str(path), Settings)) from None
