"""The spool's full-disk reserve: a preallocated file for the records the uplink never drops.

Why: SQLite needs free blocks for every commit (its WAL grows). On a full disk the never-dropped records
(intervals, alarms, events, command results) could then only be held in memory, and a crash or power cut
in that state lost them. ``spool/reserve.bin`` is allocated (zeros written, so the blocks are really the
file's) when the spool opens while there is space; later writes overwrite those blocks in place and need
no new ones, so they succeed on a full disk (ext4, xfs, tmpfs; a copy-on-write file system - btrfs, zfs -
cannot promise that).

Layout (little endian):
- header, at 0: ``b"EEMSRSV1"``, generation (u64), CRC-32 of the 16 bytes before it (u32);
- frames from DATA_START: ``b"ERF1"``, length (u32), generation (u64), CRC-32 of generation + length +
  body (u32), then the body: seq (u64), t_s (f64), kind (u8, index in topics.RECORD_KINDS), the record's
  JSON exactly as the spool would store it.
A scan reads frames of the header's generation from DATA_START until the first frame that is torn, of
another generation or zero: a frame cut by a crash ends the log there. ``reset()`` (the records went into
SQLite) bumps the generation in the header - one small in-place write - so older frames no longer count.
The spool also ignores frames whose seq is already in SQLite (its ``last_seq``): a crash between the
SQLite commit and the reset never writes a record twice.
"""
from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

from controller.diskio import fsync_dir
from controller.uplink.topics import RECORD_KINDS

RESERVE_FILE = "reserve.bin"
DEFAULT_RESERVE = 2 * 1024 * 1024      # ~7000 alarms / events of ~300 B: hours of a full disk
MIN_RESERVE = 64 * 1024
MAX_RESERVE = 256 * 1024 * 1024
DATA_START = 512                       # frames start on their own sector
HEADER = struct.Struct("<8sQI")
FRAME = struct.Struct("<4sIQI")
BODY = struct.Struct("<QdB")
MAGIC, FRAME_MAGIC = b"EEMSRSV1", b"ERF1"
_CHUNK = 64 * 1024


