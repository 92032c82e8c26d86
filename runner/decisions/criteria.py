"""Pure decisions: success criteria (judged on a phase's metrics, with the evidence of checkpoint validation) and the
verdict on an ended phase (its exit, the guard that tripped, its planned end, its criteria)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.lifecycle import GUARD_FAILURE, FailureKind
from runner.metrics.series import MetricSet, Series
from runner.spec.criteria_models import Criterion, Group
from runner.spec.windows import parse_window
from runner.decisions.guards import Trip, _fmt_step, _margin_text
from runner.decisions.smoothing import metrics_origin, num as _num, reduce, window_points


# ---------------------------------------------------------------------------- success criteria


@dataclass
class Judgement:
    """One criterion (or group) with its measured value and whether it passed (None = no data).  A
    *skipped* one (a reference nothing handed over) counts neither way in its group."""

    text: str
    value: float | None
    passed: bool | None
    children: list[Judgement] = field(default_factory=list)
    skipped: bool = False

    def lines(self, indent: int = 0) -> list[str]:
        mark = "–" if self.skipped else {True: "✓", False: "✗", None: "?"}[self.passed]
        out = [f"{'  ' * indent}{mark} {self.text}"]
        for c in self.children:
            out += c.lines(indent + 1)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "value": self.value, "passed": self.passed, "skipped": self.skipped,
                "children": [c.as_dict() for c in self.children]}


@dataclass(frozen=True)
class Evidence:
    """What the judge knows beyond the metric series: for each metric produced by validating checkpoints,
    the step of the phase's last checkpoint.  A validation older than it never decides (the phase went on
    after it), and every validation value says which checkpoint it came from."""

    validated_until: dict[str, int] = field(default_factory=dict)


def describe(c: Criterion) -> str:
    w = parse_window(c.window)
    where = "whole phase" if w.kind == "all" else (f"last {w.n:,} steps" if w.kind == "last" else f"from {w.n:,} steps after the start")
    if c.below is not None:
        cmp = f"< {_num(c.below)}"
    elif c.above is not None:
        cmp = f"> {_num(c.above)}"
    elif c.not_worse_than is not None:
        m = c.margin
        slack = f"{m['relative'] * 100:g}%" if "relative" in m else _num(m.get("absolute", 0.0))
        ref = "the value handed over" if c.not_worse_than == "" else _num(c.not_worse_than)
        cmp = f"no worse than {ref} (+ {slack})" if c.mode == "min" else f"no worse than {ref} (- {slack})"
    else:
        p = c.progress
        assert p is not None  # the model's validator requires one of below, above, progress and not_worse_than
        base = "its start" if p.from_ in ("start", "") else _num(p.from_)
        cmp = f"≥ {_margin_text(p.at_least)} of the way from {base} to {_num(p.to)}"
    return f"{c.reduce}({c.metric}, {where}) {cmp}"


def start_window(c: Criterion) -> int:
    """Steps from the phase's start averaged for a 'start' baseline."""
    if c.progress is not None and c.progress.start_window:
        return int(c.progress.start_window["steps"])
    w = parse_window(c.window)
    return w.n if w.kind == "last" else 1000


def _source(c: Criterion, steps: np.ndarray, values: np.ndarray, evidence: Evidence | None) -> str:
    """Which checkpoint a validation metric's measured value came from ('' for training metrics)."""
    if evidence is None or c.metric not in evidence.validated_until or not len(steps):
        return ""
    finite = np.isfinite(values)
    if c.reduce in ("min", "max") and finite.any():
        pick = np.where(finite, values, np.inf if c.reduce == "min" else -np.inf)
        i = int(np.argmin(pick) if c.reduce == "min" else np.argmax(pick))
        return f" (validation of the checkpoint at step {int(steps[i]):,})"
    if c.reduce == "last":
        return f" (validation of the checkpoint at step {int(steps[-1]):,})"
    return f" (validations of checkpoints at steps {int(steps[0]):,}–{int(steps[-1]):,})"


