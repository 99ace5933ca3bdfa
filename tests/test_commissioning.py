"""`edge-ems read` / `scan` on real peers in another process: one clear line and exit 1 (not answering)
or 2 (bad input), never a traceback; `scan` lists only units that answer with data."""
from __future__ import annotations

import json

import pytest

from controller.cli import main
from field_peers import ModbusPeer, socat_pair
from tools.netport import free_port

UNITS = {1: {"profile": "eastron_sdm630", "values": {"power_kw": 7.5}},
         4: {"profile": "deepsea_gencomm", "values": {"fuel_pct": 80.0}}}


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_read_and_scan_over_rtu(tmp_path, capsys):
    with socat_pair(tmp_path) as (dev_end, host_end), ModbusPeer(UNITS, rtu=dev_end):
        rc, out, err = run(capsys, "read", "--port", host_end, "--profile", "eastron_sdm630", "--unit", "1")
        assert rc == 0 and json.loads(out)["power_kw"] == pytest.approx(7.5), err
        rc, out, err = run(capsys, "scan", "--port", host_end, "--units", "1-6", "--timeout", "0.05")
        assert rc == 0 and json.loads(out) == [1, 4], err
        rc, out, err = run(capsys, "read", "--port", host_end, "--profile", "eastron_sdm630", "--unit", "3",
                           "--timeout", "0.05")
        assert rc == 1 and "unit 3" in one_line(err) and "did not answer" in err
        rc, out, err = run(capsys, "read", "--port", host_end, "--profile", "eastron_sdm9999", "--unit", "1")
        assert rc == 2 and "eastron_sdm9999" in one_line(err)
        rc, out, err = run(capsys, "read", "--port", host_end, "--profile", "eastron_sdm630", "--unit", "300")
        assert rc == 2 and "1..247" in one_line(err)
        rc, out, err = run(capsys, "scan", "--port", host_end, "--units", "2-3", "--timeout", "0.05")
        assert rc == 1 and json.loads(out) == [] and "no unit" in one_line(err)


def test_scan_over_a_tcp_gateway_lists_only_units_with_data(capsys):
    port = free_port()
    with ModbusPeer(UNITS, tcp=port, gateway=True):       # absent units get exception 0x0B, as from a gateway
        rc, out, err = run(capsys, "scan", "--port", f"tcp://127.0.0.1:{port}", "--units", "1-8")
        assert rc == 0 and json.loads(out) == [1, 4], err
        rc, out, err = run(capsys, "read", "--port", f"tcp://127.0.0.1:{port}", "--profile", "deepsea_gencomm",
                           "--unit", "4")
        assert rc == 0 and json.loads(out)["fuel_pct"] == pytest.approx(80.0)
        rc, out, err = run(capsys, "read", "--port", f"tcp://127.0.0.1:{port}", "--profile", "deepsea_gencomm",
                           "--unit", "5")
        assert rc == 1 and "unit 5" in one_line(err)


@pytest.mark.parametrize("port,rc,expect", [
    ("/dev/ttyEDGEEMS-NOT-PLUGGED", 1, "cannot open the port"),
    ("nosuch://x", 2, "nosuch://x"),
    ("tcp://127.0.0.1:notaport", 2, "integer"),
])
def test_ports_that_cannot_work_are_one_line(capsys, port, rc, expect):
    got, _out, err = run(capsys, "scan", "--port", port, "--units", "1-2")
    assert got == rc and expect in one_line(err)
    got, _out, err = run(capsys, "read", "--port", port, "--profile", "eastron_sdm630", "--unit", "1")
    assert got == rc and expect in one_line(err)


def test_tcp_nobody_listening_is_not_answering(capsys):
    port = free_port()
    got, _out, err = run(capsys, "scan", "--port", f"tcp://127.0.0.1:{port}", "--units", "1-2")
    assert got == 1 and "cannot connect" in one_line(err)
