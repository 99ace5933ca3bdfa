"""Per-job evidence in the carbon ledger: each job's energy and CO2 from measured per-job power while it is
fresh, else from the announcement, with the basis stated per job and interval; the seconds the cabinet
held a job deferred; `ledger report` per job: kWh, kg CO2e, renewable share, basis, hours moved.

A synthetic site (no simulator), images every 60 s, worked by hand: loads 60 kW (IT 50) from PV 20 kW and
the grid 40 kW (profile factor 0.5 kg/kWh), so a third of the loads' energy is renewable.
"""
import dataclasses
import json

import pytest

from controller.carbon.hook import interval_from_dict, make_carbon_hook
from controller.carbon.intervals import Interval
from controller.carbon.ledger import verify
from controller.carbon.report import build_report, to_csv
from controller.compute.jobs import JobBook
from controller.points import INDEX, Q_OK, new_image
from drivers import compute as C

T0 = 1767225600.0          # 2026-01-01T00:00:00Z
CFG = {
    "site": {"name": "perjob", "gateway_id": "gw-perjob"},
    "emissions": {"grid_kg_per_kwh": 0.5, "grid_factor_source": "test", "grid_factor_year": 2023,
                  "diesel_kg_per_l": 2.66, "diesel_source": "DEFRA 2024"},
    "genset": {"fuel_l_per_kwh": 0.244, "fuel_l_per_h_on": 3.7},
    "battery": {"capacity_kwh": 100.0, "eta_charge": 0.96, "eta_discharge": 0.96},
}


class FakeLoop:
    period_s = 60.0


def image(t):
    img = new_image()
    img["t_s"] = t
    for name, x in dict(grid_kw=40.0, pv_kw=20.0, pv_available_kw=20.0, battery_kw=0.0, genset_kw=0.0,
                        genset_running=0.0, it_kw=50.0, cooling_kw=6.0, aux_kw=4.0, soc_pct=50.0).items():
        img["value"][INDEX[name]] = x
        img["quality"][INDEX[name]] = Q_OK
    return img


def book():
    return JobBook([C.JobAnnouncement("m", 20.0, T0, 3600.0, True, T0 + 7200.0, "measured render"),
                    C.JobAnnouncement("a", 10.0, T0, 1800.0, label="announced only")], max_age_s=120.0)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    d = tmp_path_factory.mktemp("perjob")
    jobs = book()
    hook = make_carbon_hook(CFG, d / "ledger", d / "gw.key", jobs=jobs, clock_status=lambda: "synchronised")
    hook(FakeLoop, image(T0), None, None, 0)
    # 00:00-00:15: m measured (22 kW) for 5 samples, then the bridge goes silent: its sample 45 s before each
    # image is fresh for spans 1-6 (age <= 120 s at mid-span), the announcement (20 kW) carries spans 7-15
    for i in range(1, 16):
        if i <= 5:
            jobs.measure_power(C.ITPower(T0 + 60 * i - 45, 50.0, jobs={"m": 22.0}))
        hook(FakeLoop, image(T0 + 60 * i), None, None, 0)
    # 00:15-00:30: the cabinet defers m; the bridge repeats the suspended job's announcement (running, its old
    # start): it stays deferred and draws nothing in the book
    jobs.mark_deferred("m", T0 + 900)
    for i in range(16, 31):
        if i == 20:
            jobs.announce(C.JobAnnouncement("m", 20.0, T0, 3600.0, True, T0 + 7200.0, state="running"))
        hook(FakeLoop, image(T0 + 60 * i), None, None, 0)
    # 00:30-00:45: the platform restarts m (a later start): followed, measured at 21 kW every minute
    jobs.announce(C.JobAnnouncement("m", 20.0, T0 + 1800, 2700.0, True, T0 + 7200.0, state="running"))
    for i in range(31, 46):
        jobs.measure_power(C.ITPower(T0 + 60 * i - 45, 50.0, jobs={"m": 21.0}))
        hook(FakeLoop, image(T0 + 60 * i), None, None, 0)
    hook.close()
    res = verify(d / "ledger", keep=True)
    assert res.ok, res.message
    recs = {p["t_start"][11:16]: p for p in res.payloads if p["kind"] == "interval"}
    return recs, res.payloads


