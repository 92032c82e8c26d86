"""FAULTS row 33: the wall clock jumps (NTP, a VM resumed, a changed date) while runner supervises.
Time guards and the phase timeout run on the monotonic clock; checkpoints are ordered by step and
score, never by file times."""
import hashlib
import os
import time

def test_row33_a_two_hour_jump_of_the_wall_clock_fires_no_time_guard(monkeypatch, tmp_path):
    """The wall clock jumps +2h mid-phase (the monotonic clock does not, as on a real machine): the
    phase's timeout guard (1h) and stall guard (30m) do not fire; a real hour on the monotonic clock does.
    (libfaketime was tried for a whole `runner apply`: with the monotonic clock left alone it breaks
    Python's time.sleep (EINVAL), and faking both clocks is not what a real jump does.)"""
    from runner import supervision
    from runner.spec.models import Phase

    phase = Phase.model_validate({"apiVersion": "runner/v1", "kind": "Phase", "name": "p",
                                  "container": {"image": "x", "command": ["train"]},
                                  "guards": [{"timeout": "1h"}, {"stall": "30m"}]})
    wall, mono = [1_000_000.0], [500.0]
    monkeypatch.setattr(supervision.time, "time", lambda: wall[0])
    monkeypatch.setattr(supervision.time, "monotonic", lambda: mono[0])
    sup = supervision.Supervision(phase, tmp_path)
    wall[0] += 10.0
    mono[0] += 10.0
    assert sup.clock() is None
    wall[0] += 2 * 3600  # the jump
    assert sup.clock() is None, sup.trip
    mono[0] += 3600  # an hour really passes
    trip = sup.clock()
    assert trip is not None and "timeout" in trip.reason


def test_row33_checkpoint_file_times_never_decide_the_best(tmp_path):
    """Files stamped 2099 (or 1970) by a wrong clock: the best is still the best by its score."""
    import torch

    from runner.checkpoints.guard import CheckpointGuard
    from runner.metrics.series import MetricSet
    from runner.spec.watch_models import Checkpoints
    from runner.store import Store

    store = Store(tmp_path / "runner.db")
    store.create_run("r", "spec")
    store.add_phase("r", "p", "spec", "x", {})
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shas = {}
    for step, stamp in ((100, 4070908800), (200, 0), (300, time.time())):  # 2099, 1970, now
        path = ckpt / f"model_step{step}.pth"
        torch.save({"step": step}, path)
        os.utime(path, (stamp, stamp))
        shas[step] = hashlib.sha256(path.read_bytes()).hexdigest()
    guard = CheckpointGuard(store, "r", 1, Checkpoints.model_validate({"dir": str(ckpt), "keep": {"by": "loss", "best": 1, "latest": 1}}),
                            ckpt, tmp_path / "vault")
    metrics = MetricSet()
    metrics.add("loss", [100, 200, 300], [2.0, 1.0, 3.0], [0, 0, 0])
    out = guard.finish(metrics)
    assert out["best_checkpoint"].endswith("model_step200.pth")  # the 1970-stamped one: best by its score
    assert out["last_checkpoint"].endswith("model_step300.pth")  # newest by step, not by the 2099 stamp
    kept = {c["step"]: c for c in store.checkpoints(1) if c["state"] in ("kept", "best")}
    assert all(kept[s]["sha256"] == shas[s] for s in kept)
