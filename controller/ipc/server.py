"""The local socket the technician TUI and tools attach to (a Unix socket, line-delimited JSON).

The controller never depends on anything here: the scan cycle only calls :meth:`IpcServer.hook`, which
does a few in-memory updates and, while a client is attached, at most ``publish_hz`` times a wall-clock
second hands copies of the image and commands to the server thread (an atomic reference swap and a
non-blocking wake byte). All socket I/O, JSON and PIN hashing run in the server thread, and only once
the loop has counted the cycle that woke it (so the snapshot never takes the GIL from the cycle's later
hooks); a client that reads slowly is skipped (it gets fewer snapshots), one that stalls with a full
buffer is dropped, a dead one is closed. Nothing a client does can block the cycle. A device read or
bus scan uses the controller's own Modbus bus under its lock: the cycle then waits at most one
transaction.

Protocol (one JSON object per line, UTF-8, each way):

    server -> {"type": "hello", "version": 1, "site": {...}, "points": [...], "alarms": [...], ...}
    client -> {"op": "subscribe", "hz": 2}            snapshots at <= hz (<= publish_hz)
    server -> {"type": "snapshot", "seq": N, "cycle": C, "t_s": T, "points": {name: [value, q]}, ...}
    client -> {"op": "snapshot", "id": 1}             one snapshot now (reply carries the id)
    client -> {"op": "history", "id": 2}              1-min history ring (SOC and flows) for charts
    client -> {"op": "login", "pin": "1234", "id": 3} a session bound to this connection
    client -> {"op": "action", "action": "mode", "mode": "manual", "id": 4}
    server -> {"type": "result", "id": 4, "ok": true, "message": "...", ...}
    client -> {"op": "logout"} | {"op": "audit", "id": 5}

Actions (a session is required; every attempt, refused or not, goes to the audit log):
    ack {"bits": MASK} or {"alarm": NAME} or {} (all unacknowledged) -> OperatorInputs.acknowledge
    mode {"mode": "auto"|"manual"|"standby"}  (entering manual starts from the present battery command)
    battery_kw {"kw": X}                      (+ discharge / - charge; used in manual mode; the
                                               interlocks clamp it, the snapshot's "manual" says how)
    genset {"run": true|false|null}           (null: back to automatic)
    read {"device": NAME}                     every point of a Modbus device read now over the
                                              controller's bus (image values for simulated/CAN ones)
    scan {"bus": NAME, "units": "1-32"}       unit ids answering on a Modbus bus the controller holds
    export {"hours": H}                       the last H hours of the recording as CSV, the signed carbon
                                              ledger (whole, with its .pub) and the audit log, into the
                                              export directory; the reply names the files

The audit log (``IpcServer.audit``, ``audit_listeners`` and an optional JSONL file) is what the uplink
forwards: every login attempt, lockout and action with its outcome.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import hmac
import json
import math
import os
import queue
import secrets
import selectors
import socket
import stat
import struct
import threading
import time
from collections import deque
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from controller.core import layout as L
from controller.points import CATALOGUE, INDEX, Q_ERROR, Q_OK

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024            # a request longer than this closes the connection
SKIP_ABOVE = 64 * 1024          # a subscriber with this much unsent gets no new snapshot
DROP_ABOVE = 1024 * 1024        # ... and one that lets this much pile up is disconnected
HISTORY_STEP_S = 60.0           # history ring: one sample per simulated/real minute
HISTORY_N = 24 * 60             # 24 h
HISTORY_FIELDS = ("soc_pct", "pv_kw", "battery_kw", "grid_kw", "genset_kw", "load_kw")
EXPORT_RING_STEP_S = 10.0       # export source when the loop has no recording: one row / 10 s, 24 h
EXPORT_RING_N = 24 * 360
# The MPC's plan in force, as the step keeps it in its state (controller/core/mpc_strategy.py): only
# present in builds with the MPC strategy, hence looked up by name.
PLAN_FIELDS = tuple((n, getattr(L, "S_" + n.upper())) for n in (
    "plan_count", "plan_t_s", "plan_grid_kw", "plan_export_kw", "plan_battery_kw", "plan_diesel_kw",
    "plan_diesel_on", "plan_soc_end_pct") if hasattr(L, "S_" + n.upper()))
PLAN_SLOTS = [i for _n, i in PLAN_FIELDS]
EXPORT_TAIL_N = 512             # with a recording: every cycle not yet flushed to it (it flushes every 256)


# --- socket path ------------------------------------------------------------------------------------
def default_socket_path() -> Path:
    """/run/edge-ems/ipc.sock (systemd RuntimeDirectory) when usable, else $XDG_RUNTIME_DIR/edge-ems,
    else /tmp/edge-ems-UID."""
    run = Path("/run/edge-ems")
    if run.is_dir() and os.access(run, os.W_OK) or os.access("/run", os.W_OK):
        return run / "ipc.sock"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.access(xdg, os.W_OK):
        return Path(xdg) / "edge-ems" / "ipc.sock"
    return Path(f"/tmp/edge-ems-{os.getuid()}") / "ipc.sock"


def client_socket_path() -> Path:
    """Where a client looks first: the same order, but only paths that exist."""
    for p in (Path("/run/edge-ems/ipc.sock"),
              Path(os.environ.get("XDG_RUNTIME_DIR", "/nonexistent")) / "edge-ems" / "ipc.sock",
              Path(f"/tmp/edge-ems-{os.getuid()}") / "ipc.sock"):
        if p.exists():
            return p
    return default_socket_path()


# --- PIN hashes -------------------------------------------------------------------------------------
def hash_pin(pin: str, *, kind: str = "scrypt", salt: bytes | None = None) -> str:
    """A salted hash for the site profile's [tui] pin_hash."""
    salt = salt or secrets.token_bytes(16)
    if kind == "scrypt":
        n, r, p = 2 ** 14, 8, 1
        h = hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
        return f"scrypt${n}${r}${p}${salt.hex()}${h.hex()}"
    if kind == "pbkdf2_sha256":
        it = 200_000
        h = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, it)
        return f"pbkdf2_sha256${it}${salt.hex()}${h.hex()}"
    raise ValueError(f"unknown PIN hash kind {kind!r}")


def check_pin(pin: str, stored: str) -> bool:
    parts = stored.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, want = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
            got = hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, dklen=len(want), maxmem=64 * 2 ** 20)
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            salt, want = bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
            got = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, int(parts[1]), dklen=len(want))
        else:
            return False
    except (ValueError, OverflowError):
        return False
    return hmac.compare_digest(got, want)


class _Unattached:
    """The controller's bus for a one-off read: same port and lock, but the probe device is not added
    to the bus's cycle."""

    def __init__(self, bus):
        self._bus = bus
        self.url = getattr(bus, "url", "?")

    def read(self, *a, **kw):
        return self._bus.read(*a, **kw)

    def attach(self, device) -> None:
        pass

    def detach(self, device) -> None:
        pass