def test_each_interval_states_the_basis_of_each_jobs_figure(ledger):
    recs, _ = ledger
    a = recs["00:00"]["jobs"]
    assert a["m"]["it_kwh"] == pytest.approx(22.0 * 6 / 60 + 20.0 * 9 / 60)          # 2.2 measured + 3.0 announced
    assert a["m"]["basis"] == "mixed" and a["m"]["measured_s"] == 360.0 and a["m"]["announced_s"] == 540.0
    assert a["a"]["it_kwh"] == pytest.approx(2.5) and a["a"]["basis"] == "announced" and a["a"]["measured_s"] == 0.0
    assert "deferred_s" not in a["m"]
    # a third of the loads is renewable: each job's share of the interval's renewable kWh is a third of its kWh
    for j in a.values():
        assert j["renewable_kwh"] == pytest.approx(j["kwh"] / 3.0, rel=1e-4)
        assert j["kg_location"] == pytest.approx(j["kwh"] * 2.0 / 3.0 * 0.5, rel=1e-4)
    b = recs["00:15"]["jobs"]
    assert b["m"] == {"it_kwh": 0.0, "kwh": 0.0, "kg_location": 0.0, "kg_market": 0.0, "renewable_kwh": 0.0,
                      "deferred_s": 900.0}                     # held: nothing drawn, 900 s moved, no basis
    assert b["a"]["basis"] == "announced"
    c = recs["00:30"]["jobs"]
    assert set(c) == {"m"} and c["m"]["basis"] == "measured" and c["m"]["it_kwh"] == pytest.approx(21.0 * 0.25)


def test_the_report_adds_per_job_kwh_kg_renewable_share_basis_and_hours_moved(ledger):
    _, payloads = ledger
    rep = build_report(payloads)
    m, a, rest = rep["jobs"]["m"], rep["jobs"]["a"], rep["jobs"]["(unattributed)"]
    assert m["it_kwh"] == pytest.approx(5.2 + 5.25, abs=1e-3) and m["label"] == "measured render"
    assert m["basis"] == "mixed" and m["measured_h"] == pytest.approx((360 + 900) / 3600, abs=1e-3)
    assert m["announced_h"] == pytest.approx(540 / 3600, abs=1e-3) and m["moved_h"] == 0.25
    assert m["renewable_share"] == pytest.approx(1 / 3, abs=1e-3) and m["intervals"] == 3
    assert a["basis"] == "announced" and a["moved_h"] == 0.0 and a["it_kwh"] == pytest.approx(5.0)
    tot = rep["total"]
    assert m["kg_location"] + a["kg_location"] + rest["kg_location"] == pytest.approx(
        tot["loads_attributed_kg"]["location"], abs=2e-3)
    assert m["it_kwh"] + a["it_kwh"] + rest["it_kwh"] == pytest.approx(tot["energy_kwh"]["it"], abs=2e-3)
    assert rest["renewable_share"] == pytest.approx(1 / 3, abs=1e-3)
    lines = to_csv(rep).splitlines()
    head = lines.index("job,label,it_kwh,kwh,kg_location,kg_market,renewable_kwh,renewable_share,basis,measured_h,"
                       "announced_h,moved_h,intervals")
    row = next(line for line in lines[head:] if line.startswith("m,"))
    assert ",mixed,0.35,0.15,0.25,3" in row


def test_a_bad_per_job_figure_is_a_named_bad_record(ledger):
    _, payloads = ledger
    bad = json.loads(json.dumps(payloads))
    rec = next(p for p in bad if p.get("kind") == "interval")
    rec["jobs"]["m"]["measured_s"] = "lots"
    with pytest.raises(ValueError, match=r"record n=1: .*jobs\.m\.measured_s: expected a finite number, got str"):
        build_report(bad)


