"""GPU checks, for a machine with an NVIDIA GPU (CI has none; run by hand or on a lent GPU machine).

  python3 scripts/gpu_check.py

What it checks, on the real driver: the server's GPU inventory from nvidia-smi, the
gpu_memory_free precondition on the ids a phase was granted, the scheduler handing out
specific device ids (and refusing what can never fit), and the reference trainer on CUDA
with its checkpoints judged complete by the checkpoint guard's test.  Prints what it saw;
exits 1 on the first mismatch.  Docker GPU launches are covered by the integration tests'
"no GPU runtime" path on CPU hosts only.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner import preconditions
from runner.checkpoints.guard import loadable
from runner.errors import GpuUnavailable
from runner.plan import build_plan
from runner.server.scheduler import Scheduler, detect_gpus
from runner.spec import load_spec_text
from runner.spec.watch_models import Precondition

SPEC = """
apiVersion: runner/v1
kind: Phase
name: gpu-check
container:
  image: runner-trainer:latest
  command: [python3, /app/train.py]
  gpus: {gpus}
"""


def check(label: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {label}" + (f": {detail}" if detail else ""), flush=True)
    if not ok:
        sys.exit(1)


def main() -> None:
    ids, source = detect_gpus()
    check("inventory from nvidia-smi", bool(ids), f"{ids} ({source})")
    free = preconditions.gpu_free_memory()
    check("free memory per GPU", len(free) == len(ids) and all(f > 0 for _, f in free),
          ", ".join(f"GPU {i}: {f / 2**30:.1f} GiB" for i, f in free))

    with tempfile.TemporaryDirectory() as tmp:
        plan = lambda gpus, run: build_plan(load_spec_text(SPEC.format(gpus=gpus), Path(tmp) / "s.yaml"), {}, run, tmp)  # noqa: E731
        sched = Scheduler(ids, 1, rank=lambda run: (0, run))
        granted = sched.acquire(1, plan(1, "a"))
        check("scheduler grants specific ids", granted.gpus == (ids[0],), f"gpus: 1 -> {granted.gpus}")
        try:
            sched.acquire(2, plan(len(ids) + 1, "b"))
            check("a request that can never fit is refused", False)
        except GpuUnavailable as exc:
            check("a request that can never fit is refused", True, str(exc))
        sched.release(1)

        resolve = preconditions.resolver(Path(tmp))
        ok, text = preconditions.check(Precondition(gpu_memory_free={"at_least": "1GiB"}), resolve, gpus=granted.gpus)
        check("gpu_memory_free met on the granted GPU", ok, text)
        ok, text = preconditions.check(Precondition(gpu_memory_free={"at_least": "100TiB"}), resolve, gpus=granted.gpus)
        check("gpu_memory_free unmet when too little is free", not ok, text)

        out, tb = Path(tmp) / "ckpt", Path(tmp) / "tb"
        proc = subprocess.run([sys.executable, str(REPO / "images/trainer/train.py"), "--device", "cuda", "--max-steps", "60",
                               "--save-every", "20", "--keep-last", "2", "--output-dir", str(out), "--logdir", str(tb)],
                              capture_output=True, text=True, timeout=300)
        check("reference trainer on CUDA", proc.returncode == 0 and "on cuda" in proc.stdout,
              (proc.stdout.splitlines() or [""])[0] + proc.stderr[-500:])
        ckpts = sorted(out.glob("*.pth"))
        check("checkpoints from a CUDA run are complete", len(ckpts) == 2 and all(loadable(c) for c in ckpts),
              ", ".join(c.name for c in ckpts))
        data = ckpts[-1].read_bytes()
        ckpts[-1].write_bytes(data[: len(data) // 2])
        check("a truncated CUDA checkpoint is not", not loadable(ckpts[-1]))


if __name__ == "__main__":
    main()
