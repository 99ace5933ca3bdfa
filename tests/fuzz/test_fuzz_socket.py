"""Fuzz: request lines on the technician's socket, through the public protocol of a real IpcServer on a
Unix socket (controller/ipc: another helper owns that code; this file only drives it and reports).

The server runs as the hostile-socket tests run it (tests/test_hostile_socket.py, with the reference
site profile): a real OperatorInputs,
the loop replaced by the two attributes the actions read. Two connections: one without a PIN session
and one logged in, so the actions' argument checks are reached too. The rate limits
(controller/ipc/ratelimit.py) are raised for this module: what is fuzzed here is what a request line
does once admitted, at thousands of lines a second; the limiter has its own tests.

Contract (docs/fuzzing.md): every non-blank request line of at most MAX_LINE bytes (a longer one closes
the connection, as documented) gets exactly one reply line, a JSON object with
a "type", in order, and the connection stays open (a sentinel request after the fuzzed bytes is
answered); no reply is the server's catch-all "internal error serving ..." and its request_errors
count stays 0 (an exception a handler let through); the server thread stays alive; the operator
inputs the scan cycle acquires never raise and hold finite numbers.
"""
from __future__ import annotations

import json
import math
import socket
import time
from types import SimpleNamespace

import pytest
from hypothesis import example, given, strategies as st

import fuzz_harness as H
from controller.core import layout as L

PIN = "4321"
OPS = ("subscribe", "snapshot", "history", "audit", "login", "logout", "action")
SYNC_ACTIONS = ("ack", "mode", "battery_kw", "genset")
ASYNC_ACTIONS = ("read", "scan", "export")       # answered later from a worker: refused without a PIN only


class Conn:
    """A raw line client (IpcClient json-decodes and drops what it does not wait for: we count)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10.0)
        self.sock.connect(str(path))
        self.buf = b""
        self.n = 0
        assert json.loads(self.line())["type"] == "hello"

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def exchange(self, data: bytes) -> list[dict]:
        """Send `data` and a sentinel; the replies that came before the sentinel's."""
        self.n += 1
        sentinel = f"sentinel-{self.n}"
        self.sock.sendall(data + b"\n" + json.dumps({"op": "subscribe", "hz": 0, "id": sentinel}).encode() + b"\n")
        replies = []
        while True:
            msg = json.loads(self.line())
            assert isinstance(msg, dict) and "type" in msg, msg
            if msg.get("id") == sentinel and msg.get("op") == "subscribe":
                return replies
            if msg.get("type") not in ("snapshot", "session"):      # pushed, not replies
                replies.append(msg)

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from controller.ipc import hash_pin, start_ipc
    from controller.ipc import ratelimit as RL
    from controller.operator import OperatorInputs
    from controller.config import load_site
    tmp = tmp_path_factory.mktemp("fuzz-ipc")
    site = load_site("inner-mongolia-mine")
    site["tui"] = {"pin_hash": hash_pin(PIN, kind="pbkdf2_sha256"), "lockout_after": 20, "lockout_s": 1.0,
                   "session_s": 86400.0}
    from controller.ipc import common
    with pytest.MonkeyPatch.context() as mp:
        for name in ("UNAUTH_CONN_RATE", "UNAUTH_CONN_BURST", "UNAUTH_SHARED_RATE", "UNAUTH_SHARED_BURST",
                     "SESSION_RATE", "SESSION_BURST", "AUDIT_UNAUTH_RATE", "AUDIT_UNAUTH_BURST"):
            for module in (RL, common):          # common.py binds the per-connection ones at import
                if hasattr(module, name):
                    mp.setattr(module, name, 1e9)
        ipc = start_ipc(site, tmp / "ipc.sock", audit_path=tmp / "audit.jsonl")
        op = OperatorInputs()
        ipc.loop = SimpleNamespace(operator=op, devices={})
        srv = SimpleNamespace(ipc=ipc, op=op, path=tmp / "ipc.sock", conns={})
        try:
            yield srv
        finally:
            for c in srv.conns.values():
                c.close()
            ipc.close()


def connection(srv, authed: bool) -> Conn:
    """The module's connection of that kind, (re)opened and logged in when needed."""
    c = srv.conns.get(authed)
    if c is None:
        c = srv.conns[authed] = Conn(srv.path)
        if authed:
            r = c.exchange(json.dumps({"op": "login", "pin": PIN, "id": "login"}).encode())
            assert r and r[0]["ok"], r
    return c


ids = st.one_of(st.none(), st.integers(), H.nasty_ints, st.text(max_size=80), H.json_values)


