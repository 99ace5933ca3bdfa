"""Devices that offer only what their register maps carry: the controller must do as well with them.

A Deep Sea GenComm set has run/stop keys only (no kW setpoint), so it follows the load; a SunSpec 103/123
inverter does not report the power it could give, so a surplus its own export limiter cuts is invisible.
These are the field devices of inner-mongolia-mine and exactly what a ``--wire`` run drives. Before the
controller steered a load-following set through the battery setpoint and probed for hidden PV, a 24 h
run with them drained the battery to 3 % in the evening outage and curtailed 160 kWh of PV.
"""
import pytest

from tools.sim.physics import balance
from tools.sim.runner import run_sim
from tools.sim.scenario import load_scenario

SCENARIO = "inner-mongolia-mine"
HOURS = 24.0       # one morning genset run with the grid capped, a sunny noon, the evening outage


@pytest.fixture(scope="module")
def runs():
    ideal = run_sim(load_scenario(SCENARIO), hours=HOURS, seed=1, strategy="rule")
    real = run_sim(load_scenario(SCENARIO), hours=HOURS, seed=1, strategy="rule", as_profiles=True)
    return ideal, real


def test_load_following_set_carries_the_island_before_the_battery():
    # island, set running at 24 kW minimum, the controller asks the battery to charge 15 kW
    f = balance(65.0, 0.0, 100.0, -15.0, 250.0, 250.0, True, 0.0, 24.0, 80.0, False, 54.0, 0.0,
                gen_follows_load=True)
    assert f.genset_kw == pytest.approx(80.0) and f.battery_kw == pytest.approx(-15.0) and f.unserved_kw == 0.0
    # the same with a set that holds its (absent) setpoint: the grid-forming PCS drains instead
    f = balance(65.0, 0.0, 100.0, -15.0, 250.0, 250.0, True, 0.0, 24.0, 80.0, False, 54.0, 0.0)
    assert f.genset_kw == pytest.approx(24.0) and f.battery_kw == pytest.approx(41.0)


def test_load_following_set_holds_the_grid_at_its_import_level():
    # grid up (feeder 54 kW, set commissioned at 52 kW import), battery charging 65 kW
    f = balance(67.0, 0.0, 100.0, -65.0, 250.0, 250.0, True, 0.0, 24.0, 80.0, True, 54.0, 0.0,
                gen_follows_load=True, gen_import_level_kw=52.0)
    assert f.grid_kw == pytest.approx(52.0) and f.genset_kw == pytest.approx(80.0)


def test_profile_limited_devices_give_the_ideal_devices_kpis(runs):
    ideal, real = runs
    a, b = ideal.kpis, real.kpis
    assert b["unserved_kwh"] == a["unserved_kwh"] == 0.0
    assert b["soc_min_pct"] >= a["soc_min_pct"] - 1.0          # the outage does not drain the battery
    assert abs(b["soc_end_pct"] - a["soc_end_pct"]) <= 2.0
    assert b["pv_curtailed_kwh"] <= a["pv_curtailed_kwh"] + 1.0  # no PV lost to an invisible limiter
    for k in ("grid_import_kwh", "diesel_litres", "co2_kg", "cost"):
        assert b[k] == pytest.approx(a[k], rel=0.03), k
    assert b["genset_starts"] == a["genset_starts"]
    assert b["grid_peak_kw"] <= a["grid_peak_kw"] + 0.5          # the set's import level keeps the cap
