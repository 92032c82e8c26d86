"""Spec models for what a phase decides: guards, expectations, the planned end, success criteria, next rules and
retries."""
from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from runner.lifecycle import ACCIDENTS, FAILURE_DETAILS, FailureKind
from runner.spec.models_base import Model
from runner.spec.types import Duration, Margin, Number, StepCount, StepWindow, Template


class Divergence(Model):
    """The metric's *smoothed* level rising away from its best level, sustained.

    With `for` in steps (the default smoothing, or ``smoothing: N steps``) the level is robust to
    spikes: the mean of the points of the last window (half of `for` by default), leaving out those
    more than 5 robust standard deviations from the window's median (a 5x spike that lasts hundreds
    of steps is left out whole; a real rise moves the median with it).  Its noise is measured on
    the run: the interquartile range of each point's distance from the median of the window before
    it, over the last 1,000 points (a spike cannot inflate it), over sqrt(points averaged).  The
    best is the lowest mean over 8 windows (plus half its own sigma: not a lucky dip), or over one
    window plus 3 sigma where lower (a fast fall).  Sustained: beyond the limit for the persistence
    (half of `for` by default, never shorter than the window: two disjoint windows cover the rise),
    a run that goes on while the level stays beyond 3/4 of the margin.  In a phase of known length
    (``stop_at``) the window and the persistence are each capped at 1/5 of it (never below 10
    logging intervals).

    With `for` in evals or a duration, or a ``smoothing`` weight per point, the series is despiked
    (running median of 3 points), then smoothed by a debiased exponential moving average as
    TensorBoard's smoothing slider does; the best is the best of the smoothed series.

    The margin is the larger of ``above_best_by`` and ``min_margin``; a margin in ``sigma`` adapts
    to the run's own noise."""

    above_best_by: Union[Margin, None] = Field(
        None,
        description="How far the level may rise above its best: '5%' (of the best), an absolute number, or 'N sigma' (N "
        "standard deviations of the level's noise, measured on the run itself). Default: '4 sigma' with `for` in steps "
        "(the spike-free window mean), '6 sigma' for the EMA (`for` in evals or a duration, or a smoothing weight).")
    min_margin: Margin = Field(
        "1%", validate_default=True, description="Floor for a sigma margin, so a nearly noiseless series (validation loss) does not trip on a wobble.")
    for_: StepWindow = Field(
        alias="for",
        description="How long it must last: 'N steps' (the phase's steps: the spike-free mean of the last N/2 steps stays "
        "above the limit for N/2 steps, so the rise is seen over the last N steps; each half at least 10 logging intervals, "
        "and at most 1/5 of a phase of known length), '3 evals' (points) or a duration. Detection delay of `for: 2000 "
        "steps` after an abrupt +20% rise (8% noise, median of 5 runs, benchmarks/guards.py): logged every 10 steps ~1,150 "
        "steps, every 100 ~1,500, in a long run and in a 5,000-step phase alike (half of 2,000 is already 1/5 of 5,000; "
        "a longer `for` is capped there, e.g. 10000 steps to 1,000 + 1,000).")
    smoothing: Union[Annotated[float, Field(ge=0, lt=1)], StepCount, None] = Field(
        None,
        description="'N steps': the level is the spike-free mean of the last N steps (independent of how often the trainer "
        "logs; `for` is then the persistence as given); or a weight per point as TensorBoard's slider (0.6, 0.99): a debiased "
        "EMA of the despiked points. Default: half of `for` when it is in steps (at least 10 logging intervals), else 0.6 per point.")

class Missing(Model):
    within: StepWindow = Field(description="The metric must appear within this many steps ('2000 steps') or this time ('30m').")


GUARD_KINDS = ("non_finite", "diverges", "stall", "missing", "timeout")


