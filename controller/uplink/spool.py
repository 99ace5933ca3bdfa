"""Durable store-and-forward spool: SQLite in WAL mode on the gateway's data dir.

Contract
- ``put(kind, t_s, body)`` is what the scan cycle calls: it only appends to an in-memory queue
  (a lock-free ``SimpleQueue.put``, measured in ``put_stats``); the **writer thread** assigns the
  ``seq``, serialises the record and commits whole batches (one transaction, ``synchronous=FULL`` so a
  committed record survives power loss). The cycle never waits on SQLite or fsync.
- A record is offered to MQTT only after its commit (the sender reads committed rows only) and is
  deleted only when the broker acknowledged it (``ack``). After a crash or power loss every row still in
  the table is sent again: at-least-once; ``(gateway, seq)`` lets the cloud drop duplicates.
- ``seq`` is strictly increasing per gateway, across restarts (the high-water mark is kept in ``meta``
  in the same transaction as the rows), without gaps except where telemetry was evicted (an ``event``
  record ``spool_evicted`` names the range).
- Quota (``quota_bytes``, payload bytes + a per-row overhead): over the quota, telemetry is **thinned**
  (every other record of the older half of the telemetry backlog deleted, repeatedly, so old data gets
  coarser rather than vanishing), then dropped oldest first; intervals, alarms, events and command
  results are never evicted. When only never-dropped records remain over the quota, or the file
  system's free space falls under ``min_free_bytes``, new telemetry is refused and ``alarm`` is set
  (the hook turns it into an ``uplink_spool_full`` alarm record).
- Disk full (SQLite refuses the commit: SQLITE_FULL, an I/O error): the never-dropped records of the
  batch are appended to the preallocated reserve (``reserve.py``, ``spool/reserve.bin``, fsync'd) with
  their seq, telemetry is refused (counted), ``alarm`` holds; the next commit that succeeds moves the
  reserve's records into SQLite first, in seq order, in the same transaction. A spool opened after a
  crash with records in the reserve moves them at once (or keeps them there while the disk is still
  full). Only when the reserve itself is full are records held in memory (bounded, MAX_RETRY_RECORDS).
- Supervision: the writer's unsettled items (taken from the queue, not yet committed, reserved or
  refused) live on the spool (``_hands``), not in the thread's locals, and a transaction in progress
  is marked (``_step``) with the seq it reaches. A writer that dies (any exception escaping it) is
  restarted by ``supervise()`` (the uplink hook calls it every cycle: one ``is_alive``); the new one
  asks SQLite and the reserve how far the dead one got, so a batch it committed is not written again and
  one it did not is. ``writer_restarts`` and ``writer_errors`` are what the hook's
  ``uplink_writer_fault`` alarm watches.

This module is the spool's API (put, pending, ack, meta, flush, supervision, stats); the writer thread's
methods (commit, the reserve path, eviction, recovery) are in spool_writer.py, mixed in.
"""
from __future__ import annotations

import queue
import sqlite3
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from controller.uplink.reserve import DEFAULT_RESERVE, RESERVE_FILE, Reserve
from controller.uplink.spool_writer import (LOW_WATER, RETRY_S, ROW_OVERHEAD, SpoolWriter, _Flush,  # noqa: F401
                                            _Hands, iso_utc)    # LOW_WATER, iso_utc: imported from here too
from controller.uplink.topics import RECORD_KINDS

