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
"""
from __future__ import annotations

import json
import queue
import shutil
import sqlite3
import sys
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

from controller.uplink.priority import lower_this_thread
from controller.uplink.reserve import DEFAULT_RESERVE, RESERVE_FILE, Reserve
from controller.uplink.topics import NEVER_DROPPED, RECORD_KINDS, TELEMETRY, EVENT

SPOOL_FILE = "uplink-spool.sqlite"
ROW_OVERHEAD = 48                  # bytes counted per row on top of its payload (b-tree cell + index)
# records held in memory while the database refuses writes and the reserve is full too: beyond this the
# oldest are dropped and counted (retry_dropped) - about 10 MB of events and alarms
MAX_RETRY_RECORDS = 20_000
BATCH_MAX = 1000                   # queue items per writer transaction
RETRY_S = 0.5                      # while SQLite refuses writes: try it again this often
WRITER_RESTART_BASE_S, WRITER_RESTART_CAP_S = 0.5, 30.0   # back-off between restarts of a writer that keeps dying
WRITER_STABLE_S = 60.0             # a writer that lived this long starts the back-off again from zero
DEFAULT_QUOTA = 64 * 1024 * 1024   # a week offline measured 14.1 MB (tools/bench/uplink.py week; README)
DEFAULT_MIN_FREE = 16 * 1024 * 1024
OPEN_GIVE_BACK = 512 * 1024         # reserve bytes freed to open SQLite on a disk that is already full
LOW_WATER = 0.9                    # eviction frees down to this fraction of the quota

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, t_s REAL NOT NULL,
                                    payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS records_kind_seq ON records (kind, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def iso_utc(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")



BUSY_RETRY_S = 1.0


def _transient(exc: sqlite3.Error) -> bool:
    """A lock another connection held past the timeout: the disk is fine, try again soon."""
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED")


def _rollback(db: sqlite3.Connection) -> None:
    """Undo an open transaction, if SQLite has not already (on SQLITE_FULL it rolls back by itself, and a
    second ROLLBACK would raise over the error that matters)."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


class _Flush:
    def __init__(self):
        self.done = threading.Event()


class _Hands:
    """What the writer took from the queue and has not settled yet: ``items[start:]``. On the spool, not
    in the writer's locals, so a writer that dies leaves them to the next one. Settling a prefix moves
    ``start`` (one store); a degraded batch replaces the whole object."""

    __slots__ = ("items", "start")

    def __init__(self, items: list | None = None):
        self.items = items or []
        self.start = 0

    def rest(self) -> list:
        return self.items[self.start:] if self.start else self.items

    def __bool__(self) -> bool:
        return self.start < len(self.items)


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


def _release(markers) -> None:
    for m in markers:
        m.done.set()


