"""``edge-ems-cloud ingest``: the fleet's uplink into PostgreSQL, through an MQTT v5 shared subscription.

One worker = one process: a paho-mqtt 2.x client (its network thread) and one database thread.
- Subscribes ``$share/{group}/edge-ems/v1/+/+/{kind}/#`` for every record kind (``#`` matches the kind itself
  and its ``/batch``), QoS 1; worker 0 also reads the retained ``status`` topics (not shared: a shared
  subscription gets no retained messages).
- Session: a fixed client id per (group, worker), ``clean_start=False`` and a session expiry, so a worker
  killed with SIGKILL and started again gets from the broker what it had not acknowledged, and the broker
  queues for it meanwhile. ``manual_ack``: the PUBACK to the broker is sent only after the database commit
  (and ``Receive Maximum`` bounds what the broker hands over unacknowledged: the worker's memory is bounded).
- The database thread takes up to ``batch_messages`` messages, writes them in one transaction
  (cloud/store.py, ON CONFLICT DO NOTHING), commits, then publishes the receipts on each gateway's ``.../ack``
  (what ``confirm=cloud`` waits for), then PUBACKs. A crash anywhere before the commit: nothing stored, the
  message comes again (from the broker's session, or from the gateway that got no receipt); after it: the
  copy is dropped by the key and the receipt sent again.
- A database error: the batch is rolled back and retried on a new connection (back-off 0.5 s doubling to
  10 s), nothing acknowledged meanwhile. Any other error in a batch: it is retried message by message, and a
  message that fails alone is quarantined as such (``rejected``, reason "ingest error") and acknowledged.
- No thread dies silently: the main thread checks both threads twice a second; one that ended is logged
  and the process exits 70, and the parent (``--workers N``) starts it again (back-off 0.5 s doubling to
  30 s). Workers die with the parent (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud import schema
from cloud.store import Message, log, store
from controller.uplink.topics import PREFIX, RECORD_KINDS, STATUS

EXIT_THREAD_DIED = 70
SESSION_EXPIRY_S = 3600
RECEIVE_MAX = 1000


def subscriptions(group: str) -> list[str]:
    return [f"$share/{group}/{PREFIX}/+/+/{kind}/#" for kind in RECORD_KINDS]


@dataclass
class Item:
    topic: str
    payload: bytes
    mid: int
    qos: int
    gen: int                          # the broker session it came in (PUBACK only within the same one)
    t_in: float = 0.0


@dataclass
class Stats:
    messages: int = 0
    records: int = 0
    rejected: int = 0
    batches: int = 0
    receipts: int = 0
    db_errors: int = 0
    batch_errors: int = 0
    connects: int = 0
    lag_s: list = field(default_factory=list)


class Worker:
    def __init__(self, dsn: str, broker, group: str = "edge-ems-ingest", index: int = 0,
                 batch_messages: int = 200, status: bool | None = None):
        self.dsn, self.broker, self.group, self.index = dsn, broker, group, index
        self.batch_messages = batch_messages
        self.status = index == 0 if status is None else status
        self.q: queue.Queue[Item] = queue.Queue()
        self.stats = Stats()
        self.gen = 0
        self.stop = threading.Event()
        self.client_id = f"edge-ems-cloud-{group}-{index}"
        self.conn = None
        self._db_thread: threading.Thread | None = None
        self.fatal: str | None = None

    # --- MQTT (paho's thread) -------------------------------------------------------------------------
    def _client(self) -> mqtt.Client:
        b = self.broker
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=MQTTProtocolVersion.MQTTv5,
                        manual_ack=True)
        if b.tls:
            import ssl
            c.tls_set(ca_certs=b.ca_certs, certfile=b.certfile, keyfile=b.keyfile, cert_reqs=ssl.CERT_REQUIRED,
                      tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if b.username is not None:
            c.username_pw_set(b.username, b.password)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_disconnect = lambda *a: log(f"worker {self.index}: disconnected from the broker")
        c.reconnect_delay_set(0.2, 5)
        c.max_inflight_messages_set(1000)
        return c

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log(f"worker {self.index}: broker refused the connection: {reason_code}")
            return
        self.stats.connects += 1
        if not flags.session_present:
            self.gen += 1             # a new session: PUBACKs of the old one's messages mean nothing here
        subs = [(t, 1) for t in subscriptions(self.group)]
        if self.status:
            subs.append((f"{PREFIX}/+/+/{STATUS}", 1))
        client.subscribe(subs)
        log(f"worker {self.index}: connected ({'session resumed' if flags.session_present else 'new session'})")

    def _on_message(self, client, userdata, msg):
        self.q.put(Item(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self.gen, time.monotonic()))

    # --- the database thread ----------------------------------------------------------------------------
    def _connect_db(self):
        backoff = 0.5
        while not self.stop.is_set():
            try:
                conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=5)
                schema.apply(conn)
                return conn
            except psycopg.Error as exc:
                self.stats.db_errors += 1
                log(f"worker {self.index}: database unavailable ({str(exc).strip()[:200]}); retry in {backoff:g} s")
                self.stop.wait(backoff)
                backoff = min(10.0, backoff * 2)
        return None

    def _take(self) -> list[Item]:
        try:
            first = self.q.get(timeout=0.25)
        except queue.Empty:
            return []
        items = [first]
        while len(items) < self.batch_messages:
            try:
                items.append(self.q.get_nowait())
            except queue.Empty:
                break
        return items

    def _commit(self, items: list[Item]) -> None:
        """One transaction for `items`, then receipts, then PUBACKs. Raises psycopg.Error (DB) or another
        exception (a bug or an input store() does not handle)."""
        conn = self.conn
        try:
            out = store(conn, [Message(i.topic, i.payload) for i in items])
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except psycopg.Error:
                pass
            raise
        for topic, ranges in out.receipts.items():
            for k in range(0, len(ranges), 512):
                self.client.publish(topic, json.dumps({"acks": ranges[k:k + 512]}, separators=(",", ":")), qos=1)
                self.stats.receipts += 1
        now = time.monotonic()
        for i in items:
            if i.qos > 0 and i.gen == self.gen:
                self.client.ack(i.mid, i.qos)
            self.stats.lag_s.append(now - i.t_in)
        if len(self.stats.lag_s) > 100_000:
            del self.stats.lag_s[:50_000]
        self.stats.messages += len(items)
        self.stats.records += out.stored
        self.stats.rejected += out.rejected
        self.stats.batches += 1

    def _quarantine_error(self, item: Item, exc: BaseException) -> None:
        from cloud.store import Outcome, _Tx
        tx = _Tx(self.conn, Outcome())
        tx.reject(item.topic, f"ingest error: {type(exc).__name__}: {str(exc)[:300]}", raw=item.payload)
        self.conn.commit()
        if item.qos > 0 and item.gen == self.gen:
            self.client.ack(item.mid, item.qos)

    def _db_loop(self) -> None:
        self.conn = self._connect_db()
        pending: list[Item] = []
        backoff = 0.5
        while not self.stop.is_set():
            if not pending:
                pending = self._take()
                if not pending:
                    continue
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = self._connect_db()
                    if self.conn is None:
                        return
                self._commit(pending)
                pending, backoff = [], 0.5
            except psycopg.OperationalError as exc:       # the database went away: retry the same batch
                self.stats.db_errors += 1
                log(f"worker {self.index}: database error ({str(exc).strip()[:200]}); batch of {len(pending)} "
                    f"retried in {backoff:g} s")
                try:
                    self.conn.close()
                except Exception:
                    pass
                self.conn = None
                self.stop.wait(backoff)
                backoff = min(10.0, backoff * 2)
            except Exception as exc:                         # noqa: BLE001 - isolate the message that causes it
                self.stats.batch_errors += 1
                log(f"worker {self.index}: batch of {len(pending)} failed ({type(exc).__name__}: {exc}); one by one")
                pending = self._one_by_one(pending)

    def _one_by_one(self, items: list[Item]) -> list[Item]:
        """After a batch failed for another reason than the database: each message alone; one that fails
        alone is quarantined. Returns what is left when the database itself fails meanwhile."""
        for k, item in enumerate(items):
            try:
                self._commit([item])
            except psycopg.OperationalError:
                return items[k:]
            except Exception as exc:                          # noqa: BLE001
                traceback.print_exc(file=sys.stderr)
                try:
                    self._quarantine_error(item, exc)
                except psycopg.OperationalError:
                    return items[k:]
        return []

    def _db_main(self) -> None:
        try:
            self._db_loop()
        except BaseException as exc:                          # the supervisor sees the thread gone
            self.fatal = f"database thread ended: {type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
            raise

    # --- running --------------------------------------------------------------------------------------
    def start(self) -> "Worker":
        self.client = self._client()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAX
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive,
                                  clean_start=False, properties=props)
        self.client.loop_start()
        self._db_thread = threading.Thread(target=self._db_main, name="ingest-db", daemon=True)
        self._db_thread.start()
        return self

    def alive(self) -> str | None:
        """None while both threads run; else what ended."""
        if self._db_thread is not None and not self._db_thread.is_alive():
            return self.fatal or "database thread ended"
        t = getattr(self.client, "_thread", None)
        if t is not None and not t.is_alive() and not self.stop.is_set():
            return "MQTT network thread ended"
        return None

    def close(self) -> None:
        self.stop.set()
        if self._db_thread is not None:
            self._db_thread.join(5)
        self.client.loop_stop()
        self.client.disconnect()
        if self.conn is not None:
            self.conn.close()

    def summary(self) -> dict:
        lag = sorted(self.stats.lag_s)
        pct = (lambda p: round(lag[min(len(lag) - 1, int(p * len(lag)))] * 1000, 1)) if lag else (lambda p: None)
        s = self.stats
        return {"worker": self.index, "messages": s.messages, "records": s.records, "rejected": s.rejected,
                "batches": s.batches, "receipts": s.receipts, "db_errors": s.db_errors,
                "batch_errors": s.batch_errors, "connects": s.connects, "queue": self.q.qsize(),
                "lag_ms_p50": pct(0.5), "lag_ms_p99": pct(0.99)}


def die_with_parent() -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_worker(dsn: str, broker, group: str, index: int, batch_messages: int = 200,
               stats_every_s: float = 0.0) -> int:
    """One worker in this process until SIGTERM/SIGINT; exit 70 when one of its threads ended."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    w = Worker(dsn, broker, group, index, batch_messages).start()
    next_stats = time.monotonic() + stats_every_s if stats_every_s else None
    rc = 0
    while not done.wait(0.5):
        why = w.alive()
        if why:
            log(f"worker {index}: {why}; exiting {EXIT_THREAD_DIED} (restarted by the parent)")
            rc = EXIT_THREAD_DIED
            break
        if next_stats and time.monotonic() >= next_stats:
            next_stats += stats_every_s
            print(json.dumps({"stats": w.summary()}), file=sys.stderr, flush=True)
    w.close()
    print(json.dumps({"stats": w.summary()}), file=sys.stderr, flush=True)
    return rc


