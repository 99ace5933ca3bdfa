"""A year run (issue 16): the study setting, the bounded per-run state, the billed peak per month, the
ledger's monthly / annual report. Default run: unit checks and 4 days of nordic-wind (Europe/Stockholm)
across the March DST change and the 1st of April at the study period; the full year is marked slow."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest

from controller.carbon.report import build_report, iter_payloads, report_rows, select, to_csv, to_text
from controller.core import layout as L
from controller.params import build_params
from tools.sim.carbon import RollingJobBook
from tools.sim.study import MinuteLog, MonthPeaks, apply_study, study_problem


def utc(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


def test_minute_log_is_preallocated_and_reads_like_the_list():
    log = MinuteLog(3, 12)
    before = log.data.nbytes
    for i in range(3):
        log.append(tuple(float(i + c) for c in range(12)))
    a = np.asarray(log, dtype=float)
    assert a.shape == (3, 12) and a[2, 0] == 2.0 and len(log) == 3 and log.data.nbytes == before
    assert np.asarray(MinuteLog(5, 12)).shape == (0, 12)


def test_month_peaks_follow_the_site_zone_across_dst():
    t0 = utc("2026-03-27T23:00:00Z")                       # local midnight, 28 March (CET)
    mp = MonthPeaks("Europe/Stockholm", t0, 6 * 24)
    april = utc("2026-03-31T22:00:00Z") - t0               # local midnight of the 1st, CEST since the 29th
    assert mp.starts[0] == april
    mp.add(april - 900.0, 120.0)                           # the window that closed before the 1st: March
    mp.add(april, 80.0)
    mp.add(april + 86400.0, 90.0)
    assert mp.billed(6 * 86400.0) == {"2026-03": 120.0, "2026-04": 90.0}
    assert mp.billed(april - 1.0) == {"2026-03": 120.0}


def test_study_setting_keeps_stale_times_in_seconds_and_names_bad_values(tmp_path):
    from tools.sim.scenario import load_scenario
    cfg = load_scenario("nordic-wind").site
    p = build_params(cfg, "mpc")
    assert apply_study(p, 10.0, 300.0) == {"period_s": 10.0, "replan_s": 300.0}
    assert p[L.P_PERIOD_S] == 10.0 and p[L.P_MPC_REPLAN_S] == 300.0 and p[L.P_BMS_STALE_CYCLES] == 1.0
    assert "divides 900" in study_problem(7.0, None)
    assert "--replan-s" in study_problem(None, 0.0)
    with pytest.raises(ValueError, match="--period-s"):
        apply_study(build_params(cfg, "rule"), 120.0, None)


def test_rolling_job_book_stays_small_and_attributes_every_job():
    t0 = utc("2026-01-01T00:00:00Z")
    jobs = [{"id": f"train{i}", "kw": 10.0 + i % 3, "start_s": t0 + i * 12 * 3600.0,
             "end_s": t0 + i * 12 * 3600.0 + 5 * 3600.0, "label": f"batch {i}"} for i in range(300)]
    book = RollingJobBook(jobs)           # more than MAX_JOBS (256), which a plain book prunes at once
    seen, biggest = set(), 0
    for t in np.arange(t0, t0 + 151 * 86400.0, 1800.0):
        got = book.power_at(float(t))
        want = {j["id"]: j["kw"] for j in jobs if j["start_s"] <= t < j["end_s"]}
        assert dict(got) == want
        seen.update(got)
        biggest = max(biggest, len(book.jobs))
    assert len(seen) == 300 and biggest <= 6 and book.labels["train299"] == "batch 299"


@pytest.fixture(scope="module")
def dst_run(tmp_path_factory):
    """4 days of nordic-wind from local midnight 28 March 2026: DST starts on the 29th, April on the 1st."""
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    scn = load_scenario("nordic-wind")
    scn["scenario"]["start_utc"] = "2026-03-27T23:00:00Z"
    scn.start = datetime(2026, 3, 27, 23, 0, tzinfo=timezone.utc)
    out = tmp_path_factory.mktemp("year-dst")
    res = run_sim(scn, hours=4 * 24, seed=1, strategy="mpc", out_dir=out, period_s=10.0, replan_s=300.0)
    return res, out


def test_dst_and_month_boundary_at_the_study_period(dst_run):
    res, out = dst_run
    k = res.kpis
    assert k["study"] == {"period_s": 10.0, "replan_s": 300.0} and k["cycles"] == 4 * 24 * 360
    assert set(k["grid_peak_by_month_kw"]) == {"2026-03", "2026-04"}
    assert k["grid_peak_kw"] == max(k["grid_peak_by_month_kw"].values())
    # the controller's billed peak restarted on the 1st (local): it holds no more than April's, not March's
    # (its own 15-min windows from its meter samples; 85.5 vs the meters' 90.1 kW in one run, not explained yet)
    march, april = k["grid_peak_by_month_kw"]["2026-03"], k["grid_peak_by_month_kw"]["2026-04"]
    assert 0.0 < res.loop.state[L.S_PEAK_KW] <= april * 1.02
    if march > april * 1.02:
        assert res.loop.state[L.S_PEAK_KW] < march
    # the DST change is in the controller's zone table (local hours for the plan)
    changes = [res.loop.params[L.P_TZ_TABLE + 1 + 2 * i] for i in range(int(res.loop.params[L.P_TZ_TABLE]))]
    assert utc("2026-03-29T01:00:00Z") in changes
    assert np.asarray(res.site.meters.log).shape == (4 * 1440, 12)
    assert k["unserved_kwh"] == 0.0        # (this run has 1 interlock trip: not looked into)
    assert json.loads((out / "kpis.json").read_text())["grid_peak_by_month_kw"] == k["grid_peak_by_month_kw"]


def test_ledger_report_by_month_and_year(dst_run):
    res, out = dst_run
    rep = res.report
    assert rep["ledger"]["verified"] and "0 15-min slot(s) without a record" in rep["ledger"]["verify"]
    # the ledger's months are UTC: the run ends 2026-03-31T23:00Z, so one UTC month (two billed local ones)
    assert list(rep["months"]) == ["2026-03"] and list(rep["years"]) == ["2026"]
    assert sum(m["intervals"] for m in rep["months"].values()) == rep["total"]["intervals"] == 4 * 96
    e = rep["total"]["energy_kwh"]
    assert e["grid"] == pytest.approx(res.kpis["grid_import_kwh"], rel=0.005)
    assert rep["total"]["co2_kg"] == pytest.approx(res.kpis["co2_kg"], rel=0.005)
    assert json.loads((out / "ledger-report.json").read_text())["total"] == rep["total"]
    assert (out / "ledger-report.csv").read_text().count("\n") >= 4
    assert [n for n, _ in report_rows(rep, "year")] == ["year 2026", "total"]
    assert "months" not in select(rep, "year") and "years" not in select(rep, "total")
    text = to_text(rep, "month")
    assert "2026-03" in text and "year 2026" in text and "Scope1 kg" in text
    periods, _, jobs = to_csv(rep, "total").partition("\n\n")   # the period rows, then the per-job table
    assert periods.count("\n") == 1 and periods.splitlines()[1].startswith("total,")
    assert jobs.count("\n") == (len(rep["jobs"]) + 1 if rep["jobs"] else 0)
    again = build_report(iter_payloads(out / "ledger"))            # streamed, the same figures
    assert again["total"] == rep["total"]
    with pytest.raises(ValueError, match="--by"):
        report_rows(rep, "week")


@pytest.mark.slow
def test_a_year_of_nordic_wind_at_the_study_setting(tmp_path):
    """8760 h with the real scan loop at --study: 12+ months in the ledger report, memory bounded."""
    from tools.bench.year import run_year
    row = run_year("nordic-wind", "mpc", 8760.0, tmp_path, 10.0, 300.0)
    rep = json.loads((tmp_path / "ledger-report.json").read_text())
    assert len(rep["months"]) >= 12 and rep["total"]["intervals"] == 8760 * 4
    assert row["rss_second_half_growth_mb"] is not None and row["rss_second_half_growth_mb"] < 50.0
    assert row["kpis"]["unserved_kwh"] == 0.0 and len(row["kpis"]["grid_peak_by_month_kw"]) >= 12
