"""The gateway's recording: a directory of rotating segment files, bounded in bytes and days.

Each segment is an ordinary recording file (controller/replay.py format), so it replays alone: its header
carries the params and `state0`, the state that went into `step` at its first record. The header's
`segment` block makes the boundaries checkable:

    {"boot": id of this process start, "seq": 0, 1, ... within the boot, "state0_sha256": ...,
     "params_sha256": ..., "prev": file name of the previous segment of this boot (or null),
     "gap_records": records dropped between that segment and this one (disk full), "t_first": t_s}

`verify_dir` replays every segment and, where two consecutive segments belong to one boot with no
gap, checks that the state after the last record of the first is bit for bit the second's state0.

Names: seg-YYYYMMDDTHHMMSSZ-<boot>-<seq>.rec (UTC time of the first record): sorted by name is sorted
by time. A new segment starts at every process start (never truncating one), when the current one
reaches max_segment_bytes, and at the UTC day change. After each new segment the oldest are deleted
while the directory holds more than max_total_bytes, or when they end more than max_age_days before
the newest record (the segment's end is the next segment's start).

Disk full or failing (ENOSPC, EIO, EDQUOT, EFBIG): `append` never raises. The segment being written
is abandoned where the error hit (its whole records stay readable, the tail is torn as after a crash),
the record is counted in `dropped`, `faults` and `last_error` say what happened and `degraded` is true
until a new segment opens: tried every `retry_every` records once `min_free_bytes` are free again.
Writes go to the page cache (no fsync per record: the cycle must not wait on the disk); a power cut
loses at most what the kernel had not yet written, and the reader drops the torn tail.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controller.diskio import write_all as _write_all
from controller.replay import (RecordingError, VerifyResult, header_bytes, new_deflate, open_recording,
                               record_bytes, replay_file)

SEG_RE = re.compile(r"^seg-(\d{8}T\d{6}Z)-([0-9a-f]+)-(\d+)\.rec$")
DAY_S = 86400.0


def state_sha256(state: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(state, dtype="<f8").tobytes()).hexdigest()


def segment_name(t_s: float, boot: str, seq: int) -> str:
    return f"seg-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(t_s))}-{boot}-{seq:05d}.rec"


def segment_start_s(path: Path) -> float | None:
    m = SEG_RE.match(path.name)
    if not m:
        return None
    import calendar
    return float(calendar.timegm(time.strptime(m.group(1), "%Y%m%dT%H%M%SZ")))


def list_segments(directory: str | Path) -> list[Path]:
    """The segment files of a recording directory, oldest first."""
    d = Path(directory)
    return sorted((p for p in d.iterdir() if SEG_RE.match(p.name)), key=lambda p: p.name)


class SegmentRecorder:
    """Records each cycle into rotating segments of `directory`; see the module doc.

    append(image, cmd, events, n, state_in): state_in is the state that went into step this cycle; it is
    the state0 of a segment that starts at this record. Without it (the old 4-argument call) the recorder
    cannot start a segment after the first, so it neither rotates nor resumes after a disk error."""

    takes_state = True           # ScanLoop passes the state that went into step (controller/loop.py)

    def __init__(self, directory: str | Path, params: np.ndarray, state0: np.ndarray, meta: dict | None = None,
                 max_segment_bytes: int = 32 << 20, max_total_bytes: int = 1 << 30, max_age_days: float = 30.0,
                 flush_every: int = 1, retry_every: int = 30, min_free_bytes: int = 1 << 20,
                 boot_id: str | None = None):
        if not 0 < max_segment_bytes <= max_total_bytes // 2:
            raise ValueError(f"recording: max_segment_bytes ({max_segment_bytes}) must be positive and at most "
                             f"half of max_total_bytes ({max_total_bytes}), so rotation keeps the total bounded")
        self.dir = Path(directory)
        self.params = np.array(params, dtype=np.float64)
        self._params_sha = state_sha256(self.params)
        self._state0 = np.array(state0, dtype=np.float64)
        self.meta = dict(meta or {})
        self.max_segment_bytes, self.max_total_bytes = int(max_segment_bytes), int(max_total_bytes)
        self.max_age_s = float(max_age_days) * DAY_S
        self.flush_every = max(1, int(flush_every))
        self.retry_every = max(1, int(retry_every))
        self.min_free_bytes = int(min_free_bytes)
        self.boot = boot_id or uuid.uuid4().hex[:12]
        self.seq = 0
        self.records = 0             # records stored (all segments of this boot)
        self.dropped = 0             # records that could not be stored
        self.faults = 0              # write / open errors
        self.deleted = 0             # segments removed by the byte / age bounds
        self.last_error = ""
        self.path: Path | None = None
        self._fd = -1
        self._zip = None
        self._size = 0
        self._day = -1
        self._pending = 0
        self._prev_name: str | None = None
        self._gap = 0                # records dropped since the last segment of this boot
        self._failed = False
        self._retry_in = 0

    @property
    def degraded(self) -> bool:
        """True while records are being dropped (a write failed, no segment open): raise the alarm."""
        return self._failed

    @property
    def dropped_records(self) -> int:
        return self.dropped

    # -- the cycle's side -------------------------------------------------------------------------------
    def append(self, image: np.ndarray, commands: np.ndarray, events: np.ndarray, n_events: int,
               state_in: np.ndarray | None = None) -> None:
        t = float(image["t_s"])
        try:
            if self._fd < 0:
                if not self._may_open(state_in):
                    self._drop()
                    return
                self._open(t, state_in if state_in is not None else self._state0)
            elif state_in is not None and (self._size >= self.max_segment_bytes or int(t // DAY_S) != self._day):
                self._finish()
                self._open(t, state_in)
            data = self._zip.compress(record_bytes(image, commands, events, n_events))
            self._pending += 1
            if self._pending >= self.flush_every:
                data += self._zip.flush(zlib.Z_SYNC_FLUSH)
                self._pending = 0
            if data:
                _write_all(self._fd, data)
                self._size += len(data)
            self.records += 1
        except OSError as exc:
            self._fail(exc)
            self._drop()

    def _may_open(self, state_in) -> bool:
        if self.path is None and not self._failed:
            return True                                  # the first segment: state0 is known
        if state_in is None:
            return False
        self._retry_in -= 1
        if self._retry_in > 0:
            return False
        self._retry_in = self.retry_every
        try:
            st = os.statvfs(self.dir)
            return st.f_bavail * st.f_frsize >= self.min_free_bytes
        except OSError:
            return False

    def _drop(self) -> None:
        self.dropped += 1
        self._gap += 1

    def _fail(self, exc: OSError) -> None:
        self.faults += 1
        self.last_error = f"{self.path or self.dir}: {exc.strerror or exc}"
        self._failed = True
        self._retry_in = self.retry_every
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def _open(self, t: float, state0: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / segment_name(t, self.boot, self.seq)
        meta = {**self.meta, "segment": {
            "boot": self.boot, "seq": self.seq, "state0_sha256": state_sha256(state0),
            "params_sha256": self._params_sha, "prev": self._prev_name, "gap_records": self._gap, "t_first": t}}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        self.path = path
        try:
            head = header_bytes(self.params, state0, meta)
            _write_all(fd, head)
        except OSError:
            os.close(fd)
            try:
                path.unlink()                            # a torn header holds nothing: leave no unreadable file
            except OSError:
                pass
            raise
        self._fd, self._zip, self._size, self._pending = fd, new_deflate(), len(head), 0
        self._day = int(t // DAY_S)
        self._prev_name, self._gap, self._failed = path.name, 0, False
        self.seq += 1
        self._enforce_bounds(t)

    def _finish(self) -> None:
        """Close the current segment cleanly (end of the deflate stream)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            _write_all(fd, self._zip.flush(zlib.Z_FINISH))
        finally:
            os.close(fd)

    def _enforce_bounds(self, t_now: float) -> None:
        try:
            segs = [p for p in list_segments(self.dir) if p != self.path]
            sizes = {p: p.stat().st_size for p in segs}
        except OSError:
            return
        total = sum(sizes.values()) + self._size
        starts = [segment_start_s(p) for p in segs] + [t_now]
        for i, p in enumerate(segs):
            end = starts[i + 1]                          # a segment ends where the next one starts
            too_old = end is not None and end < t_now - self.max_age_s
            if total <= self.max_total_bytes and not too_old:
                continue
            try:
                p.unlink()
                self.deleted += 1
                total -= sizes[p]
            except OSError:
                pass

    def close(self) -> None:
        try:
            self._finish()
        except OSError as exc:
            self.faults += 1
            self.last_error = f"{self.path}: {exc.strerror or exc}"

    def stats(self) -> dict:
        return {"records": self.records, "dropped": self.dropped, "faults": self.faults, "deleted": self.deleted,
                "degraded": self.degraded, "segment": self.path.name if self.path else None,
                "last_error": self.last_error}


