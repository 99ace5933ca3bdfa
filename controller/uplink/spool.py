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
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import sqlite3
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

from controller.uplink.priority import lower_this_thread
from controller.uplink.topics import NEVER_DROPPED, RECORD_KINDS, TELEMETRY, EVENT

SPOOL_FILE = "uplink-spool.sqlite"
ROW_OVERHEAD = 48                  # bytes counted per row on top of its payload (b-tree cell + index)
# records held in memory while the database refuses writes (disk full): beyond this the oldest are dropped
# and counted (retry_dropped) - about 10 MB of events and alarms, hours of a full disk
MAX_RETRY_RECORDS = 20_000
DEFAULT_QUOTA = 64 * 1024 * 1024   # a week offline measured 14.1 MB (tools/bench/uplink.py week; README)
DEFAULT_MIN_FREE = 16 * 1024 * 1024
LOW_WATER = 0.9                    # eviction frees down to this fraction of the quota

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, t_s REAL NOT NULL,
                                    payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS records_kind_seq ON records (kind, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def iso_utc(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Flush:
    def __init__(self):
        self.done = threading.Event()



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

class Spool:
    def __init__(self, data_dir: str | Path, site: str, gateway: str, *, quota_bytes: int = DEFAULT_QUOTA,
                 min_free_bytes: int = DEFAULT_MIN_FREE, clock_status: str = "unknown",
                 boot_id: str | None = None, synchronous: str = "FULL"):
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / SPOOL_FILE
        self.site, self.gateway = site, gateway
        self.boot_id = boot_id or uuid.uuid4().hex[:16]
        self.clock_status = clock_status
        self.quota_bytes = int(quota_bytes)
        self.min_free_bytes = int(min_free_bytes)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=30.0)   # the uplink worker deletes too: wait for its lock
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        top = self._db.execute("SELECT max(seq) FROM records").fetchone()[0] or 0
        self.last_seq = max(int(row[0]) if row else 0, top)
        self._count()
        self.refusing_telemetry = False
        self.disk_low = False
        self.write_error: str | None = None
        self.writer_errors = 0                 # unexpected exceptions in the writer loop (it went on)
        self.writer_error: str | None = None
        self.evicted = 0
        self.refused = 0
        self.retry_dropped = 0
        self.commits = 0
        self.committed_rows = 0
        self.commit_s = deque(maxlen=4096)     # wall time of each commit (fsync included)
        self.put_s = deque(maxlen=65536)       # time the caller spent in put()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._new = threading.Condition()
        self._local = threading.local()
        self._closing = False
        self._last_disk_check = 0.0
        self._writer = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._writer.start()

    def _count(self) -> None:
        rows, size_by = {k: 0 for k in RECORD_KINDS}, {k: 0 for k in RECORD_KINDS}
        for kind, n, size in self._db.execute(
                "SELECT kind, count(*), sum(length(payload)) FROM records GROUP BY kind"):
            rows[kind] = n
            size_by[kind] = (size or 0) + ROW_OVERHEAD * n
        self.rows_by_kind, self.bytes_by_kind = rows, size_by

    # --- the scan cycle's side ------------------------------------------------------------------
    def put(self, kind: str, t_s: float, body: dict) -> None:
        """Queue one record; never blocks (the writer thread commits it within a few ms)."""
        t0 = time.perf_counter()
        self._q.put(("rec", kind, float(t_s), body))
        self.put_s.append(time.perf_counter() - t0)

    @property
    def alarm(self) -> bool:
        return self.refusing_telemetry or self.disk_low or self.write_error is not None

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_kind.values())

    @property
    def pending_rows(self) -> int:
        return sum(self.rows_by_kind.values())

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
        """Durably set a meta value; returns once committed (not for the scan cycle)."""
        marker = _Flush()
        self._q.put(("meta", key, str(value), marker))
        return marker.done.wait(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything put so far is committed."""
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

    # --- the writer thread ------------------------------------------------------------------------
    def _encode(self, seq: int, kind: str, t_s: float, body: dict) -> bytes:
        rec = {"v": 1, "site": self.site, "gateway": self.gateway, "boot_id": self.boot_id, "seq": seq,
               "kind": kind, "t": iso_utc(t_s), "t_s": round(t_s, 3), "clock": self.clock_status, "body": body}
        try:
            return json.dumps(rec, separators=(",", ":"), allow_nan=False, default=float).encode()
        except Exception as exc:    # NaN, an odd type, deep nesting (RecursionError): must not kill the writer
            rec["body"] = {"unencodable": f"{type(exc).__name__}: {exc}"[:200]}
            return json.dumps(rec, separators=(",", ":")).encode()

    def _write_loop(self) -> None:
        lower_this_thread()
        retry: list = []
        while True:
            try:
                first = retry.pop(0) if retry else self._q.get()
            except IndexError:
                continue
            batch = [first] + retry
            retry = []
            while len(batch) < 1000:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            stop = any(item[0] == "stop" for item in batch)
            try:
                self._commit(batch)
                self.write_error = None
            except sqlite3.Error as exc:           # disk full / I/O error: keep never-dropped, retry
                self.write_error = str(exc)
                retry = [it for it in batch if not (it[0] == "rec" and it[1] == TELEMETRY)]
                self.refused += sum(1 for it in batch if it[0] == "rec" and it[1] == TELEMETRY)
                recs = [i for i, it in enumerate(retry) if it[0] == "rec"]
                if len(recs) > MAX_RETRY_RECORDS:  # a disk full for hours: memory stays bounded, oldest go
                    cut = set(recs[:len(recs) - MAX_RETRY_RECORDS])
                    self.retry_dropped += len(cut)
                    retry = [it for i, it in enumerate(retry) if i not in cut]
                time.sleep(0.5)
                if not stop:
                    continue
            except Exception as exc:               # a fault no handler knows: counted, the loop goes on
                batch = self._commit_singly(batch, exc)
            for item in batch:
                if item[0] in ("flush", "meta"):
                    item[-1].done.set()
            with self._new:
                self._new.notify_all()
            if stop:
                self._db.close()
                return

    def _commit_singly(self, batch: list, exc: Exception) -> list:
        """After an unexpected failure, commit item by item so one poison item costs only itself. Its
        flush/meta marker is left unset (the caller's wait times out: not committed), never lost silently."""
        self.writer_errors += 1
        self.writer_error = f"{type(exc).__name__}: {exc}"[:200]
        kept = []
        for item in batch:
            try:
                self._commit([item])
                kept.append(item)
            except Exception as exc2:
                self.writer_errors += 1
                self.writer_error = f"{type(exc2).__name__}: {exc2}"[:200]
        return kept

    def _check_disk(self) -> None:
        now = time.monotonic()
        if now - self._last_disk_check < 1.0:
            return
        self._last_disk_check = now
        try:
            self.disk_low = shutil.disk_usage(self.dir).free < self.min_free_bytes
        except OSError:
            pass

    def _commit(self, batch: list) -> None:
        t0 = time.perf_counter()
        self._check_disk()
        db = self._db
        rows, dels, metas, ranges, range_gone = [], [], [], [], []
        seq = self.last_seq
        for item in batch:
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
            elif item[0] == "gone":
                for kind, n, size in item[1]:
                    self.bytes_by_kind[kind] = self.bytes_by_kind.get(kind, 0) - size - ROW_OVERHEAD * n
                    self.rows_by_kind[kind] = self.rows_by_kind.get(kind, 0) - n
            elif item[0] == "recount":
                self._count()
        if not (rows or dels or metas or ranges):
            if self.refusing_telemetry and self.total_bytes < LOW_WATER * self.quota_bytes:
                self.refusing_telemetry = False
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                db.executemany("INSERT INTO records (seq, kind, t_s, payload) VALUES (?,?,?,?)", rows)
                metas.append(("last_seq", str(seq)))
            gone = []
            for i in range(0, len(dels), 500):
                chunk = dels[i:i + 500]
                gone += db.execute(f"DELETE FROM records WHERE seq IN ({','.join('?' * len(chunk))}) "
                                   "RETURNING kind, length(payload)", chunk).fetchall()
            for kind, first, last in ranges:        # aggregate in SQL: no Python row per deleted record
                n, size = db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM records "
                                     "WHERE kind=? AND seq BETWEEN ? AND ?", (kind, first, last)).fetchone()
                if n:
                    db.execute("DELETE FROM records WHERE kind=? AND seq BETWEEN ? AND ?", (kind, first, last))
                    range_gone.append((kind, n, size))
            if metas:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)", metas)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.last_seq = seq
        for _, kind, _, payload in rows:
            self.bytes_by_kind[kind] = self.bytes_by_kind.get(kind, 0) + len(payload) + ROW_OVERHEAD
            self.rows_by_kind[kind] = self.rows_by_kind.get(kind, 0) + 1
        for kind, size in gone:
            self.bytes_by_kind[kind] -= size + ROW_OVERHEAD
            self.rows_by_kind[kind] -= 1
        for kind, n, size in range_gone:
            self.bytes_by_kind[kind] -= size + ROW_OVERHEAD * n
            self.rows_by_kind[kind] -= n
        self.commits += 1
        self.committed_rows += len(rows)
        self.commit_s.append(time.perf_counter() - t0)
        if self.total_bytes > self.quota_bytes:
            self._evict()
        elif self.refusing_telemetry and self.total_bytes < LOW_WATER * self.quota_bytes:
            self.refusing_telemetry = False

    def _evict(self) -> None:
        """Thin, then drop, the oldest telemetry until under LOW_WATER of the quota (never other kinds)."""
        db = self._db
        target = LOW_WATER * self.quota_bytes
        removed: list[int] = []
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
            self.last_seq = seq
            self.bytes_by_kind[EVENT] += len(payload) + ROW_OVERHEAD
            self.rows_by_kind[EVENT] += 1
        # only never-dropped records left over the quota: stop accepting telemetry (an alarm)
        self.refusing_telemetry = self.total_bytes > target and self.rows_by_kind.get(TELEMETRY, 0) == 0 \
            or self.total_bytes > self.quota_bytes

    def stats(self) -> dict:
        def q(values, p):
            v = sorted(values)
            return 1000.0 * v[min(len(v) - 1, int(p * len(v)))] if v else 0.0
        return {"last_seq": self.last_seq, "pending_rows": self.pending_rows, "bytes": self.total_bytes,
                "quota_bytes": self.quota_bytes, "commits": self.commits, "committed_rows": self.committed_rows,
                "evicted": self.evicted, "refused_telemetry": self.refused, "retry_dropped": self.retry_dropped,
                "writer_errors": self.writer_errors, "writer_error": self.writer_error,
                "alarm": self.alarm,
                "put_p99_us": q(self.put_s, 0.99) * 1000.0, "put_max_us": q(self.put_s, 1.0) * 1000.0,
                "commit_p50_ms": q(self.commit_s, 0.5), "commit_p99_ms": q(self.commit_s, 0.99)}
