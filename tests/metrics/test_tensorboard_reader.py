"""runner's event-file reader against files written by real writers, compared with TensorBoard's own reader."""
import math
import os
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.metrics.sources import LogdirReader
from runner.metrics.tensorboard import parse_records

STEPS = list(range(0, 300, 3)) + [100000, 100001]  # varint lengths 1, 2 and 3 bytes


def loss(step, k=0):
    return 2.0 + math.sin(step / 17.0 + k) + (float("nan") if step == 150 and k == 0 else 0.0)


def write_torch(logdir):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for s in STEPS:
        w.add_scalar("train/text_loss", loss(s), s)
        w.add_scalar("train/mel_loss", loss(s, 1), s)
        if s % 2 == 0:
            w.add_scalar("val/loss", loss(s, 2), s)
    w.add_text("notes", "hello", 0)  # not a scalar: must be ignored
    w.close()


def write_tensorboardx(logdir):
    from tensorboardX import SummaryWriter

    w = SummaryWriter(str(logdir))
    for s in STEPS:
        w.add_scalar("train/text_loss", loss(s), s)
        w.add_scalars("group", {"a": loss(s, 1), "b": loss(s, 2)}, s)
    w.close()


def write_tb_writer(logdir):
    from tensorboard.summary import Writer

    w = Writer(str(logdir))
    for s in STEPS:
        w.add_scalar("train/text_loss", loss(s), s)
        w.add_scalar("train/lr", 1e-6 * (1 + s), s)
    w.flush()
    w.close()


def tensorboard_values(logdir) -> dict[str, dict[int, float]]:
    """What TensorBoard itself reads: scalars, and scalar tensors (tensorboard.summary.Writer)."""
    out: dict[str, dict[int, float]] = {}
    for root, _dirs, files in os.walk(logdir):
        if not any("tfevents" in f for f in files):
            continue
        acc = EventAccumulator(root, size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        rel = os.path.relpath(root, logdir)
        key = (lambda tag: tag) if rel == "." else (lambda tag: f"{rel}/{tag}")
        for tag in acc.Tags()["scalars"]:
            out.setdefault(key(tag), {}).update({e.step: e.value for e in acc.Scalars(tag)})
        for tag in acc.Tags()["tensors"]:
            if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
                continue
            from tensorboard.util import tensor_util

            out.setdefault(key(tag), {}).update({e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)})
    return out


def runner_values(logdir) -> dict[str, dict[int, float]]:
    reader = LogdirReader(logdir)
    points = reader.poll()
    assert reader.problems == []
    return {tag: dict(zip(s.tolist(), v.tolist())) for tag, (s, v, w) in points.items()}


def same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for tag in a:
        if a[tag].keys() != b[tag].keys():
            return False
        for step, x in a[tag].items():
            y = b[tag][step]
            if not (x == y or (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-6)):
                return False
    return True


@pytest.mark.parametrize("writer", [write_torch, write_tensorboardx, write_tb_writer])
def test_reads_exactly_what_tensorboard_reads(tmp_path, writer):
    writer(tmp_path)
    expected = tensorboard_values(tmp_path)
    got = runner_values(tmp_path)
    assert expected and same(got, expected), (sorted(got), sorted(expected))
    assert sum(len(v) for v in got.values()) >= len(STEPS)


def event_file(logdir: Path) -> Path:
    (path,) = [p for p in logdir.rglob("*tfevents*")]
    return path


def test_truncated_final_record_loses_only_that_record(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    for s in STEPS:
        w.add_scalar("loss", loss(s), s)
    w.close()
    path = event_file(tmp_path)
    data = path.read_bytes()
    full, _ = parse_records(data)
    cut, consumed = parse_records(data[:-7])
    assert not cut.problems
    assert consumed < len(data) - 7  # the partial record is left for the next read
    total_full = sum(len(s) for s, _, _ in full.points.values())
    total_cut = sum(len(s) for s, _, _ in cut.points.values())
    assert total_cut == total_full - 1


def test_incremental_reads_only_the_appended_bytes(tmp_path):
    write_torch(tmp_path)
    path = event_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 5])  # half, ending inside a record
    reader = LogdirReader(tmp_path)
    first = reader.poll()
    with open(path, "ab") as f:
        f.write(data[len(data) // 2 + 5 :])
    second = reader.poll()
    assert reader.poll() == {}
    merged = {}
    for part in (first, second):
        for tag, (s, v, w) in part.items():
            merged.setdefault(tag, {}).update(zip(s.tolist(), v.tolist()))
    assert same(merged, tensorboard_values(tmp_path))
    assert reader.offsets[str(path)] == len(data)


def test_crc_failure_is_reported_and_skipped(tmp_path):
    write_torch(tmp_path)
    path = event_file(tmp_path)
    data = bytearray(path.read_bytes())
    good, _ = parse_records(bytes(data))
    # Flip one byte inside the data of a record in the middle.
    chunk_offsets = []
    pos = 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 8], "little")
        chunk_offsets.append(pos)
        pos += 16 + n
    victim = chunk_offsets[len(chunk_offsets) // 2]
    data[victim + 12 + 3] ^= 0xFF
    bad, _ = parse_records(bytes(data), "f")
    assert len(bad.problems) == 1 and "fails its CRC" in bad.problems[0]
    assert sum(len(s) for s, _, _ in bad.points.values()) == sum(len(s) for s, _, _ in good.points.values()) - 1


def test_resumed_run_newest_write_wins(tmp_path):
    """A second event file that starts at a lower step replaces the older run from there on, as TensorBoard
    shows it (FAULTS row 55: the later steps of the abandoned run must not decide)."""
    from torch.utils.tensorboard import SummaryWriter
    from runner.metrics.series import MetricSet

    w = SummaryWriter(str(tmp_path), filename_suffix=".a")
    for s in range(0, 100, 10):
        w.add_scalar("loss", 10.0 + s, s, walltime=1000.0 + s)
    w.close()
    w = SummaryWriter(str(tmp_path), filename_suffix=".b")
    for s in range(50, 80, 10):
        w.add_scalar("loss", -1.0 * s, s, walltime=5000.0 + s)
    w.close()
    metrics = MetricSet()
    for name, (s, v, wt) in LogdirReader(tmp_path).poll().items():
        metrics.add(name, s, v, wt)
    series = metrics.series["loss"]
    got = dict(zip(series.steps.tolist(), series.values.tolist()))
    assert got == {0: 10.0, 10: 20.0, 20: 30.0, 30: 40.0, 40: 50.0, 50: -50.0, 60: -60.0, 70: -70.0}


def test_files_of_one_second_are_ordered_by_their_writers_counter_as_a_number(tmp_path):
    """SummaryWriter's file names end in a per-process counter: the tenth writer's file (".10") is newer than the
    ninth's (".9"), though it sorts first as text (a CI run took the older run's steps for the newest)."""
    for name in ("events.out.tfevents.1700000000.host.a.42.10.b", "events.out.tfevents.1700000000.host.a.42.9.a",
                 "events.out.tfevents.1699999999.host.a.42.11"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name.rsplit(".42.", 1)[1] for p in LogdirReader(tmp_path).files()] == ["11", "9.a", "10.b"]


def test_tags_map_to_short_names_and_subfolders_are_read(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "sub" / "deeper"))
    w.add_scalar("train/text_loss", 1.5, 7)
    w.add_scalar("train/other", 2.5, 7)
    w.close()
    points = LogdirReader(tmp_path, {"text_loss": "train/text_loss"}).poll()
    assert list(points) == ["text_loss"]
    assert sorted(LogdirReader(tmp_path).poll()) == ["sub/deeper/train/other", "sub/deeper/train/text_loss"]
    assert points["text_loss"][0].tolist() == [7] and points["text_loss"][1].tolist() == [1.5]


