"""Pure: which `next:` rule fires for an ended phase, and with which inputs."""
from __future__ import annotations

from typing import Any
from dataclasses import dataclass
from pathlib import Path

from runner.paths import spec_relative
from runner.decisions.criteria import judge
from runner.metrics.series import MetricSet
from runner.decisions.outputs import context
from runner.spec import interpolate
from runner.spec.criteria_models import NextRule, WhenFailed


@dataclass(frozen=True)
class Decision:
    rule: int | str | None  # index in next:, "retry" (the same spec again), None = the chain ends
    spec: str | None  # absolute path of the next spec
    inputs: dict[str, str]
    reason: str


def _matches(rule: NextRule, verdict: str, metrics: MetricSet, failed: set[str]) -> tuple[bool, str]:
    when = rule.when
    if isinstance(when, str):
        ok = when == "always" or when == verdict
        return ok, f"when: {when} ({'matches' if ok else 'does not match'} verdict {verdict})"
    if isinstance(when, WhenFailed):
        hit = sorted(failed & set(when.failed))
        if verdict != "failure" or not failed:
            return False, f"when: failed: [{', '.join(when.failed)}] (verdict {verdict})"
        how = "/".join(sorted(failed, key=lambda n: (n.startswith("exit_code"), n)))  # the kind first
        return bool(hit), f"when: failed: [{', '.join(when.failed)}] ({'matches' if hit else 'does not match'} failure {how})"
    j = judge(when, metrics)
    return j.passed is True, "when: " + "; ".join(line.strip() for line in j.lines())


def decide(rules: list[NextRule], verdict: str, metrics: MetricSet, outputs: dict[str, Any], inputs: dict[str, Any],
           run: dict[str, Any], spec_folder: Path, fired: dict[int, int], failed: set[str] | None = None) -> Decision:
    """The first matching rule that has iterations left; ``fired`` counts earlier firings per rule index;
    ``failed``: the names of the phase's recorded failure kind (``lifecycle.failure_names``)."""
    notes = []
    for i, rule in enumerate(rules):
        ok, why = _matches(rule, verdict, metrics, failed or set())
        if not ok:
            notes.append(f"rule {i + 1}: {why}")
            continue
        limit = rule.max_iterations or 1
        if fired.get(i, 0) >= limit:
            notes.append(f"rule {i + 1}: matches but already fired {fired.get(i, 0)} time(s) (max_iterations {limit})")
            continue
        ctx = {**context(outputs), "inputs": inputs, "run": run}
        ctx["phase"] = {**ctx["phase"], "name": outputs.get("name", "")}
        with_inputs = {k: interpolate.substitute(v, ctx) if isinstance(v, str) else interpolate.as_text(v)
                       for k, v in rule.with_.items()}
        target = str(spec_relative(spec_folder, rule.apply))
        return Decision(i, target, with_inputs, f"rule {i + 1} fired ({why}): apply {rule.apply}")
    return Decision(None, None, {}, "no next rule matched; the chain ends" + (" (" + "; ".join(notes) + ")" if notes else ""))
