"""Who may launch now: GPU ids and CPU slots, handed out in queue order.

A phase asking for N GPUs waits until N are free and gets specific device ids
(the plan is rewritten to those ids, so two phases never share a GPU).  CPU
phases (gpus: 0) take one of ``cpu_slots``.  Order is priority (high first),
then submission time of the phase's run, so a chained phase keeps its run's
place.  Within one resource kind the order is strict: a waiting 4-GPU phase is
not overtaken by later 1-GPU phases, so big requests never starve.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Callable

from runner import nvidia
from runner.errors import GpuUnavailable, RunnerError
from runner.plan import LaunchPlan

Rank = Callable[[str], tuple]


def detect_gpus() -> tuple[list[str], str]:
    """GPU ids from nvidia-smi, and where they came from (or why there are none)."""
    try:
        ids = nvidia.indexes()
    except RunnerError as exc:
        return [], f"{exc}: no GPUs (a CPU host; on a GPU host without nvidia-smi, set --gpus)"
    return ids, f"nvidia-smi: {len(ids)} GPU(s)"


def parse_gpus(text: str | None) -> tuple[list[str], str] | None:
    """``--gpus`` / RUNNER_GPUS: "0,1,3", "none", or unset/"auto" (None: ask nvidia-smi)."""
    if text is None or text.strip() in ("", "auto"):
        return None
    if text.strip() == "none":
        return [], "configured: no GPUs"
    ids = [t.strip() for t in text.split(",") if t.strip()]
    return ids, f"configured: GPUs {','.join(ids)}"


@dataclass
class _Wait:
    phase_id: int
    rank: tuple
    gpu: bool


class Scheduler:
    """Thread-safe.  ``rank(run_id)`` gives a run's place in the queue."""

    def __init__(self, gpus: list[str], cpu_slots: int, rank: Rank, note: Callable[[int, str], None] | None = None):
        self.gpus = list(gpus)
        self.cpu_slots = cpu_slots
        self.rank = rank
        self.note = note or (lambda phase_id, text: None)
        self.held: dict[int, tuple[str, ...]] = {}  # phase id → GPU ids it holds
        self.cpu: set[int] = set()  # phase ids holding a CPU slot
        self.waiting: dict[int, _Wait] = {}
        self.stopping = threading.Event()
        self._cond = threading.Condition()

    # ------------------------------------------------------------------ requests

    def wanted(self, plan: LaunchPlan) -> tuple[int, tuple[str, ...] | None]:
        """(count, specific ids or None) of GPUs a plan asks for; GpuUnavailable if it can never fit."""
        g = plan.gpus
        if isinstance(g, tuple):
            unknown = [i for i in g if i not in self.gpus]
            if unknown:
                raise GpuUnavailable(f"phase {plan.phase} asks for GPU(s) {', '.join(unknown)}, which this server does not have "
                                     f"(GPUs: {', '.join(self.gpus) or 'none'})")
            return len(g), tuple(g)
        count = len(self.gpus) if g == "all" else int(g)
        if g == "all" and not self.gpus:
            count = 1
        if count > len(self.gpus):
            raise GpuUnavailable(f"phase {plan.phase} needs {count} GPU(s); this server has {len(self.gpus)}"
                                 + ("" if self.gpus else " (no GPU found: nvidia-smi missing, or set `runner serve --gpus 0,1`)"))
        return count, None

    def acquire(self, phase_id: int, plan: LaunchPlan) -> LaunchPlan | None:
        count, ids = self.wanted(plan) if plan.wants_gpu else (0, None)
        wait = _Wait(phase_id, self.rank(plan.run_id), plan.wants_gpu)
        last_note = ""
        with self._cond:
            self.waiting[phase_id] = wait
            try:
                while not self.stopping.is_set():
                    granted = self._try(wait, count, ids)
                    if granted is not None:
                        return dataclasses.replace(plan, gpus=granted) if plan.wants_gpu else plan
                    text = self._why(wait, count)
                    if text != last_note:
                        last_note = text
                        self.note(phase_id, text)
                    self._cond.wait(timeout=1.0)
                return None
            finally:
                self.waiting.pop(phase_id, None)
                self._cond.notify_all()

    def _ahead(self, wait: _Wait) -> int:
        return sum(1 for w in self.waiting.values() if w.gpu == wait.gpu and (w.rank, w.phase_id) < (wait.rank, wait.phase_id))

    def _free(self) -> list[str]:
        busy = {i for ids in self.held.values() for i in ids}
        return [i for i in self.gpus if i not in busy]

    def _try(self, wait: _Wait, count: int, ids: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if self._ahead(wait):
            return None
        if not wait.gpu:
            if len(self.cpu) >= self.cpu_slots:
                return None
            self.cpu.add(wait.phase_id)
            return ()
        free = self._free()
        pick = ids if ids is not None else tuple(free[:count])
        if len(pick) < count or any(i not in free for i in pick):
            return None
        self.held[wait.phase_id] = pick
        return pick

    def _why(self, wait: _Wait, count: int) -> str:
        ahead = self._ahead(wait)
        what = f"{count} GPU(s)" if wait.gpu else "a CPU slot"
        if ahead:
            return f"queued: waiting for {what}, {ahead} phase(s) ahead"
        if wait.gpu:
            return f"queued: waiting for {what} ({len(self._free())} of {len(self.gpus)} free)"
        return f"queued: waiting for {what} ({len(self.cpu)} of {self.cpu_slots} in use)"

    def claim(self, phase_id: int, plan: LaunchPlan) -> None:
        """An already running phase (re-adopted after a restart) holds its devices."""
        with self._cond:
            if not plan.wants_gpu:
                self.cpu.add(phase_id)
            elif isinstance(plan.gpus, tuple):
                self.held[phase_id] = tuple(plan.gpus)
            else:  # launched without ids (e.g. by a foreground apply): assume the first free ones
                count = len(self.gpus) if plan.gpus == "all" else int(plan.gpus)
                self.held[phase_id] = tuple(self._free()[:count])

    def release(self, phase_id: int) -> None:
        with self._cond:
            self.held.pop(phase_id, None)
            self.cpu.discard(phase_id)
            self._cond.notify_all()

    def stop(self) -> None:
        self.stopping.set()
        with self._cond:
            self._cond.notify_all()

    def snapshot(self) -> dict:
        with self._cond:
            return {
                "gpus": {i: next((p for p, ids in self.held.items() if i in ids), None) for i in self.gpus},
                "cpu_slots": self.cpu_slots,
                "cpu_in_use": sorted(self.cpu),
                "waiting": [w.phase_id for w in sorted(self.waiting.values(), key=lambda w: (w.rank, w.phase_id))],
            }
