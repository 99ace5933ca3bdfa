"""`edge-ems run` on a field profile against the lab (separate processes on ptys, TCP and MQTT), as on a
gateway: boot with the BMS silent holds the PCS and the genset; once the BMS speaks, setpoints reach the
emulated PCS's registers; a second start appends to the same ledger and recording directory, and both
verify; the controller process loaded no simulator module."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.core import layout as L
from controller.replay import iter_records
from controller.segments import recording_files
from test_lab import LabProc

ROOT = Path(__file__).resolve().parents[1]


def edge_ems(*args, timeout=240):
    proc = subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    return proc


def run_field(lab, data, cycles):
    proc = edge_ems("run", "--site", str(lab.dir / "site.toml"), "--data-dir", str(data), "--cycles", str(cycles),
                    "--socket", "none", "--mqtt", lab.info["mqtt"]["url"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def records(data):
    out = []
    for f in recording_files(data / "recording"):
        out.extend(iter_records(f))
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lp = LabProc(tmp_path_factory.mktemp("fieldlab") / "d")
    yield lp
    lp.close()


def test_field_run_against_the_lab(lab, tmp_path):
    data = tmp_path / "data"
    # 1. boot with the BMS silent: PCS at 0 kW, no genset start, a startup_hold event
    assert lab.ctl("fault", "bms", "silent")["ok"]
    stats = run_field(lab, data, 6)
    assert stats["simulator_modules_loaded"] == []
    held = records(data)
    assert len(held) == 6
    assert all(r.commands[L.C_BATTERY_KW] == 0.0 and r.commands[L.C_GENSET_RUN] == 0.0 for r in held)
    assert L.EV_STARTUP_HOLD in [int(c) for c, _ in held[0].events]
    # 2. the BMS speaks; a restart resumes on the same data directory
    assert lab.ctl("clear")["ok"]
    applied0 = sum(1 for _ in open(lab.dir / "applied.jsonl")) if (lab.dir / "applied.jsonl").exists() else 0
    stats = run_field(lab, data, 12)
    assert stats["overruns"] == 0, stats
    assert stats["inputs"]["compute/power"]["accepted"] >= 1
    rec = records(data)[6:]
    assert rec and all(int(r.image["quality"][0]) == 0 for r in rec[1:])      # grid meter read every cycle
    assert L.EV_STARTUP_HOLD not in [int(c) for r in rec for c, _ in r.events[:1]]
    applied = [json.loads(x) for x in open(lab.dir / "applied.jsonl")][applied0:]
    assert any(a["device"] == "pcs" and a["what"] == "setpoint_kw" for a in applied)    # in the PCS's registers
    # 3. one recording directory over two boots, and one ledger, both verify
    v = edge_ems("replay", str(data / "recording"), "--verify")
    assert v.returncode == 0, v.stdout + v.stderr
    assert "2 boot(s)" in v.stdout
    led = edge_ems("ledger", "verify", str(data / "ledger" / "carbon.ledger"))
    assert led.returncode == 0, led.stdout + led.stderr
