"""Spec models for what a phase watches and checks: its metric sources, its checkpoints (keep, validate, complete
when) and its preconditions."""
from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from runner.spec.models_base import Model
from runner.spec.types import Argv, Duration, GpuRequest, Number, Size, Template


class TensorBoardSource(Model):
    """TensorBoard event files written by the trainer."""

    logdir: str = Field(description="Folder with event files (searched recursively). Relative = relative to the spec file.")
    tags: dict[str, str] = Field(default_factory=dict, description="Short metric name → TensorBoard tag, e.g. text_loss: train/text_loss. Empty = every tag under its own name.")


class JsonlSource(Model):
    """A JSON-lines file: one object per line with a step and values."""

    path: str = Field(description="The JSONL file. Relative = relative to the spec file.")
    step_field: str = Field("step", description="Key holding the step.")
    fields: dict[str, str] = Field(default_factory=dict, description="Short metric name → key in each object. Empty = every numeric key.")


class StdoutSource(Model):
    """Metrics parsed from the container's output with one regex per metric."""

    step: str = Field(description=r"Regex whose first group is the current step, e.g. 'step (\d+)'.")
    patterns: dict[str, str] = Field(description=r"Metric name → regex whose first group is the value, e.g. 'text_loss ([-+.\deE]+|nan|inf)'.")

    @field_validator("step")
    @classmethod
    def _step_regex(cls, v: str) -> str:
        _compile(v)
        return v

    @field_validator("patterns")
    @classmethod
    def _regexes(cls, v: dict) -> dict:
        for name, pattern in v.items():
            try:
                _compile(pattern)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return v


def _compile(pattern: str):

    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    if rx.groups < 1:
        raise ValueError(f"regex {pattern!r} needs a capture group for the value")
    return rx


class Metrics(Model):
    """Where the phase's metrics come from; names defined here are used by guards, criteria and checkpoints."""

    tensorboard: TensorBoardSource | None = Field(None, description="TensorBoard event files.")
    jsonl: JsonlSource | None = Field(None, description="A JSON-lines metrics file.")
    stdout: StdoutSource | None = Field(None, description="Regexes over the container's output.")
    poll_interval: Duration = Field(1.0, description="How often sources are read and guards evaluated.")
    total_steps: Union[Annotated[int, Field(ge=1)], Template, None] = Field(
        None, description="Expected last step (absolute), for progress and ETA (defaults to the phase's stop_at); a number or a "
                          "${{ inputs.NAME }} reference.")


class Keep(Model):
    """Which vaulted checkpoints to keep (runner never deletes the trainer's own files)."""

    by: str = Field(description="Metric that scores a checkpoint: its value at the checkpoint's step (or the nearest before).")
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher is better.")
    window: int | None = Field(None, ge=1, description="Score with the mean over this many steps up to the checkpoint's step, instead of one value.")
    best: int = Field(1, ge=1, description="Keep the best K checkpoints. One that has ever been in the best K is never pruned.")
    latest: int = Field(1, ge=0, description="Also keep the newest N.")
    every: int | None = Field(None, ge=1, description="Also keep every checkpoint whose step is a multiple of this.")


class Validate(Model):
    """A validation command run in its own container against new checkpoints."""

    command: Argv = Field(description="argv; ${{ checkpoint.path }} (the vaulted file, which must be visible in the container) and ${{ checkpoint.step }} are substituted. The last JSON object printed gives metrics, e.g. {\"val_loss\": 1.23}.")
    image: str | None = Field(None, description="Image (default: the phase's image). Mounts, env and workdir are the phase's.")
    every: Union[Annotated[int, Field(ge=1)], Template] = Field(1, description="Validate every Nth vaulted checkpoint (a number, or a ${{ inputs.NAME }} reference).")
    gpus: GpuRequest = Field(0, description="GPUs for the validation container (default CPU); validations run one at a time, queued.")
    timeout: Duration = Field(3600.0, description="Limit for one validation run.")


class CompleteWhen(Model):
    """The mark a trainer writes once a checkpoint is whole: a file inside the checkpoint's folder written
    last (Hugging Face: trainer_state.json), or a file beside the checkpoints naming the newest complete one
    (DeepSpeed: latest)."""

    file: str | None = Field(None, description="A file inside the checkpoint's folder that the trainer writes last, e.g. trainer_state.json.")
    latest: str | None = Field(None, description="A file in the checkpoint folder (dir) that names the newest complete checkpoint, e.g. DeepSpeed's latest (content: global_step200); a checkpoint is complete once it names it or a later step.")

    @model_validator(mode="after")
    def _one(self) -> "CompleteWhen":
        if (self.file is None) == (self.latest is None):
            raise ValueError("give exactly one of file or latest")
        for v in (self.file, self.latest):
            if v is not None and ("/" in v or v in (".", "..")):
                raise ValueError(f"{v!r} must be a plain file name")
        return self


# preset → (pattern, completion mark, format of the loadability check, the usual TensorBoard tags)
PRESETS: dict[str, dict] = {
    "huggingface": {"pattern": "checkpoint-{step}", "complete_when": {"file": "trainer_state.json"}, "format": "huggingface",
                    "tags": {"loss": "train/loss", "eval_loss": "eval/loss"}},
    "lightning": {"pattern": "epoch={epoch}-step={step}.ckpt", "complete_when": None, "format": "lightning",
                  "tags": {"train_loss": "train_loss", "val_loss": "val_loss"}},
    "deepspeed": {"pattern": "global_step{step}", "complete_when": {"latest": "latest"}, "format": "deepspeed",
                  "tags": {"loss": "Train/Samples/train_loss"}},
    "torch": {"pattern": "model_step{step}.pth", "complete_when": None, "format": "torch", "tags": {}},
}


