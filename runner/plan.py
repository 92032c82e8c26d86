"""The pure plan step: a validated phase + inputs → the exact container request.

Nothing here touches Docker or the filesystem (path arithmetic only), so the
request is tested by equality, like a dry run.  The backend turns a LaunchPlan
into its engine's call without further decisions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from runner.paths import spec_relative
from runner.errors import Problem, SpecError
from runner.spec import interpolate

if TYPE_CHECKING:  # the spec's models (pydantic) are imported where a plan is built, not by who only reads plans
    from runner.spec.loader import LoadedSpec
    from runner.spec.models import Phase
from runner.spec.types import resolved_size

LABEL_RUN = "runner.run-id"
LABEL_PHASE = "runner.phase"
LABEL_SHA = "runner.spec-sha256"


@dataclass(frozen=True)
class BindMount:
    source: str  # absolute host path
    target: str
    read_only: bool = False
    create: bool = False


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start a phase's container, and nothing engine-specific."""

    run_id: str
    phase: str
    container_name: str
    image: str
    command: tuple[str, ...]
    env: dict[str, str]
    mounts: tuple[BindMount, ...]
    workdir: str | None
    gpus: Union[int, str, tuple[str, ...]]  # count (0 = CPU), "all", or device ids
    shm_size: int | None
    memory: int | None
    cpus: float | None
    user: str | None
    labels: dict[str, str]
    stop_grace: float
    timeout: float | None
    phase_dir: str
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def wants_gpu(self) -> bool:
        return self.gpus != 0


def container_name(run_id: str, phase: str, attempt: int = 1) -> str:
    """Deterministic, so the engine itself refuses a second container for the same phase (and
    attempt: a retried phase, or one a looping chain runs again, is attempt 2, 3, ...)."""
    return f"runner-{run_id}-{phase}" + (f"-{attempt}" if attempt > 1 else "")


def phase_dir(runs_dir: Path | str, run_id: str, phase: str, attempt: int = 1) -> Path:
    return Path(runs_dir) / run_id / (phase if attempt <= 1 else f"{phase}.{attempt}")


def vault_root(runs_dir: Path | str) -> Path:
    """Where runner keeps every run's vaulted checkpoints: inside the run store's folder, outside every run's
    folder, so no phase container mounts it writable (each gets its own run's vault read-only)."""
    return Path(runs_dir) / "vault"


def vault_dir(runs_dir: Path | str, run_id: str, phase: str, attempt: int = 1) -> Path:
    """One phase's vault (attempt N of a phase has its own, like its folder)."""
    return vault_root(runs_dir) / run_id / phase_dir(runs_dir, run_id, phase, attempt).name


def vault_of(phase_folder: Path | str) -> Path:
    """The vault of the phase whose folder is ``phase_folder`` (RUNS/RUN/PHASE[.N] → RUNS/vault/RUN/PHASE[.N])."""
    p = Path(phase_folder)
    return vault_root(p.parent.parent) / p.parent.name / p.name


def merge_inputs(loaded: LoadedSpec, given: dict[str, str]) -> dict[str, object]:
    """Spec defaults overridden by ``given``; every required input must be there."""
    # The raw values, not the model's: they keep their spelling ("1e-6", not "1e-06").
    declared = (loaded.doc.data or {}).get("inputs") or {}
    problems = []
    file = str(loaded.path)
    for name in given:
        if name not in declared:
            line, col = loaded.doc.position(("inputs",))
            known = ", ".join(sorted(declared)) or "none"
            problems.append(Problem(file, line, col, "inputs", f"--input {name}: the spec declares no such input (declared: {known})"))
    merged = {**declared, **{k: v for k, v in given.items() if k in declared}}
    for name, value in merged.items():
        if value is None:
            line, col = loaded.doc.position(("inputs", name), key=True)
            problems.append(Problem(file, line, col, f"inputs.{name}", f"required input not given; pass --input {name}=VALUE"))
    if problems:
        raise SpecError(problems)
    return merged


