"""The fast path of the TensorBoard reader: periodic stretches of records read as strided columns.

Where the record lengths repeat with period k, the bytes are a matrix of cycles read as strided columns; each
record must equal its column's first record (the template, checked and decoded the slow way) in every byte but
wall time, step and value, and its CRC32C is the template's with those bytes' contributions XORed in (CRC32C is
affine in the message) — so every record's CRC is still checked.  Records of one byte layout outside a stretch are
decoded together as columns of a matrix (``_decode_group``).  tests/metrics/test_fast_read.py holds this path to
the general one (runner.metrics.tensorboard.parse_records(..., fast=False)).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from runner.metrics.crc32c import TABLE, crc32c, masked
from runner.metrics.tfrecord import HEADER, Chunk, Decoded, Layout, _strided, _u32_at, decode_event


# ---------------------------------------------------------------------------- the fast path: periodic segments
#
# A trainer logs the same tags in the same order at every step, so the lengths of its records repeat with a short
# period k (one record per tag).  Within a stretch where they do, the bytes are a matrix: one row per cycle of k
# records, C bytes wide, a zero-copy strided view of the file.  Each record of a cycle (a "position") is decoded
# against the first cycle's record, its template: the bytes that are not wall time, step or value must equal the
# template's (one comparison per 8 bytes per cycle), and then the record's CRC is the template's with the variable
# bytes' contributions XORed in (CRC32C is affine in the message), from tables of 65,536 entries per byte pair.
# A cycle whose constant bytes differ goes back to the general path, which checks and decodes it as any record.

MIN_CYCLES = 16  # a shorter periodic stretch is not worth its set-up: the general path reads it


def _segments(offsets: np.ndarray, lengths: np.ndarray) -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """Periodic stretches of records, as (first record index, period k, cycles), and the indices of the rest."""
    n = lengths.size
    best_k, best = 0, 0
    for k in range(1, 9):
        if n < k * MIN_CYCLES:
            break
        hits = int(np.count_nonzero(lengths[k:] == lengths[:-k]))
        if hits > best * 1.1:  # the smallest period that explains (nearly) as much as any larger one
            best_k, best = k, hits
    covered = np.zeros(n, dtype=bool)
    segments: list[tuple[int, int, int]] = []
    if best_k:
        k = best_k
        good = np.zeros(n + 1, dtype=np.int8)  # good[i]: lengths[i] == lengths[i - k]
        good[k:n] = lengths[k:] == lengths[:-k]
        edges = np.flatnonzero(np.diff(np.concatenate([[0], good])))
        starts, stops = edges[0::2], edges[1::2]  # runs [start, stop) of good
        long = (stops - starts) >= k * (MIN_CYCLES - 1)
        until = 0
        for u, v in zip(starts[long].tolist(), stops[long].tolist()):
            i0 = max(u - k, until)
            cycles = (v - i0) // k
            if cycles >= MIN_CYCLES:
                segments.append((i0, k, cycles))
                covered[i0 : i0 + cycles * k] = True
                until = i0 + cycles * k
    return segments, np.flatnonzero(~covered)


def _first_bad_header(data: bytes, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                      segments: list[tuple[int, int, int]], loose: np.ndarray) -> int | None:
    """Index of the first record whose header CRC fails (its length was checked by framing), or None."""
    bad: list[int] = []
    if loose.size:
        lo, ll = offsets[loose], lengths[loose]
        stored = _u32_at(buf, lo + 8).astype(np.uint64)
        expected = np.empty(ll.size, dtype=np.uint64)
        for u in np.unique(ll).tolist():
            expected[ll == u] = _header_crc(u)
        wrong = np.flatnonzero(stored != expected)
        if wrong.size:
            bad.append(int(loose[wrong[0]]))
    for i0, k, cycles in segments:
        s = int(offsets[i0])
        c = int(offsets[i0 + k]) - s
        for r in range(k):
            col = _strided(data, int(offsets[i0 + r]) + 8, cycles, c, "<u4")
            wrong = np.flatnonzero(col != _header_crc(int(lengths[i0 + r])))
            if wrong.size:
                bad.append(i0 + int(wrong[0]) * k + r)
    return min(bad) if bad else None


def _header_crc(length: int) -> int:
    return int(masked(crc32c(length.to_bytes(8, "little"))))


_ZERO_EXTEND: list[np.ndarray] = []  # [d][b]: CRC32C register (zero start, no final xor) of byte b then d zero bytes
_PAIR_TABLES: dict[int, np.ndarray] = {}  # d → [v]: the same for the little-endian byte pair v, its high byte d from the end


def _zero_extend(d: int) -> np.ndarray:
    if not _ZERO_EXTEND:
        _ZERO_EXTEND.append(TABLE)
    while len(_ZERO_EXTEND) <= d:
        t = _ZERO_EXTEND[-1]
        _ZERO_EXTEND.append(TABLE[t & 0xFF] ^ (t >> 8))
    return _ZERO_EXTEND[d]


def _pair_table(d: int) -> np.ndarray:
    t = _PAIR_TABLES.get(d)
    if t is None:
        v = np.arange(65536, dtype=np.uint32)
        t = _zero_extend(d + 1)[v & 0xFF] ^ _zero_extend(d)[v >> 8]
        _PAIR_TABLES[d] = t
    return t


BLOCK_BYTES = 2 * 1024 * 1024  # rows of a segment are worked through this many bytes at a time: the columns stay in cache


_LOAD = {1: "u1", 2: "<u2", 3: "<u4", 4: "<u4", 5: "<u8", 6: "<u8", 7: "<u8", 8: "<u8"}  # span width → load dtype


@dataclass
class _Position:
    """How the records at one position of a cycle are checked and decoded against their template."""

    rel: int  # where the record's data begins, from the start of its cycle
    length: int
    layout: Layout
    const: list[tuple[int, str, int]]  # (offset, dtype, expected value) covering every constant byte of the data
    spans: dict[str, tuple[int, str, list[tuple[int, int, np.ndarray]]]]  # wall/step/value → (offset, load dtype,
    #                                                     [(shift, mask, table)] of its bytes' CRC contributions)
    base_crc: int  # CRC32C of the template with its variable bytes zeroed
    step_cont: tuple[int, int]  # (mask, expected) of the step varint's continuation bits, in its loaded integer


def _position(data: bytes, at: int, rel: int, length: int, lay: Layout) -> _Position | None:
    size = 4 if lay.value_kind == "<f4" else 8
    if not 1 <= lay.step_len <= 8:
        return None  # a step of more than 2**56: the general path
    named = {"wall": (lay.wall_off, 8), "step": (lay.step_off, lay.step_len), "value": (lay.value_off, size)}
    var = sorted((a, a + w) for a, w in named.values())
    const: list[tuple[int, str, int]] = []
    j = 0
    for a, b in [*var, (length, length)]:
        while j < a:  # the constant run [j, a) in pieces of 8, 4, 2 and 1 bytes
            w = 8 if a - j >= 8 else 4 if a - j >= 4 else 2 if a - j >= 2 else 1
            const.append((j, f"<u{w}", int.from_bytes(data[at + j : at + j + w], "little")))
            j += w
        j = max(j, b)
    plain = bytearray(data[at : at + length])
    spans = {}
    for name, (a, w) in named.items():
        plain[a : a + w] = bytes(w)
        lookups = []
        for i in range(0, w, 2):  # byte pairs (little-endian, so bits 8i.. of the loaded integer), a last single
            if i + 2 <= w:
                lookups.append((8 * i, 0xFFFF, _pair_table(length - 2 - (a + i))))
            else:
                lookups.append((8 * i, 0xFF, _zero_extend(length - 1 - (a + i))))
        # A span loads as the next wider integer (a 3-byte step as 4 bytes): the extra bytes are the record's own
        # next bytes or its CRC, never past the record, and no lookup reads them.
        spans[name] = (a, _LOAD[w], lookups)
    cont_mask = sum(0x80 << (8 * i) for i in range(lay.step_len))
    cont_expect = sum(0x80 << (8 * i) for i in range(lay.step_len - 1))
    return _Position(rel, length, lay, const, spans, crc32c(bytes(plain)), (cont_mask, cont_expect))


def _parse_segment(data: bytes, offsets: np.ndarray, lengths: np.ndarray, seg: tuple[int, int, int],
                   scalar_tags: dict[str, str], parts: list, crc_failed: list[int]) -> np.ndarray:
    """Check and decode one periodic stretch; returns the record indices left to the general path.

    Longer than the house's ~60 lines on purpose: the reader's hot loop (benchmarks/tb_read.py), kept in one frame
    so that its numpy columns stay local and each block is worked through once while in cache."""
    i0, k, cycles = seg
    s = int(offsets[i0])
    c = int(offsets[i0 + k]) - s
    positions: list[tuple[int, _Position]] = []
    again: list[np.ndarray] = []
    for r in range(k):
        at, length = int(offsets[i0 + r]) + HEADER, int(lengths[i0 + r])
        record = data[at : at + length]
        pos = None
        if length and masked(crc32c(record)) == int.from_bytes(data[at + length : at + length + 4], "little"):
            try:
                lay = decode_event(record, scalar_tags).layout
            except (ValueError, IndexError, struct.error):
                lay = None
            pos = _position(data, at, at - s, length, lay) if lay is not None else None
        if pos is None:  # no fixed layout (or a template that fails its CRC): all of them to the general path
            again.append(i0 + r + np.arange(cycles, dtype=np.int64) * k)
        else:
            positions.append((r, pos))
    if positions:
        block = max(64, BLOCK_BYTES // c)
        n_pos = len(positions)
        decoded = np.empty((n_pos, cycles), dtype=bool)
        crc_ok = np.empty((n_pos, cycles), dtype=bool)
        steps = np.empty((n_pos, cycles), dtype=np.int64)
        walls = np.empty((n_pos, cycles), dtype=np.float64)
        values = np.empty((n_pos, cycles), dtype=np.float64)
        for r0 in range(0, cycles, block):
            n = min(block, cycles - r0)
            o = s + r0 * c
            same = np.ones(n, dtype=bool)  # every constant byte of the cycle equals its template's
            for _, pos in positions:
                for j, dtype, expect in pos.const:
                    same &= _strided(data, o + pos.rel + j, n, c, dtype) == expect
            for q, (_, pos) in enumerate(positions):
                at, lay = o + pos.rel, pos.layout
                crc = np.full(n, pos.base_crc, dtype=np.uint32)
                loaded = {}
                for name, (a, dtype, lookups) in pos.spans.items():
                    # One strided read, then contiguous work on int64 (the index type: no cast in the gathers).
                    v = _strided(data, at + a, n, c, dtype).astype(np.int64)
                    loaded[name] = v
                    if name == "wall" and n > 1 and bool(np.all((v >> 32) == (int(v[0]) >> 32))):
                        # The wall time's upper half (sign, exponent, top of the mantissa: ~17 minutes of
                        # seconds) is the same in the whole block: its contribution is one number.
                        hi = int(v[0])
                        for shift, mask, table in lookups[2:]:
                            crc ^= table[(hi >> shift) & mask]
                        lookups = lookups[:2]
                    for shift, mask, table in lookups:
                        crc ^= np.take(table, (v >> shift) & mask if shift else v & mask)
                stored = _strided(data, at + pos.length, n, c, "<u4")
                crc_ok[q, r0 : r0 + n] = ((crc >> 15) | (crc << 17)) + np.uint32(0xA282EAD8) == stored  # masked
                # The step: a varint of exactly step_len bytes (the continuation bit on all but the last).
                sv = loaded["step"]
                cont_mask, cont_expect = pos.step_cont
                decoded[q, r0 : r0 + n] = same & ((sv & cont_mask) == cont_expect)
                st = sv & 0x7F
                for i in range(1, lay.step_len):
                    st |= (sv >> i) & (0x7F << (7 * i))
                steps[q, r0 : r0 + n] = st
                walls[q, r0 : r0 + n] = loaded["wall"].view("<f8")
                raw = loaded["value"].astype(np.uint32) if lay.value_kind == "<f4" else loaded["value"]
                values[q, r0 : r0 + n] = raw.view(lay.value_kind)
        cycle_at = s + np.arange(cycles, dtype=np.int64) * c  # file position of each cycle
        for q, (r, pos) in enumerate(positions):
            record_at = cycle_at + (pos.rel - HEADER)
            take = decoded[q] & crc_ok[q]
            if take.all():  # the usual case: no copies
                parts.append((record_at, pos.layout.tag, steps[q], values[q], walls[q]))
                continue
            crc_failed += record_at[decoded[q] & ~crc_ok[q]].tolist()
            parts.append((record_at[take], pos.layout.tag, steps[q][take], values[q][take], walls[q][take]))
            again.append(i0 + r + np.flatnonzero(~decoded[q]) * k)
    return np.sort(np.concatenate(again)) if again else np.empty(0, np.int64)


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
