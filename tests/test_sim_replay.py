"""The simulator through the real loop, the KPIs, and record/replay bit for bit (also after a tear)."""
import json
import shutil

import numpy as np
import pytest

from controller.cli import main
from controller.replay import iter_records, open_recording, verify, Recording
from tools.sim.runner import run_sim
from tools.sim.scenario import load_scenario

KPI_KEYS = ("grid_import_kwh grid_peak_kw pv_used_kwh pv_curtailed_kwh diesel_kwh diesel_litres "
            "renewable_share co2_kg cost unserved_kwh soc_min_pct soc_max_pct interlock_trips "
            "cycle_overruns cycle_p99_ms").split()


@pytest.fixture(scope="module")
def imm_rule_48h(tmp_path_factory):
    out = tmp_path_factory.mktemp("imm-rule")
    result = run_sim(load_scenario("inner-mongolia-mine"), hours=48, seed=1, strategy="rule", out_dir=out)
    return out, result


def test_rule_serves_every_kwh_over_48h_and_writes_kpis(imm_rule_48h):
    out, result = imm_rule_48h
    kpis = json.loads((out / "kpis.json").read_text())
    assert all(k in kpis for k in KPI_KEYS)
    assert kpis["unserved_kwh"] == 0.0
    assert kpis["genset_starts"] >= 1 and kpis["diesel_litres"] > 0      # outage + low SOC need the set
    assert kpis["soc_min_pct"] >= load_scenario("inner-mongolia-mine").site["battery"]["soc_min_pct"]
    # energy closes: sources = sinks + battery losses
    m = result.site.meters
    sources = m.grid_import_kwh + m.pv_used_kwh + result.site.genset.energy_kwh + m.battery_discharge_kwh
    sinks = m.load_kwh - m.unserved_kwh + m.grid_export_kwh + m.battery_charge_kwh
    assert sources == pytest.approx(sinks, rel=1e-6)


def test_no_strategy_leaves_load_unserved_in_the_outage(tmp_path):
    """Without a strategy nothing prepares for the outage: the PCS backup drains the battery to its hard
    floor and load is lost; only the force-charge interlock (safety, active under every strategy) then
    starts the genset, too late to serve everything."""
    scn = load_scenario("inner-mongolia-mine")
    result = run_sim(scn, hours=24, seed=1, strategy="none")
    kpis = result.kpis
    assert kpis["unserved_kwh"] > 1.0
    assert kpis["soc_min_pct"] <= scn.site["battery"]["soc_min_pct"] + 1.0
    assert kpis["genset_starts"] >= 1                     # the interlock, not the strategy, started it
    assert kpis["soc_end_pct"] < 15.0                     # and nobody recharged the battery afterwards


def test_same_seed_same_kpis():
    a = run_sim(load_scenario("gansu-edge"), hours=2, seed=7)
    b = run_sim(load_scenario("gansu-edge"), hours=2, seed=7)
    skip = {"cycle_p99_ms", "cycle_max_ms", "wall_s", "speedup_x", "cycle_overruns"}
    assert {k: v for k, v in a.kpis.items() if k not in skip} == {k: v for k, v in b.kpis.items() if k not in skip}


def test_replay_of_48h_recording_verifies(imm_rule_48h, capsys):
    out, result = imm_rule_48h
    assert main(["replay", str(out / "recording"), "--verify"]) == 0
    assert "172800 cycles replayed" in capsys.readouterr().out


@pytest.mark.parametrize("cut_fraction", [0.5, 0.9137, 0.99991])
def test_truncated_recording_verifies_up_to_the_tear(imm_rule_48h, tmp_path, cut_fraction):
    out, _ = imm_rule_48h
    src = out / "recording"
    size = src.stat().st_size
    torn = tmp_path / "torn"
    with open(src, "rb") as f:
        torn.write_bytes(f.read(int(size * cut_fraction)))
    result = verify(torn)
    assert result.ok, result.message
    assert 0 < result.cycles < 172800
    info = open_recording(torn)
    records = list(iter_records(torn, info))
    assert len(records) == result.cycles
    assert records[-1].index == result.cycles - 1


def test_replay_detects_a_changed_controller(imm_rule_48h, tmp_path, capsys):
    """A recording replayed with other params (as if the code or profile changed) must not verify."""
    from controller.core import layout as L
    from controller.replay import Recorder

    out, _ = imm_rule_48h
    rec = open_recording(out / "recording")
    params = rec.params.copy()
    params[L.P_RESERVE_PCT] += 10.0
    forged = tmp_path / "forged"
    recorder = Recorder(forged, params, rec.state0)
    for i, r in enumerate(iter_records(out / "recording")):
        recorder.append(r.image, r.commands, r.events, len(r.events))
        if i > 20000:
            break
    recorder.close()
    assert main(["replay", str(forged), "--verify"]) == 1
    assert "MISMATCH: cycle" in capsys.readouterr().out


def test_replay_rejects_a_file_that_is_not_a_recording(tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world")
    assert main(["replay", str(junk), "--verify"]) == 2
    assert "not an edge-ems recording" in capsys.readouterr().err


def test_sim_cli_writes_kpis_and_recording(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["sim", "--scenario", "nordic-wind", "--hours", "1", "--strategy", "rule", "--out", str(out)]) == 0
    kpis = json.loads((out / "kpis.json").read_text())
    assert kpis["scenario"] == "nordic-wind" and kpis["strategy"] == "rule"
    assert (out / "recording").stat().st_size > 0
    assert main(["replay", str(out / "recording"), "--verify"]) == 0


def test_first_day_does_not_depend_on_run_length():
    """A 24 h run is the first day of the 48 h run: same seed, same site, same day."""
    from tools.sim.exogenous import build_series
    scn = load_scenario("inner-mongolia-mine")
    day, two = build_series(scn, 24, 5), build_series(scn, 48, 5)
    n = 24 * 60
    for name in ("it_kw", "ambient_c", "pv_avail_kw", "price_per_kwh", "co2_kg_per_kwh", "grid_up"):
        assert np.array_equal(getattr(day, name)[:n], getattr(two, name)[:n]), name
