"""On-site wind (tools/sim/wind.py): the seeded speed series, windpowerlib's curve, the physics, the profile
checks and the ledger's renewable count. Small: no scan loop here (tests/test_cases.py runs one)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from controller.carbon.intervals import Interval, Constants
from controller.points import INDEX, N_POINTS, Q_OK, Q_STALE
from controller.schema import ProfileError
from tools.sim import wind as W
from tools.sim.physics import balance
from tools.sim.scenario import load_scenario

SCN = "case-nordic-edge-wind"


def _wind():
    return dict(load_scenario(SCN)["wind"])


def _rng(seed):
    return lambda d: np.random.default_rng([seed, 6, d])


def test_speed_series_is_seeded_and_has_the_atlas_mean():
    w = _wind()
    n = 60 * 1440
    t_h = np.arange(n) / 60.0
    local_h = t_h % 24
    doy = np.full(n, 100.0)                # seasonal factor ~1 around the equinox
    w["seasonal_amp"] = 0.0
    a = W.speed_series_ms(w, _rng(1), n, t_h, local_h, doy, None)
    b = W.speed_series_ms(w, _rng(1), n, t_h, local_h, doy, None)
    c = W.speed_series_ms(w, _rng(2), n, t_h, local_h, doy, None)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(a.mean() / w["mean_speed_ms"] - 1.0) < 0.12          # 60 days of a persistent AR(1)
    hourly = a.reshape(-1, 60).mean(axis=1)
    assert np.corrcoef(hourly[:-1], hourly[1:])[0, 1] > 0.9         # weather persists hour to hour
    # a longer run only adds days: the first day is the same
    short = W.speed_series_ms(w, _rng(1), 1440, t_h[:1440], local_h[:1440], doy[:1440], None)
    assert np.allclose(short, a[:1440])


def test_market_correlation_ties_the_turbine_to_the_regional_wind():
    w = _wind()
    n = 30 * 1440
    t_h = np.arange(n) / 60.0
    z = W.ar1_unit(np.random.default_rng(9).standard_normal(n), 0.97 ** (1 / 60))
    v = W.speed_series_ms(w, _rng(1), n, t_h, t_h % 24, np.full(n, 15.0), z)
    assert np.corrcoef(v, z)[0, 1] > 0.5
    assert abs(np.std(z) - 1.0) < 0.25                             # unit variance driver


def test_turbine_curve_is_the_library_shape_scaled_to_rated():
    w = _wind()
    speeds, kw = W.turbine_curve(w)
    assert kw.max() == pytest.approx(w["rated_kw"] * w["count"])
    assert kw[speeds < 1.5].max() == 0.0                           # below cut-in
    v = np.array([0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 40.0])
    p = W.power_kw(w, v, np.full(len(v), 1.225))
    assert p[0] == 0.0 and p[-1] == 0.0                            # calm and beyond cut-out
    assert np.all(np.diff(p[:-1]) >= 0.0) and p.max() <= w["rated_kw"]
    cold = W.power_kw(w, v, np.full(len(v), 1.35))
    assert cold[2] > p[2]                                          # dense air: more power below rated


def test_density_and_hub_height():
    w = _wind()
    rho = W.density_kg_m3(w, np.array([-15.0, 25.0]), 20.0)
    assert rho[0] > 1.3 > 1.2 > rho[1]
    v_hub = W.hub_speed_ms(w, np.array([7.0]))
    assert v_hub[0] < 7.0                                           # hub at 50 m below the 100 m atlas height
    assert v_hub[0] == pytest.approx(7.0 * math.log(50 / 0.05) / math.log(100 / 0.05), rel=1e-6)


def test_physics_wind_serves_load_and_is_shed_after_pv():
    # load 50, PV 30, wind 60, battery idle, export 10: surplus 40 -> export 10, PV cut 30 (all), wind cut 0
    f = balance(50.0, 30.0, 100.0, 0.0, 100.0, 100.0, False, 0.0, 0.0, 0.0, True, 100.0, 10.0, wind_avail_kw=60.0)
    assert f.grid_kw == pytest.approx(-10.0)
    assert f.pv_kw == pytest.approx(0.0) and f.wind_kw == pytest.approx(60.0 - 0.0)
    # more wind than PV can shed: the turbines pitch out the rest
    f = balance(50.0, 30.0, 100.0, 0.0, 100.0, 100.0, False, 0.0, 0.0, 0.0, True, 100.0, 10.0, wind_avail_kw=90.0)
    assert f.pv_kw == 0.0 and f.wind_kw == pytest.approx(60.0) and f.wind_curtailed_kw == pytest.approx(30.0)
    # short: wind first like PV, the grid the rest
    f = balance(50.0, 0.0, 100.0, 0.0, 100.0, 100.0, False, 0.0, 0.0, 0.0, True, 100.0, 10.0, wind_avail_kw=20.0)
    assert f.grid_kw == pytest.approx(30.0) and f.unserved_kw == 0.0


def test_scenario_checks_name_the_key(tmp_path: Path):
    text = (Path(__file__).parents[1] / "profiles/scenarios" / f"{SCN}.toml").read_text()
    site = str(Path(__file__).parents[1] / "profiles/sites/nordic-edge-wind.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('turbine_type = "E-53/800"', 'turbine_type = "E-999/1"')
                   .replace('site = "nordic-edge-wind"', f'site = "{site}"'))
    with pytest.raises(ProfileError, match=r"wind\.turbine_type.*E-53/800"):
        load_scenario(bad)
    no_meter = tmp_path / "no_meter.toml"
    no_meter.write_text(text.replace('site = "nordic-edge-wind"',
                                     f'site = "{Path(site).with_name("nordic-wind.toml")}"'))
    with pytest.raises(ProfileError, match="wind_meter"):
        load_scenario(no_meter)


def test_ledger_counts_wind_as_on_site_renewable():
    cfg = load_scenario(SCN).site
    k = Constants.from_site(cfg)
    v = [0.0] * N_POINTS
    q = [Q_OK] * N_POINTS
    v[INDEX["it_kw"]], v[INDEX["cooling_kw"]], v[INDEX["aux_kw"]] = 90.0, 5.0, 5.0
    v[INDEX["wind_kw"]], v[INDEX["pv_kw"]], v[INDEX["grid_kw"]] = 70.0, 10.0, 20.0
    v[INDEX["pv_available_kw"]] = 10.0
    iv = Interval(0.0)
    iv.add(v, q, 0.0, 900.0, k, None)
    assert iv.e["pv"] == pytest.approx(80.0 * 0.25)                 # PV + wind, on-site renewable
    assert iv.e["pv_avail"] == pytest.approx(80.0 * 0.25)           # wind is not curtailment
    assert iv.alloc[0][0] == pytest.approx(80.0 * 0.25)             # to the loads first
    q[INDEX["wind_kw"]] = Q_STALE                                   # no wind meter: as before
    iv2 = Interval(0.0)
    iv2.add(v, q, 0.0, 900.0, k, None)
    assert iv2.e["pv"] == pytest.approx(10.0 * 0.25)


def test_series_carry_wind_only_with_a_wind_section():
    from tools.sim.exogenous import build_series

    s = build_series(load_scenario(SCN), 2.0, 1)
    assert s.wind_kw is not None and len(s.wind_kw) == len(s.it_kw) and s.wind_kw.max() <= 250.0
    assert build_series(load_scenario("nordic-wind"), 2.0, 1).wind_kw is None
