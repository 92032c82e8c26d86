"""Validation runs: a container per checkpoint (every Nth), one at a time, never blocking training.

The last JSON object a validation prints becomes metric points at the checkpoint's step."""
from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time

from runner.backends.base import Backend
from runner.errors import RunnerError
from runner.plan import LaunchPlan
from runner.spec import interpolate
from runner.spec.watch_models import Validate
from runner.store import Store


def last_json(output: str) -> dict | None:
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


class Validator:
    def __init__(self, backend: Backend, plan: LaunchPlan, spec: Validate, store: Store, run_id: str, phase_id: int,
                 poll_s: float = 0.5):
        self.backend = backend
        self.plan = plan
        self.spec = spec
        self.store = store
        self.run_id = run_id
        self.phase_id = phase_id
        self.poll_s = poll_s
        self.jobs: queue.Queue = queue.Queue()
        self.results: list[tuple[int, dict[str, float], float]] = []
        self._lock = threading.Lock()
        self._count = 0
        self.queued: set[int] = set()  # steps offered for validation (every Nth, and the last)
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="validator", daemon=True)
        self._thread.start()

    def offer(self, step: int, path: str) -> None:
        """Called for each vaulted checkpoint; every Nth is validated."""
        self._count += 1
        if (self._count - 1) % int(self.spec.every) == 0:  # a number once the plan resolved its ${{ }}
            self._queue(step, path)

    def final(self, step: int, path: str) -> None:
        """The phase's last checkpoint is always validated, whatever `every` skipped: the verdict and the
        hand-over rest on the model as the phase left it, never on an older validation."""
        if step not in self.queued:
            self._queue(step, path, " (the phase's last checkpoint)")

    def _queue(self, step: int, path: str, why: str = "") -> None:
        self.queued.add(step)
        self._idle.clear()
        self.jobs.put((step, path))
        self.store.event(self.run_id, self.phase_id, "validation.queued", f"validation of step {step} queued{why}")

    def take(self) -> list[tuple[int, dict[str, float], float]]:
        with self._lock:
            out, self.results = self.results, []
        return out

    def drain(self, timeout: float) -> bool:
        """Wait until every queued validation has run (bounded)."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            step, path = self.jobs.get()
            try:
                self._validate(step, path)
            except Exception as exc:  # one failed validation never stops the others or the phase
                self.store.event(self.run_id, self.phase_id, "validation.failed", f"validation of step {step}: {exc}")
            if self.jobs.empty():
                self._idle.set()

    def _validate(self, step: int, path: str) -> None:
        ctx = {"checkpoint": {"path": path, "step": step}}
        command = tuple(interpolate.substitute(a, ctx) for a in self.spec.command)
        gpus = tuple(self.spec.gpus) if isinstance(self.spec.gpus, list) else self.spec.gpus
        plan = dataclasses.replace(
            self.plan, container_name=f"{self.plan.container_name}-val-{step}", command=command,
            image=self.spec.image or self.plan.image, gpus=gpus, timeout=self.spec.timeout,
            labels={**self.plan.labels, "runner.validation-step": str(step)},
        )
        cid = self.backend.launch(plan)
        started = time.monotonic()
        while True:
            state = self.backend.inspect(cid)
            if state.ended:
                break
            if time.monotonic() - started > self.spec.timeout:
                self.backend.stop(cid, 10)
                raise RunnerError(f"timed out after {self.spec.timeout:.0f}s")
            time.sleep(self.poll_s)
        output = b"".join(self.backend.logs(cid)).decode("utf-8", "replace")
        self.backend.remove(cid)
        found = last_json(output)
        if state.exit_code != 0 or found is None:
            tail = " | ".join(output.strip().splitlines()[-3:])
            raise RunnerError(f"exit code {state.exit_code}, no JSON metrics in its output ({tail})")
        metrics = {k: float(v) for k, v in found.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        with self._lock:
            self.results.append((step, metrics, time.time()))
        self.store.event(self.run_id, self.phase_id, "validation.done",
                         f"validated step {step}: " + ", ".join(f"{k}={v:.5g}" for k, v in metrics.items()), {"step": step, **metrics})