class Guard(Model):
    """Stops the run early: a tripped guard makes the phase fail.  Exactly one check per guard."""

    metric: str | None = Field(None, description="The metric it watches (not needed for timeout and stall).")
    mode: Literal["min", "max"] = Field("min", description="For diverges: whether lower (min) or higher (max) is better.")
    non_finite: bool | None = Field(None, description="Trip on NaN or ±inf, at once.")
    diverges: Divergence | None = Field(None, description="Trip when the smoothed metric rises away from its smoothed best by a margin, sustained.")
    stall: Duration | None = Field(None, gt=0, description="Trip when no new step is logged for this long.")
    missing: Missing | None = Field(None, description="Trip when the metric has not appeared within N steps of the phase's first step, or within a duration.")
    timeout: Duration | None = Field(None, gt=0, description="Trip after this much wall time.")
    max_steps: int | None = Field(None, description="Removed: use the phase's stop_at (a planned end is judged, not a failure).",
                                  json_schema_extra={"deprecated": True})

    @model_validator(mode="after")
    def _one_check(self):
        if self.max_steps is not None:
            raise ValueError(
                "the max_steps guard was removed: a guard that trips is a failure, and reaching the planned end is not. "
                f"Use the phase's `stop_at: {{steps: N}}` (N steps from the phase's first step) or `stop_at: {{step: {self.max_steps}}}`")
        checks = [k for k in GUARD_KINDS if getattr(self, k) is not None]
        if len(checks) != 1:
            raise ValueError(f"a guard sets exactly one of {', '.join(GUARD_KINDS)}; got {checks or 'none'}")
        if checks[0] in ("non_finite", "diverges", "missing") and not self.metric:
            raise ValueError(f"a {checks[0]} guard needs metric:")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in GUARD_KINDS if getattr(self, k) is not None)


class ExpectLr(Model):
    """The learning rate the trainer must really run at, read from its logged LR metric."""

    value: Number = Field(description="The peak LR the spec asks for, e.g. \"${{ inputs.learning_rate }}\".")
    metric: str = Field(default="lr", description="The metric that carries the trainer's LR in effect (e.g. lr: train/lr in metrics).")
    within: Margin = Field(default={"relative": 0.1}, description="Allowed difference, e.g. '10%' or an absolute 1e-7 (a warmup below it and a decay after it are fine: "
                           "the LR may never exceed the value by more, and its peak must reach it after `after`).")
    after: Union[StepCount, Annotated[int, Field(ge=0)], Template] = Field(
        default=0, description="Steps from the phase's first step by which the peak must have been reached (the warmup), e.g. '1000 steps' "
                       "or \"${{ inputs.warmup_steps }}\".")


class Expect(Model):
    """What the trainer must really be doing, checked against what it logs; a mismatch stops the phase
    (a trainer that silently ignores a flag — a resume that restores the old LR schedule — never runs on)."""

    lr: Union[ExpectLr, Number, None] = Field(None, description="The LR in effect: a value, or {value, metric, within, after}.")
    start_step: Union[Annotated[int, Field(ge=0)], Template, None] = Field(
        None, description="The step the trainer's count must start from (0 for a run from --base-checkpoint weights).")
    start_within: Union[StepCount, Annotated[int, Field(ge=0)]] = Field(
        1000, description="How far past start_step its first logged step may be (a log interval, a first save).")
    unless_input: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The name of an input that turns these checks off when it is set (not empty), e.g. resume_from: a retry "
        "that resumes a crashed run on purpose restores the step count and the LR schedule of its checkpoint.")

    @property
    def lr_spec(self) -> ExpectLr | None:
        if self.lr is None or isinstance(self.lr, ExpectLr):
            return self.lr
        return ExpectLr(value=self.lr)


