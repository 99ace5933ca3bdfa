"""The controller's handle on the uplink worker process (controller/uplink/worker.py).

``UplinkProcess`` has the surface the hook, the CLI, the TUI and the benchmarks use of ``MqttUplink``
(``start``, ``stop(drain_timeout_s)``, ``stats``, ``connected``), but the MQTT side runs in a child
process, so the controller's interpreter only appends to the spool (why: worker.py).

A supervisor thread (nice +10) spawns the worker, reads its messages and restarts it when it dies, with
exponential back-off (0.5 s doubling to 30 s, reset after a worker lived 10 s). Nothing here dies
silently: a fault in the supervision loop is caught and counted (``crashes``), and the uplink hook's
per-cycle ``supervise()`` starts the supervisor or the live-signal thread again if one ended anyway;
every restart and crash (the worker's own MQTT thread's too, reported in its stats) adds to ``faults``,
which the hook turns into the ``uplink_worker_fault`` alarm. Messages: ``cmd`` goes
to ``on_command`` (verification and the verdict
records stay in the controller, which holds the key's counter and applies accepted commands between
cycles), ``in`` to ``on_input`` (controller/netinputs.py NetworkInputs.feed), ``stats`` mirrors the worker's counters and carries ``gone`` (rows the worker deleted since
its last report), which updates the spool's quota accounting. After a restart the spool recounts its rows, as a
worker killed between a delete and its report leaves the counters too high. ``publish_live``
(compute/headroom, compute/defer) goes to the worker through a bounded queue and a sender thread of its
own, so the scan cycle never waits on the socket; offline or with the queue full a signal is dropped and
counted (``live_dropped_local``).

The worker is spawned by the supervisor thread, which lives as long as the worker: the worker's
``PR_SET_PDEATHSIG`` fires when that thread (or the whole controller, SIGKILL included) ends.
"""
from __future__ import annotations

import base64
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from controller.uplink.client import LIVE_QUEUE, BrokerConfig, UplinkStats
from controller.uplink.drain import DrainPolicy
from controller.uplink.priority import lower_this_thread
from controller.uplink.spool import Spool
from controller.uplink.topics import LIVE, LIVE_MAX_BYTES, Topics
from controller.uplink.worker import STAT_FIELDS, config_message

ROOT = Path(__file__).resolve().parents[2]       # the folder holding the controller package


