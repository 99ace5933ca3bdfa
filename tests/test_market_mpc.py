"""A market message reaches the MPC through the process image (issue 14): 15-minute prices with a
negative stretch change the plan - the battery charges into the negative slots - and a stale feed
falls back to the profile's tariff, bit for bit, with the market_stale alarm."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest

from controller.core import layout as L
from controller.core import mpc as M
from controller.core.mpc_strategy import build_instance, mpc_learn
from controller.loop import ImageBuilder
from controller.netinputs import NetworkInputs
from controller.params import build_params
from controller.points import CATALOGUE, GRID_CO2, GRID_PRICE, MARKET, Q_STALE, new_image
from tests.images import image, run_images
from tests.test_netinputs import Clock, iso, network_site

T = datetime(2026, 1, 20, 9, 0, tzinfo=timezone.utc).timestamp()    # nordic-wind, a January morning
NEG = range(8, 16)                  # market slots 2 h..4 h ahead: negative import price (a windy noon)
MKT = [i for i, p in enumerate(CATALOGUE) if p.age_class == MARKET]


def feed_payload(valid_h=24.0):
    n = int(valid_h * 4)
    price = [-0.10 if k in NEG else 0.20 for k in range(n)]
    return json.dumps({"v": 1, "t": iso(T - 600), "valid_from": iso(T), "valid_until": iso(T + n * 900),
                       "step_min": 15, "import_price_per_kwh": price, "export_price_per_kwh": [0.0] * n,
                       "co2_kg_per_kwh": [0.03] * n}).encode()


def market_image(cfg, at_s, payload=None, recv_s=None):
    """The healthy test image with the market points as the scan loop would freeze them at `at_s`."""
    clock = Clock(at_s)
    inputs = NetworkInputs(cfg, utc=clock.utc, mono=clock.mono)
    if payload is not None:
        assert inputs.feed("market", payload, recv_s if recv_s is not None else T - 60)
    b = ImageBuilder({"market": "net_market"}, cfg["limits"])
    for dev in inputs.devices().values():
        dev.acquire(clock.mono(), b.sink)
    frozen = b.freeze(new_image(), 0, at_s, clock.mono())
    value, quality = image(soc_pct=50.0, grid_kw=35.0, pv_kw=10.0, it_kw=40.0, cooling_kw=5.0)
    value[MKT], quality[MKT] = frozen["value"][MKT], frozen["quality"][MKT]
    quality[[GRID_PRICE, GRID_CO2]] = Q_STALE        # no grid device: the current price is the plan's
    return value, quality


def plan(params, at_s, value, quality):
    st = L.new_state(at_s - 1.0)
    mpc_learn(params, st, at_s, 1.0, value, quality, 45.0, True, 10.0)
    steps, prm = build_instance(params, st, at_s, value, quality, 50.0, 45.0, True, False, True, 100.0, 30.0)
    out, obj, _ = M.plan_kernel(steps, prm, M.PEAK_EVALS, 100)
    return steps, out


@pytest.fixture(scope="module")
def site():
    cfg = network_site("market", expected=True)
    # no demand charge here: nordic-wind's 6 EUR/kW would price a 200 kW charge far above what the
    # negative slots pay (the plan rightly keeps its import at the billed peak then)
    cfg["tariff"]["peak_price_per_kw"] = 0.0
    return cfg, build_params(cfg, "mpc", t_ref_s=T)


def test_negative_15_min_prices_make_the_plan_charge_into_them(site):
    cfg, params = site
    assert params[L.P_MARKET_EXPECTED] == 1.0
    s_tariff, tariff = plan(params, T, *market_image(cfg, T))
    s_mkt, mkt = plan(params, T, *market_image(cfg, T, feed_payload()))
    neg = list(NEG)
    assert (s_mkt[M.S_GCOST, neg] < 0.0).all() and (s_tariff[M.S_GCOST, neg] > 0.0).all()
    assert s_mkt[M.S_GCOST, 20] == pytest.approx(0.20 + params[L.P_CARBON_PRICE] * 0.03)
    assert (s_mkt[M.S_XPRICE] == 0.0).all() and s_tariff[M.S_XPRICE, 0] == params[L.P_EXPORT_PRICE]
    charge_mkt, charge_tariff = mkt[2, neg].sum(), tariff[2, neg].sum()
    print(f"charge planned in the negative slots: market {charge_mkt:.1f} kW-steps, tariff {charge_tariff:.1f}")
    assert charge_mkt > charge_tariff + 100.0                   # the battery fills in the negative slots
    assert mkt[0, neg].sum() > tariff[0, neg].sum() + 100.0     # from the grid (paid to take it)
    assert mkt[7, NEG.stop] > tariff[7, NEG.stop] + 10.0         # and leaves them fuller (SOC %)


def test_the_setpoint_follows_the_market_plan(site):
    """Through the whole step: inside a negative slot the battery is commanded to charge."""
    cfg, params = site
    at = T + NEG.start * 900 + 60
    with_feed = run_images(params, [market_image(cfg, at, feed_payload())] * 3, t0=at)
    without = run_images(params, [market_image(cfg, at)] * 3, t0=at)
    kw_feed, kw_tariff = with_feed[-1][1][L.C_BATTERY_KW], without[-1][1][L.C_BATTERY_KW]
    print(f"battery setpoint in a negative slot: market {kw_feed:.1f} kW, tariff-only {kw_tariff:.1f} kW")
    assert kw_feed < -50.0 and kw_feed < kw_tariff - 50.0       # charging (generator convention)
    assert not int(with_feed[-1][1][L.C_ALARMS_ACTIVE]) >> L.A_MARKET_STALE & 1


def test_a_stale_feed_falls_back_to_the_tariff_with_the_alarm(site):
    cfg, params = site
    at = T + 2 * 3600 + 60                                   # the 2 h feed ran out a minute ago
    value, quality = market_image(cfg, at, feed_payload(valid_h=2.0))
    assert (quality[MKT] == Q_STALE).all()
    none_v, none_q = market_image(cfg, at)
    s_stale, p_stale = plan(params, at, value, quality)
    s_none, p_none = plan(params, at, none_v, none_q)
    assert s_stale.tobytes() == s_none.tobytes() and p_stale.tobytes() == p_none.tobytes()
    out = run_images(params, [(value, quality)] * 2, t0=at)
    assert int(out[-1][1][L.C_ALARMS_ACTIVE]) >> L.A_MARKET_STALE & 1
    # a site that does not expect a feed: the same fallback, no alarm
    quiet = params.copy()
    quiet[L.P_MARKET_EXPECTED] = 0.0
    assert not int(run_images(quiet, [(value, quality)] * 2, t0=at)[-1][1][L.C_ALARMS_ACTIVE]) >> L.A_MARKET_STALE & 1


def test_a_fresh_feed_clears_the_alarm_and_an_old_message_is_stale(site):
    cfg, params = site
    fresh = run_images(params, [market_image(cfg, T + 60, feed_payload())] * 2, t0=T + 60)
    assert not int(fresh[-1][1][L.C_ALARMS_ACTIVE]) >> L.A_MARKET_STALE & 1
    old = dict(cfg, limits=dict(cfg["limits"], market_max_age_s=3600.0))
    value, quality = market_image(old, T + 60, feed_payload(), recv_s=T - 3600)    # valid, but 61 min old
    assert quality[MKT[0]] == Q_STALE
    assert int(run_images(params, [(value, quality)] * 2, t0=T + 60)[-1][1][L.C_ALARMS_ACTIVE]) >> L.A_MARKET_STALE & 1
