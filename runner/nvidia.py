"""nvidia-smi, asked one query at a time; every way it can be missing or fail is a clear RunnerError.

Used by the server's GPU inventory (runner.server.scheduler.detect_gpus) and the gpu_memory_free
precondition.  A CPU host, a container image without nvidia-smi, a driver that does not answer,
or output in a shape we do not know must each end in one sentence, never a traceback.
"""
from __future__ import annotations

import shutil
import subprocess

from runner.errors import RunnerError

TIMEOUT_S = 20


def _first_line(text: str | None) -> str:
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")


def query(fields: list[str]) -> list[list[str]]:
    """One row per GPU of ``nvidia-smi --query-gpu=FIELDS --format=csv,noheader,nounits``."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise RunnerError("nvidia-smi not found")
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RunnerError(f"nvidia-smi did not answer within {TIMEOUT_S} s") from None
    except OSError as exc:
        raise RunnerError(f"nvidia-smi could not be run: {exc}") from None
    if out.returncode != 0:
        why = _first_line(out.stderr) or _first_line(out.stdout) or "no message"
        raise RunnerError(f"nvidia-smi failed (exit code {out.returncode}): {why}")
    rows = [[cell.strip() for cell in line.split(",")] for line in out.stdout.splitlines() if line.strip()]
    for row in rows:
        if len(row) != len(fields):
            raise RunnerError(f"nvidia-smi printed {', '.join(row)!r}, expected {', '.join(fields)}")
    return rows


def indexes() -> list[str]:
    """The GPU indexes (as strings: device ids for Docker)."""
    rows = query(["index"])
    for (index,) in rows:
        if not index.isdigit():
            raise RunnerError(f"nvidia-smi printed {index!r} as a GPU index")
    return [index for (index,) in rows]


def free_memory() -> list[tuple[int, int]]:
    """(index, free bytes) per GPU."""
    gpus = []
    for index, free in query(["index", "memory.free"]):
        try:
            gpus.append((int(index), int(float(free)) * 1024 * 1024))
        except ValueError:
            raise RunnerError(f"nvidia-smi reports GPU {index} free memory as {free!r}, not a number of MiB") from None
    return gpus
