"""Field buses against real peers in other processes: Modbus TCP (a pymodbus TCP server), Modbus RTU (a
pymodbus RTU server on one end of a socat pty pair), CAN (python-can's virtual bus), and the field factory
that builds them from a site profile.

The scan clock is simulated (1 s per cycle) so backoff windows play out in seconds of real time; the bytes,
timeouts, exception replies and dropped connections are real.
"""
from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import can
import pytest

from controller.config import SITES_DIR, load_site
from controller.schema import ProfileError
from drivers.base import QUALITY_ERROR, QUALITY_OK, QUALITY_STALE
from drivers.factory import build_field_devices
from drivers.modbus import ModbusBus, ModbusDevice, load_profile
from drivers.modbus.backoff import Backoff
from drivers.modbus.errors import DEVICE_ANSWERED, LINE_FAULTS, ExceptionReply, NoAnswer, NotConnected
from drivers.modbus.tcp import ModbusTcpBus
from field_peers import ModbusPeer, socat_pair
from tools.netport import free_port

METER, GENSET, BMS = 1, 4, 6
TIMEOUT_S = 0.1


def acquire(dev, now):
    got = {}
    dev.acquire(now, lambda d, p, v, t, q: got.__setitem__(p, (v, q)))
    return got


# --- Modbus TCP -----------------------------------------------------------------------------------------
@pytest.fixture
def tcp_peer():
    port = free_port()
    units = {METER: {"profile": "eastron_sdm630", "values": {"power_kw": 12.5}},
             BMS: {"profile": "byd_battery_box_c130", "values": {"voltage_v": 787.6, "soc_pct": 64}}}
    with ModbusPeer(units, tcp=port) as peer:
        yield peer, port, units


def test_tcp_units_share_one_connection_and_read_like_rtu(tcp_peer):
    peer, port, _ = tcp_peer
    bus = ModbusTcpBus("127.0.0.1", port)
    try:
        meter = ModbusDevice("grid_meter", load_profile("eastron_sdm630"), bus, METER, timeout_s=TIMEOUT_S)
        bms = ModbusDevice("bms", load_profile("byd_battery_box_c130"), bus, BMS, timeout_s=TIMEOUT_S)
        for now in (0.0, 1.0):
            m, b = acquire(meter, now), acquire(bms, now)
        assert m["power_kw"] == (pytest.approx(12.5), QUALITY_OK)
        assert b["voltage_v"] == (pytest.approx(787.6), QUALITY_OK)     # a 240-cell pack's voltage, carried
        assert b["soc_pct"] == (64.0, QUALITY_OK)
        assert bus.stats.opens == 1 and bus.stats.failures == 0         # one connection for both units
        assert peer.requests(METER) > 0 and peer.requests(BMS) > 0
    finally:
        bus.close()


def test_tcp_exception_reply_is_an_answer_and_a_gateway_0x0b_is_not(tcp_peer):
    peer, port, _ = tcp_peer
    bus = ModbusTcpBus("127.0.0.1", port)
    try:
        with pytest.raises(DEVICE_ANSWERED) as exc:
            bus.read(METER, 4, 0x7000, 2, timeout_s=TIMEOUT_S, retries=0)   # not in the SDM630 map
        assert isinstance(exc.value, ExceptionReply) and exc.value.code == 2
        with pytest.raises(LINE_FAULTS) as exc:                          # nobody at unit 9: a timeout
            bus.read(9, 4, 0, 2, timeout_s=TIMEOUT_S, retries=0)
        assert isinstance(exc.value, NoAnswer)
        assert bus.read(METER, 4, 0x34, 2, timeout_s=TIMEOUT_S, retries=0)   # the late-reply guard reconnected
    finally:
        bus.close()
    port2 = free_port()
    with ModbusPeer({METER: {"profile": "eastron_sdm630"}}, tcp=port2, gateway=True):
        gw = ModbusTcpBus("127.0.0.1", port2)
        try:
            with pytest.raises(NoAnswer, match="exception 11"):
                gw.read(9, 4, 0, 2, timeout_s=TIMEOUT_S, retries=0)
        finally:
            gw.close()