def test_an_older_ledger_without_the_basis_reports_it_unstated(ledger):
    _, payloads = ledger
    old = json.loads(json.dumps(payloads))
    for p in old:
        for d in (p.get("jobs") or {}).values():
            for k in ("basis", "measured_s", "announced_s", "deferred_s", "renewable_kwh"):
                d.pop(k, None)
    m = build_report(old)["jobs"]["m"]
    assert m["basis"] == "unstated" and m["moved_h"] == 0.0 and m["renewable_share"] is None
    assert m["it_kwh"] == pytest.approx(10.45, abs=1e-3)


def test_a_checkpoint_from_before_the_basis_still_resumes():
    d = dataclasses.asdict(Interval(T0))
    del d["jobs_basis_s"], d["jobs_deferred_s"], d["grid_cfe_kwh"], d["grid_cfe_pushed_s"]
    iv = interval_from_dict(d)
    assert iv.jobs_basis_s == {} and iv.jobs_deferred_s == {}
    # one from before the pushed CFE share: its grid kWh so far at the profile's static share, as then counted
    d = dataclasses.asdict(Interval(T0))
    d["alloc"][2] = [8.0, 2.0, 0.0]
    del d["grid_cfe_kwh"], d["grid_cfe_pushed_s"]
    iv = interval_from_dict(d, grid_cfe_frac=0.25)
    assert iv.grid_cfe_kwh == [2.0, 0.5, 0.0] and iv.grid_cfe_pushed_s == 0.0
    del d["jobs_deferred_s"]                         # no release wrote this combination
    with pytest.raises(ValueError, match="fields differ"):
        interval_from_dict(d)
    d = dataclasses.asdict(Interval(T0))
    d["jobs_basis_s"] = {"m": ["x", 1.0]}
    with pytest.raises(ValueError, match="malformed"):
        interval_from_dict(d)


def test_the_book_measured_zero_refused_defer_and_restart():
    b = book()
    b.measure_power(C.ITPower(T0 + 10, 50.0, jobs={"m": 22.0}))
    p = b.power_at(T0 + 20)
    assert p == {"m": 22.0, "a": 10.0} and p.basis == {"m": "measured", "a": "announced"}
    b.measure_power(C.ITPower(T0 + 25, 50.0, jobs={}))      # a full sample without m: m drew nothing
    assert b.power_at(T0 + 30) == {"a": 10.0}
    assert b.power_at(T0 + 25 + 121) == {"m": 20.0, "a": 10.0}   # the zero went stale: the announcement again
    b.mark_deferred("m", T0 + 200)
    assert b.power_at(T0 + 210).deferred == {"m"} and "m" not in b.power_at(T0 + 210)
    b.measure_power(C.ITPower(T0 + 220, 50.0, jobs={"m": 19.0}))   # the platform refused: it runs
    p = b.power_at(T0 + 230)
    assert p["m"] == 19.0 and p.basis["m"] == "measured" and p.deferred == frozenset()
    b.announce(C.JobAnnouncement("m", 20.0, T0, 3600.0, True, T0 + 7200.0, state="running"))
    assert "m" in b.deferred                                       # the same start: a repeat, still deferred
    b.announce(C.JobAnnouncement("m", 20.0, T0 + 600, 3400.0, True, T0 + 7200.0, state="running"))
    assert "m" not in b.deferred                                   # restarted after the defer: followed


def test_per_job_fields_are_bounded_and_a_stale_meters_residual_is_not():
    """A signed per-job field holding a 400-digit integer raised OverflowError out of `ledger report`; two of
    1.7e308 summed to Infinity. A real interval whose sources read ~1e-9 kWh has a residual of ~1e11 %
    that our own writer signs: it must verify."""
    from controller.carbon.ledger import interval_type_problem
    from controller.carbon.report import _job_num
    for bad in (10 ** 400, 1.7e308, float("nan"), "1", None, True):
        with pytest.raises(ValueError, match="jobs.J.measured_s"):
            _job_num({"measured_s": bad}, "measured_s", "J")
        assert "jobs.J.deferred_s" in interval_type_problem({"jobs": {"J": {"deferred_s": bad}}})
    assert interval_type_problem({"energy_kwh": {"closure": {"residual_pct": -2e11}}}) is None
    assert "residual_pct" in interval_type_problem({"energy_kwh": {"closure": {"residual_pct": 10 ** 400}}})
