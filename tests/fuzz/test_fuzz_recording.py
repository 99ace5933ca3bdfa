"""Fuzz: recordings (controller/replay.py), segment directories (controller/segments.py) and the
independent limit check that reads them (controller/limits_check.py), through the `edge-ems replay`
command function (controller.cli.cmd_replay, without rebuilding the argument parser per example).

The recordings are real: the numba step runs on synthetic site images and the Recorder /
SegmentRecorder write them, exactly as a gateway does.

Contract (docs/fuzzing.md), for `replay REC --verify` and `replay REC --check-limits`:
- exit 0: every record that is there replayed (or checked) identically; the only damage allowed is a
  torn tail, and then a "note: ..." says so and at most the last record is dropped;
- exit 1: a mismatch, or a record in the middle that fails (MISMATCH / corrupt: the file is damaged);
- exit 2: "edge-ems: ..." naming what is not a recording (bad magic, header, record shape).
Never an exception (a traceback), never exit 0 without a note on a file whose bytes changed.

The bit-flip sweep: single-bit flips of a small real recording (8 records, left open as a running
gateway leaves it, and cleanly closed) must each give one of these outcomes: every bit of the file under
--run-slow, the header fields, the records' first and last 48 bytes and a seeded sample of the rest in
the default run (sweep_bits). A flip that deflate's redundancy absorbs (the records read back
identical, see inflated()) must verify, and does.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
from hypothesis import example, given, strategies as st

import fuzz_harness as H
from controller import cli
from controller.config import load_site
from controller.core import layout as L
from controller.core.step import step
from controller.params import build_params
from controller.points import INDEX, IMAGE_DTYPE, N_POINTS, new_image
from controller.replay import CMD_BYTES, MAGIC, Recorder, header_bytes, new_deflate
from controller.segments import SegmentRecorder, list_segments
from images import HEALTHY

PARAMS = build_params(load_site("inner-mongolia-mine"))
T0 = 1767225600.0 + 3600.0
DIR = Path(tempfile.mkdtemp(prefix="fuzz-rec-"))


def _cycles(n, t0=T0, seed=3):
    """(image, commands, events, n_events, state_in) of n real cycles of the step."""
    state = L.new_state(t0 - 1.0)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = new_image()
        value = np.zeros(N_POINTS)
        for name, v in HEALTHY.items():
            value[INDEX[name]] = v
        value[INDEX["grid_kw"]] = rng.uniform(-20, 60)
        value[INDEX["pv_kw"]] = rng.uniform(0, 120)
        value[INDEX["soc_pct"]] = 96.0 if i % 3 == 0 else 60.0          # some cycles derate: events
        img["value"], img["quality"], img["t_s"], img["cycle"] = value, 0, t0 + i, i
        state_in = state.copy()
        state, cmd, events, k = step(PARAMS, state, t0 + i, img["value"].copy(), img["quality"].copy())
        out.append((img.copy(), cmd.copy(), events.copy(), k, state_in))
    return out


CYCLES = _cycles(8)


def make_recording(path: Path, n: int, close: bool) -> bytes:
    rec = Recorder(path, PARAMS, CYCLES[0][4], {"site": "fuzz"})
    for img, cmd, ev, k, _ in CYCLES[:n]:
        rec.append(img, cmd, ev, k)
    if close:
        rec.close()
    else:
        rec._file.flush()                 # left open, as a running gateway's file is
    return path.read_bytes()


OPEN = make_recording(DIR / "open.rec", 8, close=False)
CLOSED = make_recording(DIR / "closed.rec", 8, close=True)
HEAD_LEN = len(MAGIC) + 4 + struct.unpack_from("<I", OPEN, len(MAGIC))[0] + 4


def replay(path: Path, verify=True, check_limits=False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    ns = argparse.Namespace(recording=str(path), verify=verify, check_limits=check_limits)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.cmd_replay(ns)
    return code, out.getvalue(), err.getvalue()


def inflated(data: bytes) -> bytes:
    """What replay reads of a file: the header JSON and the records, decompressed. Deflate has redundant
    encodings (a code length of a symbol never used, the padding bits after the final block, the BFINAL
    bit of the last sync-flush block: the open file then reads as a closed one), so a flip there changes
    the bytes and not one record: such a file verifies whole, without a note, rightly."""
    try:
        hl = struct.unpack_from("<I", data, len(MAGIC))[0]
        z = zlib.decompressobj(-15)
        return data[:len(MAGIC) + 4 + hl + 4] + z.decompress(data[len(MAGIC) + 4 + hl + 4:]) + z.unused_data
    except (struct.error, zlib.error):
        return b"?" + data


def records_of(data: bytes) -> bytes:
    """inflated() without the header."""
    try:
        return inflated(data)[len(MAGIC) + 4 + struct.unpack_from("<I", data, len(MAGIC))[0] + 4:]
    except struct.error:
        return b"?" + data


def check_outcome(code, out, err, n_records: int | None, changed: bool, where: str = "") -> None:
    """The contract above; n_records: how many whole records the undamaged file holds (None: unknown);
    changed: the records or header replay reads differ from the original's."""
    ctx = (where, code, out[-300:], err[-300:])
    assert code in (0, 1, 2), ctx
    if code == 2:
        assert err.startswith("edge-ems: ") and "Traceback" not in err, ctx
    elif code == 0:
        note = "note: " in err
        assert note or not changed, ("a changed file verified without a note",) + ctx
        if n_records is not None and out.startswith("ok: "):
            replayed = int(out[4:].split(" ")[0])
            assert replayed >= n_records - (1 if note else 0), ("torn tail dropped more than the last record",) + ctx