def test_tcp_server_gone_then_back_reconnects_with_backoff(tmp_path):
    port = free_port()
    units = {METER: {"profile": "eastron_sdm630", "values": {"power_kw": 3.0}}}
    bus = ModbusTcpBus("127.0.0.1", port, connect_timeout_s=0.5, reopen=Backoff(base_s=0.2, cap_s=0.4, threshold=1))
    meter = ModbusDevice("grid_meter", load_profile("eastron_sdm630"), bus, METER, timeout_s=TIMEOUT_S,
                         fast_max_age_s=2.0, backoff=Backoff(base_s=1.0, cap_s=2.0))
    try:
        assert not bus.connect() and "cannot connect" in bus.open_error     # nobody listening yet
        assert acquire(meter, 0.0)["power_kw"][1] == QUALITY_ERROR        # the attempt failed
        with pytest.raises(NotConnected):                                   # backed off: fails fast
            bus.read(METER, 4, 0, 2, timeout_s=TIMEOUT_S)
        with ModbusPeer(units, tcp=port) as peer:
            deadline, now, got = time.monotonic() + 10.0, 1.0, {}
            while time.monotonic() < deadline:
                got = acquire(meter, now)
                if got["power_kw"][1] == QUALITY_OK:
                    break
                now += 1.0
                time.sleep(0.05)                # let the connection backoff (wall clock) elapse
            assert got["power_kw"] == (pytest.approx(3.0), QUALITY_OK)
            opens = bus.stats.opens
            peer.set_values(METER, {"power_kw": 4.0})
        # the server process is gone: the device goes ERROR then STALE, nothing raises
        qualities = [acquire(meter, now + i)["power_kw"][1] for i in range(1, 5)]
        assert qualities[0] == QUALITY_ERROR and qualities[-1] in (QUALITY_STALE, QUALITY_ERROR)
        with ModbusPeer({METER: {"profile": "eastron_sdm630", "values": {"power_kw": -2.0}}}, tcp=port):
            deadline, now = time.monotonic() + 10.0, now + 5
            while time.monotonic() < deadline:
                got = acquire(meter, now)
                if got["power_kw"][1] == QUALITY_OK:
                    break
                now += 1.0
                time.sleep(0.05)
            assert got["power_kw"] == (pytest.approx(-2.0), QUALITY_OK)
            assert bus.stats.opens > opens
    finally:
        bus.close()


# --- writes backed off like reads (RTU, a silent GenComm unit) ----------------------------------------------
def test_silent_genset_costs_one_timeout_per_backoff_window_not_per_cycle(tmp_path):
    units = {METER: {"profile": "eastron_sdm630", "values": {"power_kw": 10.0}},
             GENSET: {"profile": "deepsea_gencomm", "values": {"control_mode": 1}}}
    with socat_pair(tmp_path) as (dev_end, host_end), ModbusPeer(units, rtu=dev_end) as peer:
        bus = ModbusBus(host_end, late_reply_guard_s=0.02)
        try:
            meter = ModbusDevice("grid_meter", load_profile("eastron_sdm630"), bus, METER, timeout_s=TIMEOUT_S)
            genset = ModbusDevice("genset", load_profile("deepsea_gencomm"), bus, GENSET, timeout_s=TIMEOUT_S,
                                  backoff=Backoff(base_s=2.0, cap_s=8.0))
            assert genset.supported_commands == {"run"}          # GenComm has no kW setpoint: known at build
            now = 0.0
            for _ in range(2):
                acquire(meter, now), acquire(genset, now)
                genset.actuate({"run": 0.0, "setpoint_kw": 40.0}, now)
                now += 1.0
            assert peer.writes(GENSET)                          # the stop key went out while it answered
            peer.silent(GENSET)
            walls, cycles = [], 30
            for i in range(cycles):
                t0 = time.monotonic()
                assert acquire(meter, now)["power_kw"][1] == QUALITY_OK
                acquire(genset, now)
                genset.actuate({"run": 1.0 if i >= 10 else 0.0, "setpoint_kw": 40.0}, now)
                walls.append(time.monotonic() - t0)
                now += 1.0
            # backoff 2, 4, 8, 8 s after the second failure: about 7 probes in 30 cycles, each one read
            # without retries (one timeout); without write backoff every cycle paid a write's timeouts
            slow = sum(w > TIMEOUT_S * 0.8 for w in walls)
            assert slow <= 9, walls
            assert sum(walls) < 9 * (TIMEOUT_S + 0.1) + cycles * 0.05, walls
            assert max(walls) < 2 * TIMEOUT_S + 0.3, walls      # never a retry chain in one cycle
            assert genset.writes_deferred >= cycles - 10
            before = len(peer.writes(GENSET))
            peer.silent(GENSET, False)                          # back: the pending start goes out after a probe
            for _ in range(10):
                acquire(meter, now), acquire(genset, now)
                genset.actuate({"run": 1.0, "setpoint_kw": 40.0}, now)
                now += 1.0
                if len(peer.writes(GENSET)) > before:
                    break
            sent = peer.writes(GENSET)[before:]
            assert [w[1][0] for w in sent] == [35702, 35705]    # manual, then start: the latest value
        finally:
            bus.close()


