"""The reader's fast path (periodic stretches checked and decoded against a template) against its general path
(every record framed, CRC-checked and decoded on its own), on files written by real writers, whole and corrupted:
the same points, the same problems.  And `runner metrics` prints byte for byte what it printed through rich."""
import io
import json
import math
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest

from runner.metrics.tffast import _segments
from runner.metrics.tfrecord import frame
from runner.metrics.tensorboard import parse_records

STEPS = [*range(0, 300), *range(16300, 16500), 2_000_000]  # varints of 1, 2, 3 and 4 bytes; stretches of each


def write_torch(logdir, steps=STEPS):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for s in steps:
        w.add_scalar("train/text_loss", 2.0 + math.sin(s / 7) + (math.nan if s == 50 else 0.0), s)
        w.add_scalar("train/mel_loss", 0.5 + math.cos(s / 5), s)
        if s % 2 == 0:
            w.add_scalar("val/loss", float(s) * 1e-3, s)
        if s == 100:
            w.add_text("notes", "a text record inside the stretch", s)
    w.close()


def write_tb_writer(logdir, steps=STEPS):
    from tensorboard.summary import Writer

    w = Writer(str(logdir))
    for s in steps:
        w.add_scalar("train/text_loss", 1.0 / (1 + s), s)
        w.add_scalar("train/lr", 1e-6 * (1 + s % 9), s)
    w.flush()
    w.close()


def write_tensorboardx(logdir, steps=STEPS):
    from tensorboardX import SummaryWriter

    w = SummaryWriter(str(logdir))
    for s in steps:
        w.add_scalar("train/text_loss", -float(s), s)
    w.close()


WRITERS = [write_torch, write_tb_writer, write_tensorboardx]


def event_bytes(logdir) -> bytes:
    (path,) = list(logdir.rglob("*tfevents*"))
    return path.read_bytes()


def assert_same(data: bytes):
    fast, fast_end = parse_records(data, "f", 0, {})
    slow, slow_end = parse_records(data, "f", 0, {}, fast=False)
    assert fast_end == slow_end
    assert fast.records == slow.records and fast.corrupt == slow.corrupt
    assert sorted(fast.problems) == sorted(slow.problems)
    assert fast.points.keys() == slow.points.keys()
    for tag, (s, v, w) in slow.points.items():
        fs, fv, fw = fast.points[tag]
        assert np.array_equal(fs, s) and np.array_equal(fw, w), tag
        assert np.array_equal(fv, v, equal_nan=True), tag
    return fast


@pytest.mark.parametrize("writer", WRITERS)
def test_fast_path_reads_what_the_general_path_reads(tmp_path, writer):
    writer(tmp_path)
    data = event_bytes(tmp_path)
    offsets, lengths, _ = frame(data)
    segments, loose = _segments(offsets, lengths)
    assert segments and loose.size < offsets.size // 4  # the fast path reads most of it
    chunk = assert_same(data)
    assert sum(len(s) for s, _, _ in chunk.points.values()) >= len(STEPS)
    for cut in (len(data) - 3, len(data) // 2, len(data) // 3 + 7):  # a record still being written
        assert_same(data[:cut])


@pytest.mark.parametrize("where", [0.1, 0.5, 0.97])
@pytest.mark.parametrize("writer", [write_torch, write_tb_writer])
def test_a_flipped_bit_anywhere_in_a_record_is_caught_as_on_the_general_path(tmp_path, writer, where):
    """Every byte of a record in the middle of a stretch (header, the template's constant bytes, wall time, step,
    value, CRC) flipped in turn: the record is reported and skipped, or the file read stops at a corrupt header,
    exactly as the general path does it; no flipped record is ever accepted."""
    writer(tmp_path)
    data = event_bytes(tmp_path)
    offsets, lengths, _ = frame(data)
    i = int(len(offsets) * where)
    start, end = int(offsets[i]), int(offsets[i]) + 16 + int(lengths[i])
    whole = parse_records(data)[0]
    total = sum(len(s) for s, _, _ in whole.points.values())
    for at in range(start, end):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[at] ^= bit
            chunk = assert_same(bytes(bad))
            assert chunk.problems, (at, bit)
            if at >= start + 12:  # data or its CRC: that record alone is lost
                assert sum(len(s) for s, _, _ in chunk.points.values()) <= total - 1


def test_the_first_record_of_a_stretch_failing_its_crc_does_not_become_the_template(tmp_path):
    write_torch(tmp_path, steps=range(200, 400))
    data = bytearray(event_bytes(tmp_path))
    offsets, lengths, _ = frame(bytes(data))
    for i in (1, 2, 3, 4):  # the first records after the file's version record
        data[int(offsets[i]) + 12 + 2] ^= 0x40  # a byte of the wall time
    chunk = assert_same(bytes(data))
    assert sum("fails its CRC" in p for p in chunk.problems) == 4


def run_cli(argv, fast=True, plain=True) -> str:
    """stdout of `runner metrics ...` in this process: the reader on its fast path or not, the table written
    directly or drawn by rich."""
    import runner.metrics.tensorboard as tb
    from runner.cli import main

    real = tb.parse_records
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        if not fast:
            mp.setattr("runner.metrics.sources.parse_records", lambda *a, **k: real(*a, **k, fast=False))
        if not plain:
            mp.setattr("runner.cli.metrics.plain_table", lambda *a: None)
        mp.setattr(sys, "stdout", out)
        with redirect_stdout(out):
            assert main(argv) == 0
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_runner_metrics_prints_byte_for_byte_what_the_general_path_and_rich_print(tmp_path, fmt):
    write_torch(tmp_path / "a")
    write_tb_writer(tmp_path / "b")
    argv = ["metrics", str(tmp_path), "--format", fmt]
    got = run_cli(argv)
    assert got == run_cli(argv, fast=False)
    if fmt == "table":
        assert got == run_cli(argv, plain=False)
        assert got.splitlines()[0].split() == ["TAG", "POINTS", "FIRST", "STEP", "LAST", "STEP", "LAST", "MIN", "MAX"]
    elif fmt == "json":
        assert math.isnan(float(json.loads(got)["a/train/text_loss"]["values"][50]))


@pytest.mark.parametrize("columns", ["40", "60", "200", "x"])
def test_the_plain_table_is_rich_s_table_at_any_console_width(tmp_path, monkeypatch, columns):
    write_torch(tmp_path / "a_long_subfolder_name_that_makes_the_table_wide")
    monkeypatch.setenv("COLUMNS", columns)
    argv = ["metrics", str(tmp_path)]
    assert run_cli(argv) == run_cli(argv, plain=False)


def test_runner_metrics_imports_neither_rich_nor_the_engine(tmp_path):
    """`runner metrics FILE` starts fast: only what the command needs is imported (issue 23)."""
    import subprocess

    write_torch(tmp_path)
    code = ("import sys; from runner.cli import main; rc = main(['metrics', sys.argv[1]]); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'pydantic', 'docker', 'yaml') "
            "or m in ('runner.engine', 'runner.store', 'runner.cli.apply')); "
            "print(bad, file=sys.stderr); sys.exit(rc or bool(bad))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "train/text_loss" in out.stdout