def _units(spec) -> list[int]:
    """"1-32" / "5" / [1, 2] -> unit ids within 1..247."""
    try:
        if isinstance(spec, (list, tuple)):
            units = [int(u) for u in spec]
        else:
            a, _, b = str(spec).partition("-")
            units = list(range(int(a), int(b or a) + 1))
    except ValueError:
        raise ValueError(f"units must look like 1-32 or 5, got {spec!r}") from None
    if not units or units[0] < 1 or units[-1] > 247 or len(units) > 247:
        raise ValueError(f"units must be within 1..247, got {spec!r}")
    return units


def _stats_copy(stats):
    """The loop's cycle statistics, copied in the cycle (cheap); quantiles are computed later, in the
    server thread, when a snapshot is serialised."""
    return replace(stats, counts=stats.counts.copy())


def _iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _f(x) -> float | None:
    x = float(x)
    return round(x, 4) if math.isfinite(x) else None


class _Conn:
    def __init__(self, sock: socket.socket, uid: int | None, pid: int | None):
        self.sock = sock
        self.uid, self.pid = uid, pid
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.hz = 0.0
        self.next_send = 0.0
        self.session_until = 0.0     # monotonic; 0 = not logged in
        self.closed = False

    @property
    def who(self) -> str:
        return f"tui(uid={self.uid},pid={self.pid})"