# --- the factory -----------------------------------------------------------------------------------------
def site_file(tmp_path: Path, buses: str, devices: str) -> Path:
    ref = (SITES_DIR / "inner-mongolia-mine.toml").read_text().splitlines(keepends=True)
    head = "".join(ref[:21])
    tail = "".join(ref[ref.index("[battery]\n"):])
    path = tmp_path / "site.toml"
    path.write_text(head + buses + devices + tail)
    return path


NETWORK_DEVICES = '''
[[devices]]
name = "compute"
role = "compute"
bus = "net"

[[devices]]
name = "grid"
role = "grid"
bus = "net"

[[devices]]
name = "weather"
role = "weather"
bus = "net"
'''


def test_factory_builds_every_field_bus_and_survives_a_missing_adapter(tmp_path):
    channel = f"edge-ems-test-{uuid.uuid4().hex[:8]}"
    tcp_port = free_port()
    buses = f'''
[buses.rs485_1]
kind = "modbus_rtu"
port = "{{host_end}}"

[buses.rs485_2]
kind = "modbus_rtu"
port = "/dev/ttyEDGEEMS-NOT-PLUGGED"

[buses.eth]
kind = "modbus_tcp"
host = "127.0.0.1"
port = {tcp_port}

[buses.can0]
kind = "can"
interface = "virtual"
channel = "{channel}"

[buses.net]
kind = "network"
'''
    devices = '''
[[devices]]
name = "grid_meter"
role = "grid_meter"
profile = "eastron_sdm630"
bus = "rs485_1"
unit = 1

[[devices]]
name = "genset"
role = "genset"
profile = "deepsea_gencomm"
bus = "rs485_1"
unit = 4

[[devices]]
name = "pv_meter"
role = "pv_meter"
profile = "eastron_sdm120"
bus = "rs485_2"
unit = 2

[[devices]]
name = "pcs"
role = "pcs"
profile = "sunspec_storage_pcs"
bus = "eth"
unit = 3

[[devices]]
name = "bms"
role = "bms"
profile = "pylon_sma_bms"
bus = "can0"
simulated = true

[[devices]]
name = "bms_hv"
role = "bms"
profile = "byd_battery_box_c130"
bus = "eth"
unit = 6
''' + NETWORK_DEVICES
    rtu_units = {1: {"profile": "eastron_sdm630", "values": {"power_kw": 20.0}},
                 4: {"profile": "deepsea_gencomm", "values": {}}}
    tcp_units = {3: {"profile": "sunspec_storage_pcs", "values": {"power_kw": 5.0, "wchamax_kw": 250.0}},
                 6: {"profile": "byd_battery_box_c130", "values": {"voltage_v": 781.2}}}
    with socat_pair(tmp_path) as (dev_end, host_end), ModbusPeer(rtu_units, rtu=dev_end), \
            ModbusPeer(tcp_units, tcp=tcp_port):
        path = site_file(tmp_path, buses.replace("{host_end}", host_end), devices)
        cfg = load_site(path)
        t0 = time.monotonic()
        field = build_field_devices(cfg)
        assert time.monotonic() - t0 < 5.0
        try:
            assert set(field.devices) == {"grid_meter", "genset", "pv_meter", "pcs", "bms_hv"}   # not bms (sim)
            assert field.supported["genset"] == {"run"} and field.supported["pcs"] == {"setpoint_kw"}
            assert field.supported["bms_hv"] == set()
            assert len(field.problems) == 1 and "rs485_2" in field.problems[0] \
                and "NOT-PLUGGED" in field.problems[0] and "pv_meter" in field.problems[0], field.problems
            readings = {name: acquire(dev, 0.0) for name, dev in field.devices.items()}
            readings = {name: acquire(dev, 1.0) for name, dev in field.devices.items()}
            assert readings["grid_meter"]["power_kw"] == (pytest.approx(20.0), QUALITY_OK)
            assert readings["bms_hv"]["voltage_v"] == (pytest.approx(781.2), QUALITY_OK)
            assert readings["pcs"]["power_kw"][1] == QUALITY_OK
            assert readings["pv_meter"]["power_kw"][1] in (QUALITY_ERROR, QUALITY_STALE)   # there, not fresh
            assert field.devices["grid_meter"].bus is field.devices["genset"].bus     # one port, shared
            assert field.devices["pcs"].bus is field.devices["bms_hv"].bus             # one TCP connection
        finally:
            field.close()


