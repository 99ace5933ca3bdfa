"""The uplink's drain side in a process of its own: ``python -m controller.uplink.worker FD``.

Why a process: reading the spool, building and zlib-compressing batches and paho's packet handling
are Python code; as threads of the controller they took the GIL from the scan cycle during a
full-speed drain (p99 x1.26-1.60, tools/bench/uplink.py). Here they run in another interpreter at
nice +10 and SCHED_IDLE (priority.background_process); the controller keeps only ``Spool.put``, its
writer thread (inserts) and a supervisor thread that reads this worker's messages.

The worker reads committed rows straight from the spool's SQLite file (WAL: readers never block the
controller's writer) and deletes acknowledged rows itself (a second writer, ``synchronous=NORMAL``: a
delete lost to a power cut only means a duplicate the cloud drops). It never inserts, so ``seq`` stays
the controller's alone. It talks to the controller over one socket FD (JSON lines):

- controller -> worker: first line the configuration (the broker password never sits in argv), then
  ``{"t": "stop"}`` for a clean stop (retained ``offline``, then exit); ``{"t": "pause", "on": bool}``
  holds new offers (the benchmark switches the drain on and off with it); ``{"t": "flush"}`` sends held
  telemetry now (the controller is stopping with a drain timeout); ``{"t": "live", "kind", "raw", "retain"}``
  a live signal to publish now (MqttUplink.publish_live: dropped and counted when offline).
- worker -> controller: ``cmd`` (a command payload as received, base64: the controller verifies and
  applies it), ``in`` (a network input: kind, payload base64, arrival UTC; bounded per kind by
  client.InboundGate) and ``stats`` (connection state, counters and ``gone``: the rows deleted per kind since
  the last one, count and bytes, for the quota accounting; on every change of state and every 0.5 s).

It dies with the controller: ``PR_SET_PDEATHSIG`` (Linux) kills it when the controller dies, even
by SIGKILL, and an end of file on the socket stops it anywhere else. It exits if its parent changed.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from dataclasses import asdict

from controller.uplink.client import BrokerConfig, MqttUplink
from controller.uplink.drain import DrainPolicy
from controller.uplink.priority import background_process
from controller.uplink.spool import select_pending
from controller.uplink.topics import Topics

STATS_EVERY_S = 0.5
CMD_CAP = 64 * 1024        # bytes of a command passed on: above commands.MAX_BYTES, so an oversize one is
                           # still refused with its reason (without importing cryptography here)
STAT_FIELDS = ("connects", "connect_failures", "disconnects", "messages", "batches", "records_sent",
               "records_acked", "nacks", "cloud_acks", "resends", "wire_bytes", "payload_bytes", "raw_bytes",
               "live_sent", "live_dropped")


class SpoolReader:
    """The worker's view of the spool: committed rows in, acknowledged rows out (never an insert)."""

    def __init__(self, path: str, boot_id: str, on_gone=None):
        self.path, self.boot_id = path, boot_id
        self.on_gone = on_gone
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._version = None
        self._acks: list[int] = []
        self._ranges: list[tuple[str, int, int]] = []
        self.deleted = 0
        self.ack_errors = 0                     # delete transactions SQLite refused (retried)
        self.ack_error: str | None = None
        self._retry_at = 0.0

    def changed(self) -> bool:
        """True when another connection (the controller's writer) committed since the last call."""
        v = self._db.execute("PRAGMA data_version").fetchone()[0]
        out, self._version = v != self._version, v
        return out

    def pending(self, kind: str, after_seq: int, limit: int, max_bytes: int = 1 << 30) -> list[tuple[int, bytes]]:
        return select_pending(self._db, kind, after_seq, limit, max_bytes)

    def ack(self, seqs) -> None:
        self._acks.extend(seqs)

    def ack_range(self, kind: str, first_seq: int, last_seq: int) -> None:
        self._ranges.append((str(kind), int(first_seq), int(last_seq)))

    def apply_acks(self) -> None:
        """Delete what was acknowledged during the last paho loop, in one transaction."""
        if not (self._acks or self._ranges) or (self.ack_errors and time.monotonic() < self._retry_at):
            return
        acks, ranges = self._acks, self._ranges
        self._acks, self._ranges = [], []
        gone: dict[str, list[int]] = {}
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            for i in range(0, len(acks), 500):
                chunk = acks[i:i + 500]
                for kind, size in db.execute(f"DELETE FROM records WHERE seq IN ({','.join('?' * len(chunk))}) "
                                             "RETURNING kind, length(payload)", chunk):
                    g = gone.setdefault(kind, [0, 0])
                    g[0] += 1
                    g[1] += size
            for kind, first, last in ranges:
                n, size = db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM records "
                                     "WHERE kind=? AND seq BETWEEN ? AND ?", (kind, first, last)).fetchone()
                if n:
                    db.execute("DELETE FROM records WHERE kind=? AND seq BETWEEN ? AND ?", (kind, first, last))
                    g = gone.setdefault(kind, [0, 0])
                    g[0] += n
                    g[1] += size
            db.execute("COMMIT")
        except sqlite3.Error as exc:            # a full disk (the WAL cannot grow), a lock held too long:
            if db.in_transaction:               # the rows stay; the acks are tried again after the next loop
                db.execute("ROLLBACK")
            self._acks, self._ranges = acks + self._acks, ranges + self._ranges
            self.ack_errors += 1
            self.ack_error = str(exc)
            self._retry_at = time.monotonic() + 1.0
            return
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if gone:
            self.deleted += sum(n for n, _ in gone.values())
            if self.on_gone is not None:
                self.on_gone([[k, n, b] for k, (n, b) in gone.items()])

    # what MqttUplink.stop() asks of a spool; the controller waits for the drain, not the worker
    def flush(self, timeout: float = 0.0) -> bool:
        return True

    @property
    def pending_rows(self) -> int:
        return self._db.execute("SELECT count(*) FROM records").fetchone()[0]

    def wait_new(self, timeout: float) -> None:
        time.sleep(timeout)

    def close(self) -> None:
        self._db.close()


