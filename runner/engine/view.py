"""The live view of a phase nobody in this process supervises, rebuilt from the store."""
from __future__ import annotations

from typing import Any

import time

from runner.engine.ports import Core
from runner.engine.records import stored_plan
from runner.engine.session import PhaseSession
from runner.metrics.series import MetricSet


def view(core: Core, phase_id: int) -> dict[str, Any]:
    row = core.store.phase(phase_id)
    sup = PhaseSession.restored(core, phase_id, row)
    sup.set_started(row["started_at"] or time.time())
    out = sup.view()
    if out["rate"] is None:  # nobody here watched it run: the step rate from the points' wall times
        out["rate"] = step_rate(sup.metrics)
        step, total, rate = out["step"], out["total"], out["rate"]
        if rate and total and step is not None and total > step:
            out["eta"] = (total - step) / rate
    plan = stored_plan(row)
    out["gpus"] = list(plan.gpus) if plan is not None and isinstance(plan.gpus, tuple) else (plan.gpus if plan else 0)
    return out


def step_rate(metrics: MetricSet, window_s: float = 120.0) -> float | None:
    """Steps per second over the last ``window_s`` of the longest series (by wall time)."""
    series = max(metrics.series.values(), key=len, default=None)
    if series is None or len(series) < 2:
        return None
    walls, steps = series.walls, series.steps
    recent = walls >= walls[-1] - window_s
    w, st = walls[recent], steps[recent]
    if len(w) < 2 or w[-1] <= w[0]:
        return None
    return float(st[-1] - st[0]) / float(w[-1] - w[0])