SPOOL_FILE = "uplink-spool.sqlite"
WRITER_RESTART_BASE_S, WRITER_RESTART_CAP_S = 0.5, 30.0   # back-off between restarts of a writer that keeps dying
WRITER_STABLE_S = 60.0             # a writer that lived this long starts the back-off again from zero
DEFAULT_QUOTA = 64 * 1024 * 1024   # a week offline measured 14.1 MB (tools/bench/uplink.py week; README)
DEFAULT_MIN_FREE = 16 * 1024 * 1024
OPEN_GIVE_BACK = 512 * 1024         # reserve bytes freed to open SQLite on a disk that is already full

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, t_s REAL NOT NULL,
                                    payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS records_kind_seq ON records (kind, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def select_pending(db: sqlite3.Connection, kind: str, after_seq: int, limit: int,
                   max_bytes: int = 1 << 30) -> list[tuple[int, bytes]]:
    """Committed records of one kind with seq > after_seq, oldest first, at most limit rows / max_bytes
    (at least one row): the drain's read, shared by the in-process drain and the worker process."""
    rows = db.execute("SELECT seq, payload FROM records WHERE kind=? AND seq>? ORDER BY seq LIMIT ?",
                      (kind, after_seq, limit)).fetchall()
    out, size = [], 0
    for seq, payload in rows:
        if out and size + len(payload) > max_bytes:
            break
        out.append((seq, payload))
        size += len(payload)
    return out


class Spool(SpoolWriter):
    def __init__(self, data_dir: str | Path, site: str, gateway: str, *, quota_bytes: int = DEFAULT_QUOTA,
                 min_free_bytes: int = DEFAULT_MIN_FREE, clock_status: str = "unknown",
                 boot_id: str | None = None, synchronous: str = "FULL", reserve_bytes: int = DEFAULT_RESERVE):
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / SPOOL_FILE
        self.site, self.gateway = site, gateway
        self.boot_id = boot_id or uuid.uuid4().hex[:16]
        self.clock_status = clock_status
        self.quota_bytes = int(quota_bytes)
        self.min_free_bytes = int(min_free_bytes)
        self.reserve = Reserve(self.dir / RESERVE_FILE, reserve_bytes)   # before SQLite: its space comes first
        if self.reserve.problem:
            print(f"uplink spool: {self.reserve.problem}", file=sys.stderr, flush=True)
        try:
            self._db = self._open_db(synchronous)
        except sqlite3.OperationalError:       # a disk that filled while we were down: SQLite cannot make
            if not self.reserve.give_back(OPEN_GIVE_BACK):   # its -wal/-shm; the reserve's blocks are ours
                raise
            print(f"uplink spool: {self.reserve.problem}", file=sys.stderr, flush=True)
            self._db = self._open_db(synchronous)
        self.refusing_telemetry = False
        self.disk_low = False
        self.write_error: str | None = None
        self.writer_errors = 0                 # unexpected exceptions in the writer loop (it went on)
        self.busy_retries = 0                  # commits retried because another connection held the lock
        self._busy = False
        self.writer_error: str | None = None
        self.writer_restarts = 0               # writer threads that died and were started again
        self.writer_crash: str | None = None   # what the last one died of
        self.evicted = 0
        self.refused = 0
        self.retry_dropped = 0
        self.reserved_total = 0                # records ever appended to the reserve
        self.reserve_moved = 0                 # of them, moved into SQLite
        self.reserve_errors = 0                # appends that failed (EIO...): the batch stayed in memory
        self.commits = 0
        self.committed_rows = 0
        self.commit_s = deque(maxlen=4096)     # wall time of each commit (fsync included)
        self.put_s = deque(maxlen=65536)       # time the caller spent in put()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._new = threading.Condition()
        self._local = threading.local()
        self._closing = False
        self._last_disk_check = 0.0
        self._next_try = 0.0                   # while SQLite refuses writes: when to try it again
        self._hands = _Hands()
        self._step: tuple | None = None        # (pre, top, hands, new_start, kept, markers) of a step under way
        self._restart_lock = threading.Lock()
        self._restart_at = 0.0
        self._restart_attempt = 0
        self._writer_started = 0.0
        self._recover()                        # seq high-water mark from SQLite and the reserve
        self._count()
        if self.reserve_pending:               # a crash during a full disk: into SQLite now if it has room
            try:
                self._commit(self._hands, 0)
            except sqlite3.Error as exc:
                self.write_error = str(exc)
                self._next_try = time.monotonic() + RETRY_S
        self._writer = self._start_writer()

    def _open_db(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=30.0)         # the uplink worker deletes too: wait for its lock
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.executescript(SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _count(self) -> None:
        rows, size_by = {k: 0 for k in RECORD_KINDS}, {k: 0 for k in RECORD_KINDS}
        for kind, n, size in self._db.execute(
                "SELECT kind, count(*), sum(length(payload)) FROM records GROUP BY kind"):
            rows[kind] = n
            size_by[kind] = (size or 0) + ROW_OVERHEAD * n
        self.rows_by_kind, self.bytes_by_kind = rows, size_by

    def _db_top(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        top = self._db.execute("SELECT max(seq) FROM records").fetchone()[0] or 0
        return max(int(row[0]) if row else 0, top)

    # --- the scan cycle's side ------------------------------------------------------------------
    def put(self, kind: str, t_s: float, body: dict) -> None:
        """Queue one record; never blocks (the writer thread commits it within a few ms)."""
        t0 = time.perf_counter()
        self._q.put(("rec", kind, float(t_s), body))
        self.put_s.append(time.perf_counter() - t0)

    @property
    def alarm(self) -> bool:
        """The disk or the quota refuses (``uplink_spool_full``): telemetry refused, SQLite failing, or
        records waiting in the reserve."""
        return (self.refusing_telemetry or self.disk_low or (self.write_error is not None and not self._busy)
                or self.reserve_pending > 0)

    @property
    def writer_faults(self) -> int:
        """Unexpected writer exceptions + writer restarts: grows on every fault (``uplink_writer_fault``)."""
        return self.writer_errors + self.writer_restarts

    @property
    def writer_alive(self) -> bool:
        return self._writer.is_alive()

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_kind.values())

    @property
    def pending_rows(self) -> int:
        return sum(self.rows_by_kind.values())

    # --- supervision ----------------------------------------------------------------------------
    def supervise(self) -> bool:
        """Restart the writer thread if it died (any exception that escaped it). Cheap enough for every
        cycle: one ``is_alive`` while it lives. The first restart is at once; a writer that keeps dying
        is restarted after WRITER_RESTART_BASE_S doubling to WRITER_RESTART_CAP_S. True if restarted now."""
        if self._writer.is_alive() or self._closing:
            return False
        now = time.monotonic()
        if now < self._restart_at or not self._restart_lock.acquire(blocking=False):
            return False
        try:
            if self._writer.is_alive() or self._closing:
                return False
            if now - self._writer_started > WRITER_STABLE_S:
                self._restart_attempt = 0
            self._restart_at = now + min(WRITER_RESTART_CAP_S, WRITER_RESTART_BASE_S * 2 ** self._restart_attempt)
            self._restart_attempt += 1
            self.writer_restarts += 1
            if self.writer_crash is None:
                self.writer_crash = "the writer thread ended"
            print(f"uplink spool: writer thread dead ({self.writer_crash}); restart #{self.writer_restarts}",
                  file=sys.stderr, flush=True)
            self._writer = self._start_writer()
            return True
        finally:
            self._restart_lock.release()

    def _start_writer(self) -> threading.Thread:
        self._writer_started = time.monotonic()
        t = threading.Thread(target=self._write_loop, args=(self.writer_restarts > 0,), name="spool-writer",
                             daemon=True)
        t.start()
        return t

    # --- the sender's side ----------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db

    def pending(self, kind: str, after_seq: int, limit: int, max_bytes: int = 1 << 30) -> list[tuple[int, bytes]]:
        """Committed records of one kind with seq > after_seq, oldest first, at most limit / max_bytes."""
        return select_pending(self._reader(), kind, after_seq, limit, max_bytes)

    def ack(self, seqs) -> None:
        """The broker acknowledged these: delete them (in the writer thread)."""
        self._q.put(("del", list(seqs)))

    def ack_range(self, kind: str, first_seq: int, last_seq: int) -> None:
        """The cloud confirmed one uplink message: delete the rows of ``kind`` in [first_seq, last_seq].

        Safe as a range: a message carries every spooled row of its kind in that range (rows of a kind
        are offered in seq order, and rows committed later get higher seqs)."""
        self._q.put(("delr", str(kind), int(first_seq), int(last_seq)))

    def gone(self, counts) -> None:
        """The uplink worker (another process) deleted rows: ``[[kind, rows, payload_bytes], ...]``.
        Only the quota accounting changes (in the writer thread, which owns it)."""
        self._q.put(("gone", [(str(k), int(n), int(b)) for k, n, b in counts]))

    def recount(self) -> None:
        """Re-read rows and bytes per kind from the file (after a worker died between a delete and its
        report, the counters would otherwise stay too high)."""
        self._q.put(("recount",))

    def wait_new(self, timeout: float) -> None:
        with self._new:
            self._new.wait(timeout)

    # --- meta (command counter) -----------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str, timeout: float = 10.0) -> bool:
        """Durably set a meta value; returns once committed to SQLite (not for the scan cycle). False
        when it was not within ``timeout`` (a full disk: the reserve holds records, not meta values)."""
        self.supervise()
        marker = _Flush()
        self._q.put(("meta", key, str(value), marker))
        return marker.done.wait(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything put so far is durable: committed, in the reserve, or refused."""
        self.supervise()
        marker = _Flush()
        self._q.put(("flush", marker))
        return marker.done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._closing:
            return
        self.flush(timeout)
        self._closing = True
        self._q.put(("stop",))
        self._writer.join(timeout)
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
        if not self._writer.is_alive():
            self.reserve.close()

    def stats(self) -> dict:
        def q(values, p):
            v = sorted(values)
            return 1000.0 * v[min(len(v) - 1, int(p * len(v)))] if v else 0.0
        r = self.reserve
        return {"last_seq": self.last_seq, "pending_rows": self.pending_rows, "bytes": self.total_bytes,
                "quota_bytes": self.quota_bytes, "commits": self.commits, "committed_rows": self.committed_rows,
                "evicted": self.evicted, "refused_telemetry": self.refused, "retry_dropped": self.retry_dropped,
                "writer_errors": self.writer_errors, "busy_retries": self.busy_retries, "writer_error": self.writer_error,
                "writer_restarts": self.writer_restarts, "writer_crash": self.writer_crash,
                "writer_alive": self.writer_alive, "write_error": self.write_error,
                "reserve": {"bytes": r.size, "used": r.end, "pending": self.reserve_pending,
                            "appended": self.reserved_total, "moved": self.reserve_moved,
                            "errors": self.reserve_errors, "problem": r.problem},
                "alarm": self.alarm,
                "put_p99_us": q(self.put_s, 0.99) * 1000.0, "put_max_us": q(self.put_s, 1.0) * 1000.0,
                "commit_p50_ms": q(self.commit_s, 0.5), "commit_p99_ms": q(self.commit_s, 0.99)}
