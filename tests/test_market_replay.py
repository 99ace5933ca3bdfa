"""The market feed through the real scan loop and its recording (issue 14): NetworkInputs' market device
next to static field devices, a feed with negative 15-minute slots makes the battery charge inside them,
and `replay --verify` reproduces every command from the recording alone (the message is in the image)."""
from __future__ import annotations

import pytest

from controller.core import layout as L
from controller.loop import ScanLoop
from controller.netinputs import NetworkInputs
from controller.params import build_params
from controller.points import MKT_T1_S, Q_OK
from controller.replay import Recorder, verify
from drivers.base import QUALITY_OK
from tests.test_market_mpc import NEG, T, feed_payload
from tests.test_netinputs import network_site

VALUES = {   # a healthy nordic-wind cabinet at rest, by role
    "grid_meter": {"power_kw": 35.0, "voltage_v": 230.0},
    "pv_meter": {"power_kw": 10.0},
    "pcs": {"power_kw": 0.0, "soc_pct": 50.0},
    "bms": {"soc_pct": 50.0, "voltage_v": 768.0, "ccl_a": 300.0, "dcl_a": 300.0, "cell_v_max": 3.30,
            "cell_v_min": 3.28, "cell_temp_max_c": 25.0, "cell_temp_min_c": 24.0, "charge_enable": 1.0,
            "discharge_enable": 1.0, "temp_c": 25.0},
    "compute": {"it_kw": 40.0, "cooling_kw": 5.0, "aux_kw": 0.0},
    "grid": {"available": 1.0},
    "genset": {"available": 1.0, "running": 0.0, "power_kw": 0.0},
}


class Static:
    """A field device that always reads the same (the plan, not the physics, is under test)."""

    def __init__(self, name, kind, values):
        self.name, self.kind, self.values = name, kind, values

    def acquire(self, now, sink):
        for point, v in self.values.items():
            sink(self.name, point, v, now, QUALITY_OK)

    def actuate(self, commands, now):
        pass

    def close(self):
        pass


class Clock:
    speed = 1.0

    def __init__(self, utc):
        self.t = utc

    def monotonic(self):
        return self.t - T

    def utc_s(self):
        return self.t

    def sleep_until(self, t_mono):
        self.t = max(self.t, T + t_mono)


def run(tmp_path, payload, name):
    cfg = network_site("market", expected=True)
    cfg["tariff"]["peak_price_per_kw"] = 0.0        # as in test_market_mpc: no demand charge
    at = T + NEG.start * 900 + 30                     # inside the first negative slot
    clock = Clock(at)
    inputs = NetworkInputs(cfg, utc=clock.utc_s, mono=clock.monotonic)
    if payload is not None:
        assert inputs.feed("market", payload, T - 60)
    devices = {d["name"]: Static(d["name"], d["role"], VALUES[d["role"]]) for d in cfg["devices"]
               if d["role"] in VALUES}
    devices.update(inputs.devices())
    roles = {d["role"]: d["name"] for d in cfg["devices"] if d["name"] in devices}
    params = build_params(cfg, "mpc", t_ref_s=at)
    state0 = L.new_state(at - 1.0)
    rec = Recorder(tmp_path / name, params, state0, meta={"test": name})
    kw = []
    watch = lambda lp, image, cmd, events, n: kw.append(    # noqa: E731
        (float(cmd[L.C_BATTERY_KW]), int(image["quality"][MKT_T1_S]), int(cmd[L.C_ALARMS_ACTIVE])))
    loop = ScanLoop(params, devices, roles, cfg["limits"], clock, recorder=rec, hooks=[watch], state=state0)
    loop.run(30)
    loop.close()
    return kw, verify(tmp_path / name)


def test_market_plan_runs_in_the_loop_and_replays_bit_for_bit(tmp_path):
    kw, res = run(tmp_path, feed_payload(), "market.rec")
    assert res.ok, res.message
    assert res.cycles == 30 and len(kw) == 30
    assert all(q == Q_OK for _, q, _ in kw) and not any(a >> L.A_MARKET_STALE & 1 for _, _, a in kw)
    tariff, res_t = run(tmp_path, None, "tariff.rec")
    assert res_t.ok, res_t.message
    assert all(a >> L.A_MARKET_STALE & 1 for _, _, a in tariff[1:])     # expected, missing: the alarm
    print(f"battery after 30 cycles in a negative slot: market {kw[-1][0]:.1f} kW, tariff-only {tariff[-1][0]:.1f} kW")
    assert kw[-1][0] < -50.0 and kw[-1][0] < tariff[-1][0] - 50.0