class Checkpoints(Model):
    """The trainer's checkpoint folder."""

    dir: str = Field(description="Folder the trainer writes checkpoints to. Relative = relative to the spec file.")
    preset: Literal["huggingface", "lightning", "deepspeed", "torch"] | None = Field(None, description="The trainer that writes the checkpoints: sets pattern, complete_when, the loadability check and, when metrics.tensorboard.tags is empty, the usual tags (huggingface: checkpoint-{step}/ complete with trainer_state.json, tags loss, eval_loss; lightning: epoch={epoch}-step={step}.ckpt, tags train_loss, val_loss; deepspeed: global_step{step}/ complete when latest names it; torch: model_step{step}.pth). Fields given explicitly win.")
    pattern: str | None = Field(None, description="Name of a checkpoint file or folder with {step} exactly once; other {placeholders} and * match anything, e.g. epoch={epoch}-step={step}.ckpt. Default: the preset's, else model_step{step}.pth.")
    complete_when: CompleteWhen | None = Field(None, description="The trainer's completion mark (default: the preset's). Without one a checkpoint is complete when closed or renamed into place (files) or stable for settle (folders), and loadable.")
    keep: Keep | None = Field(None, description="How to score checkpoints and which vaulted ones to keep. Without it every vaulted checkpoint is kept.")
    vault: bool = Field(True, description="Protect each complete checkpoint in runs/RUN/PHASE/vault (hard link, or copy across filesystems).")
    polling: bool = Field(False, description="Watch the folder by polling (network filesystems send no events). Rescans run either way.")
    settle: Duration = Field(2.0, description="A checkpoint without a completion mark and not seen closed or renamed into place counts as complete once its size is stable this long (and it loads).")
    validate_: Validate | None = Field(None, alias="validate", description="Run a validation command against each new checkpoint; its metrics (e.g. val_loss) are usable everywhere, scoring included (at the checkpoint's exact step).")
    on_missed_best: Literal["warn", "fail"] = Field("warn", description="What losing the best checkpoint does to the verdict: when a checkpoint that would have been the best (its keep.by value at its step, known when it was saved, or by validation, beats every vaulted one) was missed — deleted before it was complete and vaulted — warn keeps a success but marks it degraded (runner status shows it; apply exits with a code of its own), fail makes the phase fail. The explanation names it either way.")

    @model_validator(mode="after")
    def _defaults(self) -> "Checkpoints":
        preset = PRESETS.get(self.preset or "", {})
        pattern = self.pattern
        if pattern is None:
            pattern = preset.get("pattern", "model_step{step}.pth")
            object.__setattr__(self, "pattern", pattern)
        if self.complete_when is None and preset.get("complete_when"):
            object.__setattr__(self, "complete_when", CompleteWhen(**preset["complete_when"]))
        if pattern.count("{step}") != 1:
            raise ValueError("pattern must contain {step} exactly once, e.g. model_step{step}.pth")
        if "/" in pattern:
            raise ValueError("pattern names a file or folder directly inside dir (no /)")
        return self

    @property
    def format(self) -> str | None:
        """The loadability check: huggingface | lightning | deepspeed | torch, or None (by file type)."""
        return PRESETS[self.preset]["format"] if self.preset else None


class FileCheck(Model):
    path: str = Field(description="The file.")
    min_size: Size | None = Field(default=None, description="Smallest acceptable size, e.g. 1m.")


class CheckpointStepCheck(Model):
    path: str = Field(description="A checkpoint file whose name holds its step.")
    pattern: str = Field("model_step{step}.pth", description="File name pattern with {step}.")
    at_least: int = Field(description="The step must be at least this.")


class DiskCheck(Model):
    path: str = Field(description="A path on the filesystem to check (the nearest existing parent is used).")
    at_least: Size = Field(description="Free space needed, e.g. 100GiB.")


class GpuMemoryCheck(Model):
    at_least: Size = Field(description="Free memory needed on each GPU the phase uses, e.g. 20GiB.")


class PhaseCheck(Model):
    name: str = Field(description="A phase run earlier in the same run.")
    verdict: Literal["success", "failure", "inconclusive"] | None = Field(None, description="Its verdict must be this.")
    metric: str | None = Field(None, description="Or: one of its metric summaries must pass `below`/`above`.")
    below: Number | None = Field(None, description="The metric's last value must be below this.")
    above: Number | None = Field(None, description="The metric's last value must be above this.")


class Precondition(Model):
    """One check before launch; exactly one field is set.  Unmet → phase *blocked*, nothing launched."""

    file_exists: Union[str, FileCheck, None] = Field(None, description="A path that must exist (optionally with a minimum size).")
    checkpoint_step: CheckpointStepCheck | None = Field(None, description="A checkpoint whose step (from its name) is at least N.")
    disk_free: DiskCheck | None = Field(None, description="Free disk space on a path.")
    gpu_memory_free: GpuMemoryCheck | None = Field(None, description="Free GPU memory (needs nvidia-smi; GPU phases only).")
    phase: PhaseCheck | None = Field(None, description="A previous phase's verdict or metric.")
    image_present: bool | None = Field(None, description="The container image must be present locally.")

    @model_validator(mode="after")
    def _exactly_one(self):
        set_ = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"a precondition sets exactly one check ({', '.join(type(self).model_fields)}); got {set_ or 'none'}")
        return self
