"""The DCIM Modbus TCP server against a running scan loop, read by a pymodbus client in another process.

A simulated site (tools/sim: the real ScanLoop and SiteRuntime, devices from the scenario) runs with two
servers on 127.0.0.1: A read-only, B with writes through the uplink's limits and audit (a spool-only
uplink, as `edge-ems run` has without a broker). Between runs of cycles the loop stands still, so what
`python -m controller.dcim.read` prints is compared with the loop's own image, commands, state, energy
account and headroom, register by register, with expectations written out here (not derived from the
map), and every name of the map must have one.
"""
from __future__ import annotations

import json
import math
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.core import layout as L
from controller.points import INDEX, Q_OK, Q_STALE
from tools.netport import free_port

ROOT = Path(__file__).resolve().parents[1]
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE, GATEWAY_NO_RESPONSE = 1, 2, 3, 0x0B


def client(port: int, *args: str) -> tuple[int, dict | None, str]:
    """`python -m controller.dcim.read` in another process: (exit code, its JSON, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "controller.dcim.read", "--host", "127.0.0.1", "--port", str(port),
                           "--timeout", "5", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if lines else None), proc.stderr


def read_all(port: int, *args: str) -> dict:
    rc, out, err = client(port, *args)
    assert rc == 0, (out, err)
    return out


def write(port: int, name: str, value: float) -> dict:
    rc, out, err = client(port, "--write", f"{name}={value}")
    assert rc == 0, (out, err)
    return out["writes"][0]


class Mutable:
    """A device whose readings can be withheld (the point then ages out to STALE, as a silent meter does)."""

    def __init__(self, inner):
        self.inner, self.muted = inner, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def acquire(self, now, sink):
        if not self.muted:
            self.inner.acquire(now, sink)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from tools.sim.provider import SimProvider
    from tools.sim.scenario import load_scenario
    from controller.carbon.account import EnergyAccount
    from controller.compute.hook import ComputeHook
    from controller.compute.jobs import JobBook
    from controller.dcim.run import Dcim
    from controller.runtime.site import SiteRuntime
    from controller.uplink import make_uplink_hook

    scn = load_scenario("inner-mongolia-mine")
    cfg = scn.site
    provided = SimProvider(scn, 1.0, 1).provide(cfg)
    pv = provided.devices["pv_meter"] = Mutable(provided.devices["pv_meter"])
    rt = SiteRuntime(cfg, provided)
    account = EnergyAccount(cfg)
    up_hook, uplink = make_uplink_hook(cfg, None, tmp_path_factory.mktemp("spool"), account=account)
    rt.add("uplink", "uplink", up_hook, lambda: uplink.close(0.0))
    servers = {}
    for key, writes in (("A", False), ("B", True)):
        c = dict(cfg)
        c["dcim"] = {**cfg["dcim"], "enabled": True, "bind": "127.0.0.1", "port": free_port(), "writes": writes}
        servers[key] = Dcim(c, alarms=rt.alarms, uplink=uplink, account=account, restart_delay_s=0.0)
        assert servers[key].start(), servers[key].server.last_error
    publish = servers["A"].headroom.tee(servers["B"].headroom.tee(None))
    compute = ComputeHook(cfg, JobBook(), publish=publish)          # keep_history: the test's expectations
    rt.add("compute", "headroom", compute)
    for key, d in servers.items():
        rt.add("ipc", f"dcim{key}", d.hook, d.close)
    rt.start()
    rt.run(150)                      # past the first headroom computation and into a 15-min interval
    alarms = []
    rt.alarms.listeners.append(lambda state, name, detail: alarms.append((state, name)))
    yield {"rt": rt, "loop": rt.loop, "cfg": cfg, "A": servers["A"], "B": servers["B"], "uplink": uplink,
           "account": account, "compute": compute, "pv": pv, "alarms": alarms}
    rt.close()


def f32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


def expected(s, dcim) -> dict:
    """What each register must read now, from the loop's own arrays (None = not available)."""
    loop, cfg, acc = s["loop"], s["cfg"], s["account"]
    v, q, cmd = loop.image["value"], loop.image["quality"], loop.commands
    t = float(loop.image["t_s"])
    bat, grid = cfg["battery"], cfg["grid"]

    def point(name, scale=None):
        i = INDEX[name]
        if q[i] != Q_OK:
            return None
        return f32(float(v[i])) if scale is None else round(float(v[i]) * scale) / scale

    t_h, h, _ = s["compute"].history[-1]
    iv = acc.iv
    supplied = iv.e["grid_import"] + iv.e["pv"] + iv.e["diesel"]
    co2 = iv.grid_kg_total + iv.diesel_l * acc.k.diesel_kg_per_l
    pushed = q[INDEX["grid_co2_kg_per_kwh"]] == Q_OK and v[INDEX["grid_co2_kg_per_kwh"]] > 0
    cfe_pushed = q[INDEX["grid_cfe_pct"]] == Q_OK
    op_res = float(v[INDEX["op_reserve_pct"]])
    reserve = min(max(op_res, bat["soc_min_pct"]), bat["soc_max_pct"]) if op_res > 0 else bat["reserve_pct"]
    status = 1 | (2 if dcim.gate.enabled else 0) | (4 if cmd[L.C_ALARMS_ACTIVE] else 0) \
        | (8 if cmd[L.C_ALARMS_UNACKED] else 0) | (16 if s["rt"].alarms.active else 0)
    meters = all(q[INDEX[n]] == Q_OK for n in ("grid_kw", "pv_kw", "battery_kw"))
    compute_ok = all(q[INDEX[n]] == Q_OK for n in ("it_kw", "cooling_kw"))
    return {
        "map_id": 0x4545, "map_version": 1, "heartbeat": float(int(loop.image["cycle"])), "timestamp_s": math.floor(t),
        "data_age": "age", "status": status, "not_available_count": "count", "host_alarms": len(s["rt"].alarms.active),
        "period": cfg["control"]["period_s"],
        "pv_kw": point("pv_kw"), "battery_kw": point("battery_kw"), "grid_kw": point("grid_kw"),
        "genset_kw": point("genset_kw"),
        "load_kw": f32(float(loop.state[L.S_LOAD_KW])) if meters or compute_ok else None,
        "compute_kw": point("it_kw"), "cooling_kw": point("cooling_kw"), "aux_kw": point("aux_kw"),
        "pv_available_kw": point("pv_available_kw"),
        "soc": point("soc_pct", 10), "soh": point("soh_pct", 10), "battery_voltage": point("battery_v", 10),
        "battery_current": point("battery_a", 10), "battery_temperature": point("battery_temp_c", 10),
        "cell_voltage_max": point("cell_v_max", 1000), "cell_voltage_min": point("cell_v_min", 1000),
        "genset_running": point("genset_running", 1), "fuel_level": point("fuel_pct", 10),
        "grid_available": point("grid_available", 1),
        "alarms_active": cmd[L.C_ALARMS_ACTIVE], "alarms_unacked": cmd[L.C_ALARMS_UNACKED],
        "bms_alarm_bits": point("bms_alarm_bits", 1),
        "headroom_now_kw": f32(h["now_kw"]), "headroom_1h_kw": f32(h["windows_kw"]["1h"]),
        "headroom_4h_kw": f32(h["windows_kw"]["4h"]), "short_kw": f32(h["short_kw"]),
        "headroom_state": 2 if h["short_kw"] > 0 else (0 if h["now_kw"] > 0 else 1),
        "headroom_age": round(t - math.floor(t_h)),
        "interval_intensity": f32(1000 * co2 / supplied), "interval_renewable_share": round(1000 * iv.e["pv"] / supplied) / 10,
        "interval_start_s": iv.t_start, "interval_covered": round(iv.covered_s),
        "grid_intensity": f32(1000 * (float(v[INDEX["grid_co2_kg_per_kwh"]]) if pushed
                                      else cfg["emissions"]["grid_kg_per_kwh"])),
        "grid_intensity_source": 1 if pushed else 0,
        "grid_cfe": (round(10 * float(v[INDEX["grid_cfe_pct"]])) / 10 if cfe_pushed
                     else round(1000 * acc.k.grid_cfe_frac) / 10),
        "grid_cfe_source": 1 if cfe_pushed else 0,
        "mode": cmd[L.C_MODE], "strategy": L.STRATEGY_CODES[cfg["control"]["strategy"]], "reserve": round(reserve * 10) / 10,
        "battery_setpoint_kw": f32(cmd[L.C_BATTERY_KW]), "charge_limit_kw": f32(cmd[L.C_CHARGE_LIMIT_KW]),
        "discharge_limit_kw": f32(cmd[L.C_DISCHARGE_LIMIT_KW]), "charge_limit_reason": cmd[L.C_CHARGE_REASON],
        "discharge_limit_reason": cmd[L.C_DISCHARGE_REASON], "genset_command": cmd[L.C_GENSET_RUN],
        "soc_min": bat["soc_min_pct"], "soc_max": bat["soc_max_pct"], "reserve_profile": bat["reserve_pct"],
        "charge_max_kw": f32(bat["charge_max_kw"]), "discharge_max_kw": f32(bat["discharge_max_kw"]),
        "pcs_rated_kw": f32(cfg["pcs"]["rated_kw"]), "grid_import_max_kw": f32(grid["import_max_kw"]),
        "grid_export_max_kw": f32(grid["export_max_kw"]), "capacity_kwh": f32(bat["capacity_kwh"]),
        "mode_request": v[INDEX["op_mode"]], "reserve_request": round(op_res * 10) / 10,
        "battery_setpoint_request": round(float(v[INDEX["op_battery_kw"]]) * 10) / 10,
    }


