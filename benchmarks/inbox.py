"""Inbox pick-up: time from a spec file being complete in the inbox (renamed in, or closed
after an in-place write) to its run being recorded as queued, with the server's main loop
as `runner serve` runs it.  Reference: the same with no filesystem events (polling
fallback, e.g. a network filesystem), where only the --quiet rule applies.

    .venv/bin/python benchmarks/inbox.py [--files 20] [--quiet 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.backends.fake import FakeBackend  # noqa: E402
from runner.server.server import Server  # noqa: E402
from runner.store import Store  # noqa: E402

SPEC = """apiVersion: runner/v1
kind: Phase
name: bench-{i}
container:
  image: trainer:latest
  command: [python3, -c, "print({i})"]
"""


def measure(tmp: Path, files: int, quiet: float, events: bool) -> list[float]:
    runs = tmp / ("events" if events else "polling")
    store = Store(runs / "runner.db")
    server = Server(store, FakeBackend, runs, runs / "inbox", [], [], "bench", 1, quiet=quiet, tick=0.1,
                    say=lambda line: None)
    server._start_queued = lambda: None  # measure intake only: runs are not started
    if not events:
        server.inbox.watcher.start = lambda: None  # no observer: no hints, as on a network filesystem
    loop = threading.Thread(target=server.serve, daemon=True)
    loop.start()
    time.sleep(0.5)
    latencies = []
    for i in range(files):
        name = f"spec{i}.yaml"
        t0 = time.time()
        if i % 2:  # half renamed into place, half written in place
            part = server.inbox.folder / f".{name}.part"
            part.write_text(SPEC.format(i=i))
            os.rename(part, server.inbox.folder / name)
        else:
            (server.inbox.folder / name).write_text(SPEC.format(i=i))
        while (server.inbox.folder / name).exists():  # moved out once its outcome is recorded
            time.sleep(0.002)
        latencies.append(time.time() - t0)
    server.stop()
    loop.join(10)
    states = [r["state"] for r in store.intake(limit=files * 2)]
    assert states == ["accepted"] * files, [(r["name"], r["state"], r["reason"]) for r in store.intake()]
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--quiet", type=float, default=2.0, help="the --quiet setting (default of runner serve: 10)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        native = measure(Path(tmp), args.files, args.quiet, events=True)
        polled = measure(Path(tmp), args.files, args.quiet, events=False)
    for label, xs in (("inotify events", native), (f"no events (--quiet {args.quiet:g})", polled)):
        print(f"{label:28s} median {statistics.median(xs) * 1000:7.0f} ms   max {max(xs) * 1000:7.0f} ms   ({len(xs)} files)")
    print(f"ratio (no events / events, medians): {statistics.median(polled) / statistics.median(native):.1f}x")


if __name__ == "__main__":
    main()
