"""Record every process image and command; replay them through `step` and prove it bit for bit.

File layout (append-only, crash-tolerant; a gateway's recording is a directory of such files, one per
segment, see controller/segments.py):
    b"EEMSREC\\x01" | u32 header length | header JSON | u32 crc32(header JSON)
    then one deflate stream, sync-flushed after every record, of records:
    u32 payload length | u32 crc32(payload) | payload = image bytes | command bytes | u16 n | n*(f8 code, f8 value)

A sync flush leaves every record written so far decodable, so a file cut anywhere (power loss,
SIGKILL, a full disk) reads back to the last whole record; the torn tail is reported and dropped.
Consecutive images are alike, so deflate with its 32 KiB window shrinks a 1 Hz recording ~10x.
"""
from __future__ import annotations

import base64
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from controller.core import layout as L
from controller.points import CATALOGUE, IMAGE_DTYPE

MAGIC = b"EEMSREC\x01"
_U32 = struct.Struct("<I")
_REC_HEAD = struct.Struct("<II")
_N_EVENTS = struct.Struct("<H")
CMD_BYTES = L.N_COMMANDS * 8


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f8").tobytes()).decode()


def _unb64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f8").copy()


def header_bytes(params: np.ndarray, state0: np.ndarray, meta: dict | None = None) -> bytes:
    """The file's first bytes: magic, header JSON (params, the state that goes into step at the first
    record, the catalogue) and its CRC."""
    header = {
        "version": 1, "points": [p.name for p in CATALOGUE], "commands": L.COMMAND_NAMES,
        "params_names": L.PARAM_NAMES, "params": _b64(params), "state0": _b64(state0),
        "image_itemsize": IMAGE_DTYPE.itemsize, **(meta or {}),
    }
    blob = json.dumps(header, sort_keys=True).encode()
    return MAGIC + _U32.pack(len(blob)) + blob + _U32.pack(zlib.crc32(blob))


def record_bytes(image: np.ndarray, commands: np.ndarray, events: np.ndarray, n_events: int) -> bytes:
    """One record before compression: length, CRC, payload."""
    payload = b"".join((image.tobytes(), np.ascontiguousarray(commands, dtype="<f8").tobytes(),
                        _N_EVENTS.pack(n_events), np.ascontiguousarray(events[:n_events], dtype="<f8").tobytes()))
    return _REC_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def new_deflate():
    return zlib.compressobj(6, zlib.DEFLATED, -15)


class Recorder:
    """One file, truncated at open: `edge-ems sim --out OUT` (a fresh run each time). A gateway records
    with controller/segments.py SegmentRecorder, which never truncates and rotates.
    `flush_every` trades crash exposure (records) for speed in fast simulations.

    A write that fails (a full disk under OUT) never raises into the cycle: the file keeps every record
    already written (what follows them is a torn tail that replay reports and drops), the rest of the
    run is counted in `dropped` and `degraded` turns true. The deflate stream cannot go on past a
    partial write, so this one-shot file does not resume; the gateway's segments do."""

    def __init__(self, path: str | Path, params: np.ndarray, state0: np.ndarray, meta: dict | None = None,
                 flush_every: int = 1):
        self.path = Path(path)
        self._file = open(self.path, "wb")
        self._zip = new_deflate()
        self._flush_every = max(1, flush_every)
        self._pending = 0
        self.records = 0             # records handed to the file
        self.dropped = 0             # records not stored (after a failed write)
        self.last_error = ""
        self._failed = False
        self._write(header_bytes(params, state0, meta), flush=True)

    @property
    def degraded(self) -> bool:
        return self._failed

    def _write(self, data: bytes, flush: bool) -> bool:
        try:
            self._file.write(data)
            if flush:
                self._file.flush()
            return True
        except OSError as exc:
            self._failed = True
            self.last_error = f"{self.path}: {exc.strerror or exc}"
            try:
                self._file.close()       # may raise again flushing its buffer: the bytes are lost anyway
            except OSError:
                pass
            return False

    def append(self, image: np.ndarray, commands: np.ndarray, events: np.ndarray, n_events: int,
               state_in: np.ndarray | None = None) -> None:
        if self._failed:
            self.dropped += 1
            return
        data = self._zip.compress(record_bytes(image, commands, events, n_events))
        self._pending += 1
        self.records += 1
        if self._pending >= self._flush_every:
            data += self._zip.flush(zlib.Z_SYNC_FLUSH)
            pending, self._pending = self._pending, 0
            if not self._write(data, flush=True):
                self.records -= pending  # the records of the failed write are not whole in the file
                self.dropped += pending
        elif data:
            if not self._write(data, flush=False):
                self.records -= self._pending
                self.dropped += self._pending
                self._pending = 0

    def close(self) -> None:
        if self._failed or self._file.closed:
            return
        if self._write(self._zip.flush(zlib.Z_FINISH), flush=False):
            try:
                self._file.close()
            except OSError as exc:
                self._failed = True
                self.last_error = f"{self.path}: {exc.strerror or exc}"