def check_live(s, dcim, out: dict) -> None:
    exp = expected(s, dcim)
    assert set(exp) == set(out["values"]), "an expectation per register of the map"
    for name, want in exp.items():
        got = out["values"][name]
        if want == "age":
            assert 0.0 <= got <= dcim.settings["max_age_s"], got
        elif want == "count":
            assert got == sum(1 for n, x in out["values"].items() if x is None), got
        elif want is None:
            assert got is None, (name, got)
        else:
            assert got == pytest.approx(float(want), abs=1e-9), (name, got, want)


def test_every_register_reads_the_live_values(site):
    out = read_all(site["A"].server.port)
    check_live(site, site["A"], out)
    v = out["values"]
    assert v["soc"] > 0 and v["battery_kw"] != 0 and v["compute_kw"] > 0     # a live site, not zeros
    assert v["headroom_state"] is not None and v["interval_intensity"] is not None
    assert out["raw"]["map_id"] == [0x4545]
    hi, lo = out["raw"]["battery_kw"]                                        # float32, high word first
    assert struct.unpack(">f", struct.pack(">HH", hi, lo))[0] == v["battery_kw"]
    site["rt"].run(7)                                                       # the next cycles are served too
    out2 = read_all(site["A"].server.port, "--fc", "4")                     # input registers: the same map
    assert out2["values"]["heartbeat"] == out["values"]["heartbeat"] + 7
    check_live(site, site["A"], out2)
    check_live(site, site["B"], read_all(site["B"].server.port))


