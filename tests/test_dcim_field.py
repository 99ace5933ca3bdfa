"""`edge-ems run` on a field profile against the lab with [dcim] enabled: the wiring of controller/runtime/
field.py, end to end. A pymodbus client in another process reads the running controller; what it read at
heartbeat (scan cycle) c is what the recording holds for cycle c; a reserve written within the limits
reaches the operator inputs and is in the spool's cmd/result, one beyond them is refused (0x03) and
audited. Real time (1 s cycles) with the lab's processes: slow."""
from __future__ import annotations

import json
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.core import layout as L
from controller.points import INDEX, Q_OK
from controller.replay import iter_records
from controller.segments import recording_files
from test_dcim_server import client, free_port, read_all, write
from test_lab import LabProc

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def f32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lp = LabProc(tmp_path_factory.mktemp("dcimlab") / "d")
    yield lp
    lp.close()


def test_edge_ems_run_serves_the_dcim_and_applies_audited_writes(lab, tmp_path):
    port = free_port()
    site = tmp_path / "site.toml"
    site.write_text((lab.dir / "site.toml").read_text()
                    + f'\n[dcim]\nenabled = true\nbind = "127.0.0.1"\nport = {port}\nwrites = true\n')
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--site", str(site), "--data-dir", str(data),
                             "--cycles", "45", "--socket", "none"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:                                 # the server listens before the first cycle
            if "DCIM Modbus TCP on" in line:
                assert f"127.0.0.1:{port} unit 1 (read-write)" in line
                break
        else:
            pytest.fail(proc.stderr.read()[-3000:])
        deadline = time.monotonic() + 60
        out = None
        while time.monotonic() < deadline:                      # once the BMS and meters are in
            rc, out, _ = client(port)
            if rc == 0 and out["values"]["heartbeat"] >= 8 and out["values"]["soc"] is not None:
                break
        assert out is not None and out["values"]["soc"] is not None, out
        seen = out
        w = write(port, "reserve_request", 42)
        assert w["ok"], w
        bad = write(port, "reserve_request", 99)
        assert not bad["ok"] and bad["exception_code"] == 3
        while time.monotonic() < deadline:
            if read_all(port)["values"]["reserve_request"] == 42:
                break
        else:
            pytest.fail("the reserve write never reached the operator inputs")
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    stats = json.loads(stdout.strip().splitlines()[-1])
    assert stats["dcim"]["requests"] > 0 and stats["dcim"]["writes"]["accepted"] == 1
    assert stats["dcim"]["writes"]["limits"] == 1 and stats["dcim"]["deaths"] == 0
    print("dcim stats:", json.dumps(stats["dcim"]))
    # what was read at heartbeat c is the recording's cycle c
    recs = {int(r.image["cycle"]): r for f in recording_files(data / "recording") for r in iter_records(f)}
    v = seen["values"]
    rec = recs[v["heartbeat"]]
    val, q = rec.image["value"], rec.image["quality"]
    for reg, point, scale in (("pv_kw", "pv_kw", None), ("battery_kw", "battery_kw", None), ("grid_kw", "grid_kw", None),
                              ("soc", "soc_pct", 10), ("battery_voltage", "battery_v", 10), ("compute_kw", "it_kw", None)):
        i = INDEX[point]
        if q[i] != Q_OK:
            assert v[reg] is None, reg
        elif scale is None:
            assert v[reg] == f32(float(val[i])), reg
        else:
            assert v[reg] == round(float(val[i]) * scale) / scale, reg
    assert v["battery_setpoint_kw"] == f32(float(rec.commands[L.C_BATTERY_KW]))
    assert v["mode"] == rec.commands[L.C_MODE] and v["timestamp_s"] == int(rec.image["t_s"])
    assert any(r.image["value"][INDEX["op_reserve_pct"]] == 42.0 for r in recs.values())
    # the audit: both verdicts in the spool as cmd/result, the accepted one applied
    db = sqlite3.connect(data / "spool" / "uplink-spool.sqlite")
    rows = [json.loads(p) for k, p in db.execute("SELECT kind, payload FROM records") if k in ("cmd/result", "event")]
    results = [r["body"] for r in rows if r["kind"] == "cmd/result" and r["body"].get("source") == "dcim"]
    assert [(r["verdict"], r["value"]) for r in results] == [("accepted", 42.0), ("refused", 99.0)]
    assert "out of limits" in results[1]["reason"]
    applied = [r["body"] for r in rows if r["kind"] == "event" and r["body"].get("event") == "command_applied"]
    assert any(b["id"] == results[0]["id"] for b in applied)
