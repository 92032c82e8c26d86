"""What `runner status -o json`, `runner queue -o json` and the web page's /api/ show: one shape, built here."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

from runner.lifecycle import S
from runner.lifecycle import chain_outcome
from runner.store import ACTIVE, Store, run_status
from runner.supervisor import holder

SLURM_PENDING = " PENDING ("  # in a phase's reason while its Slurm job waits: "Slurm job 12 PENDING (Resources)"


def iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds") if ts else None


def run_view(store: Store, run_id: str, events: bool = False) -> dict[str, Any]:
    run = store.run(run_id)
    phases = store.phases(run_id)
    # who follows the run's active phase: the holder of its supervisor lock (runner.supervisor), "nobody" said
    # as such (a phase left --unsupervised, a supervisor that died)
    watched = holder(store.path.parent, run_id) if any(p["status"] in ACTIVE for p in phases) else None
    view = {
        "id": run_id,
        "spec": run["spec_path"],
        "status": run_status(phases),
        # succeeded (the planned success path) | recovered (succeeded through a failure branch) | the last status
        "outcome": chain_outcome(phases),
        "created_at": iso(run["created_at"]),
        "phases": [
            {
                "name": p["name"],
                "status": p["status"],
                "reason": p["reason"],
                "exit_code": p["exit_code"],
                "oom_killed": p["oom_killed"],
                "container_id": p["container_id"],
                "container_name": p["container_name"],
                # the devices in the recorded plan: ids once granted (server) or planned (foreground), else the
                # spec's request ("all" in the foreground; 0 = CPU)
                "gpus": json.loads(p["plan_json"] or "{}").get("gpus", 0),
                "spec": p["spec_path"],
                "spec_sha256": p["spec_sha256"],
                "inputs": p["inputs"],
                "verdict": p["verdict"],
                "failure_kind": p.get("failure_kind"),  # how it failed, recorded when decided (see FailureKind)
                "supervisor": (watched.describe() if watched else "nobody") if p["status"] in ACTIVE else None,
                "explanation": p["explanation"],
                # a success whose best checkpoint was lost (checkpoints.on_missed_best: warn), and what was lost
                "degraded": (p["outputs"] or {}).get("degraded") or None,
                "lost_best": (p["outputs"] or {}).get("lost_best"),
                "judgement": p["judgement"],
                "decision": p["decision"],
                "outputs": p["outputs"],
                "log": p["log_path"],
                "started_at": iso(p["started_at"]),
                "finished_at": iso(p["finished_at"]),
            }
            for p in phases
        ],
    }
    if events:
        names = {p["id"]: p["name"] for p in store.phases(run_id)}
        view["events"] = [{"at": iso(e["at"]), "kind": e["kind"], "phase": names.get(e["phase_id"]), "message": e["message"],
                           "data": e["data"]} for e in store.events(run_id)]
    return view


def queue_rows(store: Store) -> list[dict[str, Any]]:
    """Waiting work in start order: runs not started yet, and phases waiting for GPUs or CPU slots."""
    rows = []
    for sub in store.submissions(("queued", "started")):
        phases = store.phases(sub["run_id"])
        # pending here, or submitted and waiting in the cluster's queue (a Slurm job PENDING, with Slurm's reason)
        slurm = [p for p in phases if p["status"] == S.RUNNING and SLURM_PENDING in p["reason"]]
        if sub["source"] == "apply":  # a local run: only a job it left waiting in Slurm's queue
            if not slurm:
                continue
            pending = slurm
        else:
            pending = [p for p in phases if p["status"] == S.PENDING] + slurm
        if phases and not pending:
            continue
        rows.append({"run": sub["run_id"], "priority": sub["priority"], "source": sub["source"],
                     "spec": sub["spec_path"] if not pending else pending[-1]["spec_path"],
                     "phase": pending[-1]["name"] if pending else None,
                     "waiting_for": pending[-1]["reason"] if pending else "its turn (no phase started yet)",
                     "submitted_at": iso(sub["submitted_at"])})
    return rows