def _flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def sweep_bits(data: bytes, ci_records: int) -> list[int]:
    """The bits to flip. Under --run-slow: every bit of the file. In the default run: every bit of the
    magic, length and CRC fields and of the first and last 48 bytes of the records (the first block
    header, the last records, their markers, the final block), and a seeded sample of the rest of the
    records (`ci_records` bits) and of the header JSON (128 bits: its flips all end at the CRC check)."""
    if H.MODE == "long":
        return list(range(8 * len(data)))
    rng = random.Random(15)
    blob = range((len(MAGIC) + 4) * 8, (HEAD_LEN - 4) * 8)
    body = range(HEAD_LEN * 8, len(data) * 8)
    edges = [b for b in range(8 * len(data)) if b < blob.start or blob.stop <= b < (HEAD_LEN + 48) * 8
             or b >= (len(data) - 48) * 8]
    middle = [b for b in body if (HEAD_LEN + 48) * 8 <= b < (len(data) - 48) * 8]
    return sorted(set(edges) | set(rng.sample(middle, min(ci_records, len(middle)))) | set(rng.sample(blob, 128)))


def _sweep(name: str, data: bytes, n_records: int, limits_every: int, ci_records: int) -> None:
    path = DIR / f"flip-{name}.rec"
    path.write_bytes(data)
    assert replay(path)[0] == 0
    outcomes = {0: 0, 1: 0, 2: 0, "same": 0}
    same = inflated(data)
    for i, bit in enumerate(sweep_bits(data, ci_records)):
        flipped = _flip(data, bit)
        path.write_bytes(flipped)
        code, out, err = replay(path)
        changed = inflated(flipped) != same
        check_outcome(code, out, err, n_records, changed, where=f"bit {bit} (byte {bit // 8})")
        outcomes[code] += 1
        outcomes["same"] += not changed
        if i % limits_every == 0:
            code, out, err = replay(path, verify=False, check_limits=True)
            assert code in (0, 1, 2) and (code != 2 or err.startswith("edge-ems: ")), (bit, code, err)
        H.hit(f"recording.bitflip_{name}")
    # what the sweep is for: a flip in the records is seen, never silently replayed
    assert outcomes[1] + outcomes[2] > 0, outcomes
    SWEEPS[name] = outcomes


SWEEPS: dict = {}


def test_bit_flip_sweep_open_recording():
    """A recording as a running gateway leaves it (sync-flushed, no final block)."""
    _sweep("open", OPEN, 8, H.examples(ci=16, long=1), ci_records=300)


def test_bit_flip_sweep_closed_recording():
    """A cleanly closed recording (Z_FINISH final block)."""
    _sweep("closed", CLOSED, 8, H.examples(ci=16, long=1), ci_records=100)


# -- structured fuzz: rebuilt headers and records with valid CRCs, mutated bytes ------------------------
GOOD_HEADER = json.loads(OPEN[len(MAGIC) + 4:HEAD_LEN - 4])
REC_SIZE = IMAGE_DTYPE.itemsize + CMD_BYTES + 2


def with_header(header_blob: bytes, body: bytes) -> bytes:
    return MAGIC + struct.pack("<I", len(header_blob)) + header_blob + struct.pack("<I", zlib.crc32(header_blob)) + body


def body_of(payloads: list[bytes], sync_every=1, finish=False, crc_ok=True) -> bytes:
    z, out = new_deflate(), b""
    for i, p in enumerate(payloads):
        crc = zlib.crc32(p) if crc_ok else zlib.crc32(p) ^ 1
        out += z.compress(struct.pack("<II", len(p), crc) + p)
        if (i + 1) % sync_every == 0:
            out += z.flush(zlib.Z_SYNC_FLUSH)
    return out + (z.flush(zlib.Z_FINISH) if finish else z.flush(zlib.Z_SYNC_FLUSH))


