"""runner checkpoints RUN [PHASE]: every checkpoint of a phase, or of every phase that has any."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from runner.cli import _common
from runner.cli._render import add_row, say

FIELDS = ("step", "name", "state", "ever_best", "score", "sha256", "size", "vault_path", "source", "how", "metrics", "files")
RULE_EVENTS = ("checkpoint.vaulted", "checkpoint.waiting", "checkpoint.incomplete")


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    ck = sub.add_parser("checkpoints", parents=parents,
                        help="list checkpoints: step, score, sha256, state (best, top-k, kept, incomplete, missed, pruned)",
                        description="List a run's checkpoints: step, state (best, kept, incomplete, missed, pruned), score, "
                                    "size, sha256, vault path, and the rule that decided it was complete (or what it "
                                    "waits for). Without PHASE: every phase that has checkpoints, in run order.")
    ck.add_argument("run", metavar="RUN", help="run id or unique prefix")
    ck.add_argument("phase", nargs="?", metavar="PHASE", help="only this phase (default: every phase with checkpoints)")
    ck.add_argument("--all", "-a", action="store_true", help="also list pruned checkpoints (no longer in the vault)")
    ck.add_argument("--output", "-o", choices=["table", "json"], default="table",
                    help="json: {run, phases: [{phase, checkpoints}]}, plus phase and checkpoints of the last listed "
                         "phase at the top level")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.runs.queries import checkpoint_phases
    from runner.store import Store

    store = Store(_common.existing_state(args))
    run_id = store.resolve_run(args.run)
    found = checkpoint_phases(store, run_id, args.phase)
    rules = rules_of(store.events(run_id))
    if args.output == "json":
        phases = [{"phase": row["name"], "checkpoints": [{**{k: c[k] for k in FIELDS}, "handed_over": c is handed_over(row, cks),
                                                          "rule": rule_text(c, rules.get((row["id"], c["name"])))}
                                                         for c in cks]} for row, cks in found]
        # "phase"/"checkpoints" at the top: the last listed phase, as before PHASE became optional
        sys.stdout.write(json.dumps({"run": run_id, **phases[-1], "phases": phases}, indent=2) + "\n")
        return 0
    for i, (row, cks) in enumerate(found):
        if i:
            console.print()
        table = Table(box=None, pad_edge=False)
        for col in ("STEP", "STATE", "SCORE", "SIZE", "SHA256", "VAULT"):
            table.add_column(col, no_wrap=True)
        table.add_column("COMPLETE BY")
        best = handed_over(row, cks)
        hidden = 0
        for c in cks:
            if c["state"] == "pruned" and not args.all:
                hidden += 1
                continue
            vaulted = c["state"] in ("kept", "best", "trash", "vaulting")
            add_row(table, str(c["step"]), state_text(c, best), "" if c["score"] is None else f"{c['score']:.5g}",
                    str(c["size"] or ""), (c["sha256"] or "")[:16], c["vault_path"] if vaulted else "",
                    rule_text(c, rules.get((row["id"], c["name"]))))
        say(console, f"run {run_id}, phase {row['name']}")
        console.print(table)
        if hidden:
            say(console, f"({hidden} pruned checkpoint(s) not shown: --all lists them)")
    return 0


def rules_of(events: list[dict]) -> dict[tuple[int, str], dict]:
    """(phase id, checkpoint name) → the last event that says how its completeness was decided (the rule it was
    vaulted by, or what it waited for)."""
    out = {}
    for e in events:
        if e["kind"] in RULE_EVENTS and isinstance(e.get("data"), dict) and e["data"].get("name"):
            out[(e["phase_id"], e["data"]["name"])] = e
    return out


def rule_text(c: dict, event: dict | None) -> str:
    """The rule that decided a vaulted checkpoint was complete; for an incomplete one, what it waits for."""
    data = (event or {}).get("data") or {}
    if c["state"] == "incomplete":
        return f"waiting: {data['why']}" if event and event["kind"] != "checkpoint.vaulted" and data.get("why") else \
            "waiting: being written"
    if c["state"] == "missed":
        return "never complete while it was there"
    return data.get("rule") or "" if event and event["kind"] == "checkpoint.vaulted" else ""


def handed_over(row: dict, cks: list[dict]) -> dict | None:
    """The one checkpoint that is (or, while the phase runs, would be) ${{ phase.best_checkpoint }}."""
    path = (row.get("outputs") or {}).get("best_checkpoint")
    if path:
        return next((c for c in cks if c["vault_path"] == path), None)
    scored = [c for c in cks if c["state"] == "best" and c["score"] is not None]
    if not scored:
        return None
    keep = (json.loads(row.get("phase_json") or "{}").get("checkpoints") or {}).get("keep") or {}
    sign = -1 if keep.get("mode") == "max" else 1
    return min(scored, key=lambda c: (sign * c["score"], c["step"]))


def state_text(c: dict, best: dict | None) -> str:
    """best: the one handed over; top-k: kept among the best K (keep.best); pruned: gone from the vault;
    incomplete: not complete by its rule yet (never vaulted, best or handed over); missed: gone before it was."""
    if best is not None and c is best:
        return "best (handed over)"
    if c["state"] == "best":
        return "top-k"
    return c["state"] + (" (was best)" if c["ever_best"] and c["state"] != "pruned" else "")
