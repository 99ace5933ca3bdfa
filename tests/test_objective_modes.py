"""Objective modes in the profile, the sim and the strategy (issue 16), and the stored-energy credit of
every run's kpis.json: [control] objective, `edge-ems sim --objective` over it, a bad value named, the
strategy's carbon instance (weights, terminal value in kg, no money-only peak reserve), the credit's
arithmetic on a constructed run."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from controller.cli import main
from controller.config import load_site
from controller.core import layout as L
from controller.core import mpc as M
from controller.core.mpc_strategy import build_instance, build_weighted, mpc_learn
from controller.params import build_params, objective_kappa
from controller.replay import open_recording
from tests.images import image
from tools.sim.physics import Meters
from tools.sim.runner import kpis_of

SITES = Path(__file__).resolve().parents[1] / "profiles" / "sites"
SCENARIOS = Path(__file__).resolve().parents[1] / "profiles" / "scenarios"
T = datetime(2026, 1, 20, 9, 0, tzinfo=timezone.utc).timestamp()


def _bad_site(tmp_path, value='"greenest"'):
    text = (SITES / "inner-mongolia-mine.toml").read_text()
    text = re.sub(r'(?m)^(strategy = .*)$', rf'\1\nobjective = {value}', text, count=1)
    path = tmp_path / "bad-site.toml"
    path.write_text(text)
    return path


def test_profile_objective_defaults_to_cost_and_a_bad_one_is_named(tmp_path, capsys):
    cfg = load_site("inner-mongolia-mine")
    assert cfg["control"]["objective"] == "cost"
    assert build_params(cfg, "mpc", t_ref_s=T)[L.P_OBJECTIVE] == 0.0
    assert main(["check", "--site", str(_bad_site(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "control.objective" in err and "greenest" in err
    # the same profile behind a scenario: `edge-ems sim` stops before anything runs, exit 2
    scn = (SCENARIOS / "inner-mongolia-mine.toml").read_text()
    scn = re.sub(r'(?m)^site = .*$', f'site = "{_bad_site(tmp_path, "3")}"', scn, count=1)
    (tmp_path / "bad-scn.toml").write_text(scn)
    assert main(["sim", "--scenario", str(tmp_path / "bad-scn.toml"), "--hours", "0.01", "--strategy", "mpc"]) == 2
    assert "control.objective" in capsys.readouterr().err


def test_sim_objective_flag_is_checked_by_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sim", "--scenario", "inner-mongolia-mine", "--objective", "greenest"])
    assert exc.value.code == 2
    assert "--objective" in capsys.readouterr().err


def test_sim_objective_overrides_the_profile(tmp_path):
    """mpc with --objective carbon on a cost profile: the recording's params and kpis.json say carbon."""
    out = tmp_path / "mpc"
    assert main(["sim", "--scenario", "inner-mongolia-mine", "--hours", "0.05", "--strategy", "mpc",
                 "--objective", "carbon", "--out", str(out)]) == 0
    kpis = json.loads((out / "kpis.json").read_text())
    assert kpis["objective"] == "carbon" and kpis["strategy"] == "mpc"
    params = open_recording(out / "recording").params
    assert params[L.P_OBJECTIVE] == 1.0
    assert params[L.P_OBJECTIVE_KAPPA] == pytest.approx(objective_kappa(load_site("inner-mongolia-mine")))
    assert {"co2_adjusted_kg", "cost_adjusted", "stored_credit_kwh"} <= set(kpis)


def test_oracle_objective_overrides_the_profile(tmp_path):
    out = tmp_path / "oracle"
    assert main(["sim", "--scenario", "gansu-edge", "--hours", "2", "--strategy", "oracle",
                 "--objective", "carbon", "--out", str(out)]) == 0
    kpis = json.loads((out / "kpis.json").read_text())
    assert kpis["objective"] == "carbon" and kpis["oracle"]["objective_mode"] == "carbon"
    assert kpis["unserved_kwh"] == 0.0 and "co2_adjusted_kg" in kpis


