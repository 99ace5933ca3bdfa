"""Hand-worked intervals: location-based, market-based, the battery pool, CFE (capped per hour), per-job.

A synthetic site (no simulator): the hook is fed process images every 60 s. Numbers in the asserts are
worked out by hand in the comments (kW x 0.25 h per interval).

Profile: grid 0.5 kg/kWh (profile), pushed intensity 0.6 when fresh; diesel 2.66 kg/L, fuel curve
0.244 L/kWh + 3.7 L/h; battery 100 kWh, eta 0.96 / 0.96, initial pool intensity 0.5 kg/kWh.
Contracts, in order: PPA "ppa" 8 kW block, factor 0, hourly matched; certificate "gec" 0.3 kWh,
factor 0, not hourly matched; residual mix 0.8 kg/kWh; grid CFE share 0.
"""
import pytest

from controller.carbon.hook import JobBook, make_carbon_hook
from controller.carbon.ledger import verify
from controller.carbon.report import build_report
from controller.points import INDEX, Q_OK, Q_STALE, new_image

T0 = 1767225600.0          # 2026-01-01T00:00:00Z
CFG = {
    "site": {"name": "hand", "gateway_id": "gw-hand"},
    "emissions": {"grid_kg_per_kwh": 0.5, "grid_factor_source": "test", "grid_factor_year": 2023,
                  "diesel_kg_per_l": 2.66, "diesel_source": "DEFRA 2024"},
    "genset": {"fuel_l_per_kwh": 0.244, "fuel_l_per_h_on": 3.7},
    "battery": {"capacity_kwh": 100.0, "eta_charge": 0.96, "eta_discharge": 0.96},
}
CARBON = {"residual_mix_kg_per_kwh": 0.8, "battery_initial_kg_per_kwh": 0.5,
          "contracts": [{"name": "ppa", "kind": "ppa", "kw": 8.0},
                        {"name": "gec", "kind": "certificate", "volume_kwh": 0.3}]}


class FakeLoop:
    period_s = 60.0


def image(t, soc=None, co2=None, grid_ok=True, **kw):
    img = new_image()
    img["t_s"] = t
    vals = dict(grid_kw=0.0, pv_kw=0.0, pv_available_kw=None, battery_kw=0.0, genset_kw=0.0, genset_running=0.0,
                it_kw=50.0, cooling_kw=6.0, aux_kw=4.0)
    vals.update(kw)
    if vals["pv_available_kw"] is None:
        vals["pv_available_kw"] = vals["pv_kw"]
    for name, x in vals.items():
        img["value"][INDEX[name]] = x
        img["quality"][INDEX[name]] = Q_OK
    if not grid_ok:
        img["quality"][INDEX["grid_kw"]] = Q_STALE
    if soc is not None:
        img["value"][INDEX["soc_pct"]] = soc
        img["quality"][INDEX["soc_pct"]] = Q_OK
    if co2 is not None:
        img["value"][INDEX["grid_co2_kg_per_kwh"]] = co2
        img["quality"][INDEX["grid_co2_kg_per_kwh"]] = Q_OK
    return img


def feed(hook, t_start, soc_first, soc_last, **kw):
    """15 images closing the spans of one interval; the BMS answers only at the first and last."""
    for i in range(1, 16):
        soc = soc_first if i == 1 else soc_last if i == 15 else None
        hook(FakeLoop, image(t_start + 60.0 * i, soc=soc, **kw), None, None, 0)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    d = tmp_path_factory.mktemp("hand")
    jobs = JobBook([{"id": "j1", "kw": 20.0, "start_s": T0, "end_s": T0 + 1800.0, "label": "render"}])
    sent = []
    hook = make_carbon_hook(CFG, d / "ledger", d / "gw.key", jobs=jobs, carbon=CARBON,
                            clock_status=lambda: "synchronised", on_record=sent.append)
    hook(FakeLoop, image(T0), None, None, 0)                        # first image: no span yet
    # A 00:00-00:15  PV 70, loads 60, battery charging 20, grid 10 (pushed intensity 0.6, fresh)
    feed(hook, T0, 50.0, 54.8, pv_kw=70.0, battery_kw=-20.0, grid_kw=10.0, co2=0.6)
    # B 00:15-00:30  grid out: battery discharging 36, genset 24
    feed(hook, T0 + 900, 54.8, 45.425, battery_kw=36.0, genset_kw=24.0, genset_running=1.0)
    # C 01:00-01:15  as A, but the pushed intensity is stale and the site meter silent (grid from the balance)
    hook(FakeLoop, image(T0 + 3600.0, soc=45.425), None, None, 0)   # data resumes after a 30 min gap
    feed(hook, T0 + 3600, 45.425, 50.225, pv_kw=70.0, battery_kw=-20.0, grid_kw=999.0, grid_ok=False)
    hook.close()
    res = verify(d / "ledger", keep=True)
    assert res.ok, res.message
    return {p["t_start"][11:16]: p for p in res.payloads if p["kind"] == "interval"}, res.payloads, d / "ledger", sent