def test_a_stale_point_reads_not_available(site):
    site["pv"].muted = True
    try:
        site["rt"].run(8)                      # > limits.meter_max_age_s (5 s at 1 s a cycle)
        assert site["loop"].image["quality"][INDEX["pv_kw"]] == Q_STALE
        out = read_all(site["A"].server.port)
        assert out["values"]["pv_kw"] is None and out["raw"]["pv_kw"] == [0x7FC0, 0x0000]
        assert out["values"]["pv_available_kw"] is not None                 # the inverter still reports
        check_live(site, site["A"], out)
    finally:
        site["pv"].muted = False
    site["rt"].run(2)
    assert read_all(site["A"].server.port)["values"]["pv_kw"] is not None


def test_a_block_the_loop_stopped_publishing_reads_not_available(site):
    pub = site["A"].publisher
    real = pub.clock
    pub.clock = lambda: real() + 60.0           # the loop has not published for a minute
    try:
        out = read_all(site["A"].server.port)
    finally:
        pub.clock = real
    v = out["values"]
    assert v["status"] == 0 and v["data_age"] >= 60.0
    assert v["heartbeat"] == float(int(site["loop"].image["cycle"]))         # frozen where it stopped
    assert v["map_id"] == 0x4545 and v["soc_max"] == site["cfg"]["battery"]["soc_max_pct"]
    for name in ("soc", "pv_kw", "battery_kw", "grid_kw", "alarms_active", "mode", "headroom_now_kw",
                 "interval_intensity", "reserve", "mode_request"):
        assert v[name] is None, name
    assert out["raw"]["soc"] == [0xFFFF] and out["raw"]["battery_current"] == [0x8000]
    assert out["raw"]["alarms_active"] == [0xFFFF, 0xFFFF]
    assert v["not_available_count"] == sum(1 for x in v.values() if x is None)
    assert read_all(site["A"].server.port)["values"]["status"] & 1            # fresh again


