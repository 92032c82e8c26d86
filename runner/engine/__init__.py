"""The engine: runs phases from spec to recorded outcome, and chains them.

The CLI and the server call the same methods.  Every transition is written to the store before its side effect;
containers carry labels and deterministic names, so a restarted runner can tell what already happened.

A phase ends in exactly one recorded status, always through ``judge``:
  succeeded / failed / inconclusive (the verdict on an ended container)
  / cancelled (Ctrl-C, runner stop) / blocked (a precondition is unmet)
  / error (the engine refused: image missing, no GPU runtime, ...) / lost.
Losing the terminal (SIGHUP) or the runner process never stops a container:
the phase is recorded *detached* and can be picked up again.

Where each decision is made (the parts import downwards only, in this order):
  driver         what comes next for a run (lifecycle.next_action), one handler per action; supervise
  stop           runner stop / Ctrl-C (cancel) and refresh of phases nobody supervises
  follow         the container followed to its end: guards, criteria, timeout, stop and detach requests
  launch         container created (policy checked again), found again by name, removed when recorded
  decide         the chain decision: a retry, or the spec's next rules
  judge          THE one way a phase is finished: outcome, failure kind, outputs, verdict, recorded once
  logpump, view, planning, preconditions, session, records, signals, ports
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.engine.ports import Core, EngineConfig, PhaseResult, QuietReporter, Reporter, RunResult, new_run_id
from runner.engine.records import request_stop, result_of, stored_plan
from runner.store import ACTIVE

if TYPE_CHECKING:
    from runner.backends.base import ContainerState
    from runner.engine.session import PhaseSession
    from runner.plan import LaunchPlan
    from runner.spec import LoadedSpec
    from runner.spec.models import Phase

# The parts (driver, judge, stop, planning, view, session) and the spec's models are imported where a method needs
# them: `runner status` and `runner queue` open an Engine to read the store and must not pay for pydantic, numpy
# and the decisions on every call (0.9 s a call before; the suite's polls made thousands of them).

__all__ = ["Engine", "EngineConfig", "PhaseResult", "QuietReporter", "Reporter", "RunResult", "new_run_id",
           "request_stop", "stored_plan"]


class Engine(Core):
    """The facade the CLI, the server and the tests use: ``Engine(store, backend, runs_dir, reporter, config)``
    (or the config's fields as keywords), then apply / submit / drive / attach / stop_run / refresh / view."""

    def apply(self, spec_path: str | Path, inputs: dict[str, str] | None = None, detach: bool = False) -> RunResult:
        """Run a spec and, unless ``detach``, every phase its `next:` rules chain after it.

        An engine that does not answer at all is a one-line error before anything is recorded; a
        temporary error once the run is under way is retried (launch.launch_retrying)."""
        from runner.decisions import graph

        graph.build(spec_path, inputs=inputs or {})  # a bad spec, or a broken chain, is said first, engine or not
        self.backend.ping()
        run_id = self.submit(spec_path, inputs or {}, source="apply", state="started")
        result = self.drive(run_id, detach=detach)
        if not any(p["status"] in ACTIVE for p in self.store.phases(run_id)):
            # Done: a later submission of the same spec (the inbox's dedupe) is not "already running".
            self.store.set_submission(run_id, "done", f"ended: {result.last.status}" if result.phases else "ended")
        return result

    def submit(self, spec_path: str | Path, inputs: dict[str, str], source: str, priority: int = 0,
               state: str = "queued") -> str:
        """Validate and plan a spec (spec errors: nothing is recorded), then record a run for it."""
        from runner.decisions import graph
        from runner.engine.planning import chain_inputs
        from runner.spec import load_spec

        loaded = load_spec(spec_path)
        graph.build(loaded.path, loaded, inputs)  # the whole chain: next: specs load, inputs, loops bounded
        run_id = new_run_id()
        self.plan(loaded, chain_inputs(loaded, inputs), run_id)
        self.store.submit(run_id, str(loaded.path), loaded.sha256, inputs, source, priority, state)
        return run_id

    def plan(self, loaded: LoadedSpec, inputs: dict[str, str], run_id: str, attempt: int = 1) -> tuple[Phase, LaunchPlan, dict[str, Any]]:
        from runner.engine.planning import plan as plan_spec

        return plan_spec(self, loaded, inputs, run_id, attempt)

    def drive(self, run_id: str, detach: bool = False) -> RunResult:
        from runner.engine import driver

        return driver.drive(self, run_id, detach)

    def attach(self, run_id: str) -> RunResult:
        from runner.engine import driver

        return driver.attach(self, run_id)

    def finish(self, phase_id: int, state: ContainerState, sup: PhaseSession | None = None) -> PhaseResult:
        from runner.engine import judge

        return judge.finish(self, phase_id, state, sup)

    def cancel(self, phase_id: int, wait: bool = True) -> None:
        from runner.engine import stop

        stop.cancel(self, phase_id, wait)

    def stop_run(self, run_id: str) -> list[PhaseResult]:
        from runner.engine import stop

        return stop.stop_run(self, run_id)

    def refresh(self, run_id: str) -> None:
        from runner.engine import stop

        stop.refresh(self, run_id)

    def result(self, phase_id: int) -> PhaseResult:
        return result_of(self.store, phase_id)

    def session(self, phase_id: int) -> PhaseSession:
        """The phase's session as the store has it (metrics read so far, guards fed, checkpoints)."""
        from runner.engine.session import PhaseSession

        return PhaseSession.restored(self, phase_id)

    def view(self, phase_id: int) -> dict[str, Any]:
        from runner.engine.view import view as view_of

        return view_of(self, phase_id)