@st.composite
def requests(draw, authed: bool):
    """A request object: a known op with its fields fuzzed, an action with fuzzed arguments, or junk."""
    op = draw(st.one_of(st.sampled_from(OPS), H.json_values))
    req = {"op": op}
    if draw(st.booleans()):
        req["id"] = draw(ids)
    actions = SYNC_ACTIONS if authed else SYNC_ACTIONS + ASYNC_ACTIONS
    if op == "action":
        req["action"] = draw(st.one_of(st.sampled_from(actions), H.json_values))
        for key in draw(st.lists(st.sampled_from(["bits", "alarm", "mode", "kw", "run", "hours", "device",
                                                  "bus", "units", "pin", "x"]), max_size=3)):
            req[key] = draw(st.one_of(H.numbers, H.json_values, st.sampled_from(list(L.ALARM_NAMES)),
                                      st.sampled_from(["auto", "manual", "standby", "1-40000000", "5", "0-3"])))
        if authed and req.get("action") in ASYNC_ACTIONS:
            req["action"] = "ack"
    else:
        for key in draw(st.lists(st.sampled_from(["hz", "since", "n", "pin", "x"]), max_size=3)):
            if authed and key == "pin":
                continue
            req[key] = draw(st.one_of(H.numbers, H.json_values))
    if authed and op in ("login", "logout"):
        req["op"] = "history"                       # keep the one session (a PIN check costs ~50 ms)
    return req


@st.composite
def lines(draw, authed: bool):
    """Bytes of one or a few request lines: JSON objects (loose: NaN, huge ints), mutated, deep, junk."""
    how = draw(st.sampled_from(("json", "json", "json", "mutate", "deep", "junk", "several")))
    if how == "deep":
        return H.deep(draw(st.integers(3, 20000)), draw(st.sampled_from("[{")))
    if how == "junk":
        return draw(st.binary(max_size=200)).replace(b"login", b"lgn").replace(b"logout", b"lgt")
    if how == "several":
        return b"\n".join(H.dumps_loose(draw(requests(authed))) for _ in range(draw(st.integers(2, 5))))
    data = H.dumps_loose(draw(requests(authed)))
    if how == "mutate":
        data = draw(H.mutated(data, 4))
        if authed:
            data = data.replace(b"login", b"lgn").replace(b"logout", b"lgt")
    return data


def check_exchange(srv, authed: bool, data: bytes) -> None:
    from controller.ipc.common import MAX_LINE
    if any(len(line) > MAX_LINE for line in data.split(b"\n")):   # documented: such a line closes the connection
        conn = connection(srv, authed)
        try:
            conn.exchange(data)
        except (ConnectionError, OSError):
            srv.conns.pop(authed).close()
            return
        raise AssertionError(f"a line over {MAX_LINE} bytes was answered, not dropped")
    expected = sum(1 for line in data.split(b"\n") if line.strip())
    errors_before = srv.ipc.stats.get("request_errors", 0)
    try:
        replies = connection(srv, authed).exchange(data)
    except (ConnectionError, OSError) as exc:
        srv.conns.pop(authed).close()                # the next example gets a fresh connection
        raise AssertionError(f"the server dropped the connection on {data[:300]!r}: {exc}; "
                             f"server stats {srv.ipc.stats}") from None
    assert len(replies) == expected, (data[:200], replies[-3:])
    for r in replies:
        assert "internal error" not in str(r.get("error", "")), (data[:200], r)
    assert srv.ipc.stats.get("request_errors", 0) == errors_before, (data[:200], srv.ipc.stats)
    assert srv.ipc.stats.get("rate_limited", 0) == 0, "the limits were not raised for the fuzz: lines went unread"
    assert srv.ipc._thread.is_alive()
    got = {}
    srv.op.acquire(0.0, lambda dev, point, value, t, q: got.__setitem__(point, value))
    assert all(isinstance(v, float) and math.isfinite(v) for v in got.values()), got


@H.budget(ci=150, long=10000)
@given(lines(authed=False))
@example(b'{"op": "subscribe", "hz": 1e999}')
@example(b'{"op": "audit", "n": 100000000000000000000000000000000000000000000000000}')
@example(b'{"op": "action", "action": "scan", "units": "1-40000000"}')
def test_socket_lines_without_a_session(server, data):
    H.hit("socket.lines_anon")
    check_exchange(server, False, data)


@H.budget(ci=150, long=10000)
@given(lines(authed=True))
@example(b'{"op": "action", "action": "ack", "bits": ' + str(2 ** 2000).encode() + b'}')
@example(b'{"op": "action", "action": "battery_kw", "kw": NaN}')
@example(b'{"op": "action", "action": "genset", "run": "no"}')
@example(b'{"op": "action", "action": "mode", "mode": ["manual"]}')
def test_socket_lines_in_a_session(server, data):
    H.hit("socket.lines_session")
    check_exchange(server, True, data)


def test_new_connections_after_the_fuzz_are_served(server):
    from controller.ipc import IpcClient
    c = IpcClient(server.path)
    try:
        assert c.request({"op": "history"})["type"] in ("history", "result")
    finally:
        c.close()
