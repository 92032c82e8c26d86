"""Time series of one metric: steps, values and wall times, with the newest-write-wins rule.

When a resumed trainer logs a step it had logged before (a second event file
that starts at a lower step), the point written *last* (greatest wall time;
on a tie, the one read later) replaces the earlier one for that step.  Unlike
TensorBoard, runner does not purge the older run's later steps: they stay
until overwritten, so nothing a trainer logged is dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class Series:
    """Sorted by step, one point per step.  Appending in step order is amortised O(k)."""

    def __init__(self) -> None:
        self._steps = np.empty(0, dtype=np.int64)
        self._values = np.empty(0, dtype=np.float64)
        self._walls = np.empty(0, dtype=np.float64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def steps(self) -> np.ndarray:
        return self._steps[: self._n]

    @property
    def values(self) -> np.ndarray:
        return self._values[: self._n]

    @property
    def walls(self) -> np.ndarray:
        return self._walls[: self._n]

    def add(self, steps, values, walls) -> None:
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        walls = np.asarray(walls, dtype=np.float64)
        if steps.size == 0:
            return
        in_order = steps.size == 1 or bool(np.all(steps[1:] > steps[:-1]))
        if in_order and (self._n == 0 or steps[0] > self._steps[self._n - 1]):
            self._append(steps, values, walls)
            return
        # Out of order or repeated steps: merge, newest write wins per step.
        all_steps = np.concatenate([self.steps, steps])
        all_values = np.concatenate([self.values, values])
        all_walls = np.concatenate([self.walls, walls])
        arrival = np.arange(all_steps.size)
        order = np.lexsort((arrival, all_walls, all_steps))
        s = all_steps[order]
        last = np.ones(s.size, dtype=bool)
        last[:-1] = s[1:] != s[:-1]
        keep = order[last]
        self._steps, self._values, self._walls = all_steps[keep], all_values[keep], all_walls[keep]
        self._n = keep.size

    def _append(self, steps, values, walls) -> None:
        need = self._n + steps.size
        if need > self._steps.size:
            cap = max(need, 2 * self._steps.size, 1024)
            for name in ("_steps", "_values", "_walls"):
                old = getattr(self, name)
                new = np.empty(cap, dtype=old.dtype)
                new[: self._n] = old[: self._n]
                setattr(self, name, new)
        self._steps[self._n : need] = steps
        self._values[self._n : need] = values
        self._walls[self._n : need] = walls
        self._n = need

    def truncate_from(self, step: int) -> None:
        """Drop every point at ``step`` and after (an abandoned run's, once a new writer restarted there)."""
        keep = int(np.searchsorted(self.steps, step, side="left"))
        self._n = min(self._n, keep)

    def last(self) -> tuple[int, float] | None:
        if not self._n:
            return None
        return int(self._steps[self._n - 1]), float(self._values[self._n - 1])

    def since(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Points with step >= ``step``."""
        i = int(np.searchsorted(self.steps, step, side="left"))
        return self.steps[i:], self.values[i:]


@dataclass
class MetricSet:
    """Named series (short metric names), filled by the sources."""

    series: dict[str, Series] = field(default_factory=dict)

    def get(self, name: str) -> Series:
        if name not in self.series:
            self.series[name] = Series()
        return self.series[name]

    def add(self, name: str, steps, values, walls) -> None:
        self.get(name).add(steps, values, walls)

    def latest_step(self) -> int | None:
        lasts = [last[0] for s in self.series.values() if (last := s.last()) is not None]  # None: an empty series
        return max(lasts) if lasts else None
