"""From a spec to a recorded plan: inputs checked against the chain, the phase resolved, its launch plan built and
checked against the policy (a located SpecError: nothing recorded, nothing launched)."""
from __future__ import annotations

from typing import Any

from runner.decisions import graph
from runner.engine.ports import Core
from runner.errors import Problem, SpecError
from runner.plan import LaunchPlan, launch_plan, merge_inputs, resolve
from runner.spec import LoadedSpec
from runner.spec.models import Phase


def declared_inputs(loaded: LoadedSpec) -> set[str]:
    return set((loaded.doc.data or {}).get("inputs") or {})


def chain_inputs(loaded: LoadedSpec, given: dict[str, str]) -> dict[str, str]:
    """The ``--input`` values the first spec declares.  An input only a later spec of the chain
    declares (e.g. restart_from_base's base_model) is fine: it is applied when that spec runs.
    A name no spec of the chain declares is a located error (a typo must not pass silently)."""
    mine = declared_inputs(loaded)
    extra = sorted(k for k in given if k not in mine)
    if extra:
        try:
            specs = list(graph.build(loaded.path, loaded, given).specs.values())  # --input may give a later spec's input
        except SpecError:
            specs = [loaded]  # the chain's own errors are reported by plan; judge the names on this spec
        chain: set[str] = set().union(*(declared_inputs(s) for s in specs))
        unknown = [k for k in extra if k not in chain]
        if unknown:
            line, col = loaded.doc.position(("inputs",))
            known = ", ".join(sorted(chain)) or "none"
            raise SpecError([Problem(str(loaded.path), line, col, "inputs",
                                     f"--input {name}: no spec of this chain declares such an input (declared: {known})")
                             for name in unknown])
    return {k: v for k, v in given.items() if k in mine}


def plan(core: Core, loaded: LoadedSpec, inputs: dict[str, str], run_id: str,
         attempt: int = 1) -> tuple[Phase, LaunchPlan, dict[str, Any]]:
    """Pure apart from the policy: the resolved phase, its launch plan and the merged inputs (SpecError)."""
    merged = merge_inputs(loaded, inputs)
    phase = resolve(loaded, merged, run_id, core.runs_dir, attempt)
    launch = launch_plan(phase, loaded, merged, run_id, core.runs_dir, attempt)
    if core.remote and not isinstance(launch.gpus, int):
        # Slurm allocates GPUs by count on the node it picks: `all` or device ids mean nothing there.
        line, col = loaded.doc.position(("container", "gpus"))
        given = "all" if launch.gpus == "all" else "device ids " + ", ".join(launch.gpus)
        raise SpecError([Problem(str(loaded.path), line, col, "container.gpus",
                                 f"{given}: under Slurm give a count (gpus: 2); Slurm picks the node and its GPUs")])
    problems = core.policy.problems(loaded, launch) if core.policy is not None else []
    for i, m in enumerate(launch.mounts[:len(phase.container.mounts)]):
        why = core.state_paths.source_problem(m.source, m.read_only)
        if why:
            line, col = loaded.doc.position(("container", "mounts", i, "source"))
            problems.append(Problem(str(loaded.path), line, col, f"container.mounts[{i}].source", why))
    if problems:
        raise SpecError(problems)
    return phase, launch, merged
