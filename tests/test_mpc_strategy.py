"""The MPC strategy driving the real loop (issue 4): announcements reach the image, replay is bit for bit,
and the sandstorm warning makes the MPC go into the PV drop with more charge than the rule strategy.

The sims here are short windows cut out of inner-mongolia-mine around its sandstorm (same site, same
weather: the scenario's start is moved to a few hours before the event), so they stay fast.
"""
from __future__ import annotations

import re
from datetime import timedelta

import pytest

from controller.config import SITES_DIR
from controller.core import layout as L
from controller.points import INDEX, Q_OK
from controller.replay import verify
from tools.sim.runner import run_sim
from tools.sim.scenario import SCENARIOS_DIR, load_scenario

SANDSTORM_AT_H = 33.0       # profiles/scenarios/inner-mongolia-mine.toml
LEAD_H = 6.0                # the window starts this long before the sandstorm (when its warning arrives)
STORM_RESERVE_PCT = 70.0    # [control] storm_reserve_pct: enter a warned event with at least this SOC


def window_scenario(tmp_path, lead_h: float = LEAD_H, warn_min: float = 360.0, soc_pct: float = 55.0,
                    storm_reserve_pct: float = STORM_RESERVE_PCT):
    """inner-mongolia-mine from `lead_h` before its sandstorm, with only the sandstorm as an event, and
    the site's storm watch at `storm_reserve_pct`."""
    site = (SITES_DIR / "inner-mongolia-mine.toml").read_text()
    site = site.replace('strategy = "rule"', f'strategy = "rule"\nstorm_reserve_pct = {storm_reserve_pct}', 1)
    site_path = tmp_path / f"imm-site-{storm_reserve_pct:g}.toml"
    site_path.write_text(site)
    text = (SCENARIOS_DIR / "inner-mongolia-mine.toml").read_text()
    text = re.sub(r'(?m)^site = .*$', f'site = "{site_path}"', text, count=1)
    original = load_scenario("inner-mongolia-mine")
    start = original.start + timedelta(hours=SANDSTORM_AT_H - lead_h)
    text = re.sub(r'start_utc = "[^"]+"', f'start_utc = "{start.strftime("%Y-%m-%dT%H:%M:%SZ")}"', text)
    text = re.sub(r"(?m)^soc_pct = .*$", f"soc_pct = {soc_pct}", text)
    text = text.split("[[events]]")[0] + (
        "[[events]]\nkind = \"pv_derate\"\n"
        f"at_h = {lead_h}\nduration_min = 360.0\nfraction = 0.7\nramp_min = 60.0\nwarn_min = {warn_min}\n")
    path = tmp_path / f"imm-window-{warn_min:g}-{storm_reserve_pct:g}.toml"
    path.write_text(text)
    return load_scenario(path)


def soc_at_event(scn, strategy: str) -> float:
    res = run_sim(scn, hours=LEAD_H, seed=1, strategy=strategy, ledger=False)
    return res.site.battery.soc_pct


def test_sandstorm_warning_charges_ahead(tmp_path):
    warned = window_scenario(tmp_path)
    soc_rule = soc_at_event(warned, "rule")
    soc_mpc = soc_at_event(warned, "mpc")
    soc_mpc_blind = soc_at_event(window_scenario(tmp_path, warn_min=0.0), "mpc")
    print(f"SOC at the sandstorm: mpc warned {soc_mpc:.1f} %, mpc unwarned {soc_mpc_blind:.1f} %, rule {soc_rule:.1f} %")
    assert soc_mpc > soc_rule + 5.0
    assert soc_mpc > soc_mpc_blind + 5.0


def test_announcements_reach_the_image_and_replay_bit_for_bit(tmp_path):
    scn = window_scenario(tmp_path, lead_h=0.25)
    seen = []

    def watch(loop, image, cmd, events, n):
        seen.append((float(image["value"][INDEX["wx_pv_cut"]]), int(image["quality"][INDEX["wx_pv_cut"]]),
                     float(image["value"][INDEX["wx_start_s"]])))

    out = tmp_path / "run"
    res = run_sim(scn, hours=0.25, seed=1, strategy="mpc", out_dir=out, hooks=[watch], ledger=False)
    start_s = scn.start.timestamp() + 0.25 * 3600.0
    assert seen[-1] == (0.7, Q_OK, start_s)
    state = res.loop.state
    assert state[L.S_PLAN_COUNT] >= 15              # one plan a minute at least
    assert res.site.t_s - (state[L.S_PLAN_T_S] - scn.start.timestamp()) <= 60.0
    result = verify(out / "recording")
    assert result.ok, result.message
    assert result.cycles == 900


def test_unannounced_events_stay_silent(tmp_path):
    """warn_min = 0: the weather device says nothing, so the MPC cannot know (no leak of the future)."""
    scn = window_scenario(tmp_path, lead_h=0.1, warn_min=0.0)
    seen = []
    run_sim(scn, hours=0.1, seed=1, strategy="mpc", ledger=False,
            hooks=[lambda loop, image, cmd, ev, n: seen.append(float(image["value"][INDEX["wx_pv_cut"]]))])
    assert seen and max(seen) == 0.0