def test_writes_disabled_are_refused_and_change_nothing(site):
    before = float(site["loop"].image["value"][INDEX["op_reserve_pct"]])
    w = write(site["A"].server.port, "reserve_request", 40)
    assert not w["ok"] and w["exception_code"] == ILLEGAL_ADDRESS
    site["rt"].run(2)
    assert float(site["loop"].image["value"][INDEX["op_reserve_pct"]]) == before
    assert site["A"].gate.counts["disabled"] >= 1


def test_a_write_within_the_limits_is_applied_and_audited(site):
    up = site["uplink"]
    w = write(site["B"].server.port, "reserve_request", 40.5)
    assert w["ok"], w
    verdict = up.verdicts[-1]
    assert verdict["verdict"] == "accepted" and verdict["source"] == "dcim" and verdict["type"] == "reserve_soc"
    assert verdict["register"] == "reserve_request" and verdict["peer"].startswith("127.0.0.1:")
    site["rt"].run(2)                          # the uplink hook applies it; the next image carries it
    assert float(site["loop"].image["value"][INDEX["op_reserve_pct"]]) == 40.5
    assert up.applied[-1]["id"] == verdict["id"] and up.applied[-1]["type"] == "reserve_soc"
    out = read_all(site["B"].server.port)
    assert out["values"]["reserve_request"] == 40.5 and out["values"]["reserve"] == 40.5
    check_live(site, site["B"], out)
    assert up.spool.flush()
    results = [json.loads(b)["body"] for _, b in up.spool.pending("cmd/result", 0, 1000)]
    assert any(r["id"] == verdict["id"] and r["verdict"] == "accepted" for r in results)
    # mode manual, then a setpoint: the cloud's setpoint_schedule path (one slot of setpoint_hold_s)
    assert write(site["B"].server.port, "mode_request", 1)["ok"]
    assert write(site["B"].server.port, "battery_setpoint_request", -12.5)["ok"]
    assert up.verdicts[-1]["type"] == "setpoint_schedule"
    site["rt"].run(3)
    v = site["loop"].image["value"]
    assert v[INDEX["op_mode"]] == 1 and v[INDEX["op_battery_kw"]] == -12.5
    assert site["loop"].commands[L.C_MODE] == L.MODE_MANUAL
    assert write(site["B"].server.port, "mode_request", 0)["ok"]
    site["rt"].run(2)


def test_a_write_beyond_a_limit_is_refused_with_illegal_data_value_and_audited(site):
    up = site["uplink"]
    soc_max = site["cfg"]["battery"]["soc_max_pct"]
    before = float(site["loop"].image["value"][INDEX["op_reserve_pct"]])
    w = write(site["B"].server.port, "reserve_request", soc_max + 1)
    assert not w["ok"] and w["exception_code"] == ILLEGAL_VALUE
    verdict = up.verdicts[-1]
    assert verdict["verdict"] == "refused" and verdict["source"] == "dcim"
    assert verdict["reason"].startswith("out of limits: reserve_pct") and str(soc_max) in verdict["reason"]
    site["rt"].run(2)
    assert float(site["loop"].image["value"][INDEX["op_reserve_pct"]]) == before
    assert up.spool.flush()
    results = [json.loads(b)["body"] for _, b in up.spool.pending("cmd/result", 0, 1000)]
    assert any(r["id"] == verdict["id"] and r["verdict"] == "refused" for r in results)
    dis = site["cfg"]["battery"]["discharge_max_kw"]
    w = write(site["B"].server.port, "battery_setpoint_request", dis + 50)
    assert not w["ok"] and w["exception_code"] == ILLEGAL_VALUE
    assert write(site["B"].server.port, "mode_request", 7)["exception_code"] == ILLEGAL_VALUE
    assert write(site["B"].server.port, "soc", 50)["exception_code"] == ILLEGAL_ADDRESS   # a read-only register


