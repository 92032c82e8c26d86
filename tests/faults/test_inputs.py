"""Rows 42 and 43: bad bytes in an event file, a spec nested 5,000 deep (through the CLI)."""
import struct



def event_file(tmp_path, points=100):
    from tensorboardX import SummaryWriter

    logdir = tmp_path / "tb"
    w = SummaryWriter(str(logdir))
    for i in range(points):
        w.add_scalar("loss", 1.0 / (i + 1), i)
    w.close()
    (path,) = logdir.glob("events.out.tfevents.*")
    return logdir, path


def test_row42_corrupt_length_field_is_a_reported_corruption_never_a_silent_stop(cli, tmp_path):
    logdir, path = event_file(tmp_path)
    data = bytearray(path.read_bytes())
    offsets, off = [], 0
    while off < len(data):
        offsets.append(off)
        (n,) = struct.unpack_from("<Q", data, off)
        off += 12 + n + 4
    middle = offsets[len(offsets) // 2]
    (n,) = struct.unpack_from("<Q", data, middle)
    struct.pack_into("<Q", data, middle, n + 16 * 1024 * 1024)  # the length's CRC no longer matches
    path.write_bytes(bytes(data))
    out = cli("metrics", str(logdir), "--format", "csv")
    assert out.returncode == 0, out.stderr
    assert any(w in out.stderr.lower() for w in ("corrupt", "crc", "length")), out.stderr  # said, not silent


def deep_spec(tmp_path):
    spec = tmp_path / "deep.yaml"
    spec.write_text("apiVersion: runner/v1\nkind: Phase\nname: deep\ncontainer:\n  image: x\n  command: "
                    + "[" * 5000 + "]" * 5000 + "\n")
    return spec


def test_row43_deeply_nested_yaml_is_a_located_error(cli, tmp_path):
    spec = deep_spec(tmp_path)
    out = cli("validate", str(spec))
    assert out.returncode not in (0, 3) and "RecursionError" not in out.stderr and "Traceback" not in out.stderr
    assert f"{spec}:" in out.stdout and "nested too deeply" in out.stdout, out.stdout + out.stderr  # file:line:col


def test_row43_the_nesting_error_points_at_the_nesting(cli, tmp_path):
    spec = deep_spec(tmp_path)
    out = cli("validate", str(spec))
    assert f"{spec}:6:" in out.stdout, out.stdout
