"""A finished phase's outputs, for `next:` rules and later specs: checkpoints, metric summaries, verdict."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from runner.metrics.series import MetricSet, Series
from runner.paths import step_from_name
from runner.spec.watch_models import Checkpoints


def checkpoint_files(folder: Path, pattern: str) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        step = step_from_name(p.name, pattern)
        if step is not None:
            found.append((step, p))
    return sorted(found)


def score_at(metrics: MetricSet, name: str, step: int) -> float | None:
    """The metric's value at ``step``, or the nearest earlier one."""
    series = metrics.series.get(name)
    if series is None or not len(series):
        return None
    i = int(np.searchsorted(series.steps, step, side="right")) - 1
    if i < 0:
        return None
    v = float(series.values[i])
    return v if math.isfinite(v) else None


def phase_outputs(phase_dir: str, verdict: str, metrics: MetricSet, checkpoints: Checkpoints | None,
                  ckpt_dir: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {"dir": phase_dir, "verdict": verdict, "best_checkpoint": "", "last_checkpoint": "", "metrics": {}}
    for name, s in metrics.series.items():
        if not len(s):
            continue
        vals = s.values[np.isfinite(s.values)]
        out["metrics"][name] = {
            "last": float(s.values[-1]), "last_step": int(s.steps[-1]), "count": len(s),
            "min": float(vals.min()) if vals.size else None, "max": float(vals.max()) if vals.size else None,
            "mean": float(vals.mean()) if vals.size else None,
            "smoothed": _smoothed_last(s),
        }
    if checkpoints is not None and ckpt_dir is not None:
        assert checkpoints.pattern is not None  # the model's validator fills it in (the preset's, else the default)
        files = checkpoint_files(ckpt_dir, checkpoints.pattern)
        if files:
            out["last_checkpoint"] = str(files[-1][1])
            best = files[-1][1]
            if checkpoints.keep is not None:
                scored = [(score, st, p) for st, p in files
                          if (score := score_at(metrics, checkpoints.keep.by, st)) is not None]
                if scored:
                    sign = 1 if checkpoints.keep.mode == "min" else -1
                    best = min(scored, key=lambda x: (sign * x[0], -x[1]))[2]
            out["best_checkpoint"] = str(best)
    return out


def _smoothed_last(series: Series, upto: int | None = None) -> float | None:
    """The series' value at its last step (or at ``upto``) smoothed as TensorBoard's slider would show it
    (running median of 3, then a debiased EMA over ~1,000 steps or 25 logging intervals): a noisy last point
    is not the phase's standing."""
    from runner.decisions.smoothing import DEFAULT_MIN_POINTS, Smoother

    sm = Smoother(tau_steps=1000.0, min_points=DEFAULT_MIN_POINTS)
    keep: slice | np.ndarray = slice(None) if upto is None else series.steps <= upto
    value: float | None = None
    for step, v in zip(series.steps[keep].tolist(), series.values[keep].tolist()):
        value = sm.push(int(step), float(v))
    return value if value is not None and math.isfinite(value) else None


def at_checkpoint(metrics: MetricSet, step: int, validated: set[str]) -> dict[str, Any]:
    """Pure: what the phase's metrics say of the checkpoint at ``step`` (the ``best`` namespace a next rule hands
    over): a validation metric's value for that checkpoint (the newest at or before it), a training metric's
    smoothed value up to it — where the model was, not one noisy point."""
    out: dict[str, Any] = {"step": int(step)}
    for name, s in metrics.series.items():
        if not len(s):
            continue
        value = score_at(metrics, name, step) if name in validated else _smoothed_last(s, upto=step)
        if value is not None and math.isfinite(value):
            out[name] = value
    return out


class _Unknown(dict[str, Any]):
    """A namespace whose unknown keys read as empty (a metric the phase never logged: nothing to hand over)."""

    def __missing__(self, key: str) -> str:
        return ""


def context(outputs: dict[str, Any]) -> dict[str, Any]:
    """The ${{ }} namespaces a next rule's `with:` can use."""
    phase = {k: outputs.get(k, "") for k in ("dir", "verdict", "best_checkpoint", "last_checkpoint")}
    metrics: dict[str, Any] = {}
    for name, summary in outputs.get("metrics", {}).items():
        for stat, value in summary.items():
            metrics[f"{name}.{stat}"] = value
    return {"phase": phase, "metrics": metrics, "best": _Unknown(outputs.get("best") or {})}