def test_another_unit_id_gets_gateway_no_response(site):
    rc, out, _ = client(site["A"].server.port, "--unit", "9")
    assert rc == 1 and out["exception_code"] == GATEWAY_NO_RESPONSE


def test_max_clients(site):
    srv = site["A"].server
    srv.max_clients = 1
    try:
        with socket.create_connection(("127.0.0.1", srv.port)):
            deadline = time.monotonic() + 5
            while srv.active_connections() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = srv.refused_clients
            rc, _, _ = client(srv.port)
            assert rc == 1 and srv.refused_clients == refused + 1
        deadline = time.monotonic() + 5
        while srv.active_connections() > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        check_live(site, site["A"], read_all(srv.port))
    finally:
        srv.max_clients = site["A"].settings["max_clients"]


def test_a_dead_server_thread_is_alarmed_and_restarted(site):
    dcim = site["A"]
    srv = dcim.server
    restarts = srv.restarts
    thread = srv._thread
    srv.inject_fault(RuntimeError("injected"))
    thread.join(5)
    assert not thread.is_alive()
    site["rt"].run(1)                              # the hook finds it dead: alarm, restart scheduled (delay 0)
    assert "dcim_server_down" in site["rt"].alarms.active
    assert "injected" in site["rt"].alarms.active["dcim_server_down"]["detail"]
    site["rt"].run(1)                              # restarted
    assert srv.restarts == restarts + 1
    assert srv._listening.wait(5)
    site["rt"].run(1)
    assert "dcim_server_down" not in site["rt"].alarms.active
    assert ("raised", "dcim_server_down") in site["alarms"] and ("cleared", "dcim_server_down") in site["alarms"]
    check_live(site, dcim, read_all(srv.port))


def test_the_hook_costs_well_under_a_millisecond(site):
    """p50 and p90 are asserted; p99 and max are printed (on a shared 2-core box a preempted cycle or the
    restart of test_a_dead_server_thread... lands there)."""
    for key in ("A", "B"):
        st = site[key].stats()
        hs = sorted(site[key].hook_s)
        p90 = hs[int(0.9 * len(hs))] * 1e6
        print(f"dcim {key}: hook p50 {st['hook_p50_us']} us, p90 {p90:.1f} us, p99 {st['hook_p99_us']} us, "
              f"max {st['hook_max_us']} us over {st['blocks']} cycles")
        assert st["hook_p50_us"] < 250 and p90 < 1000
        assert "block_failures" not in st
    assert not any(h.failures for h in site["loop"].health.values())


def _cfg(**dcim):
    from controller.config import load_site
    cfg = load_site("inner-mongolia-mine")
    cfg["dcim"] = {**cfg["dcim"], "enabled": True, "bind": "127.0.0.1", "port": free_port(), **dcim}
    return cfg


def test_a_port_in_use_is_reported_alarmed_and_retried():
    from controller.dcim.run import Dcim
    from controller.runtime.health import HostAlarms
    cfg = _cfg()
    alarms = HostAlarms()
    blocker = socket.create_server(("127.0.0.1", cfg["dcim"]["port"]))
    d = Dcim(cfg, alarms=alarms, restart_delay_s=0.0)
    try:
        assert not d.start(wait_s=5)
        d.server._thread.join(5)
        d.server.supervise()
        detail = alarms.active["dcim_server_down"]["detail"]
        assert f"cannot listen on 127.0.0.1:{cfg['dcim']['port']}" in detail and "in use" in detail
        blocker.close()
        d.server.supervise()                           # restart (delay 0)
        assert d.server.restarts == 1 and d.server._listening.wait(5)
        d.server.supervise()
        assert "dcim_server_down" not in alarms.active
        rc, out, _ = client(cfg["dcim"]["port"])
        assert rc == 0 and out["values"]["status"] == 0 and out["values"]["soc"] is None   # no cycle yet
        assert out["values"]["map_id"] == 0x4545
        assert out["values"]["not_available_count"] == sum(1 for x in out["values"].values() if x is None)
    finally:
        blocker.close()
        d.close()
    assert not d.server._thread.is_alive()


def test_bind_names_an_interface():
    from controller.dcim.run import Dcim
    d = Dcim(_cfg(bind="lo"))
    try:
        assert d.start(wait_s=5) and d.server.address == ("127.0.0.1", d.server.port)
    finally:
        d.close()