class Reserve:
    """One reserve file. ``records()`` what it holds, ``append(recs)`` durably (fdatasync), ``reset()``."""

    def __init__(self, path: str | Path, size: int = DEFAULT_RESERVE):
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_RESERVE <= size <= MAX_RESERVE:
            raise ValueError(f"reserve_bytes must be an integer in [{MIN_RESERVE}, {MAX_RESERVE}], not {size!r}")
        self.path = Path(path)
        self.wanted = size
        self.problem: str | None = None          # why the reserve is smaller than asked (no space at open)
        self.gen, self.end = 1, DATA_START
        self._frames: list[tuple[int, float, str, bytes]] = []
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            self.size = os.fstat(self.fd).st_size
        except OSError as exc:                   # no reserve (a full disk at the first start): say so, go on
            self.fd, self.size = -1, 0
            self.problem = f"{self.path}: cannot open ({exc.strerror or exc}); no reserve"
            return
        if self.size < size:
            self._grow(size)
        try:
            self._open_log()
        except OSError as exc:
            self.problem = f"{self.path}: cannot read ({exc.strerror or exc}); no reserve"
            self.size, self._frames, self.end = 0, [], DATA_START

    # --- opening ------------------------------------------------------------------------------------
    def _grow(self, size: int) -> None:
        """Allocate [old size, size) with real blocks (posix_fallocate fails fast when there is no room,
        then zeros are written so nothing is left as unwritten extents)."""
        old = self.size
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(self.fd, old, size - old)
            zeros = bytes(_CHUNK)
            off = old
            while off < size:
                off += os.pwrite(self.fd, zeros[:min(_CHUNK, size - off)], off)
            os.fsync(self.fd)
            fsync_dir(self.path.parent)
            self.size = size
        except OSError as exc:
            self.problem = f"{self.path}: cannot allocate {size} bytes ({exc.strerror or exc}); reserve {old} bytes"
            try:
                os.ftruncate(self.fd, old)           # give back a partial allocation
            except OSError:
                pass
            self.size = old

    def _open_log(self) -> None:
        if self.size < DATA_START + FRAME.size + BODY.size:
            self.gen, self.end, self._frames = 1, DATA_START, []
            return
        head = os.pread(self.fd, HEADER.size, 0)
        magic, gen, crc = HEADER.unpack(head)
        if magic == MAGIC and zlib.crc32(head[:16]) == crc:
            self.gen = gen
            self._frames, self.end = self._scan(gen)
            return
        # no header (a new file) or a torn one: frames of the first frame's generation still count
        first = os.pread(self.fd, FRAME.size, DATA_START)
        gen = FRAME.unpack(first)[2] if len(first) == FRAME.size and first[:4] == FRAME_MAGIC else 0
        frames, end = self._scan(gen) if gen else ([], DATA_START)
        self.gen = gen if frames else 1
        self._frames, self.end = frames, end
        self._write_header(self.gen)

    def _scan(self, gen: int) -> tuple[list, int]:
        data = os.pread(self.fd, self.size - DATA_START, DATA_START)
        out, off = [], 0
        while off + FRAME.size <= len(data):
            magic, length, fgen, crc = FRAME.unpack_from(data, off)
            if magic != FRAME_MAGIC or fgen != gen or length < BODY.size or off + FRAME.size + length > len(data):
                break
            body = data[off + FRAME.size:off + FRAME.size + length]
            if zlib.crc32(data[off + 8:off + 16] + data[off + 4:off + 8] + body) != crc:
                break
            seq, t_s, k = BODY.unpack_from(body)
            if k >= len(RECORD_KINDS):
                break
            out.append((seq, t_s, RECORD_KINDS[k], bytes(body[BODY.size:])))
            off += FRAME.size + length
        return out, DATA_START + off

    # --- use ----------------------------------------------------------------------------------------
    def records(self) -> list[tuple[int, float, str, bytes]]:
        """(seq, t_s, kind, payload) of every frame found at open and appended since, in append order."""
        return list(self._frames)

    @property
    def free(self) -> int:
        return max(0, self.size - self.end)

    def frame_size(self, payload: bytes) -> int:
        return FRAME.size + BODY.size + len(payload)

    def append(self, recs) -> int:
        """Append (seq, t_s, kind, payload) records, as many as fit, in one write and one fdatasync.
        Returns how many were appended (the rest did not fit). OSError (EIO...) leaves the log as it was
        before the call (a torn frame ends the scan, and ``end`` does not move)."""
        blob, taken = bytearray(), []
        gen_b = struct.pack("<Q", self.gen)
        for seq, t_s, kind, payload in recs:
            body = BODY.pack(seq, t_s, RECORD_KINDS.index(kind)) + payload
            if self.end + len(blob) + FRAME.size + len(body) > self.size:
                break
            length_b = struct.pack("<I", len(body))
            blob += FRAME.pack(FRAME_MAGIC, len(body), self.gen, zlib.crc32(gen_b + length_b + body)) + body
            taken.append((seq, t_s, kind, payload))
        if not taken:
            return 0
        view, off = memoryview(bytes(blob)), self.end
        while view:
            n = os.pwrite(self.fd, view, off)
            if n <= 0:
                raise OSError(errno.EIO, "short write to the reserve")
            view, off = view[n:], off + n
        os.fdatasync(self.fd)
        self.end += len(blob)
        self._frames.extend(taken)
        return len(taken)

    def give_back(self, nbytes: int) -> int:
        """Free up to `nbytes` of the reserve's unused tail to the file system (the frames stay): SQLite
        needs a few pages for its -wal/-shm files to open the spool at all, and on a disk that filled up
        while the controller was down the reserve holds the only free blocks. Returns the bytes freed;
        the next open grows the reserve back when there is room."""
        keep = max(self.end, self.size - max(0, int(nbytes)))
        keep = max(keep, min(self.size, DATA_START + FRAME.size + BODY.size))
        if self.fd < 0 or keep >= self.size:
            return 0
        try:
            os.ftruncate(self.fd, keep)
        except OSError:
            return 0
        freed, self.size = self.size - keep, keep
        self.problem = f"{self.path}: {freed} bytes given back to open the spool on a full disk; reserve {keep} bytes"
        return freed

    def reset(self) -> bool:
        """The records are in SQLite now: start an empty log (a new generation). False if the header
        could not be written (then the log goes on after the old frames, which the spool skips by seq)."""
        if not self._frames and self.end == DATA_START:
            return True
        try:
            self._write_header(self.gen + 1)
        except OSError:
            return False
        self.gen += 1
        self.end = DATA_START
        self._frames = []
        return True

    def _write_header(self, gen: int) -> None:
        if self.size < DATA_START:
            return
        head = HEADER.pack(MAGIC, gen, 0)[:16]
        os.pwrite(self.fd, head + struct.pack("<I", zlib.crc32(head)), 0)
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
