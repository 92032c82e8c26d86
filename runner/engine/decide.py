"""The chain decision of an ended phase, recorded once: a retry of the same spec when its `retry:` policy covers how
it failed, else its `next:` rules (decided by the pure runner.decisions.chain)."""
from __future__ import annotations

from typing import Any

from runner.decisions import chain
from runner.engine.ports import Core, PhaseResult
from runner.engine.records import folder_of, phase_of, result_of
from runner.engine.session import PhaseSession
from runner.lifecycle import S, failure_names
from runner.decisions.outputs import context
from runner.spec import interpolate


def decide(core: Core, phase_id: int, sup: PhaseSession) -> PhaseResult:
    """Record the decision (with what `drive` needs to act on it) and return the phase's result carrying it."""
    row = core.store.phase(phase_id)
    spec = row["spec_path"]
    d = retry_decision(core, row, sup)
    if d is None and row["status"] == S.LOST:
        d = chain.Decision(None, None, {}, "the container was lost and no retry applies; the chain ends")
    if d is None:
        counts = {rule: n for (s, rule), n in fired(core, row["run_id"]).items() if s == spec}
        d = chain.decide(phase_of(row).next, row["verdict"], sup.metrics, {**row["outputs"], "name": row["name"]},
                         row["inputs"], run_context(core, row), folder_of(row), counts, failure_names(row))
    if core.store.record_decision(phase_id, d.reason, {"next": d.spec, "inputs": d.inputs, "rule": d.rule, "spec": spec}):
        core.reporter.info(f"next: {d.reason}")
    result = result_of(core.store, phase_id)
    result.decision = d
    return result


def run_context(core: Core, row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["run_id"], "dir": str(core.runs_dir / row["run_id"])}


def retry_decision(core: Core, row: dict[str, Any], sup: PhaseSession) -> chain.Decision | None:
    """A decision to run the same spec again (attempt N+1), or None.  Only infrastructure
    failures the spec's `retry.on` names; never a guard trip or a failed verdict."""
    policy = phase_of(row).retry
    kinds = failure_names(row)
    if policy is None or not kinds:
        return None
    matched = sorted(k for k in kinds if k in policy.on)
    if not matched:
        return None
    earlier = [p for p in core.store.phases(row["run_id"]) if p["name"] == row["name"] and p["id"] <= row["id"]]
    retries_so_far = len(earlier) - 1
    if retries_so_far >= policy.max:
        core.store.event(row["run_id"], row["id"], "phase.retry-exhausted",
                         f"{row['name']} failed ({', '.join(matched)}); no retries left ({policy.max} used)")
        return None
    outputs = dict(row["outputs"] or {})
    if sup.ckpt is not None and not outputs.get("last_checkpoint"):
        outputs.update(sup.ckpt.outputs())  # a lost phase was never judged: its vault still says what it kept
    ctx = {**context(outputs), "inputs": row["inputs"], "run": run_context(core, row)}
    ctx["phase"] = {**ctx["phase"], "name": row["name"]}
    with_inputs = {k: interpolate.substitute(v, ctx) if isinstance(v, str) else interpolate.as_text(v)
                   for k, v in policy.with_.items()}
    attempt = retries_so_far + 2
    return chain.Decision("retry", row["spec_path"], {**row["inputs"], **with_inputs},
                          f"retry {attempt - 1} of {policy.max} ({', '.join(matched)}): attempt {attempt} of "
                          f"{row['name']}" + (f" with {', '.join(f'{k}={v}' for k, v in with_inputs.items())}"
                                              if with_inputs else ""))


def decided_next(core: Core, row: dict[str, Any]) -> dict[str, Any] | None:
    """The next spec and inputs a finished phase's recorded decision names, if any."""
    for e in reversed(core.store.events(row["run_id"])):
        if e["kind"] == "chain.decision" and e["phase_id"] == row["id"]:
            return e["data"] if e["data"].get("next") else None
    return None


def fired(core: Core, run_id: str) -> dict[tuple[str, int], int]:
    """How often each (spec, rule) fired in this run so far, from the recorded decisions."""
    counts: dict[tuple[str, int], int] = {}
    for e in core.store.events(run_id):
        if e["kind"] == "chain.decision" and e["data"].get("next"):
            rule = e["data"].get("rule")
            spec = e["data"].get("spec")
            if rule is not None and spec:
                counts[(spec, rule)] = counts.get((spec, rule), 0) + 1
    return counts