def test_interval_a_location_market_pool(ledger):
    recs, *_ = ledger
    a = recs["00:00"]
    e = a["energy_kwh"]
    # allocation: PV -> loads 60 kW, PV -> charge 10 kW, grid -> charge 10 kW; x 0.25 h
    assert e["to_loads"] == {"pv": 15.0, "battery": 0.0, "grid": 0.0, "diesel": 0.0}
    assert e["to_battery"]["pv"] == pytest.approx(2.5) and e["to_battery"]["grid"] == pytest.approx(2.5)
    c = a["co2_kg"]
    assert c["scope2_location"] == pytest.approx(2.5 * 0.6)            # pushed intensity, fresh
    assert a["grid_factor"]["pushed_s"] == 900.0
    # market: PPA covers 8 kW x 0.25 h = 2 kWh, the certificate its 0.3 kWh, residual 0.2 kWh x 0.8
    assert a["market"]["covered_kwh"] == {"ppa": 2.0, "gec": 0.3}
    assert c["scope2_market"] == pytest.approx(0.2 * 0.8)
    assert c["loads_location"] == 0.0 and c["scope1_diesel"] == 0.0
    # pool: initial 50 kWh (SOC 50 % of 100) at 0.5 -> 25 kg; + 20 kW x 0.25 h x 0.96 = 4.8 kWh stored
    assert a["pool"]["kwh"] == pytest.approx(54.8)
    assert a["pool"]["kg_location"] == pytest.approx(25.0 + 1.5)
    assert a["pool"]["kg_market"] == pytest.approx(25.0 + 0.16)
    assert a["pool"]["cfe_kwh"] == pytest.approx(2.5 * 0.96)           # the PV share of the charge
    # CFE inputs: PV to loads 15, PPA volume 2 (hourly matched), load 15
    assert a["cfe"] == {"onsite_kwh": 15.0, "contract_kwh": 2.0, "grid_kwh": 0.0, "load_kwh": 15.0, "grid_pushed_s": 0.0}
    assert e["closure"]["residual"] == pytest.approx(0.0, abs=1e-9)
    assert a["jobs"]["j1"]["it_kwh"] == 5.0 and a["jobs"]["j1"]["kg_location"] == 0.0


def test_interval_b_battery_pool_and_diesel(ledger):
    recs, *_ = ledger
    b = recs["00:15"]
    c = b["co2_kg"]
    # diesel: (0.244 x 24 + 3.7) L/h x 0.25 h = 2.389 L x 2.66 = 6.35474 kg
    assert b["diesel_l"] == pytest.approx(2.389)
    assert c["scope1_diesel"] == pytest.approx(6.35474)
    assert c["scope2_location"] == 0.0 and c["scope2_market"] == 0.0
    # battery: 36 kW x 0.25 h = 9 kWh out = 9 / 0.96 = 9.375 kWh drawn of 54.8 kWh in the pool
    assert c["battery_discharge_location"] == pytest.approx(26.5 * 9.375 / 54.8)     # 4.533531
    assert c["battery_discharge_market"] == pytest.approx(25.16 * 9.375 / 54.8)      # 4.304288
    assert c["loads_location"] == pytest.approx(4.533531 + 6.35474, abs=1e-5)
    assert c["loads_market"] == pytest.approx(4.304288 + 6.35474, abs=1e-5)
    # clean share of the drawn energy 2.4 / 54.8 -> 9 x 2.4 / 54.8 = 0.394161 kWh clean to the loads
    assert b["cfe"]["onsite_kwh"] == pytest.approx(0.394161, abs=1e-6)
    assert b["cfe"]["contract_kwh"] == 2.0
    assert b["pool"]["kwh"] == pytest.approx(45.425)
    assert b["pool"]["kg_location"] == pytest.approx(26.5 - 4.533531, abs=1e-5)
    # job j1: 20 of 50 kW IT -> 40 % of the loads' 15 kWh and of their 10.888271 kg
    j = b["jobs"]["j1"]
    assert j["kwh"] == pytest.approx(6.0) and j["kg_location"] == pytest.approx(0.4 * 10.888271, abs=1e-5)
    assert j["label"] == "render"


