"""Checks before launch.  Each returns (met, explanation); unmet → the phase is *blocked*."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from runner.paths import spec_relative
from runner import nvidia
from runner.errors import RunnerError
from runner.paths import step_from_name
from runner.spec.types import resolved_size
from runner.spec.watch_models import FileCheck, Precondition


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def gpu_free_memory() -> list[tuple[int, int]]:
    """(index, free bytes) per GPU from nvidia-smi; RunnerError with a clear message on a CPU host."""
    try:
        return nvidia.free_memory()
    except RunnerError as exc:
        raise RunnerError(f"no NVIDIA GPU visible on this host ({exc})") from None


def check(pre: Precondition, resolve_path: Callable[[str], Path], *, gpus: object = 0,
          image_present: Callable[[], bool] | None = None,
          previous: Callable[[str], dict | None] | None = None) -> tuple[bool, str]:
    """Whether one precondition holds, and what was found (recorded as the check's event either way)."""
    if pre.file_exists is not None:
        return _file_exists(pre.file_exists if isinstance(pre.file_exists, FileCheck) else FileCheck(path=pre.file_exists),
                            resolve_path)
    if pre.checkpoint_step is not None:
        return _checkpoint_step(pre.checkpoint_step, resolve_path)
    if pre.disk_free is not None:
        path = resolve_path(pre.disk_free.path)
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        need = resolved_size(pre.disk_free.at_least)
        ok = free >= need
        return ok, f"disk_free: {_human(free)} free on {probe} (need {_human(need)})"
    if pre.gpu_memory_free is not None:
        return _gpu_memory_free(resolved_size(pre.gpu_memory_free.at_least), gpus)
    if pre.phase is not None:
        return _phase(pre.phase, previous(pre.phase.name) if previous else None)
    if pre.image_present is not None:
        ok = image_present() if image_present else False
        return ok, "image_present: " + ("image is present" if ok else "image is not present locally")
    raise AssertionError("precondition without a check")  # the model forbids it


def _file_exists(fc: FileCheck, resolve_path: Callable[[str], Path]) -> tuple[bool, str]:
    path = resolve_path(fc.path)
    if not path.exists():
        return False, f"file_exists: {path} does not exist"
    size = path.stat().st_size if path.is_file() else 0
    if fc.min_size is not None and size < resolved_size(fc.min_size):
        return False, f"file_exists: {path} is {_human(size)}, smaller than {_human(resolved_size(fc.min_size))}"
    return True, f"file_exists: {path} ({_human(size)})"


def _checkpoint_step(c, resolve_path: Callable[[str], Path]) -> tuple[bool, str]:
    path = resolve_path(c.path)
    step = step_from_name(path.name, c.pattern)
    if step is None:
        return False, f"checkpoint_step: cannot read a step from {path.name!r} with pattern {c.pattern!r}"
    if not path.exists():
        return False, f"checkpoint_step: {path} does not exist"
    if step < c.at_least:
        return False, f"checkpoint_step: {path.name} is step {step}, below {c.at_least}"
    return True, f"checkpoint_step: {path.name} is step {step} (≥ {c.at_least})"


def _gpu_memory_free(need: int, gpus: object) -> tuple[bool, str]:
    """Enough free memory on the phase's GPUs: the ids it was granted, else as many as its count."""
    if gpus in (0, None):
        return True, "gpu_memory_free: phase uses no GPU; not checked"
    try:
        found = gpu_free_memory()
    except RunnerError as exc:
        return False, f"gpu_memory_free: {exc}"
    wanted = {str(g) for g in gpus} if isinstance(gpus, (list, tuple)) else None
    unknown = sorted(wanted - {str(i) for i, _ in found}) if wanted is not None else []
    if unknown:
        return False, (f"gpu_memory_free: nvidia-smi reports no GPU {', '.join(unknown)} "
                       f"(it reports {', '.join(str(i) for i, _ in found) or 'none'})")
    pool = [(i, f) for i, f in found if wanted is None or str(i) in wanted]
    fits = [i for i, f in pool if f >= need]
    count = len(pool) if gpus == "all" or wanted is not None else int(gpus)  # type: ignore[call-overload]
    ok = len(fits) >= count and count > 0
    desc = ", ".join(f"GPU {i}: {_human(f)} free" for i, f in pool) or "no GPUs"
    return ok, f"gpu_memory_free: {desc} (need {_human(need)} on {count})"


def _phase(pc, row: dict | None) -> tuple[bool, str]:
    """An earlier phase of the run ended with the verdict (and metric) asked for."""
    if row is None:
        return False, f"phase: no earlier phase {pc.name!r} in this run"
    if pc.verdict is not None and row.get("verdict") != pc.verdict:
        return False, f"phase: {pc.name} verdict is {row.get('verdict')}, need {pc.verdict}"
    if pc.metric:
        last = ((row.get("outputs") or {}).get("metrics") or {}).get(pc.metric, {}).get("last")
        if last is None:
            return False, f"phase: {pc.name} has no {pc.metric}"
        if pc.below is not None and not last < float(pc.below):
            return False, f"phase: {pc.name} {pc.metric} {last:.4g} is not below {pc.below}"
        if pc.above is not None and not last > float(pc.above):
            return False, f"phase: {pc.name} {pc.metric} {last:.4g} is not above {pc.above}"
    return True, f"phase: {pc.name} ok (verdict {row.get('verdict')})"


def resolver(folder: Path) -> Callable[[str], Path]:
    """Spec paths resolve against the spec file's folder."""
    return lambda p: spec_relative(folder, p)