def judge_criterion(c: Criterion, metrics: MetricSet, origin: int | None = None,
                    evidence: Evidence | None = None) -> Judgement:
    series = metrics.series.get(c.metric)
    text = describe(c)
    if c.not_worse_than == "":
        return Judgement(f"{text}: not judged — nothing was handed over to compare with (a phase applied by hand: "
                         "give the value with --input)", None, None, skipped=True)
    if series is None or not len(series):
        return Judgement(text + ": no data", None, None)
    if evidence is not None and c.metric in evidence.validated_until:
        newest, last_ckpt = int(series.steps[-1]), evidence.validated_until[c.metric]
        if newest < last_ckpt:
            # The phase went on after the newest validation: deciding on it would judge a model it no longer is.
            return Judgement(f"{text}: not judged — the newest {c.metric} is the validation of the checkpoint at step "
                             f"{newest:,}, older than the phase's last checkpoint (step {last_ckpt:,}); stale evidence "
                             "never decides", None, None)
    origin = metrics_origin(metrics) if origin is None else origin
    steps, values = window_points(series, parse_window(c.window), origin)
    value = reduce(steps, values, c.reduce, c.ema_alpha)
    src = _source(c, steps, values, evidence)
    if value is None or not math.isfinite(value):
        return Judgement(f"{text}: measured {value}{src}", value, None if value is None else False)
    if c.below is not None:
        passed = value < float(c.below)
        return Judgement(f"{text}: measured {value:.4g}{src}", value, passed)
    if c.above is not None:
        passed = value > float(c.above)
        return Judgement(f"{text}: measured {value:.4g}{src}", value, passed)
    if c.not_worse_than is not None:
        ref, m = float(c.not_worse_than), c.margin
        allowed = abs(ref) * m["relative"] if "relative" in m else float(m.get("absolute", 0.0))
        sign = 1.0 if c.mode == "min" else -1.0
        worse = sign * (value - ref)
        passed = worse <= allowed
        how = (f"{abs(worse) / abs(ref) * 100:.1f}% {'worse' if worse > 0 else 'better'} than" if ref else
               ("worse than" if worse > 0 else "no worse than"))
        return Judgement(f"{text}: measured {value:.4g}{src}, {how} the reference {ref:.4g}", value, passed)
    return _judge_progress(c, series, origin, value, text)


def _judge_progress(c: Criterion, series: Series, origin: int | None, value: float, text: str) -> Judgement:
    """``progress``: how much of the way from its start (or the value handed over) to the target the measured
    ``value`` has come."""
    p = c.progress
    assert p is not None  # the model's validator requires one of below, above, progress and not_worse_than
    if p.from_ in ("start", ""):
        n = start_window(c)
        first = series.steps[0] if origin is None else origin
        head = series.values[(series.steps <= first + n)]
        head = head[np.isfinite(head)]
        if not head.size:
            return Judgement(f"{text}: no finite value in the first {n:,} steps", None, False)
        start = float(np.mean(head))
        start_text = f"mean of the first {n:,} steps {start:.4g}" + (" (no start value handed over)" if p.from_ == "" else "")
    else:
        start = float(p.from_)
        start_text = f"{start:.4g} (the value it started from)"
    target = float(p.to)
    sign = 1.0 if p.mode == "min" else -1.0
    need = p.at_least.get("relative", p.at_least.get("absolute"))
    if need is None:  # at_least in sigma: the model accepts it, a rate has no noise to scale (the TypeError `>=` raised)
        raise TypeError(f"progress at_least {p.at_least}: a fraction of the way ('50%') or a number, not sigma")
    if sign * (start - target) <= 0:  # started at or past the target: it must still be there
        passed = sign * (value - target) <= 0
        return Judgement(f"{text}: started at {start_text}, already at or past the target {target:.4g}; measured "
                         f"{value:.4g}, {'still' if passed else 'no longer'} at or past it", 1.0 if passed else 0.0, passed)
    rate = (start - value) / (start - target)
    passed = rate >= need
    return Judgement(f"{text}: measured {value:.4g} from {start_text}, {rate * 100:.0f}% of the way (need {need * 100:.0f}%)",
                     rate, passed)


