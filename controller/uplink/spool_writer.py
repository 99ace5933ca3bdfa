"""The spool's writer thread (mixed into :class:`controller.uplink.spool.Spool`): batches from the queue into
SQLite, the full-disk path into the reserve, the quota's eviction, and the recovery a restarted writer
does. Its own module because it is the one job with its own thread and its own failure rules (spool.py's
docstring is the contract); the spool's API, meta values and stats stay in spool.py.

Why the state lives on the spool, not here: a writer that dies leaves its unsettled items (``_hands``) and
the step in progress (``_step``) to the next one, which asks SQLite and the reserve how far it got.
"""
from __future__ import annotations

import json
import queue
import shutil
import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone

from controller.uplink.priority import lower_this_thread
from controller.uplink.topics import EVENT, NEVER_DROPPED, TELEMETRY

ROW_OVERHEAD = 48                  # bytes counted per row on top of its payload (b-tree cell + index)
# records held in memory while the database refuses writes and the reserve is full too: beyond this the
# oldest are dropped and counted (retry_dropped) - about 10 MB of events and alarms
MAX_RETRY_RECORDS = 20_000
BATCH_MAX = 1000                   # queue items per writer transaction
RETRY_S = 0.5                      # while SQLite refuses writes: try it again this often
LOW_WATER = 0.9                    # eviction frees down to this fraction of the quota
BUSY_RETRY_S = 1.0                 # another connection held the lock past its timeout: try again after this


def iso_utc(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


def _release(markers) -> None:
    for m in markers:
        m.done.set()



class SpoolWriter:
    """The writer thread's methods; the attributes they use are set by ``Spool.__init__``."""

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
