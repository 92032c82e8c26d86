"""One `runner serve` supervising many phases at once: its CPU, memory, store growth, guard reaction and inbox
pick-up as phases are added.

    .venv/bin/python benchmarks/server_scale.py [--sizes 1 8 32] [--seconds 40]

For each size N: a fresh run store, `runner serve --gpus none --cpu-slots N --inbox DIR` as its own process, and N
runs submitted to it (`runner apply`, which finds the server).  Each phase is a light trainer in a real container
(image runner-trainer:latest): 5 scalars every 0.1 s (50 scalars/s) to TensorBoard (flushed every second), a small
checkpoint every 3 s (keep-last-1, so the vault works), and, at a set time, a NaN (flushed; it prints
``VISIBLE t``) which the phase's `non_finite` guard trips on (the trainer prints ``SIGTERM t``).
Measured, for the server process only (not the containers): CPU as % of one core and peak RSS over the steady
state (all N phases running), the run store's growth (runner.db with its WAL) per minute, guard reaction p50/max
(SIGTERM − VISIBLE, host clock) over the N phases, and inbox pick-up (a spec renamed into the inbox → its run
recorded) while the N phases run.  Targets (issue 23): at 32 phases < 1 core and < 500 MB, reaction p50 < 0.5 s.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK = os.sysconf("SC_CLK_TCK")

TRAINER = r'''
import os, signal, sys, time, torch
from torch.utils.tensorboard import SummaryWriter
folder, bad_at = sys.argv[1], float(sys.argv[2])
def on_term(*_):
    print(f"SIGTERM {time.time():.6f}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
os.makedirs(folder + "/ckpt", exist_ok=True)
w = SummaryWriter(log_dir=folder + "/tb", flush_secs=1)
t0, last_save, step = time.time(), 0.0, 0
while True:
    step += 1
    bad = time.time() >= bad_at
    for k in range(5):
        w.add_scalar(f"train/m{k}", float("nan") if bad and k == 0 else 1.0 / step, step)
    if bad:
        w.flush()
        print(f"VISIBLE {time.time():.6f}", flush=True)
        time.sleep(60)
    if time.time() - last_save >= 3:
        last_save = time.time()
        torch.save({"step": step, "w": torch.zeros(1000)}, f"{folder}/ckpt/model_step{step}.pth.tmp")
        os.replace(f"{folder}/ckpt/model_step{step}.pth.tmp", f"{folder}/ckpt/model_step{step}.pth")
        for name in os.listdir(folder + "/ckpt"):
            if name.endswith(".pth") and name != f"model_step{step}.pth":
                os.remove(f"{folder}/ckpt/{name}")
    time.sleep(0.1)
'''


def spec(i: int, bad_at: float) -> str:
    return textwrap.dedent(f"""\
        apiVersion: runner/v1
        kind: Phase
        name: scale-{i}
        container:
          image: runner-trainer:latest
          command: [python3, -c, {json.dumps(TRAINER)}, "${{{{ phase.dir }}}}", "{bad_at:.3f}"]
          memory: 1g
          stop_grace_period: 5s
          mounts: [{{source: "${{{{ phase.dir }}}}", target: "${{{{ phase.dir }}}}", create: true}}]
        metrics:
          tensorboard: {{logdir: "${{{{ phase.dir }}}}/tb", tags: {{m0: train/m0, m1: train/m1}}}}
        checkpoints:
          dir: "${{{{ phase.dir }}}}/ckpt"
          pattern: "model_step{{step}}.pth"
          keep: {{by: m1, mode: min, best: 1, latest: 1}}
        guards:
          - {{metric: m0, non_finite: true}}
        """)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def rss_mb(pid: int) -> float:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


def store_bytes(runs: Path) -> int:
    """The run store's data: its write-ahead log copied into runner.db first (a passive checkpoint never blocks the
    server), so a WAL that has not been checkpointed yet is not counted as growth."""
    con = sqlite3.connect(str(runs / "runner.db"), timeout=30)
    try:
        con.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        con.close()
    return (runs / "runner.db").stat().st_size


def runner(state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", "--state", str(state), *args],
                          capture_output=True, text=True, timeout=120)


def phases(state: Path) -> list[dict]:
    con = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=30)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT run_id, name, status, log_path FROM phases")]
    finally:
        con.close()


def run_count(state: Path) -> int:
    con = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    finally:
        con.close()


def size(n: int, seconds: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"scale{n}-"))
    runs, inbox = tmp / "runs", tmp / "inbox"
    runs.mkdir()
    (tmp / "specs").mkdir()
    state = runs / "runner.db"
    log = open(tmp / "serve.log", "ab")
    server = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(state), "serve", "--gpus", "none",
                               "--cpu-slots", str(n), "--inbox", str(inbox), "--quiet", "0.5", "--specs", str(tmp / "specs")],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (runs / "server.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        bad_at = time.time() + 20 + 0.5 * n + seconds  # after every phase started and the steady state was measured
        for i in range(n):
            (tmp / "specs" / f"s{i}.yaml").write_text(spec(i, bad_at))
            out = runner(state, "apply", str(tmp / "specs" / f"s{i}.yaml"))
            if out.returncode:
                raise SystemExit(f"submit failed: {out.stderr}")
        deadline = time.monotonic() + 120 + 2 * n
        while sum(p["status"] == "running" for p in phases(state)) < n and time.monotonic() < deadline:
            time.sleep(0.5)
        running = sum(p["status"] == "running" for p in phases(state))
        time.sleep(3)  # let every phase settle into its steady state
        c0, s0, t0, peak = cpu_s(server.pid), store_bytes(runs), time.monotonic(), 0.0
        pickups = []
        while time.monotonic() - t0 < seconds:
            peak = max(peak, rss_mb(server.pid))
            if len(pickups) < 3 and time.monotonic() - t0 > 5 * (len(pickups) + 1):
                name = f"drop{len(pickups)}.yaml"
                part = inbox / f".{name}.part"
                part.write_text(textwrap.dedent(f"""\
                    apiVersion: runner/v1
                    kind: Phase
                    name: drop-{len(pickups)}
                    container: {{image: runner-base:bookworm, command: [sh, -c, "exit 0"]}}
                    """))
                before = run_count(state)
                at = time.monotonic()
                os.rename(part, inbox / name)
                while run_count(state) == before and time.monotonic() - at < 30:
                    time.sleep(0.01)
                pickups.append(time.monotonic() - at)
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        cpu = (cpu_s(server.pid) - c0) / elapsed * 100
        growth = (store_bytes(runs) - s0) / elapsed * 60 / 1e6
        # every phase trips on its NaN; reaction from each container's log
        deadline = time.monotonic() + 60 + n
        while any(p["status"] == "running" and p["name"].startswith("scale-") for p in phases(state)) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        reactions = []
        for p in phases(state):
            if not p["name"].startswith("scale-") or not p["log_path"] or not Path(p["log_path"]).exists():
                continue
            text = Path(p["log_path"]).read_text()
            v, s = re.search(r"VISIBLE ([\d.]+)", text), re.search(r"SIGTERM ([\d.]+)", text)
            if v and s:
                reactions.append(float(s.group(1)) - float(v.group(1)))
        return {"phases": n, "running": running, "cpu_pct": cpu, "rss_mb": peak, "store_mb_per_min": growth,
                "reaction_p50": statistics.median(reactions) if reactions else None,
                "reaction_max": max(reactions) if reactions else None, "trips": len(reactions),
                "pickup_p50": statistics.median(pickups) if pickups else None}
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", "label=runner.run-id"], capture_output=True,
                             text=True).stdout.split()
        mine = [c for c in ids if str(tmp) in subprocess.run(["docker", "inspect", "-f", "{{json .Mounts}}", c],
                                                             capture_output=True, text=True).stdout]
        if mine:
            subprocess.run(["docker", "rm", "-f", *mine], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=30.0, help="steady-state measuring window per size")
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        r = size(n, args.seconds)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print("\nrunner serve, per size (server process only; targets at 32: < 100% CPU, < 500 MB, reaction p50 < 0.5 s):")
    print(f"{'phases':>6} {'running':>7} {'CPU %':>7} {'RSS MB':>7} {'store MB/min':>12} {'react p50':>9} "
          f"{'react max':>9} {'inbox p50':>9}")
    for r in rows:
        f = (lambda x: f"{x:.3f}" if x is not None else "-")
        print(f"{r['phases']:>6} {r['running']:>7} {r['cpu_pct']:>7.1f} {r['rss_mb']:>7.0f} {r['store_mb_per_min']:>12.2f} "
              f"{f(r['reaction_p50']):>9} {f(r['reaction_max']):>9} {f(r['pickup_p50']):>9}")
    base = rows[0]
    for r in rows[1:]:
        print(f"{r['phases']} phases vs {base['phases']}: CPU ×{r['cpu_pct'] / max(base['cpu_pct'], 0.1):.1f}, "
              f"RSS ×{r['rss_mb'] / max(base['rss_mb'], 1):.1f}")


if __name__ == "__main__":
    main()