class Channel:
    """JSON lines over the socket to the controller; sends from several threads, one lock."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, msg: dict) -> None:
        data = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self.sock.sendall(data)

    def recv(self) -> dict | None:
        line = self.rfile.readline()
        return json.loads(line) if line else None


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the thread that spawned it (the controller's supervisor) dies."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)          # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stats_message(up: MqttUplink, reader: SpoolReader, tally: "GoneTally") -> dict:
    s = up.stats
    lat = sorted(s.latency_s)
    p99 = round(1e3 * lat[int(0.99 * (len(lat) - 1))], 2) if lat else None
    return {"t": "stats", "gone": tally.take(), "connected": up.connected.is_set(), "protocol": s.protocol,
            "pid": os.getpid(), "deleted": reader.deleted, "latency_p99_ms": p99,
            "ack_errors": reader.ack_errors, "crashes": up.crashes, "restarts": up.restarts,
            "last_crash": up.last_crash,
            "inbound": {"passed": dict(up.inbound.passed), "dropped": dict(up.inbound.dropped)},
            **{k: getattr(s, k) for k in STAT_FIELDS}}


class GoneTally:
    """Deleted rows per kind since the last report: sent with the stats every STATS_EVERY_S, not per
    delete, so the controller's threads wake (and take its GIL) twice a second during a drain, not at
    every acknowledged batch."""

    def __init__(self):
        self._lock = threading.Lock()
        self._g: dict[str, list[int]] = {}

    def add(self, gone) -> None:
        with self._lock:
            for kind, n, size in gone:
                g = self._g.setdefault(kind, [0, 0])
                g[0] += n
                g[1] += size

    def take(self) -> list:
        with self._lock:
            out, self._g = [[k, n, b] for k, (n, b) in self._g.items()], {}
        return out


def serve(chan: Channel, cfg: dict) -> int:
    tally = GoneTally()
    reader = SpoolReader(cfg["db"], cfg["boot_id"], on_gone=tally.add)

    def on_command(raw: bytes) -> None:
        chan.send({"t": "cmd", "raw": base64.b64encode(raw[:CMD_CAP]).decode()})

    def on_input(kind: str, raw: bytes, recv_t_utc_s: float) -> None:   # size and rate bounded by the gate
        chan.send({"t": "in", "kind": kind, "raw": base64.b64encode(raw).decode(), "recv": recv_t_utc_s})

    up = MqttUplink(reader, Topics(cfg["site"], cfg["gateway"]), BrokerConfig(**cfg["broker"]),
                    drain=DrainPolicy(**cfg["drain"]), client_id=cfg.get("client_id"), on_command=on_command,
                    require_subscriber=cfg.get("require_subscriber", True), on_input=on_input,
                    **cfg.get("tuning", {}))
    up.start()
    stop = threading.Event()

    def control() -> None:                       # a stop message, or the controller gone (EOF)
        try:
            while (msg := chan.recv()) is not None:
                if msg.get("t") == "stop":
                    break
                if msg.get("t") == "pause":
                    up.paused = bool(msg.get("on"))
                elif msg.get("t") == "flush":
                    up.request_flush()
                elif msg.get("t") == "live":
                    try:
                        up.publish_live(str(msg["kind"]), base64.b64decode(msg["raw"]), bool(msg.get("retain")))
                    except (KeyError, TypeError, ValueError):      # one bad line is one dropped signal
                        up.stats.live_dropped += 1
        except (OSError, ValueError):
            pass
        except Exception as exc:                 # noqa: BLE001 - said; the worker ends and is restarted
            print(f"uplink worker: control channel failed: {exc!r}", file=sys.stderr, flush=True)
        finally:
            stop.set()

    threading.Thread(target=control, name="uplink-control", daemon=True).start()
    last_state = None
    while not stop.is_set():
        if os.getppid() != cfg["parent_pid"]:    # reparented: the controller is gone
            return 3
        up.supervise()                           # its connection thread died: another one (counted, reported)
        state = up.connected.is_set()
        try:
            chan.send(stats_message(up, reader, tally))
        except OSError:
            return 4
        last_state = state
        deadline = time.monotonic() + STATS_EVERY_S
        while not stop.is_set() and time.monotonic() < deadline and up.connected.is_set() == last_state:
            stop.wait(0.02)
    up.stop()
    try:
        chan.send(stats_message(up, reader, tally))
    except OSError:
        pass
    reader.close()
    return 0


def config_message(db: str, site: str, gateway: str, boot_id: str, broker: BrokerConfig, drain: DrainPolicy,
                   client_id: str | None, require_subscriber: bool, tuning: dict | None = None) -> dict:
    """The first line the controller sends (see proc.py)."""
    return {"db": db, "site": site, "gateway": gateway, "boot_id": boot_id, "broker": asdict(broker),
            "drain": asdict(drain), "client_id": client_id, "require_subscriber": require_subscriber,
            "parent_pid": os.getpid(), "tuning": tuning or {}}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m controller.uplink.worker FD  (started by the controller, not by hand)",
              file=sys.stderr)
        return 2
    die_with_parent()
    background_process()                         # before any thread starts: they inherit SCHED_IDLE
    chan = Channel(socket.socket(fileno=int(argv[0])))
    cfg = chan.recv()
    if cfg is None or os.getppid() != cfg["parent_pid"]:
        return 3
    return serve(chan, cfg)


if __name__ == "__main__":
    sys.exit(main())
