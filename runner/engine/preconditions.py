"""A pending phase's preconditions, each checked and recorded before its container is created."""
from __future__ import annotations

from pathlib import Path

from runner import preconditions
from runner.engine.ports import Core
from runner.errors import ImageMissing
from runner.plan import LaunchPlan
from runner.spec.models import Phase


def unmet(core: Core, run_id: str, phase_id: int, phase: Phase, plan: LaunchPlan, folder: Path) -> str:
    """'' when every precondition is met, else the reasons (each check is recorded as an event)."""
    if not phase.preconditions:
        return ""

    def image_present() -> bool:
        try:
            core.backend.check_image(plan.image)
            return True
        except ImageMissing:
            return False

    earlier = {p["name"]: p for p in core.store.phases(run_id) if p["id"] != phase_id}
    reasons = []
    for pre in phase.preconditions:
        if core.remote and pre.gpu_memory_free is not None:
            # The node (and so its GPUs) is known only once Slurm starts the job.
            ok, text = True, "gpu_memory_free: not checked under Slurm (the node is chosen when the job starts)"
        elif core.remote and pre.image_present:
            ok, text = True, "image_present: not checked under Slurm (images live on the nodes; the job says if one is missing)"
        else:
            ok, text = preconditions.check(pre, preconditions.resolver(folder), gpus=plan.gpus,
                                           image_present=image_present, previous=earlier.get)
        core.store.event(run_id, phase_id, "precondition." + ("met" if ok else "unmet"), text)
        if not ok:
            reasons.append(text)
    return "; ".join(reasons)
