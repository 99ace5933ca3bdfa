"""Floods on the technician socket (issue 15): connections without a PIN session are rate-limited, per
connection and over all of them together; what they send is kept only as counts by kind (the audit log,
the uplink's spool and the snapshots stay within their bounds); snapshots carry no client-chosen bytes;
a session keeps a generous limit and subscriptions are never limited.

The server is real (a Unix socket, its thread); the snapshots come from a real scan loop run once for
the module (a few simulated seconds), handed to each test's fresh server."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from controller.ipc import IpcClient, hash_pin, start_ipc
from controller.ipc import ratelimit as RL

PIN = "4321"
JUNK = "x" * 60_000


@pytest.fixture(scope="module")
def cycle_run(tmp_path_factory):
    """A loop and its last publication: a short simulated run with a client attached."""
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    scn = load_scenario("inner-mongolia-mine")
    path = tmp_path_factory.mktemp("run") / "ipc.sock"
    ipc = start_ipc(scn.site, path, publish_hz=50.0)
    c = IpcClient(path)
    try:
        res = run_sim(scn, hours=10 / 3600, hooks=[ipc.hook], ledger=False)
        assert ipc._pub is not None
        return res.loop, ipc._pub
    finally:
        c.close()
        ipc.close()


def publish(ipc) -> tuple:
    """A new publication of the module run's last cycle, as the hook makes one (the server forgets the
    one made before anybody attached: it sets it once a client is there)."""
    pub = ipc._pub or ipc.test_pub
    ipc._pub = (pub[0] + 1, *pub[1:])
    os.write(ipc._wake_w, b"d")
    return ipc._pub


@pytest.fixture
def server(tmp_path, cycle_run):
    from tools.sim.scenario import load_scenario
    site = load_scenario("inner-mongolia-mine").site
    site["tui"] = {"pin_hash": hash_pin(PIN, kind="pbkdf2_sha256"), "lockout_after": 3,
                   "lockout_s": 60.0, "session_s": 600.0}
    ipc = start_ipc(site, tmp_path / "ipc.sock", audit_path=tmp_path / "audit.jsonl")
    ipc.loop, ipc.test_pub = cycle_run             # publish() it once a client is attached (the first
    #                                                connection drops a publication older than itself)
    spooled: list[dict] = []                       # what the uplink's spool would be handed
    ipc.audit_listeners.append(spooled.append)
    try:
        yield ipc, spooled, tmp_path
    finally:
        ipc.close()


class Raw:
    """A client that pipelines lines without waiting, then collects what comes back."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buf = b""
        self.closed = False
        self.hello = self.lines(1)[0]

    def send(self, objs) -> None:
        try:
            self.sock.sendall(b"".join(json.dumps(o).encode() + b"\n" for o in objs))
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True                     # dropped mid-flood: its replies are still readable

    def lines(self, n: int, timeout_s: float = 10.0) -> list[dict]:
        """The next n messages, fewer if the server closes the connection (self.closed)."""
        out = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n:
            while b"\n" in self.buf and len(out) < n:
                line, self.buf = self.buf.split(b"\n", 1)
                out.append(json.loads(line))
            if len(out) >= n:
                break
            left = deadline - time.monotonic()
            assert left > 0, f"{len(out)} of {n} replies"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                break
            self.buf += data
        return out

    def close(self) -> None:
        self.sock.close()


def _results(msgs):
    return [m for m in msgs if m.get("type") == "result"]


def test_an_unauthenticated_flood_is_refused_and_kept_only_as_counts(server):
    """Refused actions with 60 KB of junk as fast as a client can: past the burst they are refused as
    rate limited, a connection that goes on is dropped, and the audit log, its file, the spool and the
    snapshot stay within their bounds (the old server kept a record per refusal: 300 records, 300 spool
    events)."""
    ipc, spooled, tmp = server
    snap0 = len(json.dumps(ipc._snapshot(ipc.test_pub)))
    t0 = time.monotonic()
    sent = limited = pin_required = dropped = 0
    for _round in range(3):                        # three connections, one after the other
        c = Raw(tmp / "ipc.sock")
        n = 100
        c.send([{"op": "action", "action": "mode", "mode": JUNK, "id": i} for i in range(n)])
        sent += n
        got = _results(c.lines(n))
        pin_required += sum(1 for m in got if m.get("error") == "PIN required")
        limited += sum(1 for m in got if str(m.get("error", "")).startswith("rate limited"))
        assert all(not m["ok"] for m in got)
        dropped += c.closed
        c.close()
    elapsed = time.monotonic() - t0
    # stored: at most the audit budget, whatever was sent
    bound = RL.AUDIT_UNAUTH_BURST + RL.AUDIT_UNAUTH_RATE * elapsed + 1
    assert len(ipc.audit) <= bound and len(spooled) <= bound, (len(ipc.audit), len(spooled))
    assert ipc.audit_refused["mode"] == pin_required           # ... and every refusal counted by kind
    assert (tmp / "audit.jsonl").stat().st_size < 300 * bound
    assert all(r["args"] == {} and "xxxx" not in r["message"] for r in ipc.audit)
    assert len(json.dumps(ipc._snapshot(ipc.test_pub))) < snap0 + 20 * 300
    # served: within the shared bucket (the per-connection ones are smaller still); the rest refused
    assert limited > 0, "nothing was rate limited"
    assert pin_required <= RL.UNAUTH_SHARED_BURST + RL.UNAUTH_SHARED_RATE * elapsed + 1
    assert ipc.stats["rate_limited"] >= limited and ipc.rate_limited_by.get("unparsed", 0) > 0
    assert dropped == 3 and ipc.stats["flood_dropped"] == 3     # each went on flooding: dropped


