"""The TFRecord container and the Event protobuf, as TensorBoard event files hold them: the protobuf wire decoding
(the slow path: one record at a time; it does not import tensorboard or protobuf), the framing of records (offsets
predicted a block at a time from the repeating pattern of lengths, verified in numpy), and the ``Chunk`` of scalars
one read returns.

Format: a sequence of TFRecords — uint64 length, uint32 masked CRC32C of the length, ``length`` bytes of an
``Event`` protobuf, uint32 masked CRC32C of the data.  Scalars come either as ``simple_value`` (torch's
SummaryWriter, tensorboardX) or as a rank-0 float tensor with "scalars" plugin metadata
(``tensorboard.summary.Writer``, TF2).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from runner.metrics.crc32c import crc32c, masked


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


def _strided(data: bytes, offset: int, rows: int, stride: int, dtype: str) -> np.ndarray:
    """A zero-copy column: one value of ``dtype`` at ``offset + i * stride`` for each row i."""
    return np.ndarray((rows,), dtype=dtype, buffer=data, offset=offset, strides=(stride,))



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
                k = len(pattern)
                good = cycles * k  # records up to the first whose length is not the predicted one
                for r, expect in enumerate(pattern):
                    bad = np.flatnonzero(_strided(data, p + int(rel[r]), cycles, cycle, "<u8") != expect)
                    if bad.size:
                        good = min(good, int(bad[0]) * k + r)
                full = (good + k - 1) // k
                cand = (p + np.arange(full, dtype=np.int64)[:, None] * cycle + rel).ravel()
                expected = np.tile(np.array(pattern, dtype=np.int64), full)
                if good:
                    offs.append(cand[:good])
                    lens.append(expected[:good])
                    p += (good // k) * cycle + int(rel[good % k])  # the first record not verified
                    progressed = True
                    block = block * 4 if good == cycles * k else 64
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