# -- verification -----------------------------------------------------------------------------------------
@dataclass
class _Seg:
    path: Path
    info: dict
    final: np.ndarray
    torn: str


def verify_dir(directory: str | Path) -> VerifyResult:
    """Replay every segment of a recording directory; across each boundary of one boot (no gap), the state
    after the last record must equal the next segment's state0 bit for bit."""
    directory = Path(directory)
    segs = list_segments(directory)
    if not segs:
        raise RecordingError(f"{directory}: no recording segments (seg-*.rec) in this directory")
    cycles, chained, gaps, boots, notes = 0, 0, 0, set(), []
    prev: _Seg | None = None
    for p in segs:
        res, final, rec = replay_file(p)
        if not res.ok:
            return VerifyResult(False, cycles + res.cycles, f"{p.name}: {res.message}")
        cycles += res.cycles
        info = rec.header.get("segment") or {}
        boots.add(info.get("boot"))
        if res.torn:
            notes.append(f"{p.name}: {res.torn}")
        if prev is not None and info and prev.info.get("boot") == info.get("boot"):
            if info.get("seq") != prev.info.get("seq", -2) + 1 or info.get("prev") != prev.path.name:
                return VerifyResult(False, cycles, f"{p.name}: follows {prev.path.name} in boot {info.get('boot')} "
                                    f"but names {info.get('prev')!r} (seq {info.get('seq')}): a segment is missing")
            if info.get("gap_records", 0) > 0:
                gaps += 1
                notes.append(f"{p.name}: {info['gap_records']} record(s) dropped before it (disk full or failing)")
            elif prev.torn:
                return VerifyResult(False, cycles, f"{prev.path.name}: torn ({prev.torn}) but {p.name} claims to "
                                    "continue it without a gap")
            elif (prev.final.tobytes() != rec.state0.tobytes()
                  or info.get("state0_sha256") != state_sha256(rec.state0)):
                diff = np.flatnonzero(prev.final.view(np.uint64) != rec.state0.view(np.uint64))
                return VerifyResult(False, cycles, f"{p.name}: state0 differs from the state after the last "
                                    f"record of {prev.path.name} (slots {diff[:8].tolist()})")
            else:
                chained += 1
        prev = _Seg(p, info, final, res.torn)
    msg = (f"{len(segs)} segment(s), {cycles} cycles replayed, every command and event identical; "
           f"{chained} boundary(ies) chained bit for bit, {len(boots)} boot(s), {gaps} gap(s)")
    return VerifyResult(True, cycles, msg, "; ".join(notes))


def recording_files(path: str | Path) -> list[Path]:
    """A recording file, or the segments of a recording directory, in order (for --check-limits)."""
    path = Path(path)
    if path.is_dir():
        segs = list_segments(path)
        if not segs:
            raise RecordingError(f"{path}: no recording segments (seg-*.rec) in this directory")
        return segs
    open_recording(path)                # raises RecordingError / OSError for a bad file
    return [path]