def test_kappa_is_the_grid_factor_over_the_mean_tariff():
    """The grid's static factor over the tariff table's mean price; the genset's fuel if that is not positive."""
    cfg = load_site("inner-mongolia-mine")
    price = cfg["tariff"]["import_price_per_kwh"]
    assert objective_kappa(cfg) == pytest.approx(cfg["emissions"]["grid_kg_per_kwh"] / np.mean(price))
    assert objective_kappa(load_site("nordic-wind")) == pytest.approx(0.214 / 0.09)
    cfg["tariff"]["import_price_per_kwh"] = [0.0] * 24
    assert objective_kappa(cfg) == pytest.approx(cfg["emissions"]["diesel_kg_per_l"] / cfg["genset"]["fuel_price_per_l"])
    cfg["control"]["voll_per_kwh"] = 80.0
    assert build_params(cfg, "mpc", t_ref_s=T)[L.P_UNSERVED_PENALTY] == 80.0     # the VOLL is the profile's


def _weighted(cfg, objective):
    cfg["control"]["objective"] = objective
    params = build_params(cfg, "mpc", t_ref_s=T)
    st = L.new_state(T - 1.0)
    value, quality = image(soc_pct=50.0, grid_kw=35.0, pv_kw=10.0, it_kw=40.0, cooling_kw=5.0, grid_co2_kg_per_kwh=0.05,
                           grid_price=0.1)
    mpc_learn(params, st, T, 1.0, value, quality, 45.0, True, 10.0)
    args = (params, st, T, value, quality, 50.0, 45.0, True, False, True, 100.0, 20.0)
    return params, build_weighted(*args), build_instance(*args)


def test_strategy_builds_the_carbon_instance():
    """nordic-wind (demand charge, genset): the carbon instance is the money instance + W x kg; the
    demand charge's peak reserve (a money hedge, 80 %) is gone; reliability terms in kg at kappa."""
    cfg = load_site("nordic-wind")
    params, (s_cost, p_cost, w0), legacy = _weighted(cfg, "cost")
    assert w0 == 0.0
    assert np.array_equal(legacy[0], s_cost) and np.array_equal(legacy[1], p_cost)
    _, (s_c, p_c, w), _ = _weighted(cfg, "carbon")
    assert w > 0.0
    kappa = params[L.P_OBJECTIVE_KAPPA]
    co2 = (s_c[M.S_GCOST] - s_cost[M.S_GCOST]) / w      # carbon price 0 on this site: money rows equal
    assert co2[0] == pytest.approx(0.05) and np.allclose(co2[1:], 0.214)  # measured now, then the prior
    assert p_c[M.P_UNS] == pytest.approx(w * kappa * params[L.P_UNSERVED_PENALTY])
    assert p_c[M.P_SF] == pytest.approx(w * kappa * params[L.P_RESERVE_PENALTY])
    # stored energy at the end: money value + W x (mean intensity x eta_d)
    eta_d = params[L.P_ETA_DISCHARGE]
    assert p_c[M.P_TV] == pytest.approx(p_cost[M.P_TV] + w * np.mean(co2) * eta_d, rel=1e-9)
    cap = params[L.P_CAPACITY_KWH]
    assert np.max(s_cost[M.S_FLOOR]) == pytest.approx(cap * 0.80)       # cost: the peak reserve
    assert np.max(s_c[M.S_FLOOR]) == pytest.approx(cap * 0.20)          # carbon: the site's reserve
    out, obj, _ = M.plan_kernel(s_c, p_c, M.PEAK_EVALS, 100)
    assert np.all(np.isfinite(out)) and np.isfinite(obj)


