"""Pydantic models of a phase spec (apiVersion runner/v1, kind Phase).

One base model forbids unknown fields and every field carries a description,
so the JSON Schema generated from these classes is the spec reference.
Strings may contain ``${{ inputs.NAME }}`` (and the other namespaces listed in
runner.spec.interpolate); they are substituted when a run is planned.
"""
from __future__ import annotations

import posixpath
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from runner.spec.watch_models import Checkpoints, Metrics, Precondition
from runner.spec.criteria_models import Expect, Guard, NextRule, Retry, StopAt, Success
from runner.spec.models_base import Model
from runner.spec.types import Argv, Duration, GpuRequest, InputValue, Size, TextMap

NAME_RE = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"


class Mount(Model):
    """A host folder or file bind-mounted into the container."""

    source: str = Field(description="Host path. A relative path is resolved against the spec file's folder.")
    target: str = Field(description="Absolute path inside the container.")
    read_only: bool = Field(False, description="Mount read-only.")
    create: bool = Field(
        False,
        description="Create the source folder if it does not exist (for output folders). "
        "Otherwise a missing source is an error before launch.",
    )

    @field_validator("target")
    @classmethod
    def _absolute_target(cls, v: str) -> str:
        if "${{" not in v and not posixpath.isabs(v):
            raise ValueError(f"must be an absolute path inside the container, got {v!r}")
        return v


class Container(Model):
    """What to run: the image, the argv command and the resources it gets."""

    image: str = Field(description="Image reference, e.g. runner-trainer:latest. runner never pulls: build or pull it first.")
    command: Argv = Field(description="The command as an argv list (no shell). Numbers are passed as written.")
    workdir: str | None = Field(None, description="Working directory inside the container.")
    env: TextMap = Field(default_factory=dict, description="Environment variables for the container.")
    mounts: list[Mount] = Field(default_factory=list, description="Bind mounts (host folders into the container).")
    gpus: GpuRequest = Field(0, description="GPUs: a count (0 = CPU only), 'all', or a list of device ids such as [0, 1].")
    shm_size: Size | None = Field(None, description="Size of /dev/shm, e.g. 16g (PyTorch data loaders need more than the 64m default).")
    memory: Size | None = Field(None, description="Memory limit, e.g. 32g. Exceeding it kills the container (recorded as OOM).")
    cpus: float | None = Field(None, gt=0, description="CPU limit in cores, e.g. 4 or 0.5.")
    user: str | None = Field(None, description="User (name or uid[:gid]) to run as inside the container.")
    stop_grace_period: Duration = Field(
        30.0, description="On stop: time between SIGTERM and SIGKILL, so the trainer can save a checkpoint."
    )

    @field_validator("env")
    @classmethod
    def _no_device_selection(cls, v: dict) -> dict:
        if "NVIDIA_VISIBLE_DEVICES" in v:
            raise ValueError("NVIDIA_VISIBLE_DEVICES is set from container.gpus (the GPUs the phase is granted); "
                             "request GPUs there")
        return v


class Phase(Model):
    """One phase of a training plan: a container to run and how to judge it."""

    api_version: Literal["runner/v1"] = Field(alias="apiVersion", description="Spec format version: runner/v1.")
    kind: Literal["Phase"] = Field(description="Always Phase.")
    name: str = Field(pattern=NAME_RE, description="Phase name: lower-case letters, digits, '.', '_' or '-', at most 63 characters.")
    description: str = Field("", description="What this phase is for, in a sentence a colleague can read.")
    inputs: dict[str, InputValue] = Field(
        default_factory=dict,
        description="Named values used as ${{ inputs.NAME }} in strings. The value is a default; "
        "null means the input is required (runner apply --input NAME=VALUE).",
    )
    container: Container = Field(description="The container that does the work.")
    labels: TextMap = Field(default_factory=dict, description="Extra labels put on the container (runner.* and com.docker.compose.* are reserved).")
    timeout: Duration | None = Field(None, description="Wall-clock limit of the phase, e.g. 3h. On expiry the container is stopped and the phase fails.")
    preconditions: list[Precondition] = Field(default_factory=list, description="Checks before launch; an unmet one records the phase blocked and launches nothing.")
    metrics: Metrics | None = Field(None, description="Where the trainer's metrics are read from while it runs.")
    checkpoints: Checkpoints | None = Field(None, description="The trainer's checkpoint folder, for phase.best_checkpoint / phase.last_checkpoint.")
    stop_at: StopAt | None = Field(None, description="The planned end: stop after N steps from the phase's first step (or at an absolute step); reaching it is the normal end, judged by the success criteria.")
    expect: Expect | None = Field(None, description="What the trainer must really do (the LR in effect, the step it starts from), "
                                  "checked against what it logs; a mismatch stops the phase with a reason that says so.")
    guards: list[Guard] = Field(default_factory=list, description="Checks that stop the run early, as a failure (NaN, divergence, stall, missing metric, timeout).")
    success: Success | None = Field(None, description="Criteria giving the verdict. Without them: success if the container exits 0.")
    retry: Retry | None = Field(None, description="Relaunch after an infrastructure failure (OOM, a lost container, a kill from outside), "
                                "from the vault's newest checkpoint if asked; each attempt is recorded. Never after a guard trip or a failed verdict.")
    next: list[NextRule] = Field(default_factory=list, description="Ordered rules; the first that matches the verdict or criteria chains the next spec.")

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v):
        if v is not None and v <= 0:
            raise ValueError("a timeout of 0 would fail the phase at once: give a duration such as 3h, or leave it out")
        return v

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, v: dict) -> dict:
        for key in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"input name {key!r} must be letters, digits and '_' (not starting with a digit)")
        return v

    @field_validator("labels")
    @classmethod
    def _no_reserved_labels(cls, v: dict) -> dict:
        for key in v:
            if key.startswith("runner."):
                raise ValueError(f"label {key!r}: the runner.* prefix is reserved for runner's own labels")
            if key.startswith("com.docker.compose."):
                # `docker compose down --remove-orphans` would stop a training container that carried them
                raise ValueError(f"label {key!r}: com.docker.compose.* labels are docker compose's own; a training "
                                 "container must not look like part of a compose project")
        return v

    @model_validator(mode="after")
    def _preset_tags(self) -> "Phase":
        """checkpoints.preset gives the trainer's usual TensorBoard tags when metrics.tensorboard names none."""
        from runner.spec.watch_models import PRESETS

        cp, m = self.checkpoints, self.metrics
        tags = PRESETS[cp.preset]["tags"] if cp is not None and cp.preset else {}
        if tags and m is not None and m.tensorboard is not None and not m.tensorboard.tags:
            object.__setattr__(m.tensorboard, "tags", dict(tags))
        return self