def resolve(loaded: LoadedSpec, inputs: dict[str, object], run_id: str, runs_dir: Path | str, attempt: int = 1) -> Phase:
    """The phase with every ``${{ }}`` reference substituted, validated again."""
    from pydantic import ValidationError

    from runner.spec.loader import dotted, problems_from_validation
    from runner.spec.models import Phase

    pdir = phase_dir(runs_dir, run_id, loaded.phase.name, attempt)
    context: dict[str, dict[str, Any]] = {
        "inputs": inputs,
        "run": {"id": run_id, "dir": str(Path(runs_dir) / run_id)},
        "phase": {"name": loaded.phase.name, "dir": str(pdir)},
    }
    problems: list[Problem] = []
    file = str(loaded.path)

    def sub(text: str, path: tuple) -> str:
        try:
            return interpolate.substitute(text, context, keep=frozenset({"checkpoint"}))
        except KeyError as exc:
            line, col = loaded.doc.position(path)
            problems.append(Problem(file, line, col, dotted(path), f"cannot resolve ${{{{ {exc.args[0]} }}}}"))
            return text

    data = loaded.doc.data
    resolved = dict(data)
    # `next:` rules and `retry.with` are resolved when the phase has ended (they use its outputs).
    resolved.update({k: interpolate.walk_strings(v, sub, (k,)) for k, v in data.items() if k not in ("inputs", "next", "retry")})
    if problems:
        raise SpecError(problems)
    try:
        phase = Phase.model_validate(resolved)
    except ValidationError as exc:
        raise SpecError(problems_from_validation(exc, loaded.doc, file, Phase)) from None
    if phase.expect is not None and phase.expect.unless_input and str(inputs.get(phase.expect.unless_input) or "").strip():
        # A deliberate resume (a crash retry from the latest checkpoint): the step and LR schedule are the checkpoint's.
        phase = phase.model_copy(update={"expect": None})
    return phase


def build_plan(loaded: LoadedSpec, given_inputs: dict[str, str], run_id: str, runs_dir: Path | str) -> LaunchPlan:
    """Pure: the exact launch request for one phase of one run."""
    inputs = merge_inputs(loaded, given_inputs)
    return launch_plan(resolve(loaded, inputs, run_id, runs_dir), loaded, inputs, run_id, runs_dir)


def launch_plan(phase: Phase, loaded: LoadedSpec, inputs: dict[str, object], run_id: str, runs_dir: Path | str,
                attempt: int = 1) -> LaunchPlan:
    """Pure: the launch request for an already resolved phase."""
    c = phase.container
    folder = str(loaded.folder)
    mounts = tuple(
        BindMount(str(spec_relative(folder, m.source)), m.target, m.read_only, m.create)
        for m in c.mounts
    )
    # The run's vault, read-only at the same path: a vaulted checkpoint handed to a later phase (or to a
    # validation run) is readable there, and no container can change or add to it.
    run_vault = str(vault_root(runs_dir) / run_id)
    if not any(m.target == run_vault for m in mounts):
        mounts += (BindMount(run_vault, run_vault, read_only=True, create=True),)
    labels = {**phase.labels, LABEL_RUN: run_id, LABEL_PHASE: phase.name, LABEL_SHA: loaded.sha256}
    return LaunchPlan(
        run_id=run_id,
        phase=phase.name,
        container_name=container_name(run_id, phase.name, attempt),
        image=c.image,
        command=tuple(c.command),
        env=dict(c.env),
        mounts=mounts,
        workdir=c.workdir,
        gpus=tuple(c.gpus) if isinstance(c.gpus, list) else c.gpus,
        shm_size=None if c.shm_size is None else resolved_size(c.shm_size),
        memory=None if c.memory is None else resolved_size(c.memory),
        cpus=c.cpus,
        user=c.user,
        labels=labels,
        stop_grace=c.stop_grace_period,
        timeout=phase.timeout,
        phase_dir=str(phase_dir(runs_dir, run_id, phase.name, attempt)),
        inputs={k: interpolate.as_text(v) for k, v in inputs.items()},
    )