@dataclass
class Record:
    index: int
    image: np.ndarray
    commands: np.ndarray
    events: np.ndarray


@dataclass
class Recording:
    path: Path
    header: dict
    params: np.ndarray
    state0: np.ndarray
    torn_bytes: int = 0            # bytes after the last whole record (0 for a cleanly closed file)
    torn_reason: str = ""
    corrupt: str = ""              # a record that failed with whole records after it: verify fails
    records: list = field(default_factory=list)


class RecordingError(Exception):
    """The file is not a recording at all (bad magic or header): nothing can be replayed."""


MAX_HEADER_BYTES = 1 << 20         # a real header is a few KiB (names + base64 params/state)
_SYNC = b"\x00\x00\xff\xff"        # what every Z_SYNC_FLUSH ends with: a record boundary in the file
_SEGMENT_TYPES = {"boot": str, "seq": int, "prev": (str, type(None)), "gap_records": int, "state0_sha256": str}


def _read_header(f, path: Path) -> dict:
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise RecordingError(f"{path}: not an edge-ems recording (bad magic {magic!r})")
    raw = f.read(4)
    if len(raw) < 4:
        raise RecordingError(f"{path}: header torn")
    (length,) = _U32.unpack(raw)
    if length > MAX_HEADER_BYTES:
        raise RecordingError(f"{path}: header length {length} bytes, expected at most {MAX_HEADER_BYTES}")
    blob = f.read(length)
    crc = f.read(4)
    if len(blob) < length or len(crc) < 4 or _U32.unpack(crc)[0] != zlib.crc32(blob):
        raise RecordingError(f"{path}: header torn or corrupt")
    try:                                    # a valid CRC proves no accident, not a well-formed header
        header = json.loads(blob)
    except (ValueError, RecursionError) as exc:
        raise RecordingError(f"{path}: header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise RecordingError(f"{path}: header is not a JSON object (got {type(header).__name__})")
    if header.get("image_itemsize") != IMAGE_DTYPE.itemsize or header.get("points") != [p.name for p in CATALOGUE]:
        raise RecordingError(f"{path}: recorded with another point catalogue; replay with that version")
    for key in ("params", "state0"):
        if not isinstance(header.get(key), str):
            raise RecordingError(f"{path}: header key {key!r} missing or not a base64 string")
    seg = header.get("segment")
    if seg is not None:
        if not isinstance(seg, dict):
            raise RecordingError(f"{path}: header key 'segment' is not an object")
        for key, kind in _SEGMENT_TYPES.items():
            if key in seg and (not isinstance(seg[key], kind) or isinstance(seg[key], bool)):
                raise RecordingError(f"{path}: header key 'segment.{key}' has the wrong type "
                                     f"({type(seg[key]).__name__})")
    return header


def _flushed_pieces(f) -> Iterator[tuple[bytes, bool]]:
    """The compressed stream cut after each sync-flush marker: (bytes, ends with a marker). A record's
    bytes end at a marker, so a failure can be placed: before the last marker (whole records follow: the
    file is corrupt) or after it (the tail of the last write: torn)."""
    pending = b""
    while True:
        chunk = f.read(1 << 16)
        if not chunk:
            if pending:
                yield pending, False
            return
        pending += chunk
        start = 0
        while True:
            i = pending.find(_SYNC, start)
            if i < 0:
                break
            yield pending[start:i + len(_SYNC)], True
            start = i + len(_SYNC)
        pending = pending[start:]


def _record_from(payload: bytes, index: int, path: Path) -> Record:
    image_size = IMAGE_DTYPE.itemsize
    fixed = image_size + CMD_BYTES + _N_EVENTS.size
    n = _N_EVENTS.unpack_from(payload, image_size + CMD_BYTES)[0] if len(payload) >= fixed else -1
    if n < 0 or len(payload) != fixed + 16 * n:
        raise RecordingError(f"{path}: record {index}: payload length {len(payload)} bytes, expected "
                             f"{fixed} + 16 per event" + (f" ({fixed + 16 * n} for its {n} events)" if n >= 0 else ""))
    image = np.frombuffer(payload, dtype=IMAGE_DTYPE, count=1, offset=0)[0]
    commands = np.frombuffer(payload, dtype="<f8", count=L.N_COMMANDS, offset=image_size)
    events = np.frombuffer(payload, dtype="<f8", count=2 * n, offset=fixed).reshape(n, 2)
    return Record(index, image, commands, events)


def iter_records(path: str | Path, info: Recording | None = None) -> Iterator[Record]:
    """Yield whole records. A bad tail (the last write cut short, or zeros after it) stops the iteration
    with a note in `info.torn_reason`; a bad record in a completed (sync-flushed) write stops it with
    `info.corrupt` (bit rot, tampering: the cycles from it on cannot be checked); a record that passes
    its CRC but has the wrong shape raises RecordingError."""
    path = Path(path)
    with open(path, "rb") as f:
        header = _read_header(f, path)
        if info is not None:
            info.header = header
        pieces = _flushed_pieces(f)
        unzip = zlib.decompressobj(-15)
        buf = bytearray()
        index = 0
        # A torn tail is the end of the last write: it lacks the sync-flush marker that ends every whole
        # write, and a valid prefix of deflate data decodes without error (only zeros or garbage after
        # it, as a power loss leaves, can fail). So a failure is a torn tail only in the final unmarked
        # piece, after every marked piece ended on a record boundary; a failure in a marked piece is a
        # completed write that is damaged (a flipped marker merges two records' pieces into one).
        clean = True                        # every marked piece so far ended on a record boundary

        def fail(reason: str, piece_marked: bool) -> None:
            if info is None:
                return
            if piece_marked or not clean or any(marked for _, marked in pieces):
                info.corrupt = f"{reason}, in a completed write: corrupt, not a torn tail"
            else:
                info.torn_reason = reason
                info.torn_bytes = len(buf)

        for piece, marked in pieces:
            try:
                buf += unzip.decompress(piece)
            except zlib.error as exc:
                fail(f"record {index}: deflate stream corrupt ({exc})", marked)
                return
            # a final block where none was written: what follows would be silently skipped
            early_end = unzip.eof and bool(unzip.unused_data or any(True for _ in pieces))
            while len(buf) >= _REC_HEAD.size:
                length, crc = _REC_HEAD.unpack_from(buf)
                if len(buf) < _REC_HEAD.size + length:
                    break
                payload = bytes(buf[_REC_HEAD.size:_REC_HEAD.size + length])
                if zlib.crc32(payload) != crc:
                    fail(f"record {index}: CRC mismatch", marked)
                    return
                del buf[:_REC_HEAD.size + length]
                yield _record_from(payload, index, path)
                index += 1
            if marked:
                clean = not buf
            if early_end:
                if info is not None:
                    info.corrupt = f"record {index}: deflate stream ends early, the bytes after it unread"
                return
        if buf:
            # the bytes of a torn last write hold no marker; a marked piece that left part of a record
            # means a flushed record that never decoded (its length field damaged): corruption
            fail(f"torn last record ({len(buf)} bytes)", False)


def open_recording(path: str | Path) -> Recording:
    """Header and params of a recording, without reading the records."""
    path = Path(path)
    with open(path, "rb") as f:
        header = _read_header(f, path)
    try:
        params, state0 = _unb64(header["params"]), _unb64(header["state0"])
    except ValueError as exc:           # binascii.Error, or a length not a multiple of 8
        raise RecordingError(f"{path}: header params/state0 are not base64 float64 arrays ({exc})") from None
    if len(params) != L.N_PARAMS or len(state0) != L.N_STATE:    # the kernels would read past the arrays
        raise RecordingError(f"{path}: recorded with another params/state layout ({len(params)} params, "
                             f"{len(state0)} state slots; this version has {L.N_PARAMS} and {L.N_STATE}); "
                             "replay with that version")
    return Recording(path, header, params, state0)


@dataclass
class VerifyResult:
    ok: bool
    cycles: int
    message: str
    torn: str = ""


def verify(path: str | Path) -> VerifyResult:
    """Re-run `step` on every recorded image; every command and event must match bit for bit.
    `path`: one recording or segment file (a segment replays alone from its header's state0), or a
    recording directory (every segment, and the state carried across each boundary of one boot)."""
    path = Path(path)
    if path.is_dir():
        from controller.segments import verify_dir
        return verify_dir(path)
    return replay_file(path)[0]


def replay_file(path: str | Path) -> tuple[VerifyResult, np.ndarray, Recording]:
    """verify() of one file, with the state after its last whole record and its header."""
    from controller.core.step import step

    rec = open_recording(path)
    state = rec.state0.copy()
    count = 0
    for r in iter_records(path, rec):
        image = r.image
        state, cmd, events, n = step(rec.params, state, float(image["t_s"]), np.ascontiguousarray(image["value"]),
                                     np.ascontiguousarray(image["quality"]))
        if cmd.tobytes() != r.commands.tobytes():
            diff = np.flatnonzero(cmd.view(np.uint64) != r.commands.view(np.uint64))[0]
            return VerifyResult(False, count, f"cycle {int(image['cycle'])} (record {r.index}): command "
                                f"{L.COMMAND_NAMES[diff]} recorded {r.commands[diff]!r}, replayed {cmd[diff]!r}"), state, rec
        if n != len(r.events) or events[:n].tobytes() != r.events.tobytes():
            return VerifyResult(False, count, f"cycle {int(image['cycle'])} (record {r.index}): events differ: "
                                f"recorded {r.events.tolist()}, replayed {events[:n].tolist()}"), state, rec
        count += 1
    if rec.corrupt:
        return VerifyResult(False, count, f"{rec.corrupt} ({count} cycles replayed before it)"), state, rec
    torn = rec.torn_reason
    return VerifyResult(True, count, f"{count} cycles replayed, every command and event identical",
                        torn), state, rec
