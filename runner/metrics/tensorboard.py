"""Incremental, CRC-checked reader of TensorBoard event files.

The only module that knows the event file format.  It does not import
tensorboard or protobuf: records are framed and decoded directly, which is
what makes it fast (see benchmarks/tb_read.py).

Format: a sequence of TFRecords — uint64 length, uint32 masked CRC32C of the
length, ``length`` bytes of an ``Event`` protobuf, uint32 masked CRC32C of the
data.  Scalars come either as ``simple_value`` (torch's SummaryWriter,
tensorboardX) or as a rank-0 float tensor with "scalars" plugin metadata
(``tensorboard.summary.Writer``, TF2).

How it stays fast on 1.5 M records:
* framing: records of a trainer repeat a short pattern of lengths (one per tag),
  so record offsets are predicted a block at a time and verified in numpy; a
  mismatch falls back to a Python walk for a few records;
* CRC: every record's header and data CRC is checked, column-wise over all
  records of one length at once (runner.metrics.crc32c.crc32c_rows);
* decoding: records of one byte layout (same tag, same field positions) are
  decoded together: wall time, step varint and value are columns of a matrix.
  Records that fit no common layout are decoded one by one.

Incremental: a reader keeps its byte offset per file and reads only what was
appended.  A half-written last record is left for the next read, without error.
A record whose CRC fails is skipped and reported, never accepted.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from runner.metrics.crc32c import crc32c, crc32c_rows, masked

HEADER = 12  # uint64 length + uint32 masked crc
FOOTER = 4
MAX_RECORD = 256 * 1024 * 1024  # a length above this is a corrupt header, not a record
_FLOAT, _DOUBLE = 1, 2  # TensorFlow DataType enum values


# ---------------------------------------------------------------------------- protobuf wire decoding (slow path)


def _varint(b: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        x = b[i]
        i += 1
        result |= (x & 0x7F) << shift
        if x < 0x80:
            return result, i
        shift += 7


def _fields(b: bytes, start: int, end: int):
    """(field number, wire type, value or (start, end), field start) for each field in b[start:end]."""
    i = start
    while i < end:
        key, j = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, k = _varint(b, j)
            yield num, wt, (v, j, k), i
        elif wt == 1:
            yield num, wt, (j, j + 8), i
            k = j + 8
        elif wt == 2:
            n, j2 = _varint(b, j)
            yield num, wt, (j2, j2 + n), i
            k = j2 + n
        elif wt == 5:
            yield num, wt, (j, j + 4), i
            k = j + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if k > end:
            raise ValueError("field runs past the end of its message")
        i = k


@dataclass(frozen=True)
class Layout:
    """Where the variable parts of a one-scalar event sit (offsets into the record's data)."""

    tag: str
    wall_off: int
    step_off: int
    step_len: int
    value_off: int
    value_kind: str  # "<f4" or "<f8"


@dataclass
class Decoded:
    wall: float
    step: int
    values: list[tuple[str, float]]
    layout: Layout | None  # set when the event holds exactly one scalar and fixed fields


def decode_event(b: bytes, scalar_tags: dict[str, str]) -> Decoded:
    """Decode one Event.  ``scalar_tags`` maps tag → plugin name seen in metadata (updated)."""
    wall, step = 0.0, 0
    wall_off = step_off = step_len = -1
    values: list[tuple[str, float]] = []
    value_at: list[tuple[int, str]] = []
    for num, wt, v, _ in _fields(b, 0, len(b)):
        if num == 1 and wt == 1:
            wall = struct.unpack_from("<d", b, v[0])[0]
            wall_off = v[0]
        elif num == 2 and wt == 0:
            step, step_off, end = v
            step_len = end - step_off
        elif num == 5 and wt == 2:
            for snum, swt, sv, _ in _fields(b, v[0], v[1]):
                if snum == 1 and swt == 2:
                    _decode_value(b, sv, scalar_tags, values, value_at)
    layout = None
    if len(values) == 1 and wall_off >= 0 and step_off >= 0 and value_at:
        off, kind = value_at[0]
        layout = Layout(values[0][0], wall_off, step_off, step_len, off, kind)
    return Decoded(wall, step, values, layout)


def _decode_value(b, span, scalar_tags, values, value_at) -> None:
    tag = None
    simple = None
    tensor = None
    plugin = None
    for num, wt, v, _ in _fields(b, span[0], span[1]):
        if num == 1 and wt == 2:
            tag = b[v[0]:v[1]].decode("utf-8", "replace")
        elif num == 2 and wt == 5:
            simple = v[0]
        elif num == 8 and wt == 2:
            tensor = v
        elif num == 9 and wt == 2:
            for mnum, mwt, mv, _ in _fields(b, v[0], v[1]):
                if mnum == 1 and mwt == 2:  # plugin_data
                    for pnum, pwt, pv, _ in _fields(b, mv[0], mv[1]):
                        if pnum == 1 and pwt == 2:
                            plugin = b[pv[0]:pv[1]].decode("utf-8", "replace")
    if tag is None:
        return
    if plugin is not None:
        scalar_tags[tag] = plugin
    if simple is not None:
        values.append((tag, struct.unpack_from("<f", b, simple)[0]))
        value_at.append((simple, "<f4"))
        return
    if tensor is None or scalar_tags.get(tag, "scalars") != "scalars":
        return
    found = _tensor_scalar(b, tensor)
    if found is not None:
        off, kind = found
        values.append((tag, float(np.frombuffer(b, dtype=kind, count=1, offset=off)[0])))
        value_at.append((off, kind))


def _tensor_scalar(b, span) -> tuple[int, str] | None:
    """Offset and dtype of the single float/double of a rank-0 TensorProto, else None."""
    dtype = None
    rank = 0
    where = None
    for num, wt, v, _ in _fields(b, span[0], span[1]):
        if num == 1 and wt == 0:
            dtype = v[0]
        elif num == 2 and wt == 2:
            rank = sum(1 for n, *_ in _fields(b, v[0], v[1]) if n == 2)
        elif num == 4 and wt == 2:  # tensor_content
            where = ("content", v)
        elif num == 5:  # float_val: packed (wt 2) or not (wt 5)
            where = ("float", v)
        elif num == 6:  # double_val
            where = ("double", v)
    if rank != 0 or dtype not in (_FLOAT, _DOUBLE) or where is None:
        return None
    kind = "<f4" if dtype == _FLOAT else "<f8"
    size = 4 if dtype == _FLOAT else 8
    start, end = where[1]
    if end - start != size:
        return None
    return start, kind


# ---------------------------------------------------------------------------- framing


def _rows(buf: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """An (N, width) copy of the bytes at each offset (a row gather on a windowed view:
    no N×width index array is built)."""
    return sliding_window_view(buf, width)[offsets]


def _u64_at(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return _rows(buf, offsets, 8).view("<u8").ravel()


def _u32_at(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return _rows(buf, offsets, 4).view("<u4").ravel()


def _corrupt_header_at(data: bytes, p: int) -> bool:
    """Whether a full record header at ``p`` is corrupt (a half-written one is not: it waits)."""
    if p + HEADER > len(data):
        return False
    length = int.from_bytes(data[p:p + 8], "little")
    crc = int.from_bytes(data[p + 8:p + 12], "little")
    return length > MAX_RECORD or masked(crc32c(data[p:p + 8])) != crc


def frame(data: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """Offsets and lengths of the complete records in ``data``, and where the unread rest begins.

    Lengths are predicted a block at a time from the recent pattern and verified
    in numpy; the Python walk only runs where the pattern breaks."""
    n = len(data)
    buf = np.frombuffer(data, dtype=np.uint8)
    offs: list[np.ndarray] = []
    lens: list[np.ndarray] = []
    recent: list[int] = []
    p = 0
    block = 64
    while True:
        # A few records the slow way (also learns the pattern).
        walked_o, walked_l = [], []
        for _ in range(8):
            if p + HEADER > n:
                break
            length = int.from_bytes(data[p:p + 8], "little")
            if length > MAX_RECORD or p + HEADER + length + FOOTER > n:
                break
            walked_o.append(p)
            walked_l.append(length)
            p += HEADER + length + FOOTER
        if walked_o:
            offs.append(np.array(walked_o, dtype=np.int64))
            lens.append(np.array(walked_l, dtype=np.int64))
            recent = (recent + walked_l)[-16:]
        pattern = _period(recent)
        progressed = bool(walked_o)
        if pattern:
            cycle = sum(pattern) + len(pattern) * (HEADER + FOOTER)
            cycles = min((n - p) // cycle, block)
            if cycles > 0:
                rel = np.concatenate([[0], np.cumsum(np.array(pattern) + HEADER + FOOTER)[:-1]])
                cand = (p + np.arange(cycles, dtype=np.int64)[:, None] * cycle + rel).ravel()
                expected = np.tile(np.array(pattern, dtype=np.uint64), cycles)
                bad = np.flatnonzero(_u64_at(buf, cand) != expected)
                good = int(bad[0]) if bad.size else cand.size
                if good:
                    offs.append(cand[:good])
                    lens.append(expected[:good].astype(np.int64))
                    p = int(cand[good]) if good < cand.size else p + cycles * cycle
                    progressed = True
                    block = block * 4 if good == cand.size else 64
        if not progressed:
            break
    if not offs:
        return np.empty(0, np.int64), np.empty(0, np.int64), p
    return np.concatenate(offs), np.concatenate(lens), p


def _period(lengths: list[int]) -> list[int] | None:
    """The shortest repeating pattern at the end of ``lengths`` (seen at least twice)."""
    for k in range(1, 9):
        if len(lengths) >= 2 * k and lengths[-k:] == lengths[-2 * k:-k]:
            return lengths[-k:]
    return None


# ---------------------------------------------------------------------------- reading


@dataclass
class Chunk:
    """Scalars read in one pass: per tag, arrays of steps, values and wall times."""

    points: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    records: int = 0
    corrupt: bool = False  # a header failed its CRC (or is absurd): nothing after it can be framed


def parse_records(data: bytes, file: str = "", base: int = 0, scalar_tags: dict[str, str] | None = None) -> tuple[Chunk, int]:
    """Every scalar in the complete records of ``data``; returns the chunk and the bytes consumed.

    A record whose header CRC fails stops the read there (its length cannot be
    trusted); one whose data CRC fails is skipped.  Both are reported."""
    scalar_tags = {} if scalar_tags is None else scalar_tags
    chunk = Chunk()
    offsets, lengths, consumed = frame(data)
    if _corrupt_header_at(data, consumed):
        # Framing stopped at a header whose length field fails its CRC (or is absurd): not a record
        # still being written, a corruption.  Said once; the bytes after it cannot be framed.
        length = int.from_bytes(data[consumed:consumed + 8], "little")
        chunk.problems.append(f"{file}: corrupt record header at byte {base + consumed} (length field {length:,} bytes, "
                              "its CRC does not match); the rest of the file is not read")
        chunk.corrupt = True
        tail = len(data)
    else:
        tail = consumed
    if offsets.size == 0:
        return chunk, tail
    consumed = tail
    buf = np.frombuffer(data, dtype=np.uint8)
    # Header CRCs: one expected value per distinct length.
    header_crc = _u32_at(buf, offsets + 8).astype(np.uint64)
    uniq = np.unique(lengths)
    expected = np.empty(lengths.size, dtype=np.uint64)
    for u in uniq.tolist():
        expected[lengths == u] = masked(crc32c(int(u).to_bytes(8, "little")))
    bad_header = np.flatnonzero(header_crc != expected)
    if bad_header.size:
        first = int(bad_header[0])
        chunk.problems.append(f"{file}: corrupt record header at byte {base + int(offsets[first])}; the rest of the file is not read")
        chunk.corrupt = True
        offsets, lengths = offsets[:first], lengths[:first]
        consumed = len(data)  # never re-read past a corrupt header
        uniq = np.unique(lengths)
    chunk.records = int(offsets.size)
    parts: list = []
    for length in uniq.tolist():
        rows_at = offsets[lengths == length]
        if length == 0 or rows_at.size == 0:
            continue
        rows = _rows(buf, rows_at + HEADER, length)
        stored = _u32_at(buf, rows_at + HEADER + length).astype(np.uint64)
        ok = masked(crc32c_rows(rows)) == stored
        for i in np.flatnonzero(~ok).tolist():
            chunk.problems.append(f"{file}: record at byte {base + int(rows_at[i])} fails its CRC; skipped")
        _decode_group(rows[ok], rows_at[ok], chunk, scalar_tags, parts)
    _assemble(chunk, parts)
    return chunk, consumed


def _decode_group(rows: np.ndarray, at: np.ndarray, chunk: Chunk, scalar_tags: dict[str, str], parts: list) -> None:
    """Decode equal-length records: layouts in bulk, oddities one by one.

    Appends (file positions, tag, steps, values, walls) to ``parts``."""
    if rows.shape[0] == 0:
        return
    length = rows.shape[1]
    pending = np.ones(rows.shape[0], dtype=bool)
    for _ in range(32):
        idx = np.flatnonzero(pending)
        if idx.size == 0:
            break
        r = int(idx[0])
        record = rows[r].tobytes()
        try:
            dec = decode_event(record, scalar_tags)
        except (ValueError, IndexError, struct.error):
            chunk.problems.append(f"record at byte {int(at[r])} is not a valid Event; skipped")
            pending[r] = False
            continue
        lay = dec.layout
        if lay is None:
            pending[r] = False
            _add_slow(dec, at[r : r + 1], parts)
            continue
        variable = np.zeros(length, dtype=bool)
        variable[lay.wall_off : lay.wall_off + 8] = True
        variable[lay.step_off : lay.step_off + lay.step_len] = True
        size = 4 if lay.value_kind == "<f4" else 8
        variable[lay.value_off : lay.value_off + size] = True
        const = np.flatnonzero(~variable)
        cand = rows[idx]
        match = np.all(cand[:, const] == rows[r, const], axis=1)
        step_bytes = cand[:, lay.step_off : lay.step_off + lay.step_len].astype(np.int64)
        cont = (step_bytes & 0x80) != 0
        match &= np.all(cont[:, :-1], axis=1) & ~cont[:, -1]
        members = idx[match]
        sel = rows[members]
        steps = np.zeros(members.size, dtype=np.int64)
        for i in range(lay.step_len):
            steps |= (sel[:, lay.step_off + i].astype(np.int64) & 0x7F) << (7 * i)
        walls = np.ascontiguousarray(sel[:, lay.wall_off : lay.wall_off + 8]).view("<f8").ravel()
        values = np.ascontiguousarray(sel[:, lay.value_off : lay.value_off + size]).view(lay.value_kind).ravel()
        parts.append((at[members], lay.tag, steps, values.astype(np.float64), walls))
        pending[members] = False
    for r in np.flatnonzero(pending).tolist():  # too many layouts in one length group: one by one
        try:
            _add_slow(decode_event(rows[r].tobytes(), scalar_tags), at[r : r + 1], parts)
        except (ValueError, IndexError, struct.error):
            chunk.problems.append(f"record at byte {int(at[r])} is not a valid Event; skipped")


def _add_slow(dec: Decoded, pos: np.ndarray, parts: list) -> None:
    for tag, value in dec.values:
        parts.append((pos, tag, np.array([dec.step], np.int64), np.array([value], np.float64), np.array([dec.wall])))


def _assemble(chunk: Chunk, parts: list) -> None:
    """Per tag, points in file order (so that, for a repeated step, the later write wins)."""
    by_tag: dict[str, list] = {}
    for pos, tag, steps, values, walls in parts:
        by_tag.setdefault(tag, []).append((pos, steps, values, walls))
    for tag, items in by_tag.items():
        pos = np.concatenate([i[0] for i in items])
        s = np.concatenate([i[1] for i in items])
        v = np.concatenate([i[2] for i in items])
        w = np.concatenate([i[3] for i in items])
        if pos.size > 1 and not np.all(pos[1:] > pos[:-1]):
            order = np.argsort(pos, kind="stable")
            s, v, w = s[order], v[order], w[order]
        chunk.points[tag] = (s, v, w)