def test_past_the_budget_refusals_are_counted_and_the_next_record_says_how_many(server):
    ipc, _spooled, tmp = server
    now = time.monotonic()
    ipc._audit_bucket.tokens, ipc._audit_bucket.t = 0.0, now      # the budget spent
    for _ in range(7):
        assert ipc._audit_record(None, "mode", {}, False, "refused: no PIN session", budget=True) is None
    assert ipc.stats["audit_suppressed"] == 7 and ipc.audit_suppressed == {"mode": 7}
    ipc._audit_bucket.tokens = 1.0                                # refilled
    rec = ipc._audit_record(None, "mode", {}, False, "refused: no PIN session", budget=True)
    assert rec["suppressed"] == 7 and rec["refused"] == 8 and ipc.audit_suppressed == {}
    # a wrong PIN and a lockout are recorded whatever the budget (the lockout bounds them)
    ipc._audit_bucket.tokens = 0.0
    c = IpcClient(tmp / "ipc.sock")
    try:
        for _ in range(3):
            assert not c.request({"op": "login", "pin": "0000"})["ok"]
    finally:
        c.close()
    kinds = [(r["action"], r["message"][:9]) for r in list(ipc.audit)[-3:]]
    assert kinds == [("login", "wrong PIN"), ("login", "wrong PIN"), ("lockout", "3 wrong P")]


def test_many_connections_share_one_bucket(server):
    """40 connections, 10 requests each (each within its own burst): together they get the shared
    bucket's burst, not 40 times it."""
    ipc, _spooled, tmp = server
    conns = [Raw(tmp / "ipc.sock") for _ in range(40)]
    t0 = time.monotonic()
    try:
        for c in conns:
            c.send([{"op": "action", "action": "ack", "id": i} for i in range(10)])
        got = [m for c in conns for m in _results(c.lines(10))]
    finally:
        for c in conns:
            c.close()
    elapsed = time.monotonic() - t0
    served = sum(1 for m in got if m.get("error") == "PIN required")
    limited = sum(1 for m in got if str(m.get("error", "")).startswith("rate limited"))
    assert served + limited == 400
    assert served <= RL.UNAUTH_SHARED_BURST + RL.UNAUTH_SHARED_RATE * elapsed + 1, (served, elapsed)
    assert all(m["id"] is not None for m in got)       # a rate-limited short request keeps its id


def test_new_connections_are_bounded(server):
    ipc, _spooled, tmp = server
    socks, refused = [], 0
    t0 = time.monotonic()
    try:
        for _ in range(RL.MAX_CONNS + 20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(tmp / "ipc.sock"))
            socks.append(s)
        for s in socks:
            s.settimeout(10.0)
            first = b""
            while b"\n" not in first:
                chunk = s.recv(65536)
                if not chunk:
                    break
                first += chunk
            msg = json.loads(first.split(b"\n")[0])
            if msg["type"] == "error":
                assert msg["error"].startswith("rate limited: too many connections")
                refused += 1
            else:
                assert msg["type"] == "hello"
        elapsed = time.monotonic() - t0
        accepted = len(socks) - refused
        assert accepted <= min(RL.MAX_CONNS, RL.ACCEPT_BURST + RL.ACCEPT_RATE * elapsed + 1), (accepted, elapsed)
        assert ipc.stats["connections_refused"] == refused > 0
    finally:
        for s in socks:
            s.close()