def test_peak_reserve_is_the_profiles_and_only_with_a_demand_charge(tmp_path, capsys):
    """[control] peak_reserve_pct sets the cost plan's soft floor where the tariff bills a peak (nordic-wind,
    80 % by default); a site without a demand charge (gansu-edge) keeps its own reserve; out of 0-100 the
    profile is refused with the key named."""
    cfg = load_site("nordic-wind")
    assert cfg["control"]["peak_reserve_pct"] == 80.0
    cfg["control"]["peak_reserve_pct"] = 60.0
    params, (s_cost, _, _), _ = _weighted(cfg, "cost")
    assert np.max(s_cost[M.S_FLOOR]) == pytest.approx(params[L.P_CAPACITY_KWH] * 0.60)
    g = load_site("gansu-edge")
    assert g["tariff"].get("peak_price_per_kw", 0.0) == 0.0
    params, (s_g, _, _), _ = _weighted(g, "cost")
    assert np.max(s_g[M.S_FLOOR]) == pytest.approx(      # _weighted plans with a 20 % reserve
        params[L.P_CAPACITY_KWH] * max(params[L.P_SOC_MIN_PCT], 20.0) / 100.0)
    text = (SITES / "nordic-wind.toml").read_text()
    text = re.sub(r'(?m)^(strategy = .*)$', r'\1\npeak_reserve_pct = 120', text, count=1)
    (tmp_path / "bad.toml").write_text(text)
    assert main(["check", "--site", str(tmp_path / "bad.toml")]) == 2
    assert "control.peak_reserve_pct" in capsys.readouterr().err


def test_stored_energy_credit_arithmetic():
    """A constructed run: 400 kWh battery from 50 % to 80 %, eta_d 0.95, mean intensity 0.3 over the
    run's minutes (the series goes on beyond them), mean price 0.2 -> credit 120 x 0.95 = 114 kWh,
    34.2 kg and 22.8 of money off the raw figures; an emptier end is debited by the same rule."""
    cfg = load_site("nordic-wind")
    minutes = 120
    co2 = np.concatenate([np.r_[np.full(60, 0.2), np.full(60, 0.4)], np.full(30, 9.0)])
    price = np.concatenate([np.r_[np.full(60, 0.1), np.full(60, 0.3)], np.full(30, 9.0)])
    meters = Meters(grid_import_kwh=100.0, pv_used_kwh=20.0, pv_avail_kwh=20.0, load_kwh=110.0, cost=30.0,
                    co2_kg_grid=40.0, soc_min_pct=50.0, soc_max_pct=80.0)
    scn = {"init": {"soc_pct": 50.0}, "scenario": {"name": "constructed"}}
    site = SimpleNamespace(meters=meters, genset=None, t_s=minutes * 60.0, scn=_Scn(scn, cfg),
                           battery=SimpleNamespace(capacity_kwh=400.0, soc_pct=80.0, eta_discharge=0.95),
                           series=SimpleNamespace(co2_kg_per_kwh=co2, price_per_kwh=price, cfe_pct=None))
    loop = SimpleNamespace(params=np.zeros(L.N_PARAMS), state=np.zeros(L.N_STATE),
                           stats=SimpleNamespace(as_dict=lambda: {"overruns": 0, "p99_ms": 0.0, "max_ms": 0.0,
                                                                  "cycles": 0}))
    k = kpis_of(site, loop, 2.0, 1.0)                 # no import metered in a 15-min window: no peak charge
    assert k["stored_start_kwh"] == 200.0 and k["stored_end_kwh"] == 320.0
    assert k["stored_credit_kwh"] == pytest.approx(114.0)
    assert k["credit_grid_kg_per_kwh"] == pytest.approx(0.3) and k["credit_price_per_kwh"] == pytest.approx(0.2)
    assert k["co2_kg"] == 40.0 and k["co2_adjusted_kg"] == pytest.approx(40.0 - 34.2)
    assert k["cost"] == pytest.approx(30.0) and k["cost_adjusted"] == pytest.approx(30.0 - 22.8)
    site.battery.soc_pct = 40.0                       # ends 40 kWh emptier: debited
    k = kpis_of(site, loop, 2.0, 1.0)
    assert k["stored_credit_kwh"] == pytest.approx(-38.0)
    assert k["co2_adjusted_kg"] == pytest.approx(40.0 + 38.0 * 0.3)
    assert k["cost_adjusted"] == pytest.approx(30.0 + 38.0 * 0.2)


class _Scn(dict):
    """A scenario stand-in: scn["init"], scn.site, scn.name."""

    def __init__(self, data, site):
        super().__init__(data)
        self.site = site

    @property
    def name(self):
        return self["scenario"]["name"]
