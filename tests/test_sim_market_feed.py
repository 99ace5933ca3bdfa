"""The simulated day-ahead market feed (tools/sim/market_feed.py): what a spot-priced site receives and when
(prices published at 13:00 local for the next day, a CO2 forecast that is not the truth), and that it
reaches the MPC's image through the scan loop as the field's market device puts it there."""
from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from controller.points import INDEX, MKT_SLOTS, Q_OK
from controller.schema import ProfileError
from tools.sim.exogenous import build_series
from tools.sim.market_feed import STEP_S, DayAheadFeed, slot_means
from tools.sim.runner import run_sim
from tools.sim.scenario import load_scenario

SCN = "nordic-wind"
TZ = ZoneInfo("Europe/Stockholm")


@pytest.fixture(scope="module")
def feed():
    scn = load_scenario(SCN)
    return scn, DayAheadFeed(scn, build_series(scn, 48.0, 1), 1)


def _local(ts):
    return datetime.fromtimestamp(ts, TZ)


def test_validity_ends_at_the_last_published_delivery_day(feed):
    scn, f = feed
    t0 = scn.start.timestamp()                       # local midnight, 20 January
    morning = t0 + 9.5 * 3600                        # 09:30 local: only today is published
    vf, vu, imp, exp, co2 = f.message(morning)
    assert vf == math.floor(morning / STEP_S) * STEP_S
    assert _local(vu).hour == 0 and _local(vu).day == 21 and len(imp) == round((vu - vf) / STEP_S)
    afternoon = t0 + 13.25 * 3600                    # 13:15: tomorrow's prices are out
    vf, vu, imp, _, _ = f.message(afternoon)
    assert _local(vu).day == 22 and _local(vu).hour == 0
    assert len(imp) == 4 * 35 - 1                    # 13:15 -> midnight after tomorrow, 15-min slots
    late = t0 + 40 * 3600                            # day 2, 16:00: never past the simulated series
    _, vu, _, _, _ = f.message(late)
    assert vu == t0 + 48 * 3600


def test_dst_day_horizon_is_local_midnight():
    scn = load_scenario(SCN)
    f = DayAheadFeed(scn, build_series(scn, 48.0, 1), 1)
    f.end_s = 1e12                                    # only the calendar is under test here
    spring = datetime(2026, 3, 28, 14, 0, tzinfo=TZ).timestamp()     # the night of 28/29 March: CET -> CEST
    end = f.horizon_end_s(spring)
    assert _local(end) == datetime(2026, 3, 30, 0, 0, tzinfo=TZ)
    assert end - spring == (10 + 23) * 3600           # the rest of Saturday + a 23-hour Sunday


def test_prices_are_the_day_ahead_prices_and_co2_a_forecast(feed):
    scn, f = feed
    s, t0 = f.series, scn.start.timestamp()
    vf, vu, imp, exp, co2 = f.message(t0 + 14 * 3600)
    truth_co2 = slot_means(s.co2_kg_per_kwh, t0, vf, len(imp))
    assert np.allclose(imp, slot_means(s.price_per_kwh, t0, vf, len(imp)))
    k = int((vf - t0) // 60)
    assert imp[0] == pytest.approx(np.mean(s.price_per_kwh[k:k + 15]))
    assert np.all(exp == scn.site["tariff"]["export_price_per_kwh"])
    err = co2 / truth_co2 - 1.0
    assert not np.allclose(err, 0.0) and np.all((co2 > 0) & (co2 <= 2.0))
    # redrawn per message, the same for the same (seed, instant): reproducible runs
    assert np.array_equal(co2, f.message(t0 + 14 * 3600 + 60)[4])
    assert not np.array_equal(co2[4:], f.message(t0 + 15 * 3600)[4][:len(co2) - 4])


def test_forecast_error_grows_with_lead(feed):
    scn, f = feed
    errs = np.array([f.co2_error(scn.start.timestamp() + k * STEP_S, 96) for k in range(400)])
    sd = errs.std(axis=0)
    assert sd[:4].mean() < 0.35 * sd[-8:].mean()
    assert sd[-8:].mean() == pytest.approx(f.co2_sd, rel=0.25)       # ~co2_forecast_sd at a day's lead


def test_feed_reaches_the_image_through_the_scan_loop():
    scn = load_scenario(SCN)
    seen = []
    names = ["mkt_t0_s", "mkt_t1_s", "mkt_step_s", "mkt_series", "mkt_import_00", "mkt_import_94", "mkt_co2_00"]
    idx = [INDEX[n] for n in names]

    def hook(loop, image, cmd, events, n):
        seen.append((float(image["t_s"]), image["value"][idx].copy(), image["quality"][idx].copy()))

    s = build_series(scn, 24.0, 1)            # the feed never runs past the series: give it the day
    run_sim(scn, hours=0.5, seed=1, strategy="mpc", hooks=[hook], ledger=False, series=s)
    t_s, value, quality = seen[-1]
    assert np.all(quality == Q_OK)
    t0, t1, step, series, imp0, imp94, _ = value
    assert (t1 - t0) / 900 == 95                 # 00:15 -> midnight local (the MPC reads no slot past t1)
    assert t0 == math.floor(t_s / 900) * 900 and step == 900 and series == 7
    assert t1 == datetime(2026, 1, 21, 0, 0, tzinfo=TZ).timestamp()           # 00:29 local: today only
    k = int((t0 - scn.start.timestamp()) // 60)
    assert imp0 == pytest.approx(np.mean(s.price_per_kwh[k:k + 15]))
    assert MKT_SLOTS == 96 and imp94 == pytest.approx(np.mean(s.price_per_kwh[k + 94 * 15:k + 95 * 15]))


def test_feed_needs_a_spot_market_and_a_receiver(tmp_path):
    base = load_scenario(SCN).path.read_text()
    tariff = tmp_path / "tariff.toml"
    tariff.write_text(base.replace('kind = "spot"', 'kind = "tariff"').replace('site = "nordic-wind"',
                                                                              'site = "gansu-edge"'))
    with pytest.raises(ProfileError, match="market.feed"):
        load_scenario(tariff)
    nosite = tmp_path / "nosite.toml"
    nosite.write_text(base.replace('site = "nordic-wind"', 'site = "gansu-edge"'))
    with pytest.raises(ProfileError, match="no device with role 'market'"):
        load_scenario(nosite)