def test_mpc_strategy_is_a_profile_choice():
    from controller.params import build_params
    scn = load_scenario("gansu-edge")
    p = build_params(scn.site, "mpc", t_ref_s=scn.start.timestamp())
    assert p[L.P_STRATEGY] == L.STRATEGY_MPC
    assert p[L.P_TZ_OFFSET_S] == 8 * 3600.0        # Asia/Shanghai: the TOU table is by local hour
    assert list(p[L.P_TARIFF:L.P_TARIFF + 24]) == scn.site["tariff"]["import_price_per_kwh"]


def test_peak_already_billed_is_free():
    """The planner's P_PEAK0: import up to the peak billed so far costs no demand charge, so with the
    billed peak above the free plan's peak the plan's energy cost is the free plan's."""
    from controller.core import mpc as M
    from controller.core.plan_instance import instance_from_dict
    from tools.bench.mpc import make_instance_dict
    steps, prm = M.pack_instance(instance_from_dict(make_instance_dict(11, 48, "peak")))
    H = steps.shape[1]
    free = prm.copy()
    free[M.P_PEAK] = 0.0
    out_f, obj_f, _ = M.plan_kernel(steps, free, M.PEAK_EVALS, M.GENSET_EVALS)
    shaved, obj_s, _ = M.plan_kernel(steps, prm, M.PEAK_EVALS, M.GENSET_EVALS)
    assert shaved[0, :H].max() < out_f[0, :H].max() - 1.0          # the demand charge shaves the peak
    billed = prm.copy()
    billed[M.P_PEAK0] = out_f[0, :H].max() + 1.0
    out_b, obj_b, _ = M.plan_kernel(steps, billed, M.PEAK_EVALS, M.GENSET_EVALS)
    energy_b = obj_b - prm[M.P_PEAK] * out_b[0, :H].max()
    assert energy_b == pytest.approx(obj_f, rel=1e-6, abs=1e-6)


def _shanghai_month_site():
    from controller.config import load_site
    cfg = load_site("inner-mongolia-mine")
    assert cfg["site"]["timezone"] == "Asia/Shanghai"
    return cfg


def test_month_starts_are_local_midnights_of_the_first():
    """PARAMS carries the billing months' starts in the site's zone: 1 Feb 00:00 +08:00 is 31 Jan 16:00 UTC."""
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo
    from controller.params import build_params, month_starts
    t0 = datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc).timestamp()
    p = build_params(_shanghai_month_site(), "mpc", t_ref_s=t0)
    n = int(p[L.P_MONTH_TABLE])
    assert n == L.MONTH_MAX_STARTS
    starts = p[L.P_MONTH_TABLE + 1:L.P_MONTH_TABLE + 1 + n]
    assert starts[0] == datetime(2026, 1, 31, 16, 0, tzinfo=timezone.utc).timestamp()
    assert all(datetime.fromtimestamp(s, ZoneInfo("Asia/Shanghai")).timetuple()[2:6] == (1, 0, 0, 0)
               for s in starts)
    assert list(starts) == sorted(starts) and len(set(starts)) == n
    # a zone whose DST change falls at midnight: the month starts at the change itself
    santiago = month_starts("America/Santiago", datetime(2022, 8, 15, tzinfo=timezone.utc).timestamp(), 2)
    assert datetime.fromtimestamp(santiago[0], ZoneInfo("America/Santiago")).isoformat() == "2022-09-01T00:00:00-04:00"


def test_billed_peak_resets_at_the_site_month_start():
    """The kernel (mpc_learn) across 1 Feb 00:00 Asia/Shanghai: January's peak (80 kW) stands until the
    month starts, the window that closes at midnight still counts for January, and February's peak is
    February's own (30 kW), not January's. Without the PARAMS table, peak_kw stays at 80."""
    import numpy as np
    from datetime import datetime, timezone
    from controller.core.mpc_strategy import month_index, mpc_learn
    from controller.params import build_params
    from controller.points import GRID_KW, N_POINTS
    month = datetime(2026, 1, 31, 16, 0, tzinfo=timezone.utc).timestamp()
    t0 = month - 3600.0
    p = build_params(_shanghai_month_site(), "mpc", t_ref_s=t0)
    assert month_index(p, month - 1.0) == 0 and month_index(p, month) == 1
    value, quality = np.zeros(N_POINTS), np.full(N_POINTS, Q_OK, dtype=np.uint8)

    def run(params):
        st = L.new_state(t0 - 10.0)
        seen = {}
        for t in np.arange(t0, month + 1800.0 + 1.0, 10.0):
            value[GRID_KW] = 80.0 if t < month else 30.0
            mpc_learn(params, st, float(t), 10.0, value, quality, 50.0, True, 0.0)
            seen[float(t)] = float(st[L.S_PEAK_KW])
        return seen

    seen = run(p)
    assert seen[month - 10.0] == pytest.approx(80.0)           # January's windows of 80 kW
    assert seen[month] == 0.0                                  # the 1st: a new billing period
    assert seen[month + 890.0] == 0.0                          # no full February window yet
    assert seen[month + 900.0] == pytest.approx(30.0)          # February's first window
    assert seen[month + 1800.0] == pytest.approx(30.0)
    frozen = p.copy()
    frozen[L.P_MONTH_TABLE] = 0                                # the old kernel's view: no month starts
    assert run(frozen)[month + 1800.0] == pytest.approx(80.0)