def test_a_session_keeps_a_generous_limit_and_subscriptions_are_never_limited(server):
    ipc, _spooled, tmp = server
    sub = IpcClient(tmp / "ipc.sock")
    floods = [Raw(tmp / "ipc.sock") for _ in range(4)]
    c = IpcClient(tmp / "ipc.sock")
    try:
        assert sub.request({"op": "subscribe", "hz": 4})["ok"]
        assert c.request({"op": "login", "pin": PIN})["ok"]
        for f in floods:                           # 4 x 20 (each one's burst) empty the shared bucket of 60
            f.send([{"op": "action", "action": "ack", "id": i} for i in range(30)])
            f.lines(30)
        r = sub.request({"op": "logout"})                          # the subscriber's requests are limited too ...
        assert r["error"].startswith("rate limited: without a PIN session"), r
        publish(ipc)                                                # ... its snapshots are not
        deadline = time.monotonic() + 10
        while True:
            msg = sub.recv(max(0.01, deadline - time.monotonic()))
            assert msg is not None, "no snapshot for a rate-limited subscriber"
            if msg.get("type") == "snapshot":
                break
        # the session draws on its own bucket, not the spent shared one, far past the unauthenticated burst
        n = int(RL.SESSION_BURST) - 10
        for i in range(n):
            r = c.request({"op": "action", "action": "genset", "run": None})
            assert r["ok"], (i, r)
    finally:
        for x in (sub, *floods, c):
            x.close()


def test_snapshots_carry_no_client_chosen_bytes(server):
    """Accepted actions with extra arguments, refusals quoting 60 KB values, refusals without a session:
    the snapshot's audit holds only server-made fields (the old one carried the last 20 records whole:
    arguments and messages); the audit op still has the (bounded) records."""
    ipc, _spooled, tmp = server
    c = IpcClient(tmp / "ipc.sock")
    try:
        for _ in range(5):
            c.request({"op": "action", "action": "mode", "mode": JUNK})      # no session
        assert c.request({"op": "login", "pin": PIN})["ok"]
        for _ in range(10):
            assert c.request({"op": "action", "action": "genset", "run": None, "note": "J" * 200})["ok"]
            r = c.request({"op": "action", "action": "mode", "mode": "M" * 60_000})
            assert not r["ok"] and len(r["error"]) < 200                      # bounded, naming the field
        publish(ipc)
        snap = c.request({"op": "snapshot"})
    finally:
        c.close()
    text = json.dumps(snap)
    assert "JJJJ" not in text and "MMMM" not in text and "xxxx" not in text
    assert snap["audit"] and all(set(r) <= {"seq", "t_utc", "t_s", "cycle", "who", "action", "ok", "refused"}
                                 for r in snap["audit"]), snap["audit"]
    assert len(json.dumps(snap["audit"])) < 20 * 300
    full = {r["seq"]: r for r in ipc.audit}
    assert any(r["args"].get("note") == "J" * 200 for r in full.values())          # the op's records: whole
    assert any("mode must be one of" in r["message"] and len(r["message"]) < 200 for r in full.values())


def test_the_tui_shows_audit_messages_from_the_op_and_a_summary_without(server):
    """The uplink and events screens read the messages from the records the app fetched (audit op), and
    show the snapshot's server-made fields alone when it has none."""
    from rich.console import Console
    from controller.tui import screens as S
    ipc, _spooled, tmp = server
    c = IpcClient(tmp / "ipc.sock")
    try:
        publish(ipc)                                                # records made in a cycle have its time
        c.request({"op": "action", "action": "mode", "mode": "auto"})
        assert c.request({"op": "login", "pin": PIN})["ok"]
        assert c.request({"op": "action", "action": "genset", "run": None})["ok"]
        publish(ipc)                                                # a new publication carries the records
        snap = c.request({"op": "snapshot"})
        recs = c.request({"op": "audit", "n": 20})["audit"]
    finally:
        c.close()

    def shown(fn, ui):
        con = Console(width=80, record=True, file=open(os.devnull, "w"))
        con.print(fn(c.hello, snap, None, False, ui))
        return con.export_text()
    with_op = {"field": None, "audit": {r["seq"]: r for r in recs}}
    assert "genset back to automatic" in shown(S.uplink, with_op)
    assert "genset back to automatic" in shown(S.events, with_op)
    bare = shown(S.uplink, {"field": None, "audit": {}})
    assert "refused (#1 of its kind)" in bare and "genset back to automatic" not in bare


@pytest.mark.slow
def test_the_loop_keeps_its_period_while_a_separate_process_floods_the_socket(tmp_path):
    """tools/bench/ipc_flood.py for 5 s (its default is 60 s): the real loop at its 1 s period, a
    separate process subscribing and then flooding without a PIN as fast as it can."""
    from tools.bench.ipc_flood import run
    r = run(5.0, 5.0, tmp_path)
    assert r["flood"]["cycles"] >= 4 and r["flood"]["overruns"] == 0, r["flood"]
    assert r["flood"]["late_max_ms"] < 200.0, r["flood"]
    sv = r["server"]
    assert sv["request_errors"] == 0 and sv["ipc_errors"] == 0
    assert sv["rate_limited"] > 0 and sv["flood_dropped"] > 0
    assert sv["audit_records"] <= RL.AUDIT_UNAUTH_BURST + RL.AUDIT_UNAUTH_RATE * 20 + 1
    assert not r["flooder"]["subscriber_closed"] and r["snapshots_per_s"]["flood"] >= 0.8