def test_can_bms_on_a_virtual_bus_and_a_missing_interface(tmp_path):
    channel = f"edge-ems-test-{uuid.uuid4().hex[:8]}"
    buses = f'''
[buses.can0]
kind = "can"
interface = "virtual"
channel = "{channel}"

[buses.can1]
kind = "can"
interface = "socketcan"
channel = "edgeems-nocan9"

[buses.net]
kind = "network"

[buses.sim]
kind = "sim"
'''
    devices = '''
[[devices]]
name = "bms"
role = "bms"
profile = "pylon_sma_bms"
bus = "can0"
simulated = true

[[devices]]
name = "pcs"
role = "pcs"
profile = "sunspec_storage_pcs"
bus = "sim"
unit = 3
simulated = true
'''
    # a small pack so the low-voltage frame fits: the check rejects it for the 240-cell reference pack
    path = site_file(tmp_path, buses, devices.replace('bus = "can0"\nsimulated = true', 'bus = "can0"', 1)
                     + '''
[[devices]]
name = "bms2"
role = "bms"
profile = "pylon_sma_bms"
bus = "can1"
''' + NETWORK_DEVICES)
    text = path.read_text().replace("cells_series = 240", "cells_series = 16")
    path.write_text(text)
    cfg = load_site(path)
    field = build_field_devices(cfg)
    node = can.Bus(interface="virtual", channel=channel)
    try:
        assert set(field.devices) == {"bms", "bms2"}
        assert any("can1" in p and "bms2" in p for p in field.problems), field.problems
        db = field.devices["bms"].db
        m = db.get_message_by_name("BMS_Measurements")
        node.send(can.Message(arbitration_id=m.frame_id, is_extended_id=False,
                              data=m.encode({"BatteryVoltage": 0.0, "BatteryCurrent": 0.0,
                                             "BatteryTemperature": 20.0})))
        time.sleep(0)      # the virtual bus delivers synchronously to the other end's queue
        got = acquire(field.devices["bms"], 0.0)
        v, q = got["voltage_v"]
        assert math.isnan(v) and q == QUALITY_ERROR          # 0 V from a live BMS: the wire did not carry it
        assert got["temp_c"] == (20.0, QUALITY_OK)
        assert all(q != QUALITY_OK for _v, q in acquire(field.devices["bms2"], 0.0).values())
    finally:
        node.shutdown()
        field.close()


def test_factory_raises_only_for_a_profile_that_cannot_be(tmp_path):
    path = site_file(tmp_path, '\n[buses.rs485_1]\nkind = "modbus_rtu"\nport = "/dev/ttyEDGEEMS-X"\n'
                     '\n[buses.net]\nkind = "network"\n',
                     '\n[[devices]]\nname = "pcs"\nrole = "pcs"\nprofile = "sunspec_storage_pcs"\nbus = "rs485_1"\n'
                     'unit = 3\n\n[[devices]]\nname = "bms"\nrole = "bms"\nprofile = "byd_battery_box_c130"\n'
                     'bus = "rs485_1"\nunit = 6\n' + NETWORK_DEVICES)
    cfg = load_site(path)
    cfg["devices"][1]["profile"] = "eastron_sdm630"          # what check would have refused
    with pytest.raises(ValueError, match="devices\\[1\\].profile.*eastron_sdm630 is a meter profile"):
        build_field_devices(cfg)
    cfg["devices"][1]["profile"] = "no_such_bms"
    with pytest.raises(ValueError, match="no such profile file"):
        build_field_devices(cfg)


