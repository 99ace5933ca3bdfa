"""`edge-ems selftest`: READY on a sound gateway, NOT READY naming the port, interface, device or dir that
is wrong.

The ports are real: one end of a socat pty pair stands in for the RS-485 adapter, with a pymodbus RTU
server in another process on the other end as the grid meter; a path that does not exist for an
unplugged adapter; and this machine has no can0.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

from controller.selftest import SelfTest
from field_peers import ModbusPeer, socat_pair

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "profiles" / "sites" / "inner-mongolia-mine.toml"


def field_site(tmp_path: Path, port: str, bms_on_can: bool = False) -> Path:
    """The reference site with its grid meter on the RS-485 bus at `port` (and the BMS on can0)."""
    text = SITE.read_text().replace('port = "/dev/ttyS1"', f'port = "{port}"')
    grid = re.search(r'name = "grid_meter"\n(?:[^\[]*?\n)?bus = "sim"\nunit = 1\nsimulated = true', text)
    assert grid, "the reference site's grid_meter block changed: update this test"
    text = text.replace(grid.group(0), grid.group(0).replace('bus = "sim"', 'bus = "rs485_1"')
                        .replace("simulated = true", "simulated = false"))
    if bms_on_can:     # a 16-cell pack: the 240-cell reference pack does not fit the 0x356 frame (check says so)
        text = text.replace("cells_series = 240", "cells_series = 16")
        bms = re.search(r'name = "bms"\n[^\[]*?bus = "sim"\n[^\[]*?simulated = true', text)
        assert bms, "the reference site's bms block changed: update this test"
        text = text.replace(bms.group(0), bms.group(0).replace('bus = "sim"', 'bus = "can0"')
                            .replace("simulated = true", "simulated = false"))
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "keys").mkdir(parents=True)
    os.chmod(d / "keys", 0o700)
    return d


def run(site: Path | str, data: Path) -> tuple[int, str, SelfTest]:
    st = SelfTest(str(site), str(data))
    buf = io.StringIO()
    for check in (st.check_profile, st.check_buses, st.check_devices, st.check_clock, st.check_data_dir,
                  st.check_keys, st.check_kernels, st.check_step):
        check()
    rc = st.report(buf)
    return rc, buf.getvalue(), st


def test_ready_with_a_present_serial_port(tmp_path):
    with socat_pair(tmp_path) as (dev_end, port), \
            ModbusPeer({1: {"profile": "eastron_sdm630", "values": {"power_kw": 42.0}}}, rtu=dev_end):
        rc, out, st = run(field_site(tmp_path, port), data_dir(tmp_path))
    assert rc == 0, out
    assert out.rstrip().splitlines()[-1].startswith("READY: all checks passed")
    bus = next(c for c in st.checks if c.what == "bus rs485_1")
    assert bus.status == "OK" and port in bus.detail and "grid_meter" in bus.detail
    meter = next(c for c in st.checks if c.what == "device grid_meter")
    assert meter.status == "OK" and "power_kw=42" in meter.detail, meter.detail
    kernels = next(c for c in st.checks if c.what == "kernels")
    assert kernels.status == "OK"
    step = next(c for c in st.checks if c.what == "step")
    assert step.status == "OK", step.detail


def test_not_ready_names_the_missing_port_the_can_interface_and_the_data_dir(tmp_path):
    port = "/dev/ttyEDGEEMS-NOT-PLUGGED"
    rc, out, st = run(field_site(tmp_path, port, bms_on_can=True), tmp_path / "no-such-data-dir")
    assert rc == 1
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("NOT READY:") and "FAILED" in last
    fails = {c.what: c.detail for c in st.checks if c.status == "FAIL"}
    assert port in fails["bus rs485_1"] and "grid_meter" in fails["bus rs485_1"]
    assert "can0" in fails["bus can0"] and "bms" in fails["bus can0"]
    assert port in fails["device grid_meter"] and "cannot open" in fails["device grid_meter"]
    assert "can0" in fails["device bms"]
    assert "does not exist" in fails["data dir"]
    assert "keys" in fails


def test_a_device_that_does_not_answer_fails_with_the_reason(tmp_path):
    with socat_pair(tmp_path) as (dev_end, port), \
            ModbusPeer({2: {"profile": "eastron_sdm630"}}, rtu=dev_end):      # the meter is not unit 1
        rc, out, st = run(field_site(tmp_path, port), data_dir(tmp_path))
    assert rc == 1
    meter = next(c for c in st.checks if c.what == "device grid_meter")
    assert meter.status == "FAIL" and "unit 1" in meter.detail and port in meter.detail, meter.detail


def test_bad_profile_is_one_fail_per_problem(tmp_path):
    bad = tmp_path / "site.toml"
    bad.write_text(SITE.read_text().replace("period_s = 1.0", "period_s = -1.0"))
    rc, out, st = run(bad, data_dir(tmp_path))
    assert rc == 1
    assert st.checks[0].status == "FAIL" and st.checks[0].what == "profile"
    assert "period_s" in out