class StopAt(Model):
    """The phase's planned end: reaching it ends the phase normally (the container is asked to stop
    if it is still running) and the success criteria judge it."""

    steps: Union[Annotated[int, Field(ge=1)], Template, None] = Field(
        None, description="Train this many steps from the phase's first observed step (a resumed run starting at 351,000 with steps: 5000 ends at 356,000).")
    step: Union[Annotated[int, Field(ge=1)], Template, None] = Field(None, description="Or: an absolute step.")

    @model_validator(mode="after")
    def _one(self):
        if (self.steps is None) == (self.step is None):
            raise ValueError("set exactly one of steps: (counted from the phase's first step) or step: (absolute)")
        return self


class Progress(Model):
    """The recovery plan's "success rate": how much of the way from a baseline to a target was covered.

    rate = (baseline - measured) / (baseline - target) for mode min (lower is better), mirrored for max.
    A phase that starts at or past the target passes when the measured value is still at or past it."""

    from_: Union[Literal["start", ""], Number] = Field(
        "start", alias="from",
        description="Baseline: 'start' (the mean over the phase's first steps, see start_window), or a number — e.g. the value "
        "the previous phase handed over, \"${{ inputs.start_text_loss }}\" (where its checkpoint was, not a transient after "
        "the resume); an empty value (nothing handed over) falls back to 'start'.")
    start_window: StepCount | None = Field(
        None, description="Steps from the phase's first step averaged for the 'start' baseline. Default: the criterion's window length, else 1000 steps.")
    to: Number = Field(description="The target value.")
    at_least: Margin = Field(description="Fraction of the way from baseline to target that must be covered, e.g. '50%'.")
    mode: Literal["min", "max"] = Field("min", description="Whether lower (min, a loss) or higher (max, an accuracy) is better.")


class Criterion(Model):
    """A measurable statement about one metric, e.g. mean text_loss over the last 500 steps below 1.8."""

    metric: str = Field(description="Metric name.")
    window: str | int = Field("all", description="'all' (whole phase), 'last 500 steps' (or '500 steps', or 500), or 'since 1000' (from 1,000 steps after the phase's first step).")
    reduce: Literal["last", "mean", "median", "min", "max", "ema", "slope"] = Field("last", description="How the window is reduced to one number (slope is per 1,000 steps; ema is the debiased EMA's last value).")
    ema_alpha: float = Field(0.1, gt=0, le=1, description="Smoothing factor for reduce: ema.")
    below: Number | None = Field(None, description="Passes if the reduced value is below this.")
    above: Number | None = Field(None, description="Passes if the reduced value is above this.")
    progress: Progress | None = Field(None, description="Passes if the reduced value covered at least this fraction of the way from baseline to target (the recovery plan's 'success rate').")
    not_worse_than: Union[Number, Literal[""], None] = Field(
        None, description="Passes if the reduced value is no worse than this reference by more than `margin`: a value the previous "
        "phase handed over, e.g. \"${{ inputs.start_val_text_loss }}\" (the validation loss of the checkpoint this phase "
        "started from). Empty (nothing handed over: a phase applied by hand) = not judged, and the explanation says so.")
    margin: Margin = Field({"absolute": 0.0}, description="How much worse than not_worse_than is still a pass: '5%' of the "
                           "reference or an absolute number.")
    mode: Literal["min", "max"] = Field("min", description="For not_worse_than: lower is better (min, a loss) or higher (max).")

    @field_validator("window")
    @classmethod
    def _window(cls, v):
        from runner.spec.windows import parse_window

        parse_window(v)
        return v

    @model_validator(mode="after")
    def _one_comparison(self):
        n = sum(x is not None for x in (self.below, self.above, self.progress, self.not_worse_than))
        if n == 0:
            raise ValueError("a criterion needs below:, above:, progress: or not_worse_than:")
        if "sigma" in self.margin:
            raise ValueError("margin: a percentage of the reference ('5%') or an absolute number")
        return self