# --- check: the cross checks, one problem per line naming the key --------------------------------------------
@pytest.mark.parametrize("buses,devices,key,expect", [
    ('[buses.eth]\nkind = "modbus_tcp"\nhost = "10.0.0.5"\nport = "502"\n', "", "buses.eth.port",
     "expected an integer TCP port"),
    ('[buses.eth]\nkind = "modbus_tcp"\nhost = ""\n', "", "buses.eth.host", "empty"),
    ('[buses.eth]\nkind = "modbus_tcp"\nhost = "pcs"\nport = 70000\n', "", "buses.eth.port", "1..65535"),
    ('[buses.rs485_9]\nkind = "modbus_rtu"\nport = 1\n', "", "buses.rs485_9.port", "as a string"),
    ('[buses.rs485_9]\nkind = "modbus_rtu"\nport = ""\n', "", "buses.rs485_9.port", "empty"),
    ('[buses.can9]\nkind = "can"\ninterface = "slcan"\n', "", "buses.can9.channel", "empty"),
    ('[buses.rs485_9]\nkind = "modbus_rtu"\nport = "/dev/ttyUSB0"\n',
     '[[devices]]\nname = "m1"\nrole = "grid_meter"\nprofile = "eastron_sdm630"\nbus = "rs485_9"\nunit = 1\n\n'
     '[[devices]]\nname = "m2"\nrole = "pv_meter"\nprofile = "eastron_sdm120"\nbus = "rs485_9"\nunit = 1\n',
     "devices[1].unit", "already device 'm1'"),
    ('[buses.rs485_9]\nkind = "modbus_rtu"\nport = "/dev/ttyUSB0"\n',
     '[[devices]]\nname = "m1"\nrole = "grid_meter"\nprofile = "eastron_sdm9999"\nbus = "rs485_9"\nunit = 1\n',
     "devices[0].profile", "no such profile file"),
    ('[buses.rs485_9]\nkind = "modbus_rtu"\nport = "/dev/ttyUSB0"\n',
     '[[devices]]\nname = "m1"\nrole = "grid_meter"\nprofile = "deepsea_gencomm"\nbus = "rs485_9"\nunit = 1\n',
     "devices[0].profile", "needs a meter profile"),
    ('[buses.rs485_9]\nkind = "modbus_rtu"\nport = "/dev/ttyUSB0"\n',
     '[[devices]]\nname = "w"\nrole = "weather"\nbus = "rs485_9"\n', "devices[0].bus", "network"),
])
def test_check_rejects_what_would_fail_on_site(tmp_path, buses, devices, key, expect):
    path = site_file(tmp_path, "\n" + buses + '\n[buses.sim]\nkind = "sim"\n', "\n" + devices + '''
[[devices]]
name = "pcs"
role = "pcs"
profile = "sunspec_storage_pcs"
bus = "sim"
unit = 3
simulated = true

[[devices]]
name = "bms"
role = "bms"
profile = "pylon_sma_bms"
bus = "sim"
simulated = true
''')
    with pytest.raises(ProfileError) as exc:
        load_site(path)
    lines = [str(p) for p in exc.value.problems]
    assert any(f": {key}: " in line and expect in line for line in lines), lines
    assert len(lines) == 1, lines


def test_tcp_port_defaults_to_502_and_rtu_port_stays_a_string(tmp_path):
    path = site_file(tmp_path, '\n[buses.eth]\nkind = "modbus_tcp"\nhost = "10.0.0.5"\n'
                     '\n[buses.rs485_1]\nkind = "modbus_rtu"\nport = "socket://10.0.0.6:4001"\n'
                     '\n[buses.sim]\nkind = "sim"\n',
                     '\n[[devices]]\nname = "pcs"\nrole = "pcs"\nprofile = "sunspec_storage_pcs"\nbus = "sim"\n'
                     'unit = 3\nsimulated = true\n\n[[devices]]\nname = "bms"\nrole = "bms"\n'
                     'profile = "pylon_sma_bms"\nbus = "sim"\nsimulated = true\n\n[[devices]]\nname = "market"\n'
                     'role = "market"\nbus = "net"\n\n[buses.net]\nkind = "network"\n')
    cfg = load_site(path)
    assert cfg["buses"]["eth"]["port"] == 502 and cfg["buses"]["rs485_1"]["port"] == "socket://10.0.0.6:4001"
