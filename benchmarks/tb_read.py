"""Reading TensorBoard event files: `runner metrics FILE` against TensorBoard's Rust data server and EventAccumulator.

    .venv/bin/python benchmarks/tb_read.py [--steps 500000] [--data /tmp/runner-tb-read] [--rounds 5] [--no-accumulator]

Writes (once, cached under --data by size) one event file of STEPS steps x 3 tags with torch's SummaryWriter
(500,000 steps: 1.5 M scalars, ~78 MB), then measures, in this one run so the ratios are fair:
  * whole process (issue 23): `runner metrics FILE` (the console script next to this Python: start-up, imports,
    every record's CRC checked, the table printed) against TensorBoard's own data server (tensorboard-data-server,
    Rust) loading the same file with `--checksum` (every record's CRC checked), from its start until its log says
    "Finished load cycle" (`--reload once -v`: that line is written after the load cycle returns, all runs
    committed); then, outside the clock, its gRPC API must list the 3 tags with their last step, or the figure
    is refused.  Two settings of the server: TensorBoard's default (each record read and checked, 1,000 points
    kept per tag) and `--samples-per-plugin scalars=all` (every point kept, as runner does).  Best and median of
    --rounds runs each, alternating;
  * full read in-process: runner (every record's CRC checked) vs EventAccumulator (size_guidance scalars=0);
  * peak memory of each (each in its own subprocess, ru_maxrss);
  * tail: 1,000 newly appended steps read by a reader that already read the rest;
  * an empty poll (nothing new).
Targets: whole process >= 2x the Rust server (issue 23); in-process read >= 20x EventAccumulator (issue 3);
tail < 10 ms.
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
SETTLE_S = 1.0  # pause before each measured process


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


def runner_process(file: Path, steps: int) -> float:
    """Seconds of one `runner metrics FILE` process (its table checked: every tag has every step)."""
    runner = Path(sys.executable).parent / "runner"
    t0 = time.perf_counter()
    out = subprocess.run([str(runner), "metrics", str(file)], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    assert sorted(r[0] for r in rows) == sorted(TAGS) and all(r[1] == str(steps) for r in rows), out.stdout
    return seconds


def rust_server_process(logdir: Path, steps: int, keep_all: bool) -> float:
    """Seconds from starting TensorBoard's data server until its log says the load cycle finished.

    Verified afterwards (off the clock) through its gRPC API: every tag listed, with the last step."""
    import grpc
    from tensorboard.data.proto import data_provider_pb2 as pb
    from tensorboard.data.proto import data_provider_pb2_grpc as pb_grpc
    from tensorboard_data_server import server_binary

    port_file = logdir.parent / "rust-port"
    port_file.unlink(missing_ok=True)
    cmd = [server_binary(), "--logdir", str(logdir), "--reload", "once", "--checksum", "--port", "0",
           "--port-file", str(port_file), "--die-after-stdin", "-v"]
    if keep_all:
        cmd += ["--samples-per-plugin", "scalars=all"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seconds = None
    log = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if "Finished load cycle" in line:
                seconds = time.perf_counter() - t0
                break
        assert seconds is not None, "".join(log)
        with grpc.insecure_channel(f"localhost:{port_file.read_text().strip()}") as channel:
            stub = pb_grpc.TensorBoardDataProviderStub(channel)
            listed = stub.ListScalars(pb.ListScalarsRequest(plugin_filter=pb.PluginFilter(plugin_name="scalars")))
        last = {t.tag_name: t.metadata.max_step for r in listed.runs for t in r.tags}
        assert last == {tag: steps - 1 for tag in TAGS}, last
    finally:
        proc.kill()
        proc.wait()
    return seconds


def whole_process(logdir: Path, steps: int, rounds: int) -> None:
    (file,) = list(logdir.glob("*tfevents*"))
    times: dict[str, list[float]] = {"runner": [], "rust": [], "rust_all": []}
    runner_process(file, steps)  # warm: the file in the page cache, the interpreter's .pyc files written
    for _ in range(rounds):  # alternating, so a burst of load elsewhere falls on both
        for key, measure in (("runner", lambda: runner_process(file, steps)),
                             ("rust", lambda: rust_server_process(logdir, steps, keep_all=False)),
                             ("rust_all", lambda: rust_server_process(logdir, steps, keep_all=True))):
            # Each process starts on a settled machine: the previous one's exit (the kernel freeing a server's
            # hundreds of MB) must not fall into the next one's time.
            time.sleep(SETTLE_S)
            times[key].append(measure())
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"whole process, best / median of {rounds}:")
    print(f"  runner metrics FILE (every CRC checked, table printed):       {best['runner']:.3f} / {med['runner']:.3f} s")
    print(f"  Rust data server --checksum (default: 1,000 points kept/tag): {best['rust']:.3f} / {med['rust']:.3f} s")
    print(f"  Rust data server --checksum, scalars=all (every point kept):  {best['rust_all']:.3f} / {med['rust_all']:.3f} s")
    for key, what in (("rust", "default"), ("rust_all", "scalars=all")):
        print(f"  ratio vs the Rust server ({what}): {best[key] / best['runner']:.2f}x best-to-best, "
              f"{med[key] / med['runner']:.2f}x median-to-median (target >= 2x)")


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
    from runner.metrics.tfrecord import frame

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
    ap.add_argument("--data", default="/tmp/runner-tb-read", help="where the event file is cached (by size)")
    ap.add_argument("--child", choices=["runner", "accumulator"])
    ap.add_argument("--rounds", type=int, default=5, help="whole-process runs of each")
    ap.add_argument("--runner-rounds", type=int, default=3, help="in-process reads by runner")
    ap.add_argument("--no-accumulator", action="store_true", help="skip EventAccumulator (25-45 s) and the tail")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.data)
        return
    logdir = Path(args.data) / f"tb-{args.steps}"
    if not any(logdir.glob("*tfevents*")):
        print(f"writing {args.steps:,} steps x 3 tags with torch's SummaryWriter into {logdir} (once) ...", flush=True)
        t0 = time.perf_counter()
        scratch = logdir.with_name(logdir.name + ".writing")
        shutil.rmtree(scratch, ignore_errors=True)
        write(scratch, 0, args.steps)
        shutil.rmtree(logdir, ignore_errors=True)
        scratch.rename(logdir)  # cached only once whole
        print(f"  written in {time.perf_counter() - t0:.1f} s", flush=True)
    size = sum(p.stat().st_size for p in logdir.glob("*tfevents*"))
    print(f"file: {size / 1e6:.1f} MB, {3 * args.steps:,} scalars")
    whole_process(logdir, args.steps, args.rounds)
    if args.no_accumulator:
        return
    runs = [measure("runner", logdir) for _ in range(args.runner_rounds)]
    ours = min(runs, key=lambda r: r["seconds"])
    theirs = measure("accumulator", logdir)
    assert ours["scalars"] == theirs["scalars"] == 3 * args.steps, (ours, theirs)
    each = ", ".join("%.3f" % r["seconds"] for r in runs)
    print(f"full read in-process, runner (CRC checked): {ours['seconds']:.3f} s (best of {len(runs)}: {each}), "
          f"peak RSS {ours['peak_rss_mb']:.0f} MB")
    print(f"full read in-process, EventAccumulator:     {theirs['seconds']:.3f} s, peak RSS {theirs['peak_rss_mb']:.0f} MB")
    print(f"ratio: runner is {theirs['seconds'] / ours['seconds']:.1f}x faster (target >= 20x)")
    times, empty = tail_times(logdir, args.steps)
    print(f"tail of 1,000 new steps x 3 tags: median {statistics.median(times) * 1000:.2f} ms, "
          f"max {max(times) * 1000:.2f} ms over {len(times)} appends (target < 10 ms)")
    print(f"poll with nothing new: {empty * 1000:.2f} ms")


if __name__ == "__main__":
    main()
