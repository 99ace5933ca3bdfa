"""Issue 15: no uplink thread dies silently. The spool's writer killed on purpose (an exception that escapes
every handler in it) is an alarm and is restarted, and every record put before, during and after is
committed exactly once with strictly increasing seq; the MQTT side (in-process thread, worker process and
its supervisor thread) likewise."""
import json
import os
import signal
import socket
import threading
import time

import pytest

from controller.config import load_site
from controller.uplink import hook as H
from controller.uplink.client import BrokerConfig, MqttUplink
from controller.uplink.hook import Uplink
from controller.uplink.spool import Spool
from controller.uplink.topics import ALARM, EVENT, INTERVAL, RECORD_KINDS, TELEMETRY, Topics

SITE, GW = "inner-mongolia-mine", "imm-gw-01"
T0 = 1.75e9


class Killed(BaseException):
    """Not an Exception: no ``except Exception`` in the writer catches it, so the thread dies."""


def wait_until(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def all_rows(spool: Spool) -> list[tuple[int, dict]]:
    out = []
    for kind in RECORD_KINDS:
        out += [(seq, json.loads(p)) for seq, p in spool.pending(kind, 0, 100_000)]
    return sorted(out, key=lambda r: r[0])


def alarm_bodies(spool: Spool) -> list[dict]:
    return [json.loads(p)["body"] for _, p in spool.pending(ALARM, 0, 1000)]


class TrapAppend:
    """Stands in for the spool's commit_s deque: its first append (right after a COMMIT, before the
    writer's bookkeeping) raises Killed - the writer dies holding a batch that is already committed."""

    def __init__(self, real):
        self.real, self.armed = real, True

    def append(self, x):
        if self.armed:
            self.armed = False
            raise Killed("injected after COMMIT")
        self.real.append(x)

    def __iter__(self):
        return iter(self.real)

    def __len__(self):
        return len(self.real)


@pytest.mark.parametrize("where", ["before_commit", "after_commit"])
def test_a_killed_writer_is_an_alarm_and_restarted_and_every_record_is_committed_once(tmp_path, where):
    s = Spool(tmp_path, SITE, GW)
    up = Uplink(s, None, None, Topics(SITE, GW))
    try:
        for i in range(50):
            s.put(EVENT, T0 + i, {"i": i})
        assert s.flush(5)
        up.supervise(T0 + 50)
        assert not up.active_alarms
        dead = s._writer
        if where == "before_commit":
            real = s._commit

            def commit(*args):                            # the writer's next transaction, before its COMMIT
                s._commit = real                          # (once)
                raise Killed("injected before COMMIT")
            s._commit = commit
        else:
            s.commit_s = TrapAppend(s.commit_s)
        for i in range(50, 100):                          # the batch the writer dies with, and what queues behind it
            s.put(EVENT if i % 3 else INTERVAL, T0 + i, {"i": i})
        dead.join(5)
        assert not dead.is_alive() and not s.writer_alive, "the injected exception did not kill the writer"
        assert "Killed" in s.writer_crash
        for i in range(100, 120):                         # put while no writer runs
            s.put(EVENT, T0 + i, {"i": i})
        up.supervise(T0 + 120)                            # the hook's per-cycle check
        assert s.writer_restarts == 1 and s.writer_alive
        raised = up.active_alarms.get("uplink_writer_fault")
        assert raised and raised["value"]["restarts"] == 1 and "injected" in raised["value"]["last"], raised
        for i in range(120, 150):
            s.put(EVENT, T0 + i, {"i": i})
        assert s.flush(5), "the restarted writer does not commit"
        up.fault_hold_s = 0.0                             # (default FAULT_HOLD_S: a minute)
        up.supervise(T0 + 150)                            # no new fault since: cleared
        assert "uplink_writer_fault" not in up.active_alarms
        assert s.flush(5)
        rows = all_rows(s)
        seqs = [seq for seq, _ in rows]
        assert seqs == list(range(1, len(rows) + 1)), "seq strictly increasing, no gap, no duplicate"
        assert all(rec["seq"] == seq for seq, rec in rows)
        data = [rec["body"]["i"] for _, rec in rows if rec["kind"] != ALARM]
        assert data == list(range(150)), "every record exactly once, in the order put"
        states = [(b["alarm"], b["state"]) for b in alarm_bodies(s)]
        assert states == [("uplink_writer_fault", "raised"), ("uplink_writer_fault", "cleared")], states
        top = s.last_seq
    finally:
        s.close(5)
    s2 = Spool(tmp_path, SITE, GW)                        # and the seq line goes on after a restart
    try:
        assert s2.last_seq == top
        s2.put(EVENT, T0, {"i": "after"})
        assert s2.flush(5)
        assert s2.pending(EVENT, top, 10)[0][0] == top + 1
    finally:
        s2.close(5)


def test_writer_errors_are_part_of_the_alarm_state(tmp_path):
    """An unexpected error the writer survives (writer_errors grows) raises uplink_writer_fault too."""
    s = Spool(tmp_path, SITE, GW)
    up = Uplink(s, None, None, Topics(SITE, GW))
    real, calls = s._check_disk, []

    def failing_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        real()
    s._check_disk = failing_once
    try:
        s.put(EVENT, T0, {"i": 0})
        assert s.flush(5)
        assert s.writer_errors >= 1 and s.writer_alive
        up.supervise(T0)
        a = up.active_alarms.get("uplink_writer_fault")
        assert a and a["value"]["errors"] >= 1 and a["value"]["restarts"] == 0, a
        up.supervise(T0 + 1)                              # held FAULT_HOLD_S after the last fault
        assert "uplink_writer_fault" in up.active_alarms and up.fault_hold_s == H.FAULT_HOLD_S >= 30
        up.fault_hold_s = 0.0
        s.put(EVENT, T0, {"i": 1})
        assert s.flush(5)
        up.supervise(T0 + 2)                              # same count, hold over: cleared
        assert "uplink_writer_fault" not in up.active_alarms
    finally:
        s.close(5)


def _closed_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def test_the_in_process_mqtt_thread_never_dies_silently(tmp_path):
    """A library fault in the connection thread is caught, counted and retried; an exception that kills
    the thread anyway is found by the per-cycle check, alarmed and the thread started again."""
    s = Spool(tmp_path, SITE, GW)
    topics = Topics(SITE, GW)
    m = MqttUplink(s, topics, BrokerConfig("127.0.0.1", _closed_port()), backoff_base_s=0.01, backoff_cap_s=0.05)
    real, calls = m._new_client, []

    def new_client():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected library fault")  # caught by the thread's guard
        if len(calls) == 2:
            raise Killed("injected")                      # ends the thread
        return real()
    m._new_client = new_client
    up = Uplink(s, m, None, topics)
    m.start()
    try:
        first = m._thread
        first.join(5)
        assert not first.is_alive() and m.crashes == 1 and "Killed" in m.last_crash
        up.supervise(T0)
        assert m.restarts == 1 and m._thread is not first and m._thread.is_alive()
        a = up.active_alarms.get("uplink_worker_fault")
        assert a and a["value"]["restarts"] == 1 and a["value"]["crashes"] == 1, a
        wait_until(lambda: len(calls) >= 3 and m.stats.connect_failures >= 1, 5, "the new thread connecting")
    finally:
        m.stop()
        s.close(5)


def test_a_killed_worker_process_and_a_dead_supervisor_thread_are_alarms_and_restarted(tmp_path):
    from controller.uplink import make_uplink_hook
    cfg = load_site(SITE)
    hook, up = make_uplink_hook(cfg, f"mqtt://127.0.0.1:{_closed_port()}", tmp_path / "data", clock_status="test")
    proc = up.mqtt
    try:
        wait_until(lambda: proc.pid is not None and proc.worker_stats.get("pid") == proc.pid, 20, "the worker's stats")
        first = proc.pid
        up.supervise(T0)
        assert not up.active_alarms
        real, armed = proc._run_worker, threading.Event()

        def run_worker():                                 # the supervisor's next start dies with it
            proc._run_worker = real
            armed.set()
            raise Killed("injected in the supervisor")
        proc._run_worker = run_worker
        sup = proc._thread
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: proc.restarts == 1, 10, "the worker's end seen")
        assert armed.wait(10)
        sup.join(5)
        assert not sup.is_alive(), "the injected exception did not end the supervisor thread"
        up.supervise(T0 + 1)
        a = up.active_alarms.get("uplink_worker_fault")
        assert a and a["value"]["restarts"] == 1 and a["value"]["crashes"] == 1 and "Killed" in a["value"]["last"], a
        assert proc._thread is not sup and proc._thread.is_alive()
        wait_until(lambda: proc.pid != first and proc.worker_stats.get("pid") == proc.pid, 20, "a new worker")
    finally:
        up.close()
    raised = [b for b in alarm_bodies(up.spool) if b["alarm"] == "uplink_worker_fault"]
    assert raised and raised[0]["state"] == "raised"


def test_a_lock_held_past_the_timeout_refuses_nothing(tmp_path):
    """SQLITE_BUSY is not a full disk: a batch the writer could not commit because another connection held
    the lock waits and is committed, telemetry included (it was counted as refused and dropped)."""
    import sqlite3 as _sq
    s = Spool(tmp_path / "spool", "site", "gw", min_free_bytes=0)
    try:
        s._db.execute("PRAGMA busy_timeout = 50")               # the writer's own connection, short for the test
        other = _sq.connect(s.path, isolation_level=None, timeout=0.1)
        other.execute("BEGIN IMMEDIATE")                        # as the worker's apply_acks would
        for i in range(10):
            s.put(TELEMETRY, 1.0e9 + i, {"i": i})
        deadline = time.monotonic() + 10
        while s.busy_retries == 0 and time.monotonic() < deadline:
            s.wait_new(0.05)
        assert s.busy_retries > 0 and not s.alarm and s.refused == 0, s.stats()
        other.execute("COMMIT")
        other.close()
        assert s.flush(10)
        assert len(s.pending(TELEMETRY, 0, 100)) == 10 and s.refused == 0
    finally:
        s.close(5)
