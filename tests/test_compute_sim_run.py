"""The simulated compute platform in a real `run_sim`: the cabinet's own compute hook defers a deferrable
job while the site is short, the physics draws nothing for it while held, the platform's guard starts it
at its latest start, it meets its deadline, and the ledger attributes its energy from measured per-job
power with the basis and the hours it was moved stated. Against the same run with flexibility off.

A small scenario (the mine's site, a night start with the battery below its outage reserve, so the site is
short from the first minute; no training batches): 2.2 simulated hours, ~2 x 3 s.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from controller.carbon.ledger import read_payloads
from controller.carbon.report import build_report
from tools.sim.runner import run_sim
from tools.sim.scenario import load_scenario

HOURS = 2.2
SCENARIO = """
[scenario]
name = "flex-night"
site = "inner-mongolia-mine"
start_utc = "2026-04-09T16:00:00Z"     # local midnight: no PV
hours = 2.2

[pv]
kwp = 150.0
tilt_deg = 35.0

[load]
it_idle_kw = 48.0
it_nameplate_kw = 100.0
inference_peak_kw = 25.0
inference_peak_hour = 13.0
training_jobs_per_day = 0.0
aux_kw = 3.0
noise_kw = 1.5

[init]
soc_pct = 30.0                        # below the 35 % outage reserve: the site is short now

[compute]
deadline_slack_h = 12.0
power_period_s = 15.0

[[events]]
kind = "job_announce"
at_h = 0.0
start_h = 0.25
duration_min = 60.0
kw = 20.0
deferrable = true
deadline_h = 2.0
note = "render, due in 2 h"
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flexrun")
    path = tmp / "flex-night.toml"
    path.write_text(SCENARIO)
    out = {}
    for name, compute in (("flex", None), ("noflex", {"flex": False})):
        res = run_sim(load_scenario(path), hours=HOURS, seed=1, strategy="rule", out_dir=tmp / name, compute=compute)
        rep = build_report(read_payloads(tmp / name / "ledger"))
        out[name] = (res, rep, json.loads((tmp / name / "compute.json").read_text()))
    return out


def test_the_held_job_waits_for_its_latest_start_and_meets_its_deadline(runs):
    res, _, doc = runs["flex"]
    k = res.kpis
    assert k["jobs_held"] == 1 and k["jobs_deadline_missed"] == 0 and k["jobs_guard_releases"] == 1, k
    j = doc["jobs"][0]
    assert j["id"] == "job1" and j["done_h"] <= 2.0 and j["kwh"] == pytest.approx(20.0)
    first, last = j["runs_h"][0], j["runs_h"][-1]
    assert first[0] == pytest.approx(0.25, abs=1e-3) and first[1] < 0.25 + 2.0 / 60   # ran until the first defer
    assert last[0] == pytest.approx(2.0 - (1.0 - (first[1] - first[0])) - 60 / 3600, abs=2e-3)   # guard: latest start
    assert last[1] == pytest.approx(2.0 - 60 / 3600, abs=2e-3)
    assert k["jobs_moved_hours"] == pytest.approx(last[0] - first[1], abs=2e-3)
    acts = [(a["action"], a["source"]) for a in doc["actions"]]
    assert acts[0] in (("hold", "cabinet"), ("suspend", "cabinet")) and acts[-1][1] == "guard"
    assert "site short" in doc["actions"][0]["reason"]


def test_the_site_draws_what_actually_runs(runs):
    """Per-minute loads of the two runs: while held the job's 20 kW (and its cooling) is not drawn; when
    the guard starts it, it is; over the run the IT energy is the same (same work, moved)."""
    flex, noflex = (np.asarray(runs[n][0].site.meters.log) for n in ("flex", "noflex"))
    t_h, load_f, load_n = flex[:, 0], flex[:, 3], noflex[:, 3]
    held = (t_h > 0.3) & (t_h < 0.9)          # flex: held; no-flex: running
    moved = (t_h > 1.3) & (t_h < 1.95)        # flex: started by the guard; no-flex: done
    assert np.all(load_n[held] - load_f[held] > 20.0 * 1.05 - 1e-6)     # 20 kW IT + its cooling, not drawn
    assert np.all(load_f[moved] - load_n[moved] > 20.0 * 1.05 - 1e-6)
    it_f, it_n = runs["flex"][0].site.meters.it_kwh, runs["noflex"][0].site.meters.it_kwh
    assert it_f == pytest.approx(it_n, abs=0.1)
    assert runs["flex"][0].kpis["jobs_kwh"] == runs["noflex"][0].kpis["jobs_kwh"] == pytest.approx(20.0)


def test_flexibility_off_runs_the_job_when_released(runs):
    res, _, doc = runs["noflex"]
    k = res.kpis
    assert k["jobs_flex"] is False and k["jobs_held"] == 0 and k["jobs_defer_requests"] == 0
    assert k["jobs_deadline_missed"] == 0 and doc["jobs"][0]["runs_h"] == [[0.25, 1.25]]


def test_the_ledger_states_each_jobs_basis_and_the_hours_it_was_moved(runs):
    for name in ("flex", "noflex"):
        res, rep, doc = runs[name]
        j = rep["jobs"]["job1"]
        assert j["it_kwh"] == pytest.approx(20.0, rel=0.01), (name, j)      # measured at 15 s vs the truth
        assert j["basis"] == "measured" and j["announced_h"] == 0.0 and j["measured_h"] == pytest.approx(1.0, abs=0.02)
        assert j["label"] == "render, due in 2 h" and 0.0 <= j["renewable_share"] <= 1.0
        assert j["kg_location"] > 0.0                # night, short: grid and battery carry it
        held = res.kpis["jobs_moved_hours"]
        assert j["moved_h"] == pytest.approx(held, abs=0.02), (name, j["moved_h"], held)
    assert rep["jobs"]["(unattributed)"]["it_kwh"] > 0.0
    assert runs["flex"][1]["jobs"]["job1"]["moved_h"] > 0.5
