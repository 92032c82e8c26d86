"""Incremental, CRC-checked reader of TensorBoard event files.

With runner.metrics.tfrecord (the format: framing, wire decoding) and
runner.metrics.tffast (periodic stretches), the only modules that know the
event file format.  They do not import tensorboard or protobuf: records are
framed and decoded directly, which is what makes it fast (see
benchmarks/tb_read.py).

Format: a sequence of TFRecords — uint64 length, uint32 masked CRC32C of the
length, ``length`` bytes of an ``Event`` protobuf, uint32 masked CRC32C of the
data.  Scalars come either as ``simple_value`` (torch's SummaryWriter,
tensorboardX) or as a rank-0 float tensor with "scalars" plugin metadata
(``tensorboard.summary.Writer``, TF2).

How it stays fast on 1.5 M records:
* framing: records of a trainer repeat a short pattern of lengths (one per tag),
  so record offsets are predicted a block at a time and verified in numpy; a
  mismatch falls back to a Python walk for a few records;
* periodic stretches (the fast path, ``_parse_segment``): where the lengths
  repeat with period k, the bytes are a matrix of cycles read as strided columns;
  each record must equal its column's first record (the template, checked and
  decoded the slow way) in every byte but wall time, step and value, and its
  CRC32C is the template's with those bytes' contributions XORed in (CRC32C is
  affine in the message) — so every record's CRC is still checked;
* the general path (records outside a stretch, or differing from their
  template): CRC column-wise over all records of one length
  (runner.metrics.crc32c.crc32c_rows); records of one byte layout (same tag,
  same field positions) decoded together as columns of a matrix; the rest one
  by one.  ``parse_records(..., fast=False)`` reads everything this way: the
  reference tests/metrics/test_fast_read.py holds the fast path to.

Incremental: a reader keeps its byte offset per file and reads only what was
appended.  A half-written last record is left for the next read, without error.
A record whose CRC fails is skipped and reported, never accepted.
"""
from __future__ import annotations


import numpy as np

from runner.metrics.crc32c import crc32c_rows, masked
from runner.metrics.tfrecord import Chunk, HEADER, _corrupt_header_at, _rows, _u32_at, frame
from runner.metrics.tffast import _assemble, _decode_group, _first_bad_header, _parse_segment, _segments


def parse_records(data: bytes, file: str = "", base: int = 0, scalar_tags: dict[str, str] | None = None,
                  fast: bool = True) -> tuple[Chunk, int]:
    """Every scalar in the complete records of ``data``; returns the chunk and the bytes consumed.

    A record whose header CRC fails stops the read there (its length cannot be
    trusted); one whose data CRC fails is skipped.  Both are reported.  Every
    record's header and data CRC is checked, on either path.  ``fast=False``
    reads every record through the general path (the reference the fast path
    is tested against: same points, same problems)."""
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
    segments, loose = _segments(offsets, lengths) if fast else ([], np.arange(offsets.size))
    first = _first_bad_header(data, buf, offsets, lengths, segments, loose)
    if first is not None:
        chunk.problems.append(f"{file}: corrupt record header at byte {base + int(offsets[first])}; the rest of the file is not read")
        chunk.corrupt = True
        offsets, lengths = offsets[:first], lengths[:first]
        consumed = len(data)  # never re-read past a corrupt header
        segments, loose = _segments(offsets, lengths) if fast else ([], np.arange(offsets.size))
    chunk.records = int(offsets.size)
    parts: list = []
    crc_failed: list[int] = []  # file positions of records whose data CRC fails (said in file order)
    # Loose records first: they hold the first record of each tag, which carries its plugin metadata.
    _parse_loose(buf, offsets[loose], lengths[loose], chunk, scalar_tags, parts, crc_failed)
    for seg in segments:
        again = _parse_segment(data, offsets, lengths, seg, scalar_tags, parts, crc_failed)
        if again.size:
            _parse_loose(buf, offsets[again], lengths[again], chunk, scalar_tags, parts, crc_failed)
    for at in sorted(crc_failed):
        chunk.problems.append(f"{file}: record at byte {base + at} fails its CRC; skipped")
    _assemble(chunk, parts)
    return chunk, consumed


def _parse_loose(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, chunk: Chunk, scalar_tags: dict[str, str],
                 parts: list, crc_failed: list[int]) -> None:
    """The general path: records grouped by length, CRC column-wise over each group, then decoded."""
    for length in np.unique(lengths).tolist():
        rows_at = offsets[lengths == length]
        if length == 0 or rows_at.size == 0:
            continue
        rows = _rows(buf, rows_at + HEADER, length)
        stored = _u32_at(buf, rows_at + HEADER + length).astype(np.uint64)
        ok = masked(crc32c_rows(rows)) == stored
        crc_failed += rows_at[~ok].tolist()
        _decode_group(rows[ok], rows_at[ok], chunk, scalar_tags, parts)