class IpcServer:
    """Start with :meth:`start` (binds the socket, starts the thread); pass :attr:`hook` to the loop."""

    def __init__(self, cfg: dict, path: str | Path, *, publish_hz: float = 4.0, export_dir: str | Path | None = None,
                 audit_path: str | Path | None = None, recording_path: str | Path | None = None):
        self.cfg = cfg
        self.path = Path(path)
        self.publish_hz = float(publish_hz)
        self.export_dir = Path(export_dir) if export_dir else self.path.parent / "exports"
        self.audit_path = Path(audit_path) if audit_path else None
        self.recording_path = Path(recording_path) if recording_path else None
        tui = cfg.get("tui") or {}
        self.pin_hash = tui.get("pin_hash", "")
        self.lockout_after = int(tui.get("lockout_after", 3))
        self.lockout_s = float(tui.get("lockout_s", 300.0))
        self.session_s = float(tui.get("session_s", 600.0))
        self.failures = 0
        self.locked_until = 0.0
        self.audit: deque = deque(maxlen=500)
        self.audit_listeners: list[Callable[[dict], None]] = []
        self.uplink = None                      # an object with .stats() -> dict, when the uplink is wired
        self.loop = None
        self._audit_seq = 0
        self._pub = None                        # latest published tuple (replaced atomically by the hook)
        self._pub_seq = 0
        self._last_pub_wall = 0.0
        self._events: deque = deque(maxlen=200)
        self._event_seq = 0
        self._hist = np.full((HISTORY_N, 1 + len(HISTORY_FIELDS)), np.nan)
        self._hist_n = 0
        self._hist_next_t = -math.inf
        self._ring = None                       # export fallback ring (t_s + values + commands)
        self._ring_n = 0
        self._ring_next_t = -math.inf
        self._err_cycles = None
        self._stale_cycles = None
        self._prev_t = None
        self._day = None
        self._tz_offset_s = 0.0
        self._tz_valid_until = -math.inf
        self.today = self._zero_today()
        self._sel = None
        self._listener = None
        self._wake_r = self._wake_w = -1
        self._conns: dict[int, _Conn] = {}
        self._done: queue.Queue = queue.Queue()   # (conn, reply) from worker threads
        self._thread = None
        self._stop = False
        self._snapshot_cache = (None, None)       # (pub seq, json line)
        self._ledger_days: dict[str, dict] = {}      # local day -> sums of the ledger's intervals
        self._ledger_off = 0
        self.stats = {"published": 0, "sent": 0, "skipped_slow": 0, "dropped_clients": 0, "clients": 0,
                      "hook_max_us": 0.0}

    # ---------------------------------------------------------------- the cycle side (never blocks)
    def hook(self, loop, image, cmd, events, n) -> None:
        t0 = time.perf_counter()
        self.loop = loop
        t_s = float(image["t_s"])
        value = image["value"]
        quality = image["quality"]
        if self._err_cycles is None:
            self._err_cycles = np.zeros(len(CATALOGUE), dtype=np.int64)
            self._stale_cycles = np.zeros(len(CATALOGUE), dtype=np.int64)
        self._err_cycles += quality == Q_ERROR
        self._stale_cycles += quality != Q_OK
        for i in range(n):
            self._event_seq += 1
            self._events.append((self._event_seq, t_s, int(events[i, 0]), float(events[i, 1])))
        self._integrate(t_s, value, quality)
        if t_s >= self._hist_next_t:
            self._hist_next_t = t_s + HISTORY_STEP_S if self._hist_next_t == -math.inf else self._hist_next_t + HISTORY_STEP_S
            if self._hist_next_t < t_s:
                self._hist_next_t = t_s + HISTORY_STEP_S
            row = self._hist[self._hist_n % HISTORY_N]
            row[0] = t_s
            row[1:] = [value[INDEX["soc_pct"]], value[INDEX["pv_kw"]], value[INDEX["battery_kw"]],
                       value[INDEX["grid_kw"]], value[INDEX["genset_kw"]], self._load_kw(value)]
            self._hist_n += 1
        if t_s >= self._ring_next_t:
            size = EXPORT_RING_N if self.recording_path is None else EXPORT_TAIL_N
            if self._ring is None:
                self._ring = np.full((size, 1 + 2 * len(CATALOGUE) + L.N_COMMANDS), np.nan)
            if self.recording_path is None:
                self._ring_next_t = t_s + EXPORT_RING_STEP_S
            r = self._ring[self._ring_n % size]
            r[0] = math.nan                      # an export reading this row meanwhile skips it
            r[1:1 + len(CATALOGUE)] = value
            r[1 + len(CATALOGUE):1 + 2 * len(CATALOGUE)] = quality
            r[1 + 2 * len(CATALOGUE):] = cmd
            r[0] = t_s
            self._ring_n += 1
        wall = time.monotonic()
        # nobody attached: no copies at all (the next cycle after a connect publishes)
        if self._conns and wall - self._last_pub_wall >= 1.0 / self.publish_hz:
            self._last_pub_wall = wall
            b = loop.builder
            self._pub_seq += 1
            self._pub = (self._pub_seq, int(image["cycle"]), t_s, value.copy(), quality.copy(), np.array(cmd),
                         b.stamp.copy(), loop.clock.monotonic(), self._err_cycles.copy(), self._stale_cycles.copy(),
                         list(self._events), dict(self.today), _stats_copy(loop.stats), float(loop.state[L.S_TRIPS]),
                         loop.state[PLAN_SLOTS].copy() if PLAN_SLOTS else None)
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"p")
                except OSError:
                    pass                        # pipe full: the thread is already awake
        us = (time.perf_counter() - t0) * 1e6
        if us > self.stats["hook_max_us"]:
            self.stats["hook_max_us"] = us

    @staticmethod
    def _load_kw(value) -> float:
        return float(value[INDEX["grid_kw"]] + value[INDEX["pv_kw"]] + value[INDEX["battery_kw"]]
                     + value[INDEX["genset_kw"]])

    def _zero_today(self) -> dict:
        return {"day": None, "pv_kwh": 0.0, "grid_import_kwh": 0.0, "grid_export_kwh": 0.0, "genset_kwh": 0.0,
                "battery_charge_kwh": 0.0, "battery_discharge_kwh": 0.0, "load_kwh": 0.0, "it_kwh": 0.0,
                "co2_grid_kg": 0.0, "diesel_l": 0.0, "co2_diesel_kg": 0.0, "covered_s": 0.0}

    def _integrate(self, t_s: float, value, quality) -> None:
        """Today's (local day) energy by source: a placeholder for the carbon screen until
        controller/carbon exposes its own running interval."""
        prev, self._prev_t = self._prev_t, t_s
        if t_s >= self._tz_valid_until:
            try:
                from zoneinfo import ZoneInfo
                tz = ZoneInfo(self.cfg["site"]["timezone"])
                self._tz_offset_s = datetime.fromtimestamp(t_s, tz).utcoffset().total_seconds()
            except Exception:
                self._tz_offset_s = 0.0
            self._tz_valid_until = t_s + 3600.0
        day = int((t_s + self._tz_offset_s) // 86400)
        if day != self._day:
            self._day = day
            self.today = self._zero_today()
            self.today["day"] = datetime.fromtimestamp(day * 86400, timezone.utc).strftime("%Y-%m-%d")
        if prev is None:
            return
        dt = t_s - prev
        if not 0.0 < dt <= 60.0:
            return
        h = dt / 3600.0
        d = self.today
        ok = lambda name: quality[INDEX[name]] == Q_OK  # noqa: E731
        v = lambda name: float(value[INDEX[name]])  # noqa: E731
        if ok("pv_kw"):
            d["pv_kwh"] += max(0.0, v("pv_kw")) * h
        if ok("grid_kw"):
            g = v("grid_kw")
            d["grid_import_kwh"] += max(0.0, g) * h
            d["grid_export_kwh"] += max(0.0, -g) * h
            factor = v("grid_co2_kg_per_kwh") if ok("grid_co2_kg_per_kwh") else self.cfg["emissions"]["grid_kg_per_kwh"]
            d["co2_grid_kg"] += max(0.0, g) * h * factor
        if ok("battery_kw"):
            b = v("battery_kw")
            d["battery_discharge_kwh"] += max(0.0, b) * h
            d["battery_charge_kwh"] += max(0.0, -b) * h
        gen = self.cfg.get("genset")
        if ok("genset_kw"):
            d["genset_kwh"] += max(0.0, v("genset_kw")) * h
            if gen and ok("genset_running") and v("genset_running") > 0.5:
                litres = gen["fuel_l_per_kwh"] * max(0.0, v("genset_kw")) * h + gen["fuel_l_per_h_on"] * h
                d["diesel_l"] += litres
                d["co2_diesel_kg"] += litres * self.cfg["emissions"]["diesel_kg_per_l"]
        if ok("it_kw"):
            d["it_kwh"] += v("it_kw") * h
        d["load_kwh"] += max(0.0, self._load_kw(value)) * h
        d["covered_s"] += dt

    def attach_uplink(self, uplink) -> None:
        """Show the uplink on the uplink screen and forward every audit record (logins, lockouts,
        actions and their outcome) into its spool as an event, so the cloud sees what was done on site."""
        self.uplink = uplink
        spool = getattr(uplink, "spool", None)
        if spool is None:
            return
        from controller.uplink.topics import EVENT

        def forward(rec: dict) -> None:
            t = rec["t_s"] if rec.get("t_s") is not None else time.time()
            spool.put(EVENT, t, {"event": "tui_" + rec["action"], "value": {
                k: rec[k] for k in ("seq", "who", "args", "ok", "message")}})
        self.audit_listeners.append(forward)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "IpcServer":
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(str(self.path))
                    probe.close()
                    raise OSError(errno.EADDRINUSE, f"{self.path}: another controller is listening there")
                except (ConnectionRefusedError, FileNotFoundError):
                    os.unlink(self.path)         # stale socket of a process that died
                finally:
                    probe.close()
        except FileNotFoundError:
            pass
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            srv.bind(str(self.path))
        finally:
            os.umask(old)
        srv.listen(8)
        srv.setblocking(False)
        self._listener = srv
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(srv, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="edge-ems-ipc", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop = True
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for conn in list(self._conns.values()):
            self._drop(conn)
        if self._listener is not None:
            self._listener.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # ---------------------------------------------------------------- server thread
    def _run(self) -> None:
        while not self._stop:
            try:
                ready = self._sel.select(timeout=0.5)
            except OSError:
                continue
            for key, mask in ready:
                try:
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        woke = b""
                        try:
                            while chunk := os.read(self._wake_r, 4096):
                                woke += chunk
                        except BlockingIOError:
                            pass
                        if b"p" in woke:
                            self._wait_cycle_end()
                    else:
                        conn = key.data
                        if mask & selectors.EVENT_READ:
                            self._read(conn)
                        if mask & selectors.EVENT_WRITE and not conn.closed:
                            self._flush(conn)
                except Exception as exc:            # never let a client kill the thread
                    if isinstance(key.data, _Conn):
                        self._drop(key.data)
                    else:
                        self._audit_record(None, "ipc_error", {}, False, repr(exc))
            while True:
                try:
                    conn, reply = self._done.get_nowait()
                except queue.Empty:
                    break
                if not conn.closed:
                    self._send(conn, reply)
            self._publish()

    def _wait_cycle_end(self) -> None:
        """Woken by the hook, i.e. in the middle of a cycle: building a snapshot now would take the GIL
        from the rest of that cycle (the hooks after this one, measured ~2 ms on a p99). Wait until the
        loop has counted the cycle (it then sleeps to the next period boundary), at most 50 ms."""
        pub, loop = self._pub, self.loop
        if pub is None or loop is None:
            return
        deadline = time.monotonic() + 0.05
        while loop.cycle_no <= pub[1] and time.monotonic() < deadline and not self._stop:
            time.sleep(0.0005)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            uid = pid = None
            try:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                pid, uid, _ = struct.unpack("3i", creds)
            except (OSError, AttributeError):
                pass
            conn = _Conn(sock, uid, pid)
            if not self._conns:
                self._pub = None              # published while nobody listened: too old to show
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self.stats["clients"] = len(self._conns)
            self._send(conn, self._hello())

    def _drop(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.close()
        self.stats["clients"] = len(self._conns)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.rbuf += data
        while b"\n" in conn.rbuf:
            line, _, rest = bytes(conn.rbuf).partition(b"\n")
            conn.rbuf = bytearray(rest)
            if line.strip():
                self._request(conn, line)
            if conn.closed:
                return
        if len(conn.rbuf) > MAX_LINE:
            self._drop(conn)

    def _send(self, conn: _Conn, obj) -> None:
        line = obj if isinstance(obj, bytes) else (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        conn.wbuf += line
        if len(conn.wbuf) > DROP_ABOVE:
            self.stats["dropped_clients"] += 1
            self._drop(conn)
            return
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            while conn.wbuf:
                sent = conn.sock.send(conn.wbuf)
                del conn.wbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(conn)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.wbuf else 0)
        try:
            self._sel.modify(conn.sock, events, conn)
        except (KeyError, ValueError, OSError):
            pass

    def _publish(self) -> None:
        pub = self._pub
        if pub is None:
            return
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if conn.session_until and now > conn.session_until:
                conn.session_until = 0.0
                self._send(conn, {"type": "session", "ok": False, "message": "session expired: PIN again"})
            if conn.hz <= 0 or now < conn.next_send or conn.closed:
                continue
            if getattr(conn, "last_pub", None) == pub[0]:
                continue
            if len(conn.wbuf) > SKIP_ABOVE:
                self.stats["skipped_slow"] += 1
                continue
            conn.next_send = now + 1.0 / conn.hz - 0.02
            conn.last_pub = pub[0]
            self._send(conn, self._snapshot_line(pub))
            self.stats["sent"] += 1

    # ---------------------------------------------------------------- messages
    def _hello(self) -> dict:
        cfg = self.cfg
        from controller.alarms import catalogue
        try:
            alarms = [{"bit": a.bit, "name": a.name, "severity": a.severity, "latching": a.latching,
                       "text": a.text, "check": a.check} for a in catalogue().values()]
        except Exception:
            alarms = [{"bit": i, "name": n, "severity": "warning", "latching": False, "text": n, "check": ""}
                      for i, n in enumerate(L.ALARM_NAMES)]
        bat = cfg["battery"]
        return {
            "type": "hello", "version": PROTOCOL_VERSION,
            "site": {"name": cfg["site"]["name"], "gateway_id": cfg["site"]["gateway_id"],
                     "timezone": cfg["site"]["timezone"], "period_s": cfg["control"]["period_s"],
                     "strategy": cfg["control"]["strategy"]},
            "limits": {"capacity_kwh": bat["capacity_kwh"], "charge_max_kw": bat["charge_max_kw"],
                       "discharge_max_kw": bat["discharge_max_kw"], "soc_min_pct": bat["soc_min_pct"],
                       "soc_max_pct": bat["soc_max_pct"], "reserve_pct": bat["reserve_pct"],
                       "cell_v_max": bat["cell_v_max"], "cell_v_min": bat["cell_v_min"],
                       "cells_series": bat["cells_series"], "pcs_rated_kw": cfg["pcs"]["rated_kw"],
                       "pv_rated_kw": cfg.get("pv", {}).get("rated_kw", 0.0),
                       "grid_import_max_kw": cfg["grid"]["import_max_kw"],
                       "genset_rated_kw": (cfg.get("genset") or {}).get("rated_kw", 0.0)},
            "points": [{"name": p.name, "unit": p.unit, "role": p.role} for p in CATALOGUE],
            "commands": list(L.COMMAND_NAMES), "modes": list(L.MODE_NAMES), "reasons": list(L.LIMIT_REASONS),
            "events": {str(k): v for k, v in L.EVENT_NAMES.items()},
            "alarms": alarms,
            "devices": [{"name": d["name"], "role": d["role"], "bus": d["bus"], "profile": d["profile"],
                         "simulated": d["simulated"]} for d in cfg["devices"]],
            "buses": {k: {"kind": b["kind"], "port": b["port"], "baud": b["baud"]} for k, b in cfg["buses"].items()},
            "pin": {"configured": bool(self.pin_hash), "lockout_after": self.lockout_after,
                    "lockout_s": self.lockout_s, "session_s": self.session_s},
            "publish_hz": self.publish_hz,
        }

    def _devices(self, stamp, now_mono, quality, err_cycles, stale_cycles) -> list[dict]:
        loop = self.loop
        out = []
        by_device: dict[str, list[int]] = {}
        for (dev, _point), idx in loop.builder.slot.items():
            by_device.setdefault(dev, []).append(idx)
        for d in self.cfg["devices"]:
            name = d["name"]
            idxs = sorted(by_device.get(name, []))
            last = max((stamp[i] for i in idxs), default=-math.inf)
            entry = {"name": name, "role": d["role"], "bus": d["bus"], "points": len(idxs),
                     "ok": sum(1 for i in idxs if quality[i] == Q_OK),
                     "last_good_age_s": _f(now_mono - last) if math.isfinite(last) else None,
                     "stale": [CATALOGUE[i].name for i in idxs if quality[i] != Q_OK],
                     "error_cycles": int(sum(err_cycles[i] for i in idxs)),
                     "stale_cycles": int(sum(stale_cycles[i] for i in idxs)), "counters": {}}
            dev = loop.devices.get(name)
            for attr in ("frames", "bad_frames", "reads", "errors", "timeouts"):
                val = getattr(dev, attr, None)
                if isinstance(val, (int, float)):
                    entry["counters"][attr] = val
            bus = getattr(dev, "bus", None)
            bstats = getattr(bus, "stats", None)
            for attr in ("transactions", "retries", "failures"):
                val = getattr(bstats, attr, None)
                if isinstance(val, (int, float)):
                    entry["counters"][attr] = val
            out.append(entry)
        return out

    def _carbon(self, today: dict) -> dict:
        out = {"today": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in today.items()},
               "source": "ipc estimate from the meters (controller/carbon ledger below when attached)"}
        supplied = today["pv_kwh"] + today["grid_import_kwh"] + today["genset_kwh"]
        out["today"]["renewable_share"] = round(today["pv_kwh"] / supplied, 4) if supplied > 0 else None
        co2 = today["co2_grid_kg"] + today["co2_diesel_kg"]
        out["today"]["co2_kg"] = round(co2, 3)
        out["today"]["kg_per_kwh_load"] = round(co2 / today["load_kwh"], 4) if today["load_kwh"] > 0 else None
        for hook in list(getattr(self.loop, "hooks", [])):
            writer = getattr(hook, "writer", None)
            if writer is not None and hasattr(hook, "closed"):
                iv = getattr(hook, "iv", None)
                pool = getattr(hook, "pool", None)
                out["ledger"] = {"intervals_closed": hook.closed,
                                 "interval_start": _iso(iv.t_start) if iv is not None else None,
                                 "interval_covered_s": _f(iv.covered_s) if iv is not None else None,
                                 "battery_pool_kg_per_kwh": _f(pool.kg / pool.kwh) if pool is not None and
                                 getattr(pool, "kwh", 0) and hasattr(pool, "kg") else None}
                path = getattr(writer, "path", None)
                if path is not None:
                    self._ledger_scan(Path(path))
                    out["ledger"]["today"] = self._ledger_days.get(today.get("day"))
        return out

    def _ledger_scan(self, path: Path) -> None:
        """Read the interval records the carbon ledger appended since the last look (the file, not
        the writer's memory: intervals closed while nobody was attached count too)."""
        from controller.carbon.ledger import LineError, parse_line
        try:
            with open(path, "rb") as f:
                f.seek(self._ledger_off)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1                 # whole lines only; a line being written waits
        self._ledger_off += end
        for line in data[:end].splitlines():
            try:
                payload, _head, _sig = parse_line(line)
            except LineError:
                continue
            if payload.get("kind") == "interval":
                self._ledger_add(payload)

    def _ledger_add(self, rec: dict) -> None:
        """One signed 15-min interval into its local day's CFE, CO2 and per-job sums."""
        try:
            t0 = datetime.fromisoformat(rec["t_start"].replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError, AttributeError):
            return
        day_no = int((t0 + self._tz_offset_s) // 86400)
        day = datetime.fromtimestamp(day_no * 86400, timezone.utc).strftime("%Y-%m-%d")
        if day not in self._ledger_days:
            while len(self._ledger_days) >= 3:         # today and the two before are plenty
                self._ledger_days.pop(min(self._ledger_days))
            self._ledger_days[day] = {"day": day, "intervals": 0, "load_kwh": 0.0, "cfe_kwh": 0.0,
                                      "co2_location_kg": 0.0, "co2_market_kg": 0.0, "jobs": {}}
        try:
            d = self._ledger_days[day]
            cfe = rec["cfe"]
            d["intervals"] += 1
            d["load_kwh"] += float(cfe["load_kwh"])
            d["cfe_kwh"] += float(cfe["onsite_kwh"]) + float(cfe["contract_kwh"]) + float(cfe["grid_kwh"])
            d["co2_location_kg"] += float(rec["co2_kg"]["loads_location"])
            d["co2_market_kg"] += float(rec["co2_kg"]["loads_market"])
            for job, j in (rec.get("jobs") or {}).items():
                acc = d["jobs"].setdefault(job, {"kwh": 0.0, "kg": 0.0})
                acc["kwh"] += float(j["kwh"])
                acc["kg"] += float(j["kg_location"])
            d["cfe_pct"] = round(100.0 * d["cfe_kwh"] / d["load_kwh"], 2) if d["load_kwh"] > 0 else None
        except (KeyError, TypeError, ValueError):
            pass                                  # an older ledger format: leave today's sums as they are

    def _snapshot_line(self, pub) -> bytes:
        if self._snapshot_cache[0] == pub[0]:
            return self._snapshot_cache[1]
        obj = self._snapshot(pub)
        line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        self._snapshot_cache = (pub[0], line)
        self.stats["published"] += 1
        return line

    def _snapshot(self, pub) -> dict:
        (seq, cycle, t_s, value, quality, cmd, stamp, now_mono, err_c, stale_c, events, today, loop_stats,
         trips, plan) = pub
        op_mode = int(value[INDEX["op_mode"]])
        req = float(value[INDEX["op_battery_kw"]])
        bat = float(cmd[L.C_BATTERY_KW])
        manual = {"mode": ("auto", "manual", "standby")[op_mode] if 0 <= op_mode <= 2 else str(op_mode),
                  "requested_kw": _f(req), "battery_kw": _f(bat), "clamped": False, "reason": None,
                  "genset": {-1: None, 0: False, 1: True}.get(int(value[INDEX["op_genset"]]))}
        if int(cmd[L.C_MODE]) == L.MODE_MANUAL and abs(req - bat) > 0.5 and abs(bat) < abs(req):
            manual["clamped"] = True
            if req > float(cmd[L.C_DISCHARGE_LIMIT_KW]) + 1e-9:
                manual["reason"] = L.reason_name(cmd[L.C_DISCHARGE_REASON])
            elif req < -float(cmd[L.C_CHARGE_LIMIT_KW]) - 1e-9:
                manual["reason"] = L.reason_name(cmd[L.C_CHARGE_REASON])
            else:
                manual["reason"] = "ramp"
        snap = {
            "type": "snapshot", "seq": seq, "cycle": cycle, "t_s": t_s, "utc": _iso(t_s),
            "points": {p.name: [_f(value[i]), int(quality[i])] for i, p in enumerate(CATALOGUE)},
            "commands": {name: _f(cmd[i]) for i, name in enumerate(L.COMMAND_NAMES)},
            "mode": L.MODE_NAMES[int(cmd[L.C_MODE])] if 0 <= int(cmd[L.C_MODE]) < len(L.MODE_NAMES) else "?",
            "charge_reason": L.reason_name(cmd[L.C_CHARGE_REASON]),
            "discharge_reason": L.reason_name(cmd[L.C_DISCHARGE_REASON]),
            "alarms": {"active": int(cmd[L.C_ALARMS_ACTIVE]), "unacked": int(cmd[L.C_ALARMS_UNACKED])},
            "manual": manual,
            "loop": {**{k: _f(v) for k, v in loop_stats.as_dict().items()}, "interlock_trips": int(trips)},
            "events": [[s, t, c, _f(v)] for s, t, c, v in events[-60:]],
            "audit": list(self.audit)[-20:],
            "devices": self._devices(stamp, now_mono, quality, err_c, stale_c),
            "carbon": self._carbon(today),
            "uplink": self._uplink(),
            "pin": {"locked_s": _f(max(0.0, self.locked_until - time.monotonic()))},
            "ipc": dict(self.stats),
            "plan": ({n: _f(plan[k]) for k, (n, _i) in enumerate(PLAN_FIELDS)}
                     if plan is not None and plan[0] > 0 else None),
        }
        return snap

    def _uplink(self) -> dict:
        if self.uplink is None:
            return {"attached": False, "message": "no uplink in this process (edge-ems run without an MQTT broker)"}
        try:
            return {"attached": True, **self.uplink.stats()}
        except Exception as exc:
            return {"attached": True, "error": repr(exc)}

    def history(self) -> dict:
        n = min(self._hist_n, HISTORY_N)
        start = self._hist_n - n
        rows = [self._hist[i % HISTORY_N] for i in range(start, self._hist_n)]
        return {"type": "history", "step_s": HISTORY_STEP_S, "fields": ["t_s", *HISTORY_FIELDS],
                "rows": [[_f(x) for x in r] for r in rows], "plan": self._plan()}

    def _plan(self) -> dict | None:
        """The strategy's plan for the next hours, when the loop publishes one as ``loop.plan`` (a dict
        with t0_s, step_s and soc_pct / battery_kw lists; the MPC's contract); None otherwise."""
        plan = getattr(self.loop, "plan", None)
        if not isinstance(plan, dict):
            return None
        try:
            return {"t0_s": float(plan["t0_s"]), "step_s": float(plan["step_s"]),
                    "soc_pct": [_f(x) for x in plan.get("soc_pct", [])],
                    "battery_kw": [_f(x) for x in plan.get("battery_kw", [])]}
        except (KeyError, TypeError, ValueError):
            return None

    # ---------------------------------------------------------------- requests
    def _request(self, conn: _Conn, line: bytes) -> None:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self._send(conn, {"type": "result", "ok": False, "error": f"bad request: {exc}"})
            return
        rid = req.get("id")
        op = req.get("op")
        reply = {"type": "result", "id": rid, "op": op}
        if op == "subscribe":
            conn.hz = max(0.0, min(float(req.get("hz", 2.0)), self.publish_hz))
            conn.next_send = 0.0
            self._send(conn, {**reply, "ok": True, "hz": conn.hz})
        elif op == "snapshot":
            if self._pub is None:
                self._send(conn, {**reply, "ok": False, "error": "no cycle has run yet"})
            else:
                self._send(conn, self._snapshot_line(self._pub)[:-2] + b',"id":' + json.dumps(rid).encode() + b"}\n")
        elif op == "history":
            self._send(conn, {**self.history(), "id": rid})
        elif op == "audit":
            self._send(conn, {**reply, "ok": True, "audit": list(self.audit)})
        elif op == "login":
            self._send(conn, {**reply, **self._login(conn, str(req.get("pin", "")))})
        elif op == "logout":
            conn.session_until = 0.0
            self._audit_record(conn, "logout", {}, True, "logged out")
            self._send(conn, {**reply, "ok": True, "message": "logged out"})
        elif op == "action":
            self._action(conn, req, reply)
        else:
            self._send(conn, {**reply, "ok": False, "error": f"unknown op {op!r}"})

    def _login(self, conn: _Conn, pin: str) -> dict:
        now = time.monotonic()
        if not self.pin_hash:
            self._audit_record(conn, "login", {}, False, "no PIN configured")
            return {"ok": False, "error": "no PIN configured in the site profile ([tui] pin_hash): actions disabled"}
        if now < self.locked_until:
            left = self.locked_until - now
            self._audit_record(conn, "login", {}, False, f"locked out ({left:.0f} s left)")
            return {"ok": False, "locked_s": round(left), "error": f"locked out: try again in {left:.0f} s"}
        if check_pin(pin, self.pin_hash):
            self.failures = 0
            conn.session_until = now + self.session_s
            self._audit_record(conn, "login", {}, True, "PIN accepted")
            return {"ok": True, "session_s": self.session_s,
                    "message": f"PIN accepted: actions unlocked for {self.session_s / 60:.0f} min"}
        self.failures += 1
        if self.failures >= self.lockout_after:
            self.failures = 0
            self.locked_until = now + self.lockout_s
            self._audit_record(conn, "lockout", {}, False, f"{self.lockout_after} wrong PINs: locked {self.lockout_s:.0f} s")
            return {"ok": False, "locked_s": round(self.lockout_s),
                    "error": f"wrong PIN: locked out for {self.lockout_s:.0f} s"}
        left = self.lockout_after - self.failures
        self._audit_record(conn, "login", {}, False, f"wrong PIN ({left} tries left)")
        return {"ok": False, "tries_left": left, "error": f"wrong PIN ({left} {'try' if left == 1 else 'tries'} left)"}

    def _action(self, conn: _Conn, req: dict, reply: dict) -> None:
        name = req.get("action")
        args = {k: v for k, v in req.items() if k not in ("op", "id", "action", "pin")}
        now = time.monotonic()
        if not (conn.session_until and now <= conn.session_until):
            self._audit_record(conn, str(name), args, False, "refused: no PIN session")
            self._send(conn, {**reply, "action": name, "ok": False, "error": "PIN required"})
            return
        conn.session_until = now + self.session_s        # activity extends the session
        op = self.loop.operator if self.loop is not None else None
        if op is None:
            self._send(conn, {**reply, "action": name, "ok": False, "error": "controller not running yet"})
            return
        try:
            if name == "ack":
                if "bits" in args:
                    bits = int(args["bits"])
                elif "alarm" in args:
                    bits = 1 << L.ALARM_NAMES.index(str(args["alarm"]))
                else:
                    bits = int(self._pub[5][L.C_ALARMS_UNACKED]) if self._pub else 0
                names = [n for i, n in enumerate(L.ALARM_NAMES) if bits >> i & 1]
                op.acknowledge(bits)
                msg = f"acknowledged {', '.join(names)}" if names else "nothing to acknowledge"
                result = {"ok": True, "bits": bits, "message": msg}
            elif name == "mode":
                mode = str(args.get("mode"))
                if mode == "manual" and self._pub is not None:
                    op.set_battery_kw(float(self._pub[5][L.C_BATTERY_KW]))     # bumpless
                op.set_mode(mode)
                result = {"ok": True, "message": f"mode {mode} requested"}
            elif name == "battery_kw":
                kw = float(args["kw"])
                if not math.isfinite(kw):
                    raise ValueError("kw must be a finite number")
                op.set_battery_kw(kw)
                manual = op.mode == L.OP_MANUAL
                result = {"ok": True, "kw": kw, **self._clamp_preview(kw)}
                result["message"] = (f"setpoint {kw:+.1f} kW" + result.pop("note")
                                     + ("" if manual else " (applies in manual mode)"))
            elif name == "genset":
                run = args.get("run")
                op.set_genset(None if run is None else bool(run))
                result = {"ok": True, "message": {None: "genset back to automatic", True: "genset start requested",
                                                  False: "genset stop requested"}[None if run is None else bool(run)]}
            elif name == "export":
                hours = float(args.get("hours", 2.0))
                if not 0 < hours <= 24 * 7:
                    raise ValueError("hours must be in (0, 168]")
                self._audit_record(conn, "export", args, True, "started")
                threading.Thread(target=self._export_worker, args=(conn, reply, hours), daemon=True).start()
                return
            elif name in ("read", "scan"):
                target = str(args.get("device" if name == "read" else "bus", ""))
                units = _units(args.get("units", "1-32")) if name == "scan" else None
                self._audit_record(conn, name, args, True, "started")
                threading.Thread(target=self._field_worker, args=(conn, reply, name, target, units),
                                 daemon=True).start()
                return
            else:
                raise ValueError(f"unknown action {name!r} (ack, mode, battery_kw, genset, read, scan, export)")
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            result = {"ok": False, "error": str(exc)}
        self._audit_record(conn, str(name), args, result["ok"], result.get("message") or result.get("error", ""))
        self._send(conn, {**reply, "action": name, **result})

    def _export_worker(self, conn: _Conn, reply: dict, hours: float) -> None:
        try:
            files = self.export(hours)
            result = {"ok": True, "files": [str(f) for f in files],
                      "message": f"exported {len(files)} files ({hours:g} h) to {files[0].parent}"}
        except Exception as exc:
            result = {"ok": False, "error": f"export failed: {exc}"}
        self._audit_record(conn, "export", {"hours": hours}, result["ok"], result.get("message") or result["error"])
        self._done.put((conn, {**reply, "action": "export", **result}))
        try:
            os.write(self._wake_w, b"d")
        except OSError:
            pass

    def _clamp_preview(self, kw: float) -> dict:
        """What the interlocks will make of a manual setpoint, from the limits of the last cycle: the
        technician hears about a clamp at once, the snapshot's "manual" then shows what was applied."""
        pub = self._pub
        if pub is None:
            return {"note": ""}
        cmd = pub[5]
        if kw > 0 and kw > float(cmd[L.C_DISCHARGE_LIMIT_KW]) + 1e-9:
            lim, why = float(cmd[L.C_DISCHARGE_LIMIT_KW]), L.reason_name(cmd[L.C_DISCHARGE_REASON])
        elif kw < 0 and -kw > float(cmd[L.C_CHARGE_LIMIT_KW]) + 1e-9:
            lim, why = -float(cmd[L.C_CHARGE_LIMIT_KW]), L.reason_name(cmd[L.C_CHARGE_REASON])
        else:
            return {"clamped": False, "note": ": within the present limits"}
        return {"clamped": True, "limit_kw": _f(lim), "reason": why,
                "note": f": beyond the limit, CLAMPED to {lim:+.1f} kW by {why}"}   # <= 79 columns

    def _field_worker(self, conn: _Conn, reply: dict, name: str, target: str, units) -> None:
        """A device read or a bus scan, off the cycle and off the socket thread (they take seconds)."""
        try:
            if name == "read":
                out = self.device_read(target)
                shown = ", ".join(f"{k}={v:g}" for k, v in list(out["values"].items())[:6])
                result = {"ok": True, **out, "message": f"read {target} ({out['source']}, {out['ms']:.0f} ms): "
                          f"{len(out['values'])} points" + (f": {shown}" if shown else "")}
            else:
                out = self.bus_scan(target, units)
                result = {"ok": True, **out, "message": f"scan {out['bus']} units {units[0]}-{units[-1]} "
                          f"({out['ms']:.0f} ms): answering {out['found'] or 'none'}"
                          + (f"; profile units missing {out['missing']}" if out["missing"] else "")}
        except Exception as exc:
            result = {"ok": False, "error": f"{name} {target}: {exc}"}
        self._audit_record(conn, name, {"device" if name == "read" else "bus": target}, result["ok"],
                           result.get("message") or result["error"])
        self._done.put((conn, {**reply, "action": name, **result}))
        try:
            os.write(self._wake_w, b"d")
        except OSError:
            pass

    def _loop_device(self, name: str):
        loop = self.loop
        if loop is None:
            raise ValueError("controller not running yet")
        known = [d["name"] for d in self.cfg["devices"]]
        if name not in known:
            raise ValueError(f"no device {name!r} in the site profile (known: {', '.join(known)})")
        return loop.devices.get(name)

    def device_read(self, name: str) -> dict:
        """Every point of a Modbus device's profile read now, over the controller's own bus (its lock
        serialises us with the cycle's reads: the cycle waits at most one transaction). A device with
        no Modbus bus (simulated, CAN) answers with what the process image holds for it."""
        dev = self._loop_device(name)
        t0 = time.perf_counter()
        bus = getattr(dev, "bus", None)
        if bus is not None and hasattr(bus, "read") and hasattr(dev, "profile") and hasattr(dev, "unit"):
            from drivers.modbus.device import ModbusDevice
            probe = ModbusDevice(name, dev.profile, _Unattached(bus), dev.unit, emit_extras=True)
            probe.poll(0.0)
            if not probe.placed or probe.backoff.active:
                raise ConnectionError(f"unit {dev.unit} on {bus.url} did not answer")
            _fast, slow = probe.blocks()
            for i in range(1, len(slow)):
                probe.poll(float(i))
            values = {k: round(v, 4) for k, (v, _t, q) in probe.readings(float(len(slow))).items()
                      if q == Q_OK and math.isfinite(v)}
            source = f"modbus unit {dev.unit}"
        else:
            pub = self._pub
            if pub is None:
                raise ValueError("no cycle has run yet")
            idxs = sorted(i for (d, _p), i in self.loop.builder.slot.items() if d == name)
            values = {CATALOGUE[i].name: round(float(pub[3][i]), 4) for i in idxs if pub[4][i] == Q_OK}
            source = "image: no Modbus bus (simulated or CAN device)"
        return {"device": name, "source": source, "values": values,
                "ms": round((time.perf_counter() - t0) * 1000.0, 1)}

    def bus_scan(self, bus_name: str, units: list[int]) -> dict:
        """Unit ids answering a one-register read on a Modbus bus the controller holds. A probe holds the
        bus lock for at most 2 x 0.1 s (+ the late-reply guard), so the cycle waits at most that long."""
        buses = self.cfg["buses"]
        held = {}                                   # profile bus name -> the ModbusBus the loop polls
        for d in self.cfg["devices"]:
            bus = getattr(self._loop_device(d["name"]), "bus", None)
            if bus is not None and hasattr(bus, "read"):
                held.setdefault(d["bus"], bus)
        if not bus_name:                            # the first Modbus bus this controller holds
            if not held:
                raise ValueError("this controller holds no Modbus port (all devices simulated or CAN): "
                                 "nothing to scan")
            bus_name = next(iter(held))
        if bus_name not in buses:
            raise ValueError(f"no bus {bus_name!r} in the site profile (known: {', '.join(buses)})")
        bus = held.get(bus_name)
        if bus is None:
            raise ValueError(f"bus {bus_name} ({buses[bus_name]['kind']}) has no Modbus port open in this "
                             f"controller (held: {', '.join(held) or 'none'}): nothing to scan")
        on_bus = [d for d in self.cfg["devices"] if d["bus"] == bus_name
                  and getattr(self._loop_device(d["name"]), "bus", None) is bus]
        import minimalmodbus
        from drivers.modbus.bus import LINE_FAULTS
        t0 = time.perf_counter()
        found = []
        for unit in units:
            try:
                bus.read(unit, 3, 0, 1, timeout_s=0.1, retries=1)
            except minimalmodbus.SlaveReportedException:
                pass
            except LINE_FAULTS:
                continue
            found.append(unit)
        expected = sorted(int(d["unit"]) for d in on_bus if d.get("unit") is not None and int(d["unit"]) in units)
        return {"bus": bus_name, "port": getattr(bus, "url", "?"), "found": found,
                "missing": [u for u in expected if u not in found],
                "ms": round((time.perf_counter() - t0) * 1000.0, 1)}

    def export(self, hours: float) -> list[Path]:
        """The last `hours` of the recording (or, without one, the 10-s in-memory ring) as CSV, plus the
        audit log as JSONL, into the export directory."""
        self.export_dir.mkdir(parents=True, exist_ok=True)
        pub = self._pub
        t_end = pub[2] if pub else time.time()
        t_from = t_end - hours * 3600.0
        stamp = datetime.fromtimestamp(t_end, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        gw = self.cfg["site"]["gateway_id"]
        csv_path = self.export_dir / f"{gw}-{stamp}-{hours:g}h.csv"
        header = ["t_utc", "t_s", *[p.name for p in CATALOGUE], *[f"q_{p.name}" for p in CATALOGUE],
                  *[f"cmd_{c}" for c in L.COMMAND_NAMES]]
        rows = 0
        last_t = -math.inf
        npts = len(CATALOGUE)
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            if self.recording_path is not None and self.recording_path.exists():
                from controller.replay import iter_records
                for r in iter_records(self.recording_path):
                    t = float(r.image["t_s"])
                    last_t = t
                    if t < t_from:
                        continue
                    w.writerow([_iso(t), f"{t:.3f}", *(f"{x:.6g}" for x in r.image["value"]),
                                *(int(q) for q in r.image["quality"]), *(f"{x:.6g}" for x in r.commands)])
                    rows += 1
            ring = self._ring
            if ring is not None:                 # the in-memory rows the recording does not hold yet
                size = len(ring)
                end = self._ring_n
                for i in range(max(0, end - size), end):
                    row = ring[i % size].copy()
                    if not (row[0] >= t_from and row[0] > last_t):
                        continue
                    w.writerow([_iso(row[0]), f"{row[0]:.3f}", *(f"{x:.6g}" for x in row[1:1 + npts]),
                                *(int(q) for q in row[1 + npts:1 + 2 * npts]),
                                *(f"{x:.6g}" for x in row[1 + 2 * npts:])])
                    rows += 1
        files = [csv_path]
        ledger = self._ledger_path()
        if ledger is not None and ledger.exists():
            # the signed carbon ledger whole (a hash chain verifies only from its genesis), with its key
            import shutil
            for src in (ledger, ledger.with_name(ledger.name + ".pub")):
                if src.exists():
                    dst = self.export_dir / f"{gw}-{stamp}-{src.name}"
                    shutil.copyfile(src, dst)
                    files.append(dst)
        audit_path = csv_path.with_suffix(".audit.jsonl")
        with open(audit_path, "w") as f:
            for rec in list(self.audit):
                f.write(json.dumps(rec) + "\n")
            for s, t, c, v in (pub[10] if pub else []):
                if t >= t_from:
                    f.write(json.dumps({"event_seq": s, "t_s": t, "code": c, "event": L.EVENT_NAMES.get(c, str(c)),
                                        "value": v}) + "\n")
        return [*files, audit_path]

    def _ledger_path(self) -> Path | None:
        for hook in list(getattr(self.loop, "hooks", [])):
            path = getattr(getattr(hook, "writer", None), "path", None)
            if path is not None:
                return Path(path)
        return None

    def _audit_record(self, conn: _Conn | None, action: str, args: dict, ok: bool, message: str) -> dict:
        self._audit_seq += 1
        pub = self._pub
        rec = {"seq": self._audit_seq, "t_utc": _iso(time.time()), "t_s": pub[2] if pub else None,
               "cycle": pub[1] if pub else None, "who": conn.who if conn else "ipc", "action": action,
               "args": args, "ok": ok, "message": message}
        self.audit.append(rec)
        if self.audit_path is not None:
            try:
                with open(self.audit_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            except OSError:
                pass
        for fn in list(self.audit_listeners):
            try:
                fn(rec)
            except Exception:
                pass
        return rec


def start_ipc(cfg: dict, path: str | Path | None = None, **kw) -> IpcServer:
    """Bind the socket and start the server thread; `server.hook` goes into the loop's hooks."""
    return IpcServer(cfg, path or default_socket_path(), **kw).start()


class IpcClient:
    """A small blocking client (the TUI, tests, tools). `recv()` returns the next message or None."""

    def __init__(self, path: str | Path, timeout_s: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self.sock.connect(str(path))
        self.buf = bytearray()
        self.hello = self.recv(timeout_s)
        self._id = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, obj: dict) -> int:
        self._id += 1
        obj = {**obj, "id": obj.get("id", self._id)}
        self.sock.sendall((json.dumps(obj) + "\n").encode())
        return obj["id"]

    def _pop(self) -> dict | None:
        if b"\n" in self.buf:
            line, _, rest = bytes(self.buf).partition(b"\n")
            self.buf = bytearray(rest)
            return json.loads(line)
        return None

    def recv(self, timeout_s: float | None = None) -> dict | None:
        msg = self._pop()
        if msg is not None:
            return msg
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 5.0)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                raise ConnectionError("controller closed the socket")
            self.buf += data
            msg = self._pop()
            if msg is not None:
                return msg

    def feed(self) -> list[dict]:
        """Non-blocking: read what is there and return every whole message."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("controller closed the socket")
                self.buf += data
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            self.sock.setblocking(True)
        out = []
        while (msg := self._pop()) is not None:
            out.append(msg)
        return out

    def request(self, obj: dict, timeout_s: float = 10.0) -> dict:
        """Send and wait for the reply with the same id (other messages in between are dropped)."""
        rid = self.send(obj)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self.recv(deadline - time.monotonic())
            if msg is not None and msg.get("id") == rid and msg.get("type") != "hello":
                return msg
        raise TimeoutError(f"no reply to {obj.get('op')} within {timeout_s} s")

    def close(self) -> None:
        self.sock.close()


def start_ipc_for_run(cfg: dict, args) -> IpcServer | None:
    """`edge-ems run`: the socket from --socket (or the default), exports and the audit log next to --out.
    A socket that cannot be bound is reported and the controller runs without it."""
    import sys
    spec = getattr(args, "socket", None)
    if spec == "none":
        return None
    path = Path(spec) if spec else default_socket_path()
    out = Path(args.out) if getattr(args, "out", None) else None
    try:
        server = start_ipc(cfg, path, export_dir=(out / "exports") if out else None,
                           audit_path=(out / "audit.jsonl") if out else None,
                           recording_path=(out / "recording") if out else None)
    except OSError as exc:
        print(f"edge-ems run: no TUI socket ({exc}); the controller runs without it", file=sys.stderr)
        return None
    print(f"edge-ems run: TUI socket {path}", flush=True)
    return server
