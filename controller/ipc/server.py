"""The IPC server core: the socket, its thread, connections, requests and the publishing of snapshots.
The jobs it serves are mixed in from their modules (cycle side, snapshots, actions, field access,
exports, audit), so each can be read alone; the state they share lives on the one server object."""
from __future__ import annotations

import errno
import json
import math
import os
import queue
import selectors
import socket
import stat
import struct
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np

from controller.ipc.actions import Actions
from controller.ipc.audit import Audit
from controller.ipc.common import DROP_ABOVE, HISTORY_FIELDS, HISTORY_N, MAX_LINE, SKIP_ABOVE, _Conn
from controller.ipc.cycle import CycleSide
from controller.ipc.export import Exports
from controller.ipc.field import FieldAccess
from controller.ipc.paths import default_socket_path
from controller.ipc import ratelimit as RL
from controller.ipc.ratelimit import TokenBucket
from controller.ipc.request import (AUDIT_OP_DEFAULT_N, AUDIT_OP_MAX_N, HZ_MAX, PIN_MAX_CHARS, RequestError, integer,
                                    number, parse, peek, short_string)
from controller.ipc.snapshot import Snapshots


class IpcServer(CycleSide, Snapshots, Actions, FieldAccess, Exports, Audit):
    """Start with :meth:`start` (binds the socket, starts the thread); pass :attr:`hook` to the loop."""

    def __init__(self, cfg: dict, path: str | Path, *, publish_hz: float = 4.0, export_dir: str | Path | None = None,
                 audit_path: str | Path | None = None, recording_path: str | Path | None = None, account=None):
        self.cfg = cfg
        if account is None:                    # the runtime passes the one the ledger and the uplink read
            from controller.carbon.account import EnergyAccount
            account = EnergyAccount(cfg)
        self.account = account
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
        self._audit_briefs: deque = deque(maxlen=20)     # what snapshots carry of it (server-made fields only)
        self._audit_lock = threading.Lock()              # export/read/scan workers audit too
        self.audit_refused: dict[str, int] = {}          # refusals by kind (running counts)
        self.audit_suppressed: dict[str, int] = {}       # ... counted, not recorded, since the kind's last record
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
        self.today = account.today()
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
                      "hook_max_us": 0.0, "rate_limited": 0, "flood_dropped": 0, "connections_refused": 0,
                      "bad_requests": 0, "request_errors": 0, "audit_suppressed": 0}
        self.rate_limited_by: dict[str, int] = {}       # refusals by a rate limit, by op (a bounded set)
        now = time.monotonic()
        self._unauth_bucket = TokenBucket(RL.UNAUTH_SHARED_RATE, RL.UNAUTH_SHARED_BURST, now)
        self._accept_bucket = TokenBucket(RL.ACCEPT_RATE, RL.ACCEPT_BURST, now)
        self._audit_bucket = TokenBucket(RL.AUDIT_UNAUTH_RATE, RL.AUDIT_UNAUTH_BURST, now)
        self._hello_line = None                   # the hello is the same for every connection: built once
        self._accept_paused_until = 0.0           # > 0: the listener is out of the selector until then

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

    def _run(self) -> None:
        while not self._stop:
            timeout = 0.5
            if self._accept_paused_until:
                left = self._accept_paused_until - time.monotonic()
                if left <= 0:
                    self._accept_paused_until = 0.0
                    self._sel.register(self._listener, selectors.EVENT_READ, "listen")
                else:
                    timeout = min(timeout, left)
            try:
                ready = self._sel.select(timeout=timeout)
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
        for _ in range(RL.MAX_CONNS):                 # at most this many per wake-up; select wakes us again
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:                          # EMFILE, ENFILE, ENOBUFS: the backlog waits
                self.stats["connections_refused"] += 1
                self._pause_accepting(0.1)
                return
            if len(self._conns) >= RL.MAX_CONNS or not self._accept_bucket.take(time.monotonic()):
                self.stats["connections_refused"] += 1
                try:
                    sock.send(b'{"type":"error","ok":false,"error":"rate limited: too many connections '
                              b'(at most %d open, %g new/s)"}\n' % (RL.MAX_CONNS, RL.ACCEPT_RATE))
                except OSError:
                    pass
                sock.close()
                # stop accepting until a new one may be: further connects wait in (then overflow) the
                # kernel's backlog, which costs this thread nothing
                self._pause_accepting(max(self._accept_bucket.wait_s(), 0.05))
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
            if self._hello_line is None:
                self._hello_line = (json.dumps(self._hello(), separators=(",", ":")) + "\n").encode()
            self._send(conn, self._hello_line)

    def _pause_accepting(self, seconds: float) -> None:
        if not self._accept_paused_until:
            try:
                self._sel.unregister(self._listener)
            except (KeyError, ValueError):
                pass
        self._accept_paused_until = time.monotonic() + seconds

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
        if b"\n" in data:                  # split once (a 64 KB read of 2-byte lines is one pass, not 30 000)
            *lines, rest = conn.rbuf.split(b"\n")
            conn.rbuf = bytearray(rest)
            for line in lines:
                if len(line) > MAX_LINE:
                    self._drop(conn)
                    return
                if line.strip():
                    if self._admit(conn, 1.0):
                        self._request(conn, bytes(line))
                    else:
                        self._limited(conn, line)
                if conn.closed:
                    return
        if len(conn.rbuf) > MAX_LINE:
            self._drop(conn)

    def _admit(self, conn: _Conn, cost: float) -> bool:
        """Take `cost` tokens: from the connection's session bucket, or, without a session, from its own
        bucket and the one all connections without a session share (both must have them)."""
        now = time.monotonic()
        if conn.in_session(now):
            ok = conn.session_bucket.take(now, cost)
        else:
            ok = conn.bucket.has(now, cost) and self._unauth_bucket.has(now, cost)
            if ok:
                conn.bucket.take(now, cost)
                self._unauth_bucket.take(now, cost)
        if ok:
            conn.limited = conn.limited_bytes = 0
        return ok

    def _limited(self, conn: _Conn, line, op: str | None = None, rid=None, parsed: bool = False) -> None:
        """A request refused by a rate limit: counted by op, nothing of it kept. A connection that goes
        on flooding is dropped rather than answered line by line."""
        if not parsed:
            rid, op = peek(line)                   # a short line's id and op (one of OPS), else None
        self.stats["rate_limited"] += 1
        kind = op or "unparsed"                    # a bounded set: OPS and "unparsed"
        self.rate_limited_by[kind] = self.rate_limited_by.get(kind, 0) + 1
        conn.limited += 1
        conn.limited_bytes += len(line)
        if conn.limited > RL.FLOOD_DROP_REQUESTS or conn.limited_bytes > RL.FLOOD_DROP_BYTES:
            self.stats["flood_dropped"] += 1
            self._drop(conn)
            return
        now = time.monotonic()
        if conn.in_session(now):
            wait, what = conn.session_bucket.wait_s(), (f"{RL.SESSION_RATE:g} requests/s per session "
                                                        f"(burst {RL.SESSION_BURST:g})")
        else:
            wait, what = max(conn.bucket.wait_s(), self._unauth_bucket.wait_s()), RL.describe()
        self._send(conn, {"type": "result", "id": rid, "op": op, "ok": False,
                          "error": f"rate limited: {what}; retry in {wait:.1f} s"})

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

    def _request(self, conn: _Conn, line: bytes) -> None:
        """One admitted line: parsed and typed (controller/ipc/request.py), then served. A refusal names
        its field; an unexpected error is answered and counted (request_errors), never raised into the
        server thread (whose catch-all drops the connection)."""
        try:
            rid, op, req = parse(line)
        except RequestError as exc:
            self.stats["bad_requests"] += 1
            self._send(conn, {"type": "result", "id": getattr(exc, "rid", None), "ok": False, "field": exc.field,
                              "error": str(exc)})
            return
        reply = {"type": "result", "id": rid, "op": op}
        cost = RL.OP_COST.get(op, 1.0)
        if cost > 1.0 and not self._admit(conn, cost - 1.0):
            self._limited(conn, line, op, rid, parsed=True)
            return
        try:
            self._serve(conn, op, req, reply)
        except RequestError as exc:
            self.stats["bad_requests"] += 1
            self._send(conn, {**reply, "ok": False, "field": exc.field, "error": str(exc)})
        except Exception as exc:                    # noqa: BLE001 - a bug here must not drop the client
            self.stats["request_errors"] += 1
            self._send(conn, {**reply, "ok": False, "error": f"internal error serving {op}: {type(exc).__name__}"})

    def _serve(self, conn: _Conn, op: str, req: dict, reply: dict) -> None:
        if op == "subscribe":
            conn.hz = min(number(req, "hz", 0.0, HZ_MAX, 2.0), self.publish_hz)
            conn.next_send = 0.0
            self._send(conn, {**reply, "ok": True, "hz": conn.hz})
        elif op == "snapshot":
            if self._pub is None:
                self._send(conn, {**reply, "ok": False, "error": "no cycle has run yet"})
            else:
                self._send(conn, self._snapshot_line(self._pub)[:-2] + b',"id":' + json.dumps(reply["id"]).encode()
                           + b"}\n")
        elif op == "history":
            self._send(conn, {**self.history(), "id": reply["id"]})
        elif op == "audit":
            since = integer(req, "since", 0, 2 ** 63, 0)
            n = integer(req, "n", 1, AUDIT_OP_MAX_N, AUDIT_OP_DEFAULT_N)
            recs = [r for r in list(self.audit) if r["seq"] > since][-n:]
            self._send(conn, {**reply, "ok": True, "audit": recs})
        elif op == "login":
            pin = short_string(req, "pin", PIN_MAX_CHARS)
            self._send(conn, {**reply, **self._login(conn, pin)})
        elif op == "logout":
            if conn.in_session(time.monotonic()):    # a logout without a session is no event to keep
                self._audit_record(conn, "logout", {}, True, "logged out")
            conn.session_until = 0.0
            self._send(conn, {**reply, "ok": True, "message": "logged out"})
        else:                                        # "action" (parse() admits only OPS)
            self._action(conn, req, reply)


def start_ipc(cfg: dict, path: str | Path | None = None, **kw) -> IpcServer:
    """Bind the socket and start the server thread; `server.hook` goes into the loop's hooks."""
    return IpcServer(cfg, path or default_socket_path(), **kw).start()