def judge(node: Criterion | Group, metrics: MetricSet, evidence: Evidence | None = None) -> Judgement:
    if isinstance(node, Criterion):
        return judge_criterion(node, metrics, evidence=evidence)
    items = node.all if node.all is not None else node.any
    assert items is not None  # a Group's validator requires exactly one of all: and any:
    children = [judge(i, metrics, evidence) for i in items]
    results = [c.passed for c in children if not c.skipped]
    if node.all is not None:
        passed = False if False in results else (None if None in results else True)
        text = "all of"
    else:
        passed = True if True in results else (None if None in results else False)
        text = "any of"
    return Judgement(text, None, passed, children)


@dataclass
class Verdict:
    verdict: str  # success | failure | inconclusive
    reasons: list[str]
    judgement: Judgement | None = None
    failure_kind: FailureKind | None = None  # decided here, with the verdict (None unless failure)
    failure_detail: str = ""  # a finer name `retry.on` may match (lost, interrupted, stopped)

    def explanation(self) -> str:
        lines = list(self.reasons)
        if self.judgement is not None:
            lines += self.judgement.lines()
        return "\n".join(lines)


def _short_of(metrics: MetricSet, end: int) -> bool:
    """Whether the last logged step is more than one logging interval short of ``end`` (a trainer
    logging every 20 steps may end at 356,000 with its last log at 355,980)."""
    last = metrics.latest_step()
    if last is None:
        return True
    series = max((s for s in metrics.series.values() if len(s)), key=lambda s: int(s.steps[-1]))
    interval = int(series.steps[-1] - series.steps[-2]) if len(series) > 1 else 0
    return last + interval < end


def verdict(exit_ok: bool, exit_reason: str, trip: Trip | None, success: Group | None, metrics: MetricSet,
            cancelled: bool = False, met_early: bool = False, end_reached: int | None = None,
            planned_end: int | None = None, exit_kind: FailureKind = FailureKind.CRASHED,
            exit_detail: str = "", evidence: Evidence | None = None) -> Verdict:
    """The phase's verdict with the reasons a person can check.

    Reaching the planned end (``end_reached``) is the normal end of a phase: the success criteria
    judge it whatever the exit code of a container runner stopped there.  A container that exits 0
    more than one logging interval short of a planned end (stop_at, or metrics.total_steps) has not
    done its work: failure.

    A failure carries its kind, decided here from what ended the phase: a guard's trip is the guard's
    kind; a container that failed on its own is ``exit_kind`` (the engine tells a crash from an OOM, a
    kill from outside, a lost engine); criteria not met is ``criteria``."""
    judgement = judge(success, metrics, evidence) if success is not None else None
    if cancelled:
        return Verdict("failure", ["cancelled on request"], judgement, FailureKind.CANCELLED)
    if trip is not None:
        return Verdict("failure", [f"guard tripped ({trip.guard}): {trip.reason}"], judgement,
                       GUARD_FAILURE.get(trip.kind, FailureKind.DIVERGED))
    if end_reached is not None:
        head = f"reached its planned end at step {end_reached:,}" + (f" (planned: {planned_end:,})" if planned_end else "")
    elif met_early:
        head = "criteria met, run stopped early"
    elif not exit_ok:
        return Verdict("failure", [f"container failed: {exit_reason}"], judgement, exit_kind, exit_detail)
    elif planned_end is not None and _short_of(metrics, planned_end):
        last = metrics.latest_step()
        return Verdict("failure", [f"container {exit_reason} at step {_fmt_step(last)}, short of its planned end at step "
                                   f"{planned_end:,}: stopped from outside runner (`docker stop`, a host shutdown), or "
                                   "the trainer's own end is set earlier than the spec's stop_at / total_steps"],
                       judgement, FailureKind.ENDED_EARLY, "stopped")
    else:
        head = f"container {exit_reason}"
    if judgement is None:
        plain = exit_reason if end_reached is None and not met_early else head
        return Verdict("success", [plain, "no success criteria: judged by how it ended"], None)
    if judgement.passed is True:
        return Verdict("success", [head + "; success criteria passed"], judgement)
    if judgement.passed is False:
        return Verdict("failure", [head + "; success criteria not met"], judgement, FailureKind.CRITERIA)
    return Verdict("inconclusive", [head + "; some criteria had no data"], judgement)