def good_payloads() -> list[bytes]:
    from controller.replay import record_bytes
    return [record_bytes(img, cmd, ev, k)[8:] for img, cmd, ev, k, _ in CYCLES]


PAYLOADS = good_payloads()
FLOAT_EDGES = [np.nan, np.inf, -np.inf, 1e308, -0.0, 2.0 ** 63, -2.0 ** 63, 5e-324, float(L.EV_BATTERY_LIMITED), -1.0]


@st.composite
def recordings(draw) -> bytes:
    how = draw(st.sampled_from(("header", "header", "record", "record", "bytes", "junk")))
    if how == "junk":
        return how, MAGIC + draw(st.binary(max_size=300)) if draw(st.booleans()) else draw(st.binary(max_size=100))
    if how == "bytes":
        return how, draw(H.mutated(draw(st.sampled_from((OPEN, CLOSED))), 6))
    header = json.loads(json.dumps(GOOD_HEADER))
    payloads = list(PAYLOADS)
    if how == "header":
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(sorted(header) + ["segment", "x"]))
            r = draw(st.integers(0, 5))
            if r == 0:
                header.pop(key, None)
            elif key in ("params", "state0") and r <= 2:
                raw = draw(st.sampled_from((b"", b"\0" * 7, b"\0" * 8 * (L.N_PARAMS if key == "params" else L.N_STATE),
                                            np.full(L.N_PARAMS if key == "params" else L.N_STATE, np.nan).tobytes())))
                import base64
                header[key] = base64.b64encode(raw).decode()
            elif key == "segment":
                header["segment"] = {k: draw(H.json_values) for k in draw(st.lists(st.sampled_from(
                    ["boot", "seq", "prev", "gap_records", "state0_sha256", "params_sha256", "t_first"]), max_size=7))}
            else:
                header[key] = draw(H.json_values)
        blob = H.dumps_loose(header) if draw(st.integers(0, 5)) else draw(st.binary(max_size=80))
    else:
        blob = json.dumps(header, sort_keys=True).encode()
        i = draw(st.integers(0, len(payloads) - 1))
        p = bytearray(payloads[i])
        r = draw(st.integers(0, 4))
        if r == 0:                                          # n_events field
            struct.pack_into("<H", p, REC_SIZE - 2, draw(st.integers(0, 0xFFFF)))
        elif r == 1:                                        # length: cut or extended
            p = p[:draw(st.integers(0, len(p)))] + draw(st.binary(max_size=40))
        else:                                               # any float bits: NaN events, inf commands
            for _ in range(draw(st.integers(1, 8))):
                off = draw(st.integers(0, max(0, len(p) - 8)))
                p[off:off + 8] = struct.pack("<d", draw(st.sampled_from(FLOAT_EDGES)))
        payloads[i] = bytes(p)
        body = body_of(payloads, sync_every=draw(st.sampled_from([1, 1, 3])), finish=draw(st.booleans()),
                       crc_ok=draw(st.integers(0, 6)) > 0)
        return how, with_header(blob, body)
    return how, with_header(blob, body_of(payloads))


@H.budget(ci=150, long=6000)
@given(recordings())
@example(("record", with_header(json.dumps(GOOD_HEADER).encode(), body_of(      # an event code NaN: int() raised
    PAYLOADS[:3] + [PAYLOADS[3][:-16] + struct.pack("<dd", np.nan, np.nan)] + PAYLOADS[4:]))))
@example(("record", with_header(json.dumps(GOOD_HEADER).encode(), body_of(      # a limited event's reason inf
    PAYLOADS[:3] + [PAYLOADS[3][:-16] + struct.pack("<dd", float(L.EV_BATTERY_LIMITED), np.inf)] + PAYLOADS[4:]))))
def test_recording_bytes(case):
    H.hit("recording.bytes")
    how, data = case
    path = DIR / "fuzz.rec"
    path.write_bytes(data)
    # Rebuilt with valid CRCs, a header or record may verify: replay proves the commands follow from the
    # recorded images, and a CRC is no signature. Bytes changed without rebuilding the CRCs must be seen.
    changed = how == "bytes" and records_of(data) != records_of(OPEN) and records_of(data) != records_of(CLOSED)
    for verify, limits in ((True, False), (False, True)):
        code, out, err = replay(path, verify, limits)
        if limits and code == 0:
            continue          # a check of limits over a file that replays differently is not a verify
        check_outcome(code, out, err, None, changed and verify, f"verify={verify} limits={limits}")