def run_parent(argv_for_worker, workers: int, env: dict | None = None) -> int:
    """``--workers N``: N worker processes, each started again when it ends (back-off 0.5 s doubling to
    30 s; reset after 60 s of life). SIGTERM/SIGINT stops them all."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    procs: dict[int, subprocess.Popen] = {}
    started: dict[int, float] = {}
    backoff: dict[int, float] = {i: 0.5 for i in range(workers)}
    due: dict[int, float] = {i: 0.0 for i in range(workers)}

    def spawn(i: int) -> None:
        procs[i] = subprocess.Popen([sys.executable, "-m", "cloud.cli", *argv_for_worker(i)],
                                    preexec_fn=die_with_parent, env={**os.environ, **(env or {})})
        started[i] = time.monotonic()
    while not done.is_set():
        now = time.monotonic()
        for i in range(workers):
            p = procs.get(i)
            if p is None:
                if now >= due[i]:
                    spawn(i)
                continue
            if p.poll() is not None:
                lived = now - started[i]
                if lived > 60:
                    backoff[i] = 0.5
                log(f"ingest worker {i} (pid {p.pid}) ended with {p.returncode} after {lived:.1f} s; "
                    f"starting it again in {backoff[i]:g} s")
                procs.pop(i)
                due[i] = now + backoff[i]
                backoff[i] = min(30.0, backoff[i] * 2)
        done.wait(0.2)
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    return 0
