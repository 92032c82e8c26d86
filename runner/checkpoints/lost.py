"""Pure: was the phase's best checkpoint lost?  The part of the verdict that a missed checkpoint decides.

A checkpoint is *missed* when it was seen in the trainer's folder and gone before it was complete and vaulted
(the trainer's rotation, a save cut short).  Missing one is always loud (a ``checkpoint.missed`` event); it
changes the verdict when the missed checkpoint *would have been the best*: its value of the keep metric at its
own step — known when it was saved (the trainer logs its eval before it saves), or a validation's value of
that step — beats every checkpoint the vault holds (kept, best, or pruned after it was scored).  A tie does
not count (an equally good checkpoint is kept).  A missed checkpoint without a value at its step (a keep metric
that only validation produces: a checkpoint never vaulted is never validated) cannot be judged: it is named,
and does not change the verdict.

The spec chooses the effect (``checkpoints.on_missed_best``): ``warn`` (default) keeps a success a success but
marks it *degraded*; ``fail`` makes the phase fail.  Nothing here reads a store or a file: the engine passes
the phase's checkpoint rows (``Store.checkpoints``) and the values it scored for the missed ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

VAULTED = ("kept", "best", "trash", "pruned")  # states of a checkpoint that was complete and vaulted (and scored)
EFFECTS = ("warn", "fail")


@dataclass(frozen=True)
class Missed:
    """A missed checkpoint and its value of the keep metric at its step (None: no value to judge it by)."""

    name: str
    step: int
    value: float | None


@dataclass(frozen=True)
class MissedBest:
    """What the missed checkpoints of a phase mean for its verdict.

    ``lost``: the missed checkpoints better than every vaulted one, best first (empty: the best was not lost);
    ``best_kept``: the best vaulted checkpoint, or None when none was scored; ``effect``: what the spec asks when
    ``lost`` is not empty (``warn``: success stays success, degraded; ``fail``: the phase fails)."""

    metric: str
    mode: str
    effect: str
    lost: tuple[Missed, ...]
    best_kept: Missed | None
    missed: tuple[Missed, ...]
    incomplete: tuple[Missed, ...] = field(default=())

    @property
    def best_lost(self) -> bool:
        """Whether the checkpoint that would have been the phase's best was missed."""
        return bool(self.lost)

    @property
    def fails(self) -> bool:
        """The phase fails because of it (``on_missed_best: fail`` and the best was lost)."""
        return self.best_lost and self.effect == "fail"

    @property
    def degrades(self) -> bool:
        """A success is marked degraded because of it (``on_missed_best: warn`` and the best was lost)."""
        return self.best_lost and self.effect == "warn"

    def summary(self) -> str:
        """One line for a status column or a notification; '' when the best was not lost."""
        if not self.lost:
            return ""
        top = self.lost[0]
        return f"best checkpoint lost: {top.name} ({self.metric} {top.value:.5g}) was missed"

    def lines(self) -> list[str]:
        """Lines for the verdict's explanation."""
        out = []
        kept = "none" if self.best_kept is None or self.best_kept.value is None else \
            f"{self.best_kept.name} ({self.metric} {self.best_kept.value:.5g})"
        if self.lost:
            top = self.lost[0]
            effect = ("checkpoints.on_missed_best: fail — the phase fails" if self.effect == "fail" else
                      "checkpoints.on_missed_best: warn — the verdict is degraded")
            out.append(f"✗ the best checkpoint was lost: {top.name} (step {top.step:,}, {self.metric} {top.value:.5g}) "
                       f"would have been the best but was deleted before it was complete and vaulted; best kept: {kept} "
                       f"({effect})")
            if len(self.lost) > 1:
                out.append("✗ also better than every kept checkpoint and missed: "
                           + ", ".join(f"{m.name} ({self.metric} {m.value:.5g})" for m in self.lost[1:6])
                           + (", ..." if len(self.lost) > 6 else ""))
        unjudged = [m for m in self.missed if m.value is None]
        if unjudged:
            out.append(f"note: {len(unjudged)} missed checkpoint(s) had no {self.metric} at their step, so whether one "
                       "was the best cannot be told: " + ", ".join(m.name for m in unjudged[:6])
                       + (", ..." if len(unjudged) > 6 else ""))
        if self.missed:
            out.append(f"note: {len(self.missed)} checkpoint(s) missed in all (deleted before they were complete and "
                       "vaulted): " + ", ".join(m.name for m in self.missed[:6]) + (", ..." if len(self.missed) > 6 else ""))
        if self.incomplete:
            out.append(f"note: {len(self.incomplete)} checkpoint(s) still incomplete when the phase ended (never vaulted, "
                       "never handed over): " + ", ".join(m.name for m in self.incomplete[:6])
                       + (", ..." if len(self.incomplete) > 6 else ""))
        return out

    def as_dict(self) -> dict[str, Any]:
        """For the phase's outputs (``lost_best``) and ``status -o json``."""
        def one(m: Missed | None) -> dict[str, Any] | None:
            return None if m is None else {"name": m.name, "step": m.step, "value": m.value}

        return {"best_lost": self.best_lost, "effect": self.effect, "metric": self.metric, "mode": self.mode,
                "lost": [one(m) for m in self.lost], "best_kept": one(self.best_kept),
                "missed": [m.name for m in self.missed], "incomplete": [m.name for m in self.incomplete],
                "summary": self.summary()}


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def judge_missed(rows: Sequence[Mapping[str, Any]], metric: str | None, mode: str = "min", effect: str = "warn",
                 values: Mapping[str, float | None] | None = None) -> MissedBest | None:
    """Decide from a phase's checkpoint rows (dicts with name, step, state, score) whether the best was lost.

    ``values``: name → the keep metric at a missed checkpoint's step (its row's ``score`` otherwise).  None when
    no checkpoint was missed and none is still incomplete, or without a keep metric (nothing says which is best:
    the missed ones are still reported by their events)."""
    if effect not in EFFECTS:
        raise ValueError(f"on_missed_best must be one of {', '.join(EFFECTS)}, not {effect!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be min or max, not {mode!r}")
    values = values or {}
    missed = tuple(Missed(r["name"], int(r["step"]), _finite(values.get(r["name"], r.get("score"))))
                   for r in sorted(rows, key=lambda r: r["step"]) if r["state"] == "missed")
    incomplete = tuple(Missed(r["name"], int(r["step"]), None)
                       for r in sorted(rows, key=lambda r: r["step"]) if r["state"] == "incomplete")
    if metric is None or not (missed or incomplete):
        return None
    sign = 1.0 if mode == "min" else -1.0
    # (signed value, step, checkpoint): lower is better in both modes; ties go to the earlier step
    vaulted = [(sign * v, int(r["step"]), Missed(r["name"], int(r["step"]), v)) for r in rows
               if r["state"] in VAULTED and (v := _finite(r.get("score"))) is not None]
    best = min(vaulted, key=lambda t: (t[0], t[1])) if vaulted else None
    scored = [(sign * m.value, m.step, m) for m in missed if m.value is not None]
    lost = tuple(m for key, _step, m in sorted(scored, key=lambda t: (t[0], t[1])) if best is None or key < best[0])
    return MissedBest(metric, mode, effect, lost, best[2] if best else None, missed, incomplete)
