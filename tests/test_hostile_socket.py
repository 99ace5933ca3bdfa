"""Hostile technician-socket input (issue 15): a real IpcServer on a Unix socket and a real
OperatorInputs, the loop replaced by the two attributes the actions read (no scan cycle needed: what
matters is what reaches the operator inputs the cycle acquires, and what the audit keeps)."""
from __future__ import annotations

import json
import tracemalloc
from types import SimpleNamespace

import pytest

from controller.core import layout as L
from controller.ipc import IpcClient, hash_pin, start_ipc
from controller.ipc.actions import _units
from controller.operator import OperatorInputs

PIN = "4321"


@pytest.fixture
def server(tmp_path):
    from tools.sim.scenario import load_scenario
    site = load_scenario("inner-mongolia-mine").site
    site["tui"] = {"pin_hash": hash_pin(PIN, kind="pbkdf2_sha256"), "lockout_after": 3,
                   "lockout_s": 60.0, "session_s": 600.0}
    ipc = start_ipc(site, tmp_path / "ipc.sock", audit_path=tmp_path / "audit.jsonl")
    op = OperatorInputs()
    ipc.loop = SimpleNamespace(operator=op, devices={})
    c = IpcClient(tmp_path / "ipc.sock")
    try:
        yield ipc, op, c, tmp_path
    finally:
        c.close()
        ipc.close()


def _acquired(op: OperatorInputs) -> dict:
    """What the scan cycle would read from the operator inputs: acquire() must not raise."""
    got = {}
    op.acquire(0.0, lambda dev, point, value, t, q: got.__setitem__(point, value))
    return got


def _act(c: IpcClient, **kw) -> dict:
    return c.request({"op": "action", **kw})


def _logged_in(c: IpcClient) -> IpcClient:
    assert c.request({"op": "login", "pin": PIN})["ok"]
    return c


@pytest.mark.parametrize("bits", [2 ** 2000, -1, 1 << len(L.ALARM_NAMES), True, 1.5, "3"],
                         ids=["huge", "negative", "beyond", "bool", "float", "str"])
def test_ack_out_of_range_mask_is_refused_naming_bits_and_the_cycle_acquires(server, bits):
    _ipc, op, c, _ = server
    r = _act(_logged_in(c), action="ack", bits=bits)
    assert not r["ok"] and "bits" in r["error"], r
    assert _acquired(op)["ack_bits"] == 0.0


def test_ack_full_mask_is_accepted(server):
    _ipc, op, c, _ = server
    full = (1 << len(L.ALARM_NAMES)) - 1
    assert _act(_logged_in(c), action="ack", bits=full)["ok"]
    assert _acquired(op)["ack_bits"] == float(full)


def test_operator_acknowledge_refuses_an_overflowing_mask_directly():
    op = OperatorInputs()
    with pytest.raises(ValueError, match="bits"):
        op.acknowledge(2 ** 2000)
    assert _acquired(op)["ack_bits"] == 0.0


@pytest.mark.parametrize("run", ["no", "yes", 1, 0, "true", [], {}])
def test_genset_run_must_be_a_bool(server, run):
    _ipc, op, c, _ = server
    r = _act(_logged_in(c), action="genset", run=run)
    assert not r["ok"] and "run" in r["error"], r
    assert _acquired(op)["genset"] == -1.0        # no request reached the cycle


def test_genset_true_false_null_still_work(server):
    _ipc, op, c, _ = server
    _logged_in(c)
    assert _act(c, action="genset", run=True)["ok"] and _acquired(op)["genset"] == 1.0
    assert _act(c, action="genset", run=False)["ok"] and _acquired(op)["genset"] == 0.0
    assert _act(c, action="genset", run=None)["ok"] and _acquired(op)["genset"] == -1.0


@pytest.mark.parametrize("kw", [True, "5", 1e308 * 10, None])
def test_battery_kw_must_be_a_finite_number(server, kw):
    _ipc, op, c, _ = server
    r = _act(_logged_in(c), action="battery_kw", kw=kw)
    assert not r["ok"] and "kw" in r["error"], r
    assert _acquired(op)["battery_kw"] == 0.0


@pytest.mark.parametrize("hours", [True, "2", 1e9])
def test_export_hours_typed_and_bounded(server, hours):
    _ipc, _op, c, _ = server
    r = _act(_logged_in(c), action="export", hours=hours)
    assert not r["ok"] and "hours" in r["error"], r


def test_scan_range_is_bounded_before_it_is_expanded():
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="units"):
            _units("1-40000000")
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000, f"{peak} bytes allocated to refuse a range"
    for bad in ("0-5", "5-3", "x", "1-2-3", [1, True], [1.5], ["1"], list(range(1, 300)), True, 7.0):
        with pytest.raises(ValueError, match="units"):
            _units(bad)
    assert _units("1-32") == list(range(1, 33)) and _units(5) == [5] and _units("5") == [5]
    assert _units([3, 1, 3]) == [1, 3]


def test_scan_huge_range_over_the_socket_is_refused(server):
    _ipc, _op, c, _ = server
    r = _act(_logged_in(c), action="scan", units="1-40000000")
    assert not r["ok"] and "units" in r["error"]


def test_refused_actions_are_audited_by_kind_not_payload(server):
    ipc, _op, c, tmp = server
    junk = "x" * 60_000
    for _ in range(5):
        assert _act(c, action="mode", mode=junk)["error"] == "PIN required"
    _logged_in(c)
    assert not _act(c, action="mode", mode=junk)["ok"]              # refused by validation
    lines = (tmp / "audit.jsonl").read_text().splitlines()
    assert sum(len(x) for x in lines) < 10_000, "the audit log stored the client's payload"
    recs = [json.loads(x) for x in lines]
    refused = [r for r in recs if r["action"] == "mode"]
    assert len(refused) == 6 and all(not r["ok"] for r in refused)
    assert refused[-2]["refused"] == 5 and refused[0]["refused"] == 1       # counted, by kind
    snap_audit = c.request({"op": "audit"})
    assert len(json.dumps(snap_audit)) < 10_000


def test_refusal_with_a_huge_action_name_is_not_stored(server):
    _ipc, _op, c, tmp = server
    assert not _act(c, action="a" * 60_000)["ok"]
    assert len((tmp / "audit.jsonl").read_text()) < 2_000


def test_audit_file_rotates_at_its_size_bound(server):
    ipc, _op, c, tmp = server
    ipc.audit_max_bytes = 4_000
    for i in range(200):
        ipc._audit_record(None, "mode", {"mode": "auto"}, True, f"accepted {i}")
    path = tmp / "audit.jsonl"
    assert path.stat().st_size <= 4_000 + 1_000
    assert (tmp / "audit.jsonl.1").exists() and (tmp / "audit.jsonl.1").stat().st_size <= 4_000 + 1_000
    assert not (tmp / "audit.jsonl.2").exists()
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["message"] == "accepted 199"