class Group(Model):
    """Criteria combined: all must pass, or any."""

    all: list[Union[Criterion, "Group"]] | None = Field(None, description="Every item must pass.")
    any: list[Union[Criterion, "Group"]] | None = Field(None, description="At least one item must pass.")

    @model_validator(mode="after")
    def _one(self):
        if (self.all is None) == (self.any is None):
            raise ValueError("set exactly one of all: or any:")
        return self


class Success(Group):
    """How the phase is judged: success, failure or inconclusive, with an explanation."""

    stop_when_met: bool = Field(False, description="End the run (stop the container gracefully) as soon as the criteria pass.")


FAILURE_KINDS = tuple(str(k) for k in FailureKind)


def _check_kinds(v: list[str], allowed: tuple[str, ...], example: str) -> list[str]:
    for item in v:
        if item not in allowed and not re.fullmatch(r"exit_code \d+", item):
            raise ValueError(f"{item!r}: one of {', '.join(allowed)} or 'exit_code N'")
    if not v:
        raise ValueError(f"say which failures, e.g. [{example}]")
    return v


class WhenFailed(Model):
    """A `next:` rule that fires only for some kinds of failure (the kind recorded when the phase ended)."""

    failed: list[str] = Field(
        description="Failure kinds: diverged, non_finite, missing, misconfigured, stall, timeout, criteria (ended, judged "
        "short of its criteria), ended_early, crashed, oom, killed, stopped, infrastructure (lost, interrupted), "
        "cancelled, precondition, refused, or 'exit_code N'.  E.g. [diverged, non_finite, criteria].")

    @field_validator("failed")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        return _check_kinds(v, FAILURE_KINDS + FAILURE_DETAILS, "diverged, non_finite, criteria")


class NextRule(Model):
    """What to run after this phase."""

    when: Union[Literal["success", "failure", "inconclusive", "always"], WhenFailed, Criterion, Group] = Field(
        description="success | failure | inconclusive | always; {failed: [kinds]} (a failure of one of these kinds, "
        "e.g. [diverged, non_finite, criteria]); or criteria over this phase's metrics.")
    apply: str = Field(description="The next spec file. Relative = relative to this spec file.")
    with_: dict[str, Union[str, int, float, bool]] = Field(default_factory=dict, alias="with", description="Inputs of the next spec; may use ${{ phase.best_checkpoint }}, ${{ phase.last_checkpoint }}, ${{ phase.verdict }}, ${{ phase.dir }}, ${{ metrics.NAME.last|min|max|mean|smoothed }} (smoothed: the last value of the smoothed series).")
    max_iterations: int | None = Field(None, ge=1, description="How often this rule may fire in one run; required when the chain loops back.")


# What a retry may answer: accidents of the machine, never evidence about the training (a guard, the criteria).
RETRY_ON = tuple(str(k) for k in sorted(ACCIDENTS, key=lambda k: k.value)) + FAILURE_DETAILS


class Retry(Model):
    """Relaunch a phase after an accident of the machine (never after a guard trip or a failed verdict)."""

    on: list[str] = Field(
        description="Which failures: crashed (the trainer exited non-zero on its own), oom (out of memory), killed "
        "(exit 137 from outside, not the container's OOM), stopped (SIGTERM from outside), ended_early (exit 0 short of "
        "the planned end; also matched by stopped), infrastructure (the engine, node or job went away: lost — the "
        "container disappeared — or interrupted — the engine restarted without live-restore), stall (no new step for "
        "the stall guard's time: a hung data loader or collective), 'exit_code N'.")
    max: int = Field(1, ge=1, le=20, description="At most this many retries (attempts after the first).")
    with_: dict[str, Union[str, int, float, bool]] = Field(
        default_factory=dict, alias="with",
        description="Inputs of the new attempt, e.g. resume_from: ${{ phase.last_checkpoint }} (the failed attempt's newest "
        "vaulted checkpoint); the other inputs stay as they were.")

    @field_validator("on")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        return _check_kinds(v, RETRY_ON, "crashed, oom, infrastructure")
