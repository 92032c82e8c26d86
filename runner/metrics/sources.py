"""Metric sources read while a container runs: TensorBoard logdirs, JSONL files, stdout lines.

Each source is incremental (keeps byte offsets, reads only what was appended)
and returns new points per *short* metric name.  Offsets are plain data
(``offsets()`` / ``restore()``) so the store can persist them.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np

from runner.metrics.series import MetricSet
from runner.metrics.tensorboard import parse_records
from runner.safefs import open_regular

READ_BYTES = 16 * 1024 * 1024  # an event file is read this much at a time

Points = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def merge_points(into: Points, name: str, steps, values, walls) -> None:
    if name in into:
        s, v, w = into[name]
        into[name] = (np.concatenate([s, steps]), np.concatenate([v, values]), np.concatenate([w, walls]))
    else:
        into[name] = (np.asarray(steps, np.int64), np.asarray(values, np.float64), np.asarray(walls, np.float64))


class LogdirReader:
    """Every event file under a logdir (recursively), each read from its own offset.

    Tags of files in a subfolder are named "SUBFOLDER/TAG" (TensorBoard's runs).
    A ``tags`` mapping may name either form: "train/loss" matches that tag in
    any subfolder, "version_0/train/loss" only there."""

    def __init__(self, logdir: str | Path, tags: dict[str, str] | None = None, only: str | Path | None = None):
        self.logdir = Path(logdir)
        self.only = Path(only) if only is not None else None  # read just this event file
        self.names = {tag: name for name, tag in (tags or {}).items()}  # tag → short name
        self.offsets: dict[str, int] = {}
        self.scalar_tags: dict[str, str] = {}
        self.problems: list[str] = []
        self.broken: set[str] = set()  # files with a corrupt header: not read again
        # A new writer whose file starts at or below steps an older file already logged (a trainer restarted
        # or resumed into the same logdir): like TensorBoard, the newer run's steps replace the older run's
        # from there on.  name → (file that last logged it, its highest step); restarts: name → from step.
        self.writer: dict[str, tuple[str, int]] = {}
        self.restarts: dict[str, tuple[int, str]] = {}
        # A phase's metrics are its own: points written before it started (another run in the same logdir, an
        # earlier attempt) are not read into it.  ``since``: the phase's start (wall clock), None = everything.
        self.since: float | None = None
        self.ignored: dict[str, int] = {}  # name → points left out as older than ``since``
        self.file_starts: dict[str, tuple[float, int]] = {}  # event file → (first wall time, first step) it logged

    def files(self) -> list[Path]:
        if self.only is not None:
            return [self.only] if self.only.is_file() else []
        if not self.logdir.is_dir():
            return []
        found = []
        for root, _dirs, names in os.walk(self.logdir):
            found += [Path(root) / n for n in names if "tfevents" in n]
        # Event file names embed their creation time; older files first so newer writes win ties.  Within one second
        # the writer's counter orders them (…tfevents.T.host.pid.N): compared as a number, ".10" after ".9".
        return sorted(found, key=lambda p: (_created(p), _natural(str(p))))

    def poll(self) -> Points:
        out: Points = {}
        for path in self.files():
            key = str(path)
            if key in self.broken:
                continue
            offset = self.offsets.get(key, 0)
            try:
                with open_regular(path) as f:  # never a symlink out of the logdir, never a FIFO
                    size = os.fstat(f.fileno()).st_size
                    if size < offset:
                        self.problems.append(f"{path}: file shrank from {offset} to {size} bytes; reading it again from the start")
                        offset = 0
                    # In pieces of READ_BYTES: memory stays bounded whatever the file (a 1 GiB sparse file, a flood).
                    while offset < size:
                        f.seek(offset)
                        data = f.read(min(size - offset, READ_BYTES))
                        chunk, consumed = parse_records(data, key, offset, self.scalar_tags)
                        self.problems += chunk.problems
                        self._add(out, path, chunk)
                        if chunk.corrupt:  # nothing after a corrupt header can be framed: the file is read no more
                            self.broken.add(key)
                            break
                        if consumed == 0:
                            if len(data) < READ_BYTES:
                                break  # a record still being written
                            # One record larger than a piece (an image, a histogram: never a scalar): skipped unread
                            # once it is all there (its header passed its CRC above).
                            length = int.from_bytes(data[:8], "little")
                            if offset + 16 + length > size:
                                break
                            offset += 16 + length
                            continue
                        offset += consumed
                    self.offsets[key] = offset
            except OSError as exc:
                self.problems.append(f"{path}: {exc.strerror or exc}")
                continue
        return out

    def _add(self, out: Points, path: Path, chunk) -> None:
        # Like TensorBoard, a subfolder is a run of its own: its tags are "SUBFOLDER/TAG".
        rel = os.path.relpath(path.parent, self.logdir)
        for tag, (s, v, w) in chunk.points.items():
            qualified = tag if rel == "." else f"{rel}/{tag}"
            name = (self.names.get(qualified) or self.names.get(tag)) if self.names else qualified
            if name is None or not len(s):
                continue
            key = str(path)
            start = self.file_starts.get(key)
            if start is None or float(np.min(w)) < start[0]:
                self.file_starts[key] = (float(np.min(w)), int(np.min(s)))
            if self.since is not None:
                mine = w >= self.since - SINCE_SLACK_S
                if not mine.all():
                    if name not in self.ignored:
                        self.problems.append(
                            f"{path}: {name} has points written before this phase started (another run, or an earlier "
                            "attempt, in the same logdir): left out — a phase is judged on its own steps only")
                    self.ignored[name] = self.ignored.get(name, 0) + int((~mine).sum())
                    s, v, w = s[mine], v[mine], w[mine]
                    if not len(s):
                        continue
            first, last = int(np.min(s)), int(np.max(s))
            prev = self.writer.get(name)
            if prev is not None and prev[0] != key and first <= prev[1]:
                self.restarts[name] = (min(first, self.restarts.get(name, (first, ""))[0]), key)
                if name in out:  # the older run's points of this same read, from the restart on
                    ps, pv, pw = out[name]
                    keep = ps < first
                    out[name] = (ps[keep], pv[keep], pw[keep])
                self.writer[name] = (key, last)
            else:
                self.writer[name] = (key, max(last, prev[1]) if prev is not None and prev[0] == key else last)
            merge_points(out, name, s, v, w)


SINCE_SLACK_S = 5.0  # clocks of the trainer and of runner: the same host (or an NTP-synced node)


def _created(path: Path) -> float:
    m = re.search(r"tfevents\.(\d+(?:\.\d+)?)", path.name)
    return float(m.group(1)) if m else 0.0


def _natural(text: str) -> tuple:
    """A sort key comparing the runs of digits in ``text`` as numbers (str and int alternate: always comparable)."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text)))


class JsonlReader:
    """A JSON-lines file; a half-written last line waits for the next poll."""

    def __init__(self, path: str | Path, step_field: str = "step", fields: dict[str, str] | None = None):
        self.path = Path(path)
        self.step_field = step_field
        self.fields = fields or {}
        self.offset = 0
        self.line_no = 0
        self.problems: list[str] = []

    def poll(self) -> Points:
        out: Points = {}
        try:
            with open_regular(self.path) as f:  # never a symlink out of the phase folder, never a FIFO
                f.seek(self.offset)
                data = f.read(READ_BYTES)  # bounded: the rest on the next poll
        except FileNotFoundError:
            return out
        except OSError as exc:
            self.problems.append(f"{self.path}: {exc.strerror or exc}")
            return out
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= READ_BYTES:  # one line longer than a piece: not a metrics record, skipped
                self.problems.append(f"{self.path}: a line of more than {READ_BYTES:,} bytes at byte {self.offset:,}; skipped")
                self.offset += len(data)
            return out
        self.offset += end + 1
        now = time.time()
        rows: dict[str, list] = {}
        for raw in data[: end + 1].splitlines():
            self.line_no += 1
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                step = int(obj[self.step_field])
            except (ValueError, KeyError, TypeError):
                self.problems.append(f"{self.path}:{self.line_no}: not a JSON object with an integer {self.step_field!r}; skipped")
                continue
            wall = float(obj.get("wall_time", now)) if isinstance(obj.get("wall_time", now), (int, float)) else now
            pairs = ((n, obj.get(k)) for n, k in self.fields.items()) if self.fields else (
                (k, v) for k, v in obj.items() if k not in (self.step_field, "wall_time"))
            for name, value in pairs:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                rows.setdefault(name, []).append((step, float(value), wall))
        for name, items in rows.items():
            arr = np.array(items, dtype=np.float64)
            merge_points(out, name, arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2])
        return out