def test_a_corrupt_length_field_is_a_recorded_corruption_not_a_silent_stop(tmp_path):
    """A record's length field grown by 16 MiB (its header CRC no longer matches) looks like a record
    still being written; it must be reported, not waited on forever with half the run unread."""
    write_torch(tmp_path)
    path = event_file(tmp_path)
    data = bytearray(path.read_bytes())
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + int.from_bytes(data[pos : pos + 8], "little")
    victim = offsets[len(offsets) // 2]
    length = int.from_bytes(data[victim : victim + 8], "little") + 16 * 1024 * 1024
    data[victim : victim + 8] = length.to_bytes(8, "little")
    path.write_bytes(bytes(data))
    reader = LogdirReader(tmp_path)
    first = reader.poll()
    problems = reader.problems
    assert any("corrupt record header" in p and f"{length:,}" in p for p in problems), problems
    assert 0 < sum(len(s) for s, _, _ in first.values())  # what came before is read
    # The corruption stops that file only: a later event file (a restarted writer) is read as usual.
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path), filename_suffix=".more")
    w.add_scalar("train/text_loss", 1.0, 999999)
    w.close()
    later = reader.poll()
    assert 999999 in later["train/text_loss"][0].tolist()


def _writer_run(logdir, steps, value):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for s in steps:
        w.add_scalar("train/loss", value + s * 1e-4, s)
    w.close()


def test_row55_a_new_writer_restarting_at_step_1_replaces_the_older_runs_steps(tmp_path):
    import time

    from runner.metrics.sources import Sources, read_scalars

    _writer_run(tmp_path, range(1, 201), 1.49)  # the abandoned run
    time.sleep(1.1)  # event file names carry their creation second
    _writer_run(tmp_path, range(1, 51), 3.5)  # a new writer in the same logdir starts again
    metrics, problems = read_scalars(tmp_path, ["train/loss"])
    s = metrics.series["train/loss"]
    assert s.steps.tolist() == list(range(1, 51)) and s.values.min() > 3.4  # only the newest writer's steps
    assert any("starts again at step 1" in p for p in problems)
    # live, across polls: the old run read first, the new writer appearing later
    live = tmp_path / "live"
    live.mkdir()
    _writer_run(live, range(1, 201), 1.49)
    src = Sources(tensorboard=LogdirReader(live, {"loss": "train/loss"}))
    src.poll()
    assert src.metrics.series["loss"].last()[0] == 200 and not src.restarted
    time.sleep(1.1)
    _writer_run(live, range(1, 51), 3.5)
    src.poll()
    assert src.restarted == {"loss": (1, src.restarted["loss"][1])}
    s = src.metrics.series["loss"]
    assert s.steps.tolist() == list(range(1, 51)) and s.values.min() > 3.4


def test_row56_a_1gib_sparse_event_file_is_read_with_bounded_memory_and_reported(tmp_path):
    import resource
    import time

    _writer_run(tmp_path, range(1, 11), 1.0)
    sparse = tmp_path / "events.out.tfevents.9999999999.host.1.0"
    with open(sparse, "wb") as f:
        f.truncate(1024 ** 3)
    reader = LogdirReader(tmp_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    points = reader.poll()
    took = time.monotonic() - t0
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert points["train/loss"][0].tolist() == list(range(1, 11))  # the real file still read
    assert any("corrupt record header at byte 0" in p for p in reader.problems)
    assert grew_mb < 200 and took < 5, (grew_mb, took)
    reader.problems.clear()
    assert reader.poll() == {} and reader.problems == []  # not read again, not reported again
