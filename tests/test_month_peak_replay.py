"""The billed peak's monthly reset through the real scan loop and its recording (issue 14): a run across
1 Feb 00:00 Asia/Shanghai resets peak_kw in the kernel (a PARAMS table of month starts, no clock), makes a
plan at once, and `replay --verify` reproduces every command and state from the recording alone."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from controller.core import layout as L
from controller.loop import ScanLoop
from controller.params import build_params
from controller.points import INDEX
from controller.replay import Recorder, verify
from drivers.base import QUALITY_OK
from tests.test_market_replay import VALUES, Clock, Static
from tests.test_netinputs import network_site

MONTH = datetime(2026, 1, 31, 16, 0, tzinfo=timezone.utc).timestamp()    # 1 Feb 00:00 +08:00
PERIOD_S = 10.0


class GridMeter(Static):
    """Imports 80 kW in January and 30 kW in February (by the loop's clock: the plan is under test)."""

    def __init__(self, name, kind, values, clock):
        super().__init__(name, kind, values)
        self.clock = clock

    def acquire(self, now, sink):
        super().acquire(now, sink)
        sink(self.name, "power_kw", 80.0 if self.clock.utc_s() < MONTH else 30.0, now, QUALITY_OK)


def test_billed_peak_resets_at_the_month_start_and_replays(tmp_path):
    cfg = network_site()
    cfg["site"]["timezone"] = "Asia/Shanghai"
    cfg["control"]["period_s"] = PERIOD_S
    assert cfg["tariff"]["peak_price_per_kw"] > 0.0          # a demand charge: the peak matters to the plan
    start = MONTH - 35 * 60.0                                 # 23:25 local: two January windows close first
    clock = Clock(start)
    devices = {}
    for d in cfg["devices"]:
        if d["role"] == "grid_meter":
            devices[d["name"]] = GridMeter(d["name"], d["role"], VALUES[d["role"]], clock)
        elif d["role"] in VALUES:
            devices[d["name"]] = Static(d["name"], d["role"], VALUES[d["role"]])
    roles = {d["role"]: d["name"] for d in cfg["devices"] if d["name"] in devices}
    params = build_params(cfg, "mpc", t_ref_s=start)
    state0 = L.new_state(start - PERIOD_S)
    rec = Recorder(tmp_path / "month.rec", params, state0, meta={"test": "month"})
    seen = []
    watch = lambda lp, image, cmd, events, n: seen.append(     # noqa: E731
        (float(image["t_s"]), float(lp.state[L.S_PEAK_KW]), float(lp.state[L.S_PLAN_T_S])))
    loop = ScanLoop(params, devices, roles, cfg["limits"], clock, recorder=rec, hooks=[watch], state=state0)
    cycles = int((MONTH + 16 * 60.0 - start) / PERIOD_S)
    loop.run(cycles)
    loop.close()
    res = verify(tmp_path / "month.rec")
    assert res.ok, res.message
    assert res.cycles == cycles
    before = [pk for t, pk, _ in seen if MONTH - 600.0 <= t < MONTH]
    assert before and min(before) == pytest.approx(80.0, rel=1e-6)        # January's billed peak
    first = next(i for i, (t, _, _) in enumerate(seen) if t >= MONTH)
    t_reset, pk_reset, plan_t = seen[first]
    assert pk_reset == 0.0 and plan_t == t_reset                        # reset, and a plan made at once
    after = [pk for t, pk, _ in seen if t >= MONTH + 900.0]
    assert after and max(after) == pytest.approx(30.0, rel=1e-6)        # February's own peak
    print(f"peak_kw: {before[-1]:.1f} kW before 1 Feb 00:00 +08:00, {pk_reset} at it, {after[-1]:.1f} kW after")