class Spool:
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

    # --- the writer thread ------------------------------------------------------------------------
    def _encode(self, seq: int, kind: str, t_s: float, body: dict) -> bytes:
        rec = {"v": 1, "site": self.site, "gateway": self.gateway, "boot_id": self.boot_id, "seq": seq,
               "kind": kind, "t": iso_utc(t_s), "t_s": round(t_s, 3), "clock": self.clock_status, "body": body}
        try:
            return json.dumps(rec, separators=(",", ":"), allow_nan=False, default=float).encode()
        except Exception as exc:    # NaN, an odd type, deep nesting (RecursionError): must not kill the writer
            rec["body"] = {"unencodable": f"{type(exc).__name__}: {exc}"[:200]}
            return json.dumps(rec, separators=(",", ":")).encode()

    def _write_loop(self, restarted: bool) -> None:
        lower_this_thread()
        try:
            if restarted:
                self._recover()
            self._run_writer()
        except BaseException as exc:           # noqa: BLE001 - said, and supervise() starts another
            self.writer_crash = f"{type(exc).__name__}: {exc}"[:200]
            print(f"uplink spool: the writer thread died: {self.writer_crash}", file=sys.stderr, flush=True)

    def _recover(self) -> None:
        """Before a writer runs (at open, or after one died): the seq high-water mark and the reserve's
        waiting records from what is on disk, and whether the step a dead writer was in got done."""
        db = self._db
        _rollback(db)                          # a dead writer's open transaction: it never happened
        db_top = self._db_top()
        res_top = max((r[0] for r in self.reserve.records()), default=0)
        step, self._step = self._step, None
        if step is not None:
            pre, top, hands, new_start, kept, markers = step
            if top > pre and max(db_top, res_top) >= top:      # it reached the disk: do not do it twice
                if kept is not None:
                    self._hands = _Hands(kept)
                else:
                    hands.start = new_start
                _release(markers)
        self._db_last_seq = db_top
        self.reserve_pending = sum(1 for r in self.reserve.records() if r[0] > db_top)
        self.last_seq = max(db_top, res_top)
        if self.writer_restarts:
            self._count()                      # a "gone" report may have died with the writer

    def _run_writer(self) -> None:
        while True:
            if self._hands or self.reserve_pending:
                wait = max(0.0, self._next_try - time.monotonic()) if self.write_error is not None else 0.0
            else:
                wait = None
            self._take(wait)
            hands = self._hands
            items = hands.rest()
            stop = any(item[0] == "stop" for item in items)
            if not (items or self.reserve_pending):
                continue
            if self.write_error is None or stop or time.monotonic() >= self._next_try:
                try:
                    if self._commit(hands, len(items)):
                        self.write_error = None     # a transaction went through: SQLite writes again
                        self._busy = False
                except sqlite3.Error as exc:    # disk full / I/O error: the reserve, and retry later
                    self.write_error = str(exc)
                    self._busy = _transient(exc) and not stop
                    if self._busy:              # the worker holds the lock past the timeout: nothing is
                        self.busy_retries += 1  # refused, the batch waits in the hands for a second
                        self._next_try = time.monotonic() + BUSY_RETRY_S
                    else:
                        self._next_try = time.monotonic() + RETRY_S
                        self._degrade(self._hands)
                except Exception as exc:        # a fault no handler knows: counted, the loop goes on
                    self._commit_singly(hands, exc)
            elif not self._busy:
                self._degrade(hands)
            with self._new:
                self._new.notify_all()
            if stop:
                lost = sum(1 for it in self._hands.rest() if it[0] == "rec")
                if lost:                        # disk and reserve full at shutdown: say what dies with us
                    self.retry_dropped += lost
                    print(f"uplink spool: {lost} records not stored at shutdown (disk and reserve full)",
                          file=sys.stderr, flush=True)
                self._db.close()
                return

    def _take(self, wait: float | None) -> None:
        """Queued items into the hands (at most BATCH_MAX): wait up to ``wait`` s for the first (None:
        until one comes). The quota reports (gone, recount) are applied here, never held."""
        new = []
        try:
            new.append(self._q.get(True, wait) if wait is None or wait > 0 else self._q.get_nowait())
            while len(new) < BATCH_MAX:
                new.append(self._q.get_nowait())
        except queue.Empty:
            pass
        if not new:
            return
        kept = []
        for item in new:
            if item[0] == "gone":
                for kind, n, size in item[1]:
                    self.bytes_by_kind[kind] = self.bytes_by_kind.get(kind, 0) - size - ROW_OVERHEAD * n
                    self.rows_by_kind[kind] = self.rows_by_kind.get(kind, 0) - n
            elif item[0] == "recount":
                try:
                    self._count()
                except sqlite3.Error:
                    pass
            else:
                kept.append(item)
        if kept:
            self._hands = _Hands(self._hands.rest() + kept) if self._hands else _Hands(kept)

    def _commit_singly(self, hands: _Hands, exc: Exception) -> None:
        """After an unexpected failure, commit item by item so one poison item costs only itself. Its
        flush/meta marker is left unset (the caller's wait times out: not committed), never lost silently."""
        self.writer_errors += 1
        self.writer_error = f"{type(exc).__name__}: {exc}"[:200]
        while hands:
            try:
                if self._commit(hands, 1):
                    self.write_error = None
            except sqlite3.Error as exc2:
                self.write_error = str(exc2)
                self._next_try = time.monotonic() + RETRY_S
                self._degrade(hands)
                return
            except Exception as exc2:
                self.writer_errors += 1
                self.writer_error = f"{type(exc2).__name__}: {exc2}"[:200]
                hands.start += 1               # the poison item goes

    def _check_disk(self) -> None:
        now = time.monotonic()
        if now - self._last_disk_check < 1.0:
            return
        self._last_disk_check = now
        try:
            self.disk_low = shutil.disk_usage(self.dir).free < self.min_free_bytes
        except OSError:
            pass

    def _waiting_in_reserve(self) -> list:
        if not self.reserve_pending:
            return []
        last = self._db_last_seq
        return [r for r in self.reserve.records() if r[0] > last]

    def _commit(self, hands: _Hands, n: int) -> bool:
        """Commit the next ``n`` unsettled items (and, first, whatever waits in the reserve) in one
        transaction; on success they are settled. sqlite3.Error: nothing changed. False when there was
        nothing to write (no transaction: says nothing about the disk)."""
        t0 = time.perf_counter()
        self._check_disk()
        db = self._db
        items = hands.items[hands.start:hands.start + n]
        rows, dels, metas, ranges, range_gone, markers = [], [], [], [], [], []
        seq = self.last_seq
        for item in items:
            if item[0] == "rec":
                _, kind, t_s, body = item
                if kind == TELEMETRY and (self.refusing_telemetry or self.disk_low):
                    self.refused += 1
                    continue
                seq += 1
                rows.append((seq, kind, t_s, self._encode(seq, kind, t_s, body)))
            elif item[0] == "del":
                dels.extend(item[1])
            elif item[0] == "delr":
                ranges.append(item[1:])
            elif item[0] == "meta":
                metas.append((item[1], item[2]))
                markers.append(item[-1])
            elif item[0] == "flush":
                markers.append(item[-1])
        moved = [(s, k, t, p) for s, t, k, p in self._waiting_in_reserve()]
        if not (rows or dels or metas or ranges or moved):
            hands.start += n
            _release(markers)
            if self.refusing_telemetry and self.total_bytes < LOW_WATER * self.quota_bytes:
                self.refusing_telemetry = False
            return False
        top = max(seq, moved[-1][0] if moved else 0)
        self._step = (self.last_seq, seq, hands, hands.start + n, None, markers)
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.execute("BEGIN IMMEDIATE")
        try:
            if moved:                           # the reserve first: seq order holds in the table
                db.executemany("INSERT OR IGNORE INTO records (seq, kind, t_s, payload) VALUES (?,?,?,?)", moved)
            if rows:
                db.executemany("INSERT INTO records (seq, kind, t_s, payload) VALUES (?,?,?,?)", rows)
            if rows or moved:
                metas.append(("last_seq", str(max(top, self.last_seq))))
            gone = []
            for i in range(0, len(dels), 500):
                chunk = dels[i:i + 500]
                gone += db.execute(f"DELETE FROM records WHERE seq IN ({','.join('?' * len(chunk))}) "
                                   "RETURNING kind, length(payload)", chunk).fetchall()
            for kind, first, last in ranges:        # aggregate in SQL: no Python row per deleted record
                cnt, size = db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM records "
                                       "WHERE kind=? AND seq BETWEEN ? AND ?", (kind, first, last)).fetchone()
                if cnt:
                    db.execute("DELETE FROM records WHERE kind=? AND seq BETWEEN ? AND ?", (kind, first, last))
                    range_gone.append((kind, cnt, size))
            if metas:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)", metas)
            db.execute("COMMIT")
        except BaseException:
            self._step = None
            _rollback(db)
            raise
        hands.start += n                        # settled: a writer dying from here on does not redo them
        self._step = None
        self.last_seq = max(self.last_seq, top)
        try:                                    # committed: a flush waiting on it returns whatever happens now
            if rows or moved:
                self._db_last_seq = max(self._db_last_seq, top, self.last_seq)
            if moved:
                self.reserve_pending = 0
                self.reserve_moved += len(moved)
                self.reserve.reset()
            for _, kind, _, payload in moved + rows:
                self.bytes_by_kind[kind] = self.bytes_by_kind.get(kind, 0) + len(payload) + ROW_OVERHEAD
                self.rows_by_kind[kind] = self.rows_by_kind.get(kind, 0) + 1
            for kind, size in gone:
                self.bytes_by_kind[kind] -= size + ROW_OVERHEAD
                self.rows_by_kind[kind] -= 1
            for kind, cnt, size in range_gone:
                self.bytes_by_kind[kind] -= size + ROW_OVERHEAD * cnt
                self.rows_by_kind[kind] -= cnt
            self.commits += 1
            self.committed_rows += len(rows) + len(moved)
            self.commit_s.append(time.perf_counter() - t0)
            if self.total_bytes > self.quota_bytes:
                self._evict()
            elif self.refusing_telemetry and self.total_bytes < LOW_WATER * self.quota_bytes:
                self.refusing_telemetry = False
        finally:
            _release(markers)
        return True

    def _degrade(self, hands: _Hands) -> None:
        """SQLite refuses writes: the batch's never-dropped records go to the reserve (seq assigned,
        fsync'd), its telemetry is refused (counted); deletes, meta values and records the reserve has no
        room for stay in the hands for the next try. A flush is released once every record before it is
        durable."""
        items = hands.rest()
        recs = [it for it in items if it[0] == "rec" and it[1] in NEVER_DROPPED]
        seq, room, fit, encoded = self.last_seq, self.reserve.free, 0, []
        for _, kind, t_s, body in recs:
            payload = self._encode(seq + 1, kind, t_s, body)
            need = self.reserve.frame_size(payload)
            if need > room:
                break
            room -= need
            seq += 1
            encoded.append((seq, t_s, kind, payload))
        fit = len(encoded)
        kept, markers, held_back, seen = [], [], False, 0
        refused = 0
        for it in items:
            if it[0] == "rec":
                if it[1] not in NEVER_DROPPED:
                    refused += 1                # telemetry: refused while the disk is full, as by the quota
                    continue
                seen += 1
                if seen > fit:
                    kept.append(it)
                    held_back = True
            elif it[0] == "flush" and not held_back:
                markers.append(it[-1])
            else:
                kept.append(it)
        recs_kept = [i for i, it in enumerate(kept) if it[0] == "rec"]
        if len(recs_kept) > MAX_RETRY_RECORDS:  # the reserve is full too: memory stays bounded, oldest go
            cut = set(recs_kept[:len(recs_kept) - MAX_RETRY_RECORDS])
            self.retry_dropped += len(cut)
            kept = [it for i, it in enumerate(kept) if i not in cut]
        if encoded:
            self._step = (self.last_seq, seq, hands, None, kept, markers)
            try:
                self.reserve.append(encoded)
            except OSError as exc:              # the reserve fails too (EIO): all stays in memory
                self._step = None
                self.reserve_errors += 1
                self.write_error = f"{self.write_error}; reserve: {exc}"
                return
            self.last_seq = seq
            self.reserve_pending += fit
            self.reserved_total += fit
        self._hands = _Hands(kept)
        self._step = None
        self.refused += refused
        _release(markers)

    def _evict(self) -> None:
        """Thin, then drop, the oldest telemetry until under LOW_WATER of the quota (never other kinds)."""
        db = self._db
        target = LOW_WATER * self.quota_bytes
        removed: list[int] = []
        try:
            for _ in range(64):
                if self.total_bytes <= target:
                    break
                tele = db.execute("SELECT seq FROM records WHERE kind=? ORDER BY seq", (TELEMETRY,)).fetchall()
                if not tele:
                    break
                if len(tele) >= 4:
                    victims = [s for (s,) in tele[:len(tele) // 2][1::2]]      # thin the older half
                else:
                    victims = [s for (s,) in tele]                                # drop what is left
                db.execute("BEGIN IMMEDIATE")
                gone = []
                for i in range(0, len(victims), 500):
                    chunk = victims[i:i + 500]
                    gone += db.execute(f"DELETE FROM records WHERE seq IN ({','.join('?' * len(chunk))}) "
                                       "RETURNING length(payload)", chunk).fetchall()
                db.execute("COMMIT")
                for (size,) in gone:
                    self.bytes_by_kind[TELEMETRY] -= size + ROW_OVERHEAD
                    self.rows_by_kind[TELEMETRY] -= 1
                removed += victims
            if removed:
                self.evicted += len(removed)
                now = time.time()
                seq = self.last_seq + 1
                body = {"event": "spool_evicted", "kind": TELEMETRY, "count": len(removed),
                        "first_seq": min(removed), "last_seq": max(removed), "policy": "thin-then-drop-oldest"}
                payload = self._encode(seq, EVENT, now, body)
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO records (seq, kind, t_s, payload) VALUES (?,?,?,?)", (seq, EVENT, now, payload))
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)", (str(seq),))
                db.execute("COMMIT")
                self.last_seq = self._db_last_seq = seq
                self.bytes_by_kind[EVENT] += len(payload) + ROW_OVERHEAD
                self.rows_by_kind[EVENT] += 1
        except BaseException:
            _rollback(db)
            raise
        # only never-dropped records left over the quota: stop accepting telemetry (an alarm)
        self.refusing_telemetry = self.total_bytes > target and self.rows_by_kind.get(TELEMETRY, 0) == 0 \
            or self.total_bytes > self.quota_bytes

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
