"""tools/bench/cases.py: the case metrics on hand-made logs, every case scenario loads, and a bounded run
of the wind case (1 h, mpc and none) whose ledger counts the turbine as renewable. The 48 h / year figures
are docs/cases.md's (the bench), not a test."""
from __future__ import annotations

import numpy as np
import pytest

from tools.bench import cases as C
from tools.sim.scenario import load_scenario


def _log(minutes: int, load=50.0, grid=10.0, price=0.3, pv_avail=0.0, unserved=0.0) -> np.ndarray:
    log = np.zeros((minutes, 12))
    log[:, C._LOAD], log[:, C._GRID], log[:, C._PRICE] = load, grid, price
    log[:, C._PV_AVAIL], log[:, C._UNSERVED] = pv_avail, unserved
    return log


def test_peak_grid_dependence_reads_the_highest_price_minutes():
    log = _log(60)
    log[:30, C._PRICE] = 0.95           # peak half: grid 40 of 50 kW
    log[:30, C._GRID] = 40.0
    log[30:, C._GRID] = -5.0            # off-peak export does not count
    assert C.peak_grid_dependence(log) == pytest.approx(0.8)


def test_relevant_periods_are_where_the_resource_is_short_of_the_load():
    log = _log(45, load=50.0, pv_avail=10.0)
    wind = np.zeros((45, 2))
    wind[15:30, 0] = 45.0               # interval 1: 55 kW available > 50 kW load (5 of them shed)
    wind[15:30, 1] = 0.0
    wind[30:45, 0], wind[30:45, 1] = 30.0, 20.0   # interval 2: 30 used + 20 shed + 10 PV = 60 > 50
    mask = C.relevant_mask(log, wind, 3)
    assert mask.tolist() == [True, False, False]


def test_every_case_scenario_loads():
    for case in C.CASES.values():
        scn = load_scenario(case["scenario"])
        assert scn.name == case["scenario"]
    assert load_scenario("case-nordic-edge-wind")["wind"]["rated_kw"] > 0


def test_wind_case_bounded_run(tmp_path):
    r = C.run_case("nordic-edge-wind", 1.0, 1, tmp_path, study=True)     # 10 s cycles: 360 a run
    rows = {row["metric"]: row for row in r["rows"]}
    assert rows["ledger_intervals"]["mpc"] >= 3 and rows["ledger_intervals"]["none"] >= 3   # the last may be partial
    for strategy in ("none", "mpc"):
        run = r["runs"][strategy]
        k = run["kpis"]
        assert k["wind_used_kwh"] > 0 and k["pv_used_kwh"] == 0.0          # a January night: wind only
        # the ledger counts the turbine as on-site renewable reaching the loads
        assert run["metrics"]["renewable_all"] > 0.5 * min(k["wind_used_kwh"], k["load_kwh"])
        assert run["wall_s"] > 0
    text = C.format_case(r)
    assert "direct renewable use in the relevant periods" in text and "+35 %" in text
    # the same table from the runs' own files (how a year, run and timed in its own process, is tabulated)
    again = C.case_from_runs("nordic-edge-wind", tmp_path)
    assert again["rows"] == r["rows"] and again["hours"] == 1.0 and again["study"]