_NUMBER = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


class StdoutParser:
    """Metrics from container output lines: one regex for the step, one per metric."""

    def __init__(self, step: str, patterns: dict[str, str]):
        self.step_rx = re.compile(step)
        self.rxs = {name: re.compile(p) for name, p in patterns.items()}
        self.step: int | None = None
        self.pending: dict[str, list] = {}

    def feed(self, line: str) -> None:
        m = self.step_rx.search(line)
        if m:
            try:
                self.step = int(m.group(1))
            except ValueError:
                pass
        if self.step is None:
            return
        for name, rx in self.rxs.items():
            m = rx.search(line)
            if m:
                text = m.group(1).strip().lower()
                try:
                    value = _NUMBER[text] if text in _NUMBER else float(text)
                except ValueError:
                    continue
                self.pending.setdefault(name, []).append((self.step, value, time.time()))

    def poll(self) -> Points:
        out: Points = {}
        pending, self.pending = self.pending, {}
        for name, items in pending.items():
            arr = np.array(items, dtype=np.float64)
            merge_points(out, name, arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2])
        return out


class Sources:
    """All metric sources of a phase, filling one MetricSet."""

    def __init__(self, tensorboard: LogdirReader | None = None, jsonl: JsonlReader | None = None,
                 stdout: StdoutParser | None = None):
        self.tensorboard = tensorboard
        self.jsonl = jsonl
        self.stdout = stdout
        self.metrics = MetricSet()
        self.restarted: dict[str, tuple[int, str]] = {}  # the last poll's restarts: name → (from step, new file)

    def poll(self) -> Points:
        """New points since the last poll (also added to ``self.metrics``).  When a new writer restarted a
        metric's steps, the older run's points from there on are dropped first (``restarted`` says which)."""
        new: Points = {}
        for src in (self.tensorboard, self.jsonl, self.stdout):
            if src is None:
                continue
            for name, (s, v, w) in src.poll().items():
                merge_points(new, name, s, v, w)
        self.restarted = {}
        if self.tensorboard is not None and self.tensorboard.restarts:
            self.restarted, self.tensorboard.restarts = self.tensorboard.restarts, {}
            for name, (step, _file) in self.restarted.items():
                self.metrics.get(name).truncate_from(step)
        for name, (s, v, w) in new.items():
            self.metrics.add(name, s, v, w)
        return new

    def problems(self) -> list[str]:
        out = []
        for src in (self.tensorboard, self.jsonl):
            if src is not None and src.problems:
                out += src.problems
                src.problems = []
        return out

    def offsets(self) -> dict[str, int]:
        offs = dict(self.tensorboard.offsets) if self.tensorboard else {}
        if self.jsonl:
            offs[str(self.jsonl.path)] = self.jsonl.offset
        return offs


def read_scalars(path: str | Path, tags: list[str] | tuple[str, ...] = ()) -> tuple[MetricSet, list[str]]:
    """Every scalar runner reads from a logdir, one event file or a JSONL file (``runner metrics``), after the
    newest-wins rule; ``tags`` keeps only those. Returns the metrics and the readers' problems (warnings)."""
    from runner.errors import NotFound

    path = Path(path)
    if not path.exists():
        raise NotFound(f"{path} does not exist")
    reader: LogdirReader | JsonlReader
    if path.is_file() and path.suffix in (".jsonl", ".json", ".ndjson"):
        reader = JsonlReader(path)
    elif path.is_file():
        reader = LogdirReader(path.parent, only=path)
    else:
        reader = LogdirReader(path)
    metrics = MetricSet()
    for name, (st, v, w) in reader.poll().items():
        if not tags or name in tags:
            metrics.add(name, st, v, w)
    problems = list(reader.problems)
    for name, (step, file) in (reader.restarts.items() if isinstance(reader, LogdirReader) else ()):
        problems.append(f"{name}: {file} starts again at step {step:,} below steps an older event file logged (another "
                        f"run in the same logdir); the newest writer's steps are used from step {step:,} on")
    return metrics, problems
