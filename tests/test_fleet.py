"""The fleet load generator (tools/fleet) against the real cloud: Mosquitto, the ingest, PostgreSQL.

A trace recorded from the real controller (`python -m tools.fleet record`: `edge-ems sim` with the uplink
spooling; a committed 2 h one in the default run, a fresh one with --run-slow), twelve gateways replay it at spread phases, each with its own key, ledger, boot id and seq,
at 3600x across a month boundary. Then: every record is in the database exactly once, seqs 1..N per gateway
without a hole; every gateway's own ledger verifies with its own key and is, line for line, what the cloud
stored; the cloud's report of each site equals that gateway's own ledger report, and splits by month;
every message got its receipt (confirm=cloud), so the end-to-end lag is measured for all of them; a line
altered in the database afterwards is named by the report's re-verification.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from controller.carbon.keys import load_public_key
from controller.carbon.ledger import parse_line, verify
from controller.carbon.report import build_report
from drivers.isotime import utc_epoch
from tools.fleet.fleet import init_fleet, load_manifest, register, run_fleet
from tools.fleet.stack import CloudStack
from tools.fleet.trace import load, record

N = 12


# A trace recorded by `python -m tools.fleet record --scenario gansu-edge --hours 2 --seed 1` (16 kB), so the
# default run needs no simulation; test_record_is_the_spool records a fresh one (slow: a simulated run).
TRACE = Path(__file__).resolve().parents[1] / "tools" / "fleet" / "traces" / "gansu-edge-2h.jsonl.gz"


@pytest.fixture(scope="module")
def trace_dir() -> Path:
    return TRACE


def _check_trace(tr, hours: float) -> None:
    c = tr.counts()
    assert c["telemetry"] >= 60 * hours - 1 and c["interval(ledger)"] == 4 * hours and c["interval"] >= 4 * hours - 1, c
    assert tr.length_s == 3600 * hours and tr.genesis["gateway_id"] == tr.gateway
    assert all(0 <= r[0] <= 3600.0 * hours + 1 for r in tr.records)
    assert not any(r[1] == "event" and r[2].get("event") == "uplink_boot" for r in tr.records)


def test_committed_trace_loads(trace_dir):
    _check_trace(load(trace_dir), 2)


@pytest.mark.slow
def test_record_is_the_spool(tmp_path):
    record("nordic-wind", 1.0, tmp_path, seed=3)
    _check_trace(load(tmp_path), 1)


def test_fleet_end_to_end(trace_dir, tmp_path):
    fleet = tmp_path / "fleet"
    rows = init_fleet(fleet, [str(trace_dir)], N)
    assert len({r["fingerprint"] for r in rows}) == N and len({r["phase_s"] for r in rows}) == 8
    start = utc_epoch("2026-06-30T22:00:00Z")
    with CloudStack(tmp_path / "stack", workers=2) as cs:
        assert register(cs.conn, fleet) == N
        st = run_fleet(fleet, "127.0.0.1", cs.mqtt_port, speed=3600.0, wall_s=None, virtual_s=3 * 3600.0,
                       start_s=start, drain_s=30.0)
        assert st["connected_at_start"] == N and st["unconfirmed"] == 0, st
        assert st["confirmed"] == st["records"] and st["lag_s"]["n"] == st["messages"] + 0, st
        # exactly once: the receipts came after the commits, so the rows are there
        got = cs.conn.execute("SELECT gateway_id, seq FROM uplink_records").fetchall()
        assert len(got) == len(set(got)) == st["records"]
        assert cs.count("rejected") == 0
        seqs = defaultdict(list)
        for gw, seq in got:
            seqs[gw].append(seq)
        assert len(seqs) == N and all(sorted(v) == list(range(1, len(v) + 1)) for v in seqs.values())
        stored = defaultdict(set)
        for gw, line in cs.conn.execute("SELECT gateway_id, line FROM intervals"):
            stored[gw].add(line)
        from cloud.report import build, verify_site
        rep = build(cs.conn)
        for r in load_manifest(fleet):
            gdir = fleet / "gw" / r["gateway"]
            res = verify(gdir / "ledger", load_public_key(gdir / "ledger.pub"), keep=True)
            assert res.ok and res.intervals == 12, res.message
            lines = {ln for ln in (gdir / "ledger").read_text().splitlines()
                     if parse_line(ln.encode())[0]["kind"] == "interval"}
            assert stored[r["gateway"]] == lines
            own = build_report(res.payloads)
            for part in ("total", "months", "years", "jobs"):
                assert rep["sites"][r["site"]][part] == own[part], (r["site"], part)
            assert verify_site(cs.conn, r["site"])["ok"]
        # one stored line altered in the database: the end-to-end re-verification names it
        site = rows[5]["site"]
        assert cs.conn.execute("UPDATE intervals SET line = replace(line, '\"covered_s\":900.0', "
                               "'\"covered_s\":899.0') WHERE site = %s AND ledger_n = 3", (site,)).rowcount == 1
        v = verify_site(cs.conn, site)
        (g,) = v["gateways"].values()
        assert not v["ok"] and g["first_problem"].startswith("record n=3: signature does not verify"), v
        assert g["verified"] == g["lines"] - 1 and g["gaps"] == [[2, 4]]
        assert sorted(rep["fleet"]["months"]) == ["2026-06", "2026-07"]
        assert rep["fleet"]["total"]["intervals"] == 12 * N
        assert rep["fleet"]["total"]["energy_kwh"]["loads"] == pytest.approx(
            sum(s["total"]["energy_kwh"]["loads"] for s in rep["sites"].values()), abs=0.01)