def test_interval_c_profile_factor_estimated_grid(ledger):
    recs, *_ = ledger
    c = recs["01:00"]
    # meter silent: grid = loads 60 + charge 20 - PV 70 = 10 kW -> 2.5 kWh; stale intensity -> profile 0.5
    assert c["estimated_s"] == 900.0 and c["clock_jumps"] == 1
    assert c["energy_kwh"]["sources"]["grid"] == pytest.approx(2.5)
    assert c["co2_kg"]["scope2_location"] == pytest.approx(2.5 * 0.5)
    assert c["grid_factor"]["profile_s"] == 900.0
    # certificate spent in A: PPA 2 kWh, residual 0.5 x 0.8
    assert c["market"]["covered_kwh"] == {"ppa": 2.0}
    assert c["co2_kg"]["scope2_market"] == pytest.approx(0.4)


def test_hourly_cfe_capped_and_weighted(ledger):
    _, payloads, *_ = ledger
    rep = build_report(payloads)
    # hour 00: (15 + 2) + (0.394161 + 2) clean over 30 kWh = 64.647 %; hour 01: 17 / 15 -> capped at 100 %
    # weighted by consumption: (19.394161 + 15) / (30 + 15) = 76.431 %
    assert rep["total"]["kpi"]["cfe_pct"] == pytest.approx(100 * (19.394161 + 15) / 45, abs=0.01)
    hour0 = build_report(payloads, T0, T0 + 3600)
    assert hour0["total"]["kpi"]["cfe_pct"] == pytest.approx(100 * 19.394161 / 30, abs=0.01)
    assert build_report(payloads, T0 + 3600, None)["total"]["kpi"]["cfe_pct"] == 100.0
    assert rep["total"]["scope1_kg"] == pytest.approx(6.35474, abs=1e-3)
    assert rep["total"]["scope2_location_kg"] == pytest.approx(1.5 + 1.25, abs=1e-3)
    assert rep["total"]["scope2_market_kg"] == pytest.approx(0.16 + 0.4, abs=1e-3)
    assert rep["jobs"]["j1"]["it_kwh"] == pytest.approx(10.0)
    # IT 50 kW x 0.75 h = 37.5 kWh, j1 took 10; loads 45 kWh, j1 40 % of A and B (6 + 6); the loads' kg
    # (all in B: 10.888271) minus j1's 40 %
    rest = rep["jobs"]["(unattributed)"]
    assert rest["it_kwh"] == pytest.approx(27.5) and rest["kwh"] == pytest.approx(45.0 - 6.0 - 6.0)
    assert rest["kg_location"] == pytest.approx(0.6 * 10.888271, abs=1e-3)


def test_intervals_go_to_the_uplink_as_they_close(ledger):
    """Each closed interval reaches on_record as an uplink `interval` body (required keys and types of
    controller/uplink/schemas/interval.json) carrying its signed ledger line."""
    import json
    from pathlib import Path
    _, payloads, path, sent = ledger
    assert [b["ledger_n"] for b in sent] == [p["n"] for p in payloads if p["kind"] == "interval"]
    schema = json.loads((Path(__file__).parents[1] / "controller/uplink/schemas/interval.json").read_text())
    body_schema = schema["properties"]["body"]
    lines = path.read_bytes().decode().splitlines()
    for b in sent:
        assert set(body_schema["required"]) <= b.keys()
        for key, spec in body_schema["properties"].items():
            types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
            ok = {"number": (int, float), "boolean": (bool,), "null": (type(None),)}
            assert isinstance(b[key], tuple(t for name in types for t in ok[name])), (key, b[key])
        assert b["provisional"] is False and b["ledger_line"] in lines
    a = sent[0]
    assert a["co2_kg"] == pytest.approx(1.5) and a["grid_import_kwh"] == pytest.approx(2.5)
    assert a["renewable_share"] == pytest.approx(1.0) and a["end_s"] - a["start_s"] == 900.0


def test_restart_continues_the_chain_the_pool_and_the_certificates(ledger, tmp_path):
    """A new hook on the same ledger (a restart) resumes the counter, the battery pool and what is left of
    the certificate volume from the last interval record."""
    import shutil
    recs, payloads, path, _ = ledger
    copy = tmp_path / "ledger"
    shutil.copy(path, copy)
    shutil.copy(path.with_name("gw.key"), tmp_path / "gw.key")
    hook = make_carbon_hook(CFG, copy, tmp_path / "gw.key", carbon=CARBON, clock_status=lambda: "synchronised")
    t = T0 + 7200.0
    hook(FakeLoop, image(t, soc=50.225), None, None, 0)
    feed(hook, t, 50.225, 50.225, pv_kw=60.0)                       # PV serves the loads: pool untouched
    hook.close()
    res = verify(copy, keep=True)
    assert res.ok, res.message
    last = res.payloads[-1]
    assert last["n"] == payloads[-1]["n"] + 1 and last["t_start"] == "2026-01-01T02:00:00Z"
    assert last["pool_start"] == recs["01:00"]["pool"]
    assert last["market"]["certificates_left_kwh"] == {"gec": 0.0}