class UplinkProcess:
    def __init__(self, spool: Spool, topics: Topics, broker: BrokerConfig, *, drain: DrainPolicy | None = None,
                 client_id: str | None = None, on_command=None, require_subscriber: bool = True,
                 restart_base_s: float = 0.5, restart_cap_s: float = 30.0, tuning: dict | None = None,
                 on_input=None):
        self.spool, self.topics, self.broker = spool, topics, broker
        self.drain = drain or DrainPolicy()
        self.client_id = client_id
        self.on_command = on_command
        self.on_input = on_input         # on_input(kind, payload, recv_t_utc_s): controller/netinputs.py feed
        self.require_subscriber = require_subscriber
        self.restart_base_s, self.restart_cap_s = restart_base_s, restart_cap_s
        self.tuning = tuning or {}
        self.stats = UplinkStats()
        self.connected = threading.Event()
        self.restarts = 0
        self.paused = False
        self.pid: int | None = None
        self.worker_stats: dict = {}
        self._done: dict = {k: 0 for k in STAT_FIELDS}   # counters of workers that ended
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: queue.Queue = queue.Queue(maxsize=LIVE_QUEUE)
        self._live_thread: threading.Thread | None = None
        self._send_lock = threading.Lock()   # the socket has several writers: one JSON line at a time
        self.live_dropped_local = 0
        self.crashes = 0                     # caught faults here (supervisor loop) and threads started again
        self.last_crash: str | None = None
        self._worker_faults = 0              # crashes + restarts the running worker reported (its MQTT thread)
        self._worker_faults_done = 0         # ... and the workers that ended
        self._restart_at = 0.0
        self._restart_attempt = 0

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "UplinkProcess":
        self._thread = threading.Thread(target=self._supervise, name="uplink-supervisor", daemon=True)
        self._thread.start()
        self._live_thread = threading.Thread(target=self._send_live, name="uplink-live", daemon=True)
        self._live_thread.start()
        return self

    @property
    def faults(self) -> int:
        """Worker restarts + faults caught or restarted here + the workers' own MQTT-thread faults:
        grows on every fault of the MQTT side (the hook's ``uplink_worker_fault``)."""
        return self.restarts + self.crashes + self._worker_faults_done + self._worker_faults

    def supervise(self) -> bool:
        """The hook's per-cycle check (an ``is_alive`` per thread): the supervisor thread (which restarts
        the worker process itself) or the live-signal thread died of an exception no guard caught - start
        it again (back-off 0.5 s doubling to 30 s). True if one was restarted now."""
        if self._thread is None or self._stop.is_set():
            return False
        dead = [name for name, t in (("supervisor", self._thread), ("live", self._live_thread))
                if t is not None and not t.is_alive()]
        if not dead:
            return False
        now = time.monotonic()
        if now < self._restart_at:
            return False
        self._restart_at = now + min(self.restart_cap_s, self.restart_base_s * 2 ** min(self._restart_attempt, 16))
        self._restart_attempt += 1
        for name in dead:
            self.crashes += 1
            print(f"uplink: the {name} thread died ({self.last_crash}); started again", file=sys.stderr, flush=True)
            if name == "supervisor":
                self._thread = threading.Thread(target=self._supervise, name="uplink-supervisor", daemon=True)
                self._thread.start()
            else:
                self._live_thread = threading.Thread(target=self._send_live, name="uplink-live", daemon=True)
                self._live_thread.start()
        return True

    def publish_live(self, kind: str, payload: bytes, retain: bool | None = None) -> bool:
        """A live signal for the broker (topics.LIVE, with its documented QoS and retain), never spooled.
        Called from the scan cycle: never blocks. Dropped and counted when the worker is not connected,
        the kind is not a live one, the payload is too big or LIVE_QUEUE signals already wait. True if
        handed on (the worker counts what it published: stats.live_sent / live_dropped)."""
        if kind not in LIVE or len(payload) > LIVE_MAX_BYTES or not self.connected.is_set():
            self.live_dropped_local += 1
            return False
        try:
            self._live.put_nowait((kind, bytes(payload), bool(retain)))
        except queue.Full:
            self.live_dropped_local += 1
            return False
        return True

    def _send_live(self) -> None:
        lower_this_thread()
        while not self._stop.is_set():
            try:
                kind, payload, retain = self._live.get(timeout=0.5)
            except queue.Empty:
                continue
            msg = {"t": "live", "kind": kind, "raw": base64.b64encode(payload).decode(), "retain": retain}
            if not self._write(json.dumps(msg).encode() + b"\n"):
                self.live_dropped_local += 1

    def _write(self, data: bytes) -> bool:
        sock = self._sock
        if sock is None:
            return False
        if not self._send_lock.acquire(timeout=2.0):   # a writer stuck on a worker that stopped reading
            return False
        try:
            sock.sendall(data)
            return True
        except OSError:
            return False
        finally:
            self._send_lock.release()

    def stop(self, drain_timeout_s: float = 0.0) -> bool:
        """Stop; first wait up to drain_timeout_s for the spool to empty. True if it was empty."""
        deadline = time.monotonic() + drain_timeout_s
        if drain_timeout_s > 0:
            self._write(b'{"t":"flush"}\n')          # held telemetry goes now
        self.spool.flush(max(1.0, drain_timeout_s))
        while self.spool.pending_rows > 0 and time.monotonic() < deadline:
            self.spool.wait_new(0.1)
        empty = self.spool.pending_rows == 0
        self._stop.set()
        proc = self._proc
        self._write(b'{"t":"stop"}\n')
        if proc is not None:
            try:
                proc.wait(10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread is not None:
            self._thread.join(15.0)
        if self._live_thread is not None:
            self._live_thread.join(2.0)
        return empty

    def pause(self, on: bool) -> None:
        """Hold (or resume) new offers in the worker; acks are still taken (MqttUplink.paused)."""
        self.paused = bool(on)
        self._write(json.dumps({"t": "pause", "on": self.paused}).encode() + b"\n")

    def _spawn(self) -> tuple[subprocess.Popen, socket.socket]:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen([sys.executable, "-m", "controller.uplink.worker", str(theirs.fileno())],
                                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        try:
            cfg = config_message(str(self.spool.path), self.topics.site, self.topics.gateway, self.spool.boot_id,
                                 self.broker, self.drain, self.client_id, self.require_subscriber, self.tuning)
            ours.sendall(json.dumps(cfg).encode() + b"\n")
            if self.paused:
                ours.sendall(b'{"t":"pause","on":true}\n')
        except BaseException:                    # no half-started worker left behind
            ours.close()
            proc.kill()
            proc.wait()
            raise
        return proc, ours

    def _supervise(self) -> None:
        lower_this_thread()
        try:
            self._supervise_loop()
        except BaseException as exc:          # noqa: BLE001 - the hook's supervise() starts another
            self.last_crash = f"{type(exc).__name__}: {exc}"[:200]
            self.connected.clear()

    def _supervise_loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            t0 = time.monotonic()
            proc = None
            try:
                proc = self._run_worker()
            except Exception as exc:          # noqa: BLE001 - a fault here must not end the supervision
                self.crashes += 1
                self.last_crash = f"{type(exc).__name__}: {exc}"[:200]
                print(f"uplink: worker supervision failed: {self.last_crash}", file=sys.stderr, flush=True)
                self.connected.clear()
            if self._stop.is_set():
                break
            self.restarts += 1
            self.spool.recount()
            print(f"uplink: worker ended (rc {proc.returncode if proc else None}); restart #{self.restarts}",
                  file=sys.stderr)
            attempt = 0 if time.monotonic() - t0 > 10.0 else attempt + 1
            self._stop.wait(min(self.restart_cap_s, self.restart_base_s * 2 ** min(attempt, 16)))

    def _run_worker(self) -> subprocess.Popen | None:
        """Spawn one worker and serve it until it ends; returns it (None if it could not start)."""
        try:
            proc, sock = self._spawn()
        except OSError as exc:
            print(f"uplink: cannot start the worker process: {exc!r}", file=sys.stderr)
            return None
        try:
            self._proc, self._sock, self.pid = proc, sock, proc.pid
            if self._stop.is_set():                 # stop() came while this one was starting
                sock.sendall(b'{"t":"stop"}\n')
            self._serve(sock)                       # until the worker ends (EOF)
        finally:
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            sock.close()
            self.connected.clear()
            self._finish_worker()
        return proc

    def _serve(self, sock: socket.socket) -> None:
        rfile = sock.makefile("rb")
        try:
            for line in rfile:
                try:
                    msg = json.loads(line)
                    kind = msg["t"]
                    if kind == "cmd":
                        self._command(base64.b64decode(msg["raw"]))
                    elif kind == "in":
                        self._input(str(msg["kind"]), base64.b64decode(msg["raw"]), float(msg["recv"]))
                    elif kind == "stats":
                        if msg.get("gone"):
                            self.spool.gone(msg["gone"])
                        self._mirror(msg)
                except Exception as exc:      # noqa: BLE001 - one bad line is one dropped message
                    print(f"uplink: bad message from the worker: {exc!r}", file=sys.stderr)
        except OSError:
            pass

    def _command(self, raw: bytes) -> None:
        if self.on_command is None:
            return
        try:
            self.on_command(raw)
        except Exception as exc:                      # a command must never take the uplink down
            print(f"uplink: command handler failed: {exc!r}", file=sys.stderr)

    def _input(self, kind: str, raw: bytes, recv_t_utc_s: float) -> None:
        if self.on_input is None:
            return
        try:
            self.on_input(kind, raw, recv_t_utc_s)
        except Exception as exc:                      # nor a network input
            print(f"uplink: input handler for {kind} failed: {exc!r}", file=sys.stderr)

    def _mirror(self, msg: dict) -> None:
        self.worker_stats = msg
        self._worker_faults = int(msg.get("crashes", 0)) + int(msg.get("restarts", 0))
        if msg.get("last_crash"):
            self.last_crash = str(msg["last_crash"])[:200]
        for k in STAT_FIELDS:
            setattr(self.stats, k, self._done[k] + int(msg.get(k, 0)))
        self.stats.protocol = msg.get("protocol", "")
        if msg.get("connected"):
            self.connected.set()
        else:
            self.connected.clear()

    def _finish_worker(self) -> None:
        for k in STAT_FIELDS:
            self._done[k] = getattr(self.stats, k)
        self.worker_stats = {}
        self._worker_faults_done += self._worker_faults
        self._worker_faults = 0