# -- segment directories ----------------------------------------------------------------------------------
def make_segments(d: Path) -> list[Path]:
    rec = SegmentRecorder(d, PARAMS, CYCLES[0][4], {"site": "fuzz"}, max_segment_bytes=18_600,
                          max_total_bytes=1 << 30, boot_id="b00700")
    for img, cmd, ev, k, state_in in CYCLES:
        rec.append(img, cmd, ev, k, state_in)
    rec.close()
    return list_segments(d)


SEG_DIR = DIR / "segments-good"
SEGS = make_segments(SEG_DIR)
SEG_BYTES = {p.name: p.read_bytes() for p in SEGS}


@st.composite
def segment_dirs(draw):
    """(name -> bytes) of a segment directory: one segment's header block fuzzed (re-CRC'd), its bytes
    mutated, a segment removed, duplicated under another name, or renamed out of order."""
    files = dict(SEG_BYTES)
    names = sorted(files)
    how = draw(st.sampled_from(("segment", "segment", "bytes", "remove", "dup", "rename")))
    name = draw(st.sampled_from(names))
    if how == "bytes":
        files[name] = draw(H.mutated(files[name], 4))
    elif how == "remove" and len(names) > 1:
        del files[name]
    elif how == "dup":
        files[name.replace("-b00700-", "-b00700-9")] = files[name]
    elif how == "rename":
        files[name.replace("seg-2026", "seg-2025")] = files.pop(name)
    else:
        data = files[name]
        hl = struct.unpack_from("<I", data, len(MAGIC))[0]
        header = json.loads(data[len(MAGIC) + 4:len(MAGIC) + 4 + hl])
        key = draw(st.sampled_from(["boot", "seq", "prev", "gap_records", "state0_sha256", "params_sha256", "t_first"]))
        header["segment"][key] = draw(st.one_of(H.json_values, H.nasty_ints, st.sampled_from(names)))
        files[name] = with_header(H.dumps_loose(header), data[len(MAGIC) + 4 + hl + 4:])
    return files


@H.budget(ci=80, long=3000)
@given(segment_dirs())
def test_segment_directories(files):
    H.hit("recording.segments")
    d = DIR / "segments-fuzz"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    # a changed segment block (boot, seq, prev...) with a valid CRC may honestly verify as another boot;
    # changed records may not (the header is a CRC, not a signature: what replay promises is the records)
    changed = any(name in SEG_BYTES and records_of(data) != records_of(SEG_BYTES[name])
                  for name, data in files.items())
    for verify, limits in ((True, False), (False, True)):
        code, out, err = replay(d, verify, limits)
        if limits and code == 0:
            continue
        check_outcome(code, out, err, None, changed and verify, f"verify={verify} limits={limits}")


def test_segments_are_several_and_verify():
    assert len(SEGS) >= 2, [p.name for p in SEGS]
    code, out, err = replay(SEG_DIR)
    assert code == 0 and "chained bit for bit" in out, (out, err)


# -- regressions of what the sweep found ------------------------------------------------------------------
def test_flipped_sync_marker_of_a_middle_record_is_corrupt_not_a_torn_tail():
    """Found by the bit-flip sweep: a bit flipped in the sync-flush marker before the last record made the
    reader merge two records' pieces into one; the failure it then met was taken for a torn tail and
    `replay --verify` exited 0, two records dropped, with only a note. A piece that ends with a marker is
    a completed write: its failure is corruption (exit 1); a torn tail has no marker."""
    body = OPEN[HEAD_LEN:]
    markers = [i for i in range(len(body) - 3) if body[i:i + 4] == b"\x00\x00\xff\xff"]
    assert len(markers) >= 8, markers
    pos = HEAD_LEN + markers[-2] + 3                 # NLEN of the empty stored block before the last record
    path = DIR / "marker.rec"
    path.write_bytes(_flip(OPEN, pos * 8))
    code, out, err = replay(path)
    assert code == 1 and "corrupt" in out, (code, out, err)


def test_zero_filled_tail_after_a_crash_stays_a_torn_tail():
    """What a power loss leaves on ext4 (size updated, data not): zeros after the last whole write. Still a
    torn tail: every record replayed, a note, exit 0."""
    path = DIR / "zeros.rec"
    path.write_bytes(OPEN + b"\x00" * 37)
    code, out, err = replay(path)
    assert code == 0 and "note: " in err and out.startswith("ok: 8 cycles"), (code, out, err)
    path.write_bytes(OPEN[:-20])                      # the last write cut short
    code, out, err = replay(path)
    assert code == 0 and "note: " in err and out.startswith("ok: 7 cycles"), (code, out, err)
    path.write_bytes(OPEN[:-20] + b"\x00" * 4096)      # ... and zero-filled after the cut
    code, out, err = replay(path)
    assert code == 0 and "note: " in err and out.startswith("ok: 7 cycles"), (code, out, err)
