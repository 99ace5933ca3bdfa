"""`edge-ems-cloud report` equals the gateways' own `edge-ems ledger report` (issue 18).

Real peers end to end: the three reference sites run as `edge-ems sim --mqtt ...?confirm=cloud` (the real
controller, its real uplink worker and ledger), a real Mosquitto, the real ingest (2 workers of a shared
subscription) into a real PostgreSQL; then the cloud's report from the database is compared with each
site's own `ledger report` of the ledger file the gateway wrote: totals, months, years and per-job rows
equal figure for figure, the fleet's sums equal the sites' sums. The stored lines re-verify end to end,
and one line altered in the database is found by `report --verify`.
Default run: 1 simulated hour per site (4 intervals); `--run-slow`: the 48 h of the issue.
"""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from controller.carbon.keys import generate_key, write_public_key
from tools.fleet.stack import CloudStack

ROOT = Path(__file__).resolve().parents[1]
SITES = ("inner-mongolia-mine", "gansu-edge", "nordic-wind")
SUMMED = ("pv", "grid", "diesel", "battery_discharge", "battery_charge", "it", "cooling", "aux", "export",
          "curtailment", "e_dc", "loads", "renewable")


def _edge_ems(*args) -> list[str]:
    return [sys.executable, "-c", "from controller.cli import main; raise SystemExit(main())", *args]


def _cloud_report(dsn: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloud.cli", "--db", dsn, "report", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _three_sites(tmp_path: Path, hours: float):
    from cloud import registry
    cs = CloudStack(tmp_path / "stack", workers=2).__enter__()
    try:
        procs = {}
        for site in SITES:
            out = tmp_path / site
            key = generate_key(out / "gateway.key")         # the simulated gateway's key, registered first
            write_public_key(key, out / "registered.pub")
            registry.add(cs.conn, site, str(out / "registered.pub"))
            procs[site] = subprocess.Popen(
                _edge_ems("sim", "--scenario", site, "--hours", str(hours), "--seed", "1", "--strategy", "rule",
                          "--out", str(out), "--mqtt", f"{cs.broker.url}?confirm=cloud"),
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(out / "sim.err", "wb"))
        for site, p in procs.items():
            assert p.wait(timeout=900) == 0, (tmp_path / site / "sim.err").read_text()[-2000:]
            # `sim --mqtt` exits once its spool is empty: with confirm=cloud every record has the cloud's
            # receipt, sent by the ingest after its commit
            err = (tmp_path / site / "sim.err").read_text()
            assert '"drained": true' in err, err[-2000:]
        return cs
    except BaseException:
        cs.__exit__(None, None, None)
        raise


def _own_report(out: Path) -> dict:
    """What `edge-ems ledger report LEDGER --pubkey PUB --format json` prints (its own code, in-process: a
    Python start per site is a second of CPU the default run does not need)."""
    from controller.carbon.keys import load_public_key
    from controller.carbon.ledger import verify
    from controller.carbon.report import build_report
    res = verify(out / "ledger", load_public_key(out / "ledger.pub"), keep=True)
    assert res.ok, res.message
    return build_report(res.payloads)


def _check(tmp_path: Path, hours: float) -> None:
    cs = _three_sites(tmp_path, hours)
    try:
        r = _cloud_report(cs.dsn, "--format", "json", "--verify", "--out", str(tmp_path / "report"))
        assert r.returncode == 0, r.stderr + r.stdout[-2000:]
        rep = json.loads(r.stdout)
        assert sorted(rep["sites"]) == sorted(SITES)
        for site in SITES:
            own, cloud = _own_report(tmp_path / site), rep["sites"][site]
            assert own["total"]["intervals"] == int(hours * 4), own["total"]
            for part in ("total", "months", "years", "jobs"):
                assert cloud[part] == own[part], f"{site} {part}: cloud {cloud[part]} != ledger {own[part]}"
            v = rep["verification"][site]
            assert v["ok"], v
            (g,) = v["gateways"].values()
            assert g["verified"] == g["lines"] == own["total"]["intervals"]
            assert g["links"] == g["lines"] - 1 and g["gaps"] == [] and g["quarantined"] == 0
        fleet = rep["fleet"]["total"]
        for k in SUMMED:
            assert fleet["energy_kwh"][k] == pytest.approx(sum(rep["sites"][s]["total"]["energy_kwh"][k] for s in SITES),
                                                           abs=0.002), k
        for k in ("co2_kg", "co2_kg_market", "scope1_kg", "scope2_location_kg", "scope2_market_kg", "diesel_litres"):
            assert fleet[k] == pytest.approx(sum(rep["sites"][s]["total"][k] for s in SITES), abs=0.002), k
        assert fleet["intervals"] == sum(rep["sites"][s]["total"]["intervals"] for s in SITES)
        cfes = [rep["sites"][s]["total"]["kpi"]["cfe_pct"] for s in SITES]
        assert min(cfes) - 0.01 <= fleet["kpi"]["cfe_pct"] <= max(cfes) + 0.01
        # the files: a CSV row per scope and period, a well-formed SVG naming every site
        csv_text = (tmp_path / "report" / "report.csv").read_text()
        assert csv_text.splitlines()[0].startswith("scope,period,")
        assert all(f"\n{s},total," in csv_text for s in SITES) and "\n(fleet),total," in csv_text
        svg = ET.fromstring((tmp_path / "report" / "report.svg").read_text())
        texts = "".join(svg.itertext())
        assert all(s in texts for s in SITES)
        # one stored line altered in the database: the end-to-end re-verification names it
        n = cs.conn.execute("UPDATE intervals SET line = replace(line, '\"covered_s\":900.0', '\"covered_s\":899.0') "
                            "WHERE site = 'gansu-edge' AND ledger_n = 2").rowcount
        assert n == 1
        from cloud.report import verify_site
        v = verify_site(cs.conn, "gansu-edge")
        (g,) = v["gateways"].values()
        assert not v["ok"] and g["first_problem"].startswith("record n=2: signature does not verify"), v
        assert g["verified"] == g["lines"] - 1
    finally:
        cs.__exit__(None, None, None)


def test_cloud_report_equals_ledger_reports(tmp_path):
    _check(tmp_path, hours=1)


@pytest.mark.slow
def test_cloud_report_equals_ledger_reports_48h(tmp_path):
    _check(tmp_path, hours=48)
