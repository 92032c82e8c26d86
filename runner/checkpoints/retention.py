"""Pure: which vaulted checkpoints to keep.

Rules, in order of strength:
1. a checkpoint that is, or has ever been, among the best K is never pruned;
2. the newest ``latest`` checkpoints are kept; so is every checkpoint whose step is a multiple of ``every``;
3. everything else may be pruned (moved to the trash, deleted when the phase ends).
Unscored checkpoints (metric not logged yet, or NaN) are never best and never pruned while
they might still be scored: they are kept until the phase ends.
An incomplete checkpoint (its rule does not say complete yet: checkpoints.layouts) takes no part at
all: never best, not one of the newest N, and never the reason a complete one is pruned — the
decision is the one taken without it.  It is not in the vault, so it is not pruned either.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    step: int
    score: float | None  # None: not scored (yet)
    ever_best: bool = False
    complete: bool = True  # False: recorded incomplete (not vaulted): ignored by every rule


@dataclass(frozen=True)
class Policy:
    best: int = 1
    latest: int = 0
    every: int | None = None
    mode: str = "min"


def best_k(cands: list[Candidate], policy: Policy) -> list[int]:
    """Steps of the best K scored checkpoints; ties go to the earlier step (it was best first)."""
    scored = [(c.score, c.step) for c in cands if c.complete and c.score is not None and math.isfinite(c.score)]
    sign = 1.0 if policy.mode == "min" else -1.0
    ranked = sorted(scored, key=lambda sc: (sign * sc[0], sc[1]))
    return [step for _, step in ranked[: policy.best]]


def decide(cands: list[Candidate], policy: Policy, final: bool = False) -> tuple[set[int], set[int], set[int]]:
    """(best steps now, steps to keep, steps to prune).  ``final``: the phase has ended, so
    unscored checkpoints are no longer protected for later scoring."""
    cands = [c for c in cands if c.complete]
    best = set(best_k(cands, policy))
    keep = set(best) | {c.step for c in cands if c.ever_best}
    steps = sorted(c.step for c in cands)
    if policy.latest:
        keep |= set(steps[-policy.latest :])
    if policy.every:
        keep |= {s for s in steps if s % policy.every == 0}
    if not final:
        keep |= {c.step for c in cands if c.score is None or not math.isfinite(c.score)}
    prune = set(steps) - keep
    return best, keep, prune
