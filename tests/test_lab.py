"""The lab (tools/sim/lab.py) against real clients, each on the port a gateway would use: minimalmodbus on the
RS-485 ptys, pymodbus' TCP client on the Ethernet segment, python-can's slcan interface on the CAN pty,
paho on the lab's Mosquitto. The lab is one subprocess tree; nothing here shares memory with it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import can
import cantools
import minimalmodbus
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from controller.config import load_site
from drivers.can_bms import DEFAULT_DBC
from drivers.compute import parse_power
from drivers.modbus.profile import load_profile
from tools.sim.lab import request
from tools.sim.wire import RegisterEncoder
from uplink_broker import wait_for

ROOT = Path(__file__).resolve().parents[1]


class LabProc:
    def __init__(self, d: Path, *extra: str):
        self.dir = d
        self.proc = subprocess.Popen([sys.executable, "-m", "tools.sim.lab", "--site", "profiles/sites/lab.toml",
                                      "--dir", str(d), "--tcp-port", "0", "--mqtt-port", "0",
                                      "--compute-period", "1", *extra],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(d.parent / "lab.err", "wb"))
        wait_for(lambda: (d / "lab.json").exists() or self.proc.poll() is not None, 90, "lab.json")
        assert self.proc.poll() is None, (d.parent / "lab.err").read_text()[-2000:]
        self.info = json.loads((d / "lab.json").read_text())

    def state(self) -> dict:
        return json.loads((self.dir / "state.json").read_text())

    def ctl(self, *words: str) -> dict:
        return request(self.dir / "ctl.sock", list(words))

    def unit_cfg(self, proc: str, role: str) -> dict:
        cfg = json.loads((self.dir / "procs" / f"{proc}.json").read_text())
        return next(u for u in cfg["units"] if u["role"] == role)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lp = LabProc(tmp_path_factory.mktemp("lab") / "d")
    yield lp
    lp.close()


def _meter(lab, unit: int, timeout_s: float = 0.3) -> minimalmodbus.Instrument:
    inst = minimalmodbus.Instrument(lab.info["rtu"]["rs485_1"]["port"], unit)
    inst.serial.timeout = timeout_s
    inst.close_port_after_each_call = True
    return inst


def _read_kw(lab, unit: int) -> float:
    enc = RegisterEncoder(load_profile("eastron_sdm630"), {})
    p = enc.points["power_kw"]
    return enc.decode("power_kw", _meter(lab, unit).read_registers(p.register, 2, functioncode=p.function))


def _pcs(lab) -> tuple[ModbusTcpClient, RegisterEncoder, int]:
    u = lab.unit_cfg("eth0", "pcs")
    c = ModbusTcpClient("127.0.0.1", port=lab.info["tcp"]["eth0"]["port"], timeout=1.0, retries=0)
    assert c.connect()
    return c, RegisterEncoder(load_profile(u["profile"]), u["full_scale"]), u["unit"]


def test_lab_json_names_every_process_and_a_profile_the_controller_accepts(lab):
    info = lab.info
    assert set(info["procs"]) == {"rs485_1", "rs485_2", "rs485_3", "eth0", "can", "compute", "market"}
    pids = [p["pid"] for p in info["procs"].values()] + list(info["helpers"].values())
    assert len(set(pids)) == len(pids) and os.getpid() not in pids
    for pid in pids:
        os.kill(pid, 0)                                     # alive
    cfg = load_site(info["site"])                           # the copy with this run's paths and port validates
    assert cfg["buses"]["rs485_1"]["port"] == info["rtu"]["rs485_1"]["port"]
    assert cfg["buses"]["eth0"]["port"] == info["tcp"]["eth0"]["port"]
    assert all(not d["simulated"] for d in cfg["devices"])


def test_meters_answer_on_the_rs485_pty_with_the_physics_values(lab):
    kw = _read_kw(lab, 1)
    st = lab.state()
    assert abs(kw - st["grid_kw"]) < 5.0, (kw, st["grid_kw"])
    assert abs(_read_kw(lab, 2) - st["pv_kw"]) < 5.0


def test_pcs_setpoint_over_tcp_lands_in_applied_jsonl_and_the_battery(lab):
    c, enc, unit = _pcs(lab)
    try:
        assert c.read_holding_registers(40000, count=2, device_id=unit).registers == [0x5375, 0x6E53]   # "SunS"
        for fc, reg, words in enc.encode({"out_rate_pct": 8.0, "in_rate_pct": 8.0, "storctl_mod": 3}):
            assert not c.write_registers(reg, words, device_id=unit).isError()
        applied = Path(lab.info["applied"])
        last = wait_for(lambda: [json.loads(x) for x in applied.read_text().splitlines()
                                 if '"pcs"' in x and json.loads(x)["value"] == 20.0], 10, "20 kW in applied.jsonl")
        assert last[-1]["what"] == "setpoint_kw" and last[-1]["segment"] == "eth0"
        wait_for(lambda: abs(lab.state()["battery_kw"] - 20.0) < 0.5, 10, "the physics discharging 20 kW")
        p = enc.points["power_kw"]
        wait_for(lambda: abs(enc.decode("power_kw", c.read_holding_registers(p.register, count=1, device_id=unit)
                                        .registers) - 20.0) < 0.5, 10, "the PCS reporting 20 kW")
    finally:
        for fc, reg, words in enc.encode({"out_rate_pct": 0.0, "in_rate_pct": 0.0, "storctl_mod": 0}):
            c.write_registers(reg, words, device_id=unit)
        c.close()


def test_slcan_adapter_broadcasts_the_bms_frames_python_can_reads(lab):
    db = cantools.database.load_file(str(DEFAULT_DBC))
    bus = can.Bus(interface="slcan", channel=lab.info["can"]["channel"], bitrate=500000, sleep_after_open=0)
    try:
        seen = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and 0x355 not in seen:
            m = bus.recv(0.5)
            if m is not None:
                seen[m.arbitration_id] = m
    finally:
        bus.shutdown()
    assert 0x355 in seen and 0x351 in seen, sorted(hex(i) for i in seen)
    soc = db.decode_message(0x355, seen[0x355].data)["StateOfCharge"]
    assert abs(soc - lab.state()["soc_pct"]) < 1.5


def test_compute_power_and_market_arrive_on_mqtt(lab):
    got: dict[str, list] = {"compute/power": [], "market": []}
    topics = lab.info["mqtt"]["topics"]
    port = int(lab.info["mqtt"]["url"].rsplit(":", 1)[1])
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-lab")

    def on_message(client, userdata, msg):
        for kind in got:
            if msg.topic == topics[kind]:
                got[kind].append(json.loads(msg.payload))
    c.on_message = on_message
    c.on_connect = lambda cl, *a: cl.subscribe([(topics["compute/power"], 0), (topics["market"], 1)])
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        wait_for(lambda: got["compute/power"] and got["market"], 15, "compute/power and the (retained) market")
    finally:
        c.loop_stop()
        c.disconnect()
    power = parse_power(got["compute/power"][-1])
    assert 0 < power.total_kw < 200
    m = got["market"][-1]
    assert m["step_min"] == 15 and len(m["import_price_per_kwh"]) == 96 == len(m["co2_kg_per_kwh"])
    assert set(m["import_price_per_kwh"]) <= {0.28, 0.52, 0.78}    # the site's TOU table, per slot
    assert m["valid_from"] < m["valid_until"]


def test_faults_a_silent_meter_a_pcs_that_ignores_writes_and_a_stopped_segment(lab):
    # a meter gone: its unit silent, its neighbour on the same segment still answers
    assert lab.ctl("fault", "meter", "silent")["ok"]
    with pytest.raises(minimalmodbus.NoResponseError):
        _read_kw(lab, 1)
    _read_kw(lab, 2)
    # the PCS not answering writes: reads answered, a write times out and is not applied
    assert lab.ctl("fault", "pcs", "no-writes")["ok"]
    c, enc, unit = _pcs(lab)
    fc, reg, words = enc.encode({"out_rate_pct": 12.0})[0]
    t = time.monotonic()
    try:
        assert c.write_registers(reg, words, device_id=unit).isError()
    except ModbusException:                                 # pymodbus: "No response received"
        pass
    finally:
        c.close()
    assert time.monotonic() - t >= 0.9                      # it was a timeout, not an exception reply
    c, enc, unit = _pcs(lab)
    assert not c.read_holding_registers(40000, count=2, device_id=unit).isError()
    c.close()
    assert not any(json.loads(x)["value"] == 30.0 for x in Path(lab.info["applied"]).read_text().splitlines())
    assert lab.ctl("clear") == {"ok": True, "faults": {}}
    wait_for(lambda: _answers(lab, 1), 5, "the meter back")
    # a stopped process: the whole segment is gone, and back on SIGCONT
    pid = lab.info["procs"]["rs485_1"]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: lab.state()["procs"]["rs485_1"]["state"] == "stopped", 5, "the lab to see it stopped")
        assert not _answers(lab, 2)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: _answers(lab, 2), 10, "the segment back after SIGCONT")
    bad = lab.ctl("fault", "pcs", "wobble")
    assert not bad["ok"] and "no-writes" in bad["error"]


def _answers(lab, unit: int) -> bool:
    try:
        _read_kw(lab, unit)
        return True
    except (minimalmodbus.NoResponseError, minimalmodbus.InvalidResponseError):
        return False


@pytest.mark.slow
def test_restart_of_a_killed_segment_negative_market_and_clean_exit(tmp_path):
    lp = LabProc(tmp_path / "d", "--market-negative", "--market-period", "0.05", "--fault", "bms=silent")
    try:
        bms = minimalmodbus.Instrument(lp.info["rtu"]["rs485_3"]["port"], 1)
        bms.serial.timeout = 0.3
        bms.close_port_after_each_call = True
        with pytest.raises(minimalmodbus.NoResponseError):      # silent from boot, before lab.json
            bms.read_register(0x2103, functioncode=3)
        assert lp.ctl("fault", "bms", "clear")["ok"]
        assert abs(bms.read_register(0x2103, functioncode=3) - lp.state()["soc_pct"]) <= 1
        pid = lp.info["procs"]["rs485_1"]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: lp.state()["procs"]["rs485_1"]["state"] == "gone", 10, "the lab to see the segment gone")
        assert not _answers(lp, 1)
        r = lp.ctl("restart", "rs485_1")
        assert r["ok"] and r["pid"] != pid
        wait_for(lambda: _answers(lp, 1), 30, "the restarted segment answering on the same pty")
        assert json.loads((lp.dir / "lab.json").read_text())["procs"]["rs485_1"]["pid"] == r["pid"]
        port = int(lp.info["mqtt"]["url"].rsplit(":", 1)[1])
        got = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-lab-neg")
        c.on_message = lambda cl, u, msg: got.append(json.loads(msg.payload))
        c.on_connect = lambda cl, *a: cl.subscribe(lp.info["mqtt"]["topics"]["market"], 1)
        c.connect("127.0.0.1", port)
        c.loop_start()
        wait_for(lambda: got, 15, "a market message")
        c.loop_stop()
        c.disconnect()
        prices = got[-1]["import_price_per_kwh"]
        assert 8 <= sum(p < 0 for p in prices) <= 12          # 11-14 h local: 12 slots of the 96 at most
    finally:
        lp.close()
    pids = [p["pid"] for p in lp.info["procs"].values()] + list(lp.info["helpers"].values()) + [r["pid"]]

    def all_gone():
        for p in pids:
            try:
                os.kill(p, 0)
                return False
            except ProcessLookupError:
                pass
        return True
    wait_for(all_gone, 10, "every lab process to end with the lab")
    assert not (lp.dir / "lab.json").exists()
