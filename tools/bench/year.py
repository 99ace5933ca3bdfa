"""A year with the real scan loop: wall time, speed-up, memory over the run, the ledger's annual report,
and what the study setting (tools/sim/study.py) costs in KPIs against the field's 1 s period.

    python -m tools.bench.year --scenario nordic-wind --strategy mpc            # one year at --study
    python -m tools.bench.year --scenario nordic-wind --hours 720               # a scaled year (a month)
    python -m tools.bench.year --table                                          # 48 h: 1 s vs study, 3 scenarios
    python -m tools.bench.year --table --ref-dir out/kpi                        # reuse 1 s runs (DIR/S-ST/kpis.json)

Why both in one tool: a study setting is only usable with its measured effect beside it. The table runs
each reference scenario for 48 h, seed 1, at the field's 1 s period and 60 s re-plan and at the study
setting, and prints the relative difference of CO2, cost, renewable share, grid import (unserved load as
a share of the load energy, since it is 0 in most runs); each must be within 2 %. Figures are measured in
this process on whatever machine runs it (docs/year.md says how loaded it was).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from tools.sim.study import STUDY_PERIOD_S, STUDY_REPLAN_S

SCENARIOS = ("inner-mongolia-mine", "gansu-edge", "nordic-wind")
TABLE_KPIS = ("co2_kg", "cost", "renewable_share", "grid_import_kwh", "unserved_kwh")
LIMIT_PCT = 2.0


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), MB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return float("nan")


def cpu_s() -> float:
    """CPU seconds this process used (user + system): on a shared machine, closer than the wall time to
    what the run takes on a quiet one (it leaves out the time other jobs held the cores)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_avg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run_year(scenario: str, strategy: str, hours: float, out: Path, period_s: float, replan_s: float,
             seed: int = 1) -> dict:
    """One run with the study setting: wall time (series + loop + report), speed-up, RSS per simulated day."""
    from controller.carbon.report import to_text
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario

    scn = load_scenario(scenario)
    samples: list[tuple[float, float, float, float]] = []   # (simulated day, RSS MB, wall s, CPU s), daily
    next_day = [0.0]

    def progress(frac: float) -> None:
        day = frac * hours / 24.0
        if day >= next_day[0]:
            next_day[0] = day + 1.0
            samples.append((round(day, 2), round(rss_mb(), 1), round(time.perf_counter() - t0, 1),
                            round(cpu_s() - c0, 1)))
            if len(samples) % 30 == 1:
                (out / "rss-by-day.json").write_text(json.dumps(samples) + "\n")     # progress, as it goes

    load0 = load_avg()
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), cpu_s()
    res = run_sim(scn, hours=hours, seed=seed, strategy=strategy, out_dir=out, progress=progress,
                  period_s=period_s, replan_s=replan_s)
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    (out / "rss-by-day.json").write_text(json.dumps(samples) + "\n")     # first: whatever follows fails
    k = res.kpis
    half = [s[1] for s in samples if s[0] >= hours / 48.0]          # the second half of the run
    row = {"scenario": scenario, "strategy": strategy, "hours": hours, "period_s": period_s, "replan_s": replan_s,
           "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "loop_wall_s": k["wall_s"], "speedup_x": round(hours * 3600.0 / wall, 1),
           "speedup_cpu_x": round(hours * 3600.0 / cpu, 1) if cpu > 0 else None,
           "loop_speedup_x": k["speedup_x"], "cycles": k["cycles"], "cycle_p99_ms": k["cycle_p99_ms"],
           "rss_start_mb": samples[0][1] if samples else None, "rss_end_mb": round(rss_mb(), 1),
           "rss_max_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1),
           "rss_second_half_growth_mb": round(max(half) - min(half), 1) if len(half) > 1 else None,
           "load_avg_start": load0, "load_avg_end": load_avg(),
           "kpis": {x: k.get(x) for x in TABLE_KPIS + ("co2_adjusted_kg", "cost_adjusted", "grid_peak_kw",
                                                        "grid_peak_by_month_kw", "diesel_litres", "pv_used_kwh")}}
    (out / "year-bench.json").write_text(json.dumps({**row, "rss_by_day": samples}, indent=2) + "\n")
    print(json.dumps(row, indent=2))
    if res.report is not None:
        print(to_text(res.report))
    return row


def _kpis_48h(scenario: str, strategy: str, period_s: float | None, replan_s: float | None, out: Path | None,
              ref_dir: Path | None, run: bool = True) -> dict | None:
    """48 h, seed 1: from ref_dir/SCENARIO-STRATEGY/kpis.json when it holds that run, else run now."""
    if ref_dir is not None:
        f = ref_dir / f"{scenario}-{strategy}" / "kpis.json"
        if f.exists():
            k = json.loads(f.read_text())
            want = {} if period_s is None else {"period_s": period_s, "replan_s": replan_s}
            if k.get("hours") == 48.0 and k.get("study", {}) == want:
                return k
    if not run:
        return None
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    return run_sim(load_scenario(scenario), hours=48.0, seed=1, strategy=strategy, out_dir=out,
                   period_s=period_s, replan_s=replan_s).kpis


def diff_pct(key: str, ref: dict, new: dict) -> float:
    """Relative difference in %, unserved load as a share of the load energy (0 in most runs)."""
    a, b = float(ref[key]), float(new[key])
    if key == "unserved_kwh":
        return 100.0 * (b - a) / max(float(ref["load_kwh"]), 1e-9)
    return 100.0 * (b - a) / abs(a) if abs(a) > 1e-12 else (0.0 if abs(b) < 1e-12 else float("inf"))


def period_table(strategies, period_s: float, replan_s: float, out: Path, ref_dir: Path | None,
                 scenarios=SCENARIOS, study_dir: Path | None = None, run: bool = True) -> list[dict]:
    rows = []
    for scenario in scenarios:
        for strategy in strategies:
            t0 = time.perf_counter()
            ref = _kpis_48h(scenario, strategy, None, None, out / f"{scenario}-{strategy}-1s", ref_dir, run)
            t1 = time.perf_counter()
            new = _kpis_48h(scenario, strategy, period_s, replan_s, out / f"{scenario}-{strategy}-study", study_dir,
                            run)
            t2 = time.perf_counter()
            if ref is None or new is None:
                print(f"| {scenario} | {strategy} | (no run in --ref-dir / --study-dir) |", flush=True)
                continue
            d = {k: round(diff_pct(k, ref, new), 3) for k in TABLE_KPIS}
            rows.append({"scenario": scenario, "strategy": strategy, "ref": {k: ref[k] for k in TABLE_KPIS},
                         "study": {k: new[k] for k in TABLE_KPIS}, "diff_pct": d,
                         "within_limit": all(abs(v) <= LIMIT_PCT for v in d.values()),
                         "ref_loop_s": ref.get("wall_s"), "study_loop_s": new.get("wall_s"),
                         "wall_s": [round(t1 - t0, 1), round(t2 - t1, 1)]})
            print(format_row(rows[-1]), flush=True)
    return rows


TABLE_HEAD = ("| scenario | strategy | " + " | ".join(f"{k} 1 s / study (diff %)" for k in TABLE_KPIS)
              + " | loop s 1 s / study |\n|" + " --- |" * (3 + len(TABLE_KPIS)))


def format_row(r: dict) -> str:
    cells = [f"{r['ref'][k]:g} / {r['study'][k]:g} ({r['diff_pct'][k]:+.2f})" for k in TABLE_KPIS]
    return (f"| {r['scenario']} | {r['strategy']} | " + " | ".join(cells)
            + f" | {r['ref_loop_s']} / {r['study_loop_s']} |" + ("" if r["within_limit"] else " **over 2 %**"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="nordic-wind", help="the year's scenario (name or file)")
    ap.add_argument("--strategy", default="mpc", choices=("rule", "none", "mpc"))
    ap.add_argument("--hours", type=float, default=8760.0, help="8760: a year; less: a scaled one")
    ap.add_argument("--period-s", type=float, default=STUDY_PERIOD_S)
    ap.add_argument("--replan-s", type=float, default=STUDY_REPLAN_S)
    ap.add_argument("--out", default="out/year")
    ap.add_argument("--table", action="store_true", help="the 48 h period-effect table instead of a year")
    ap.add_argument("--table-strategies", default="rule,mpc")
    ap.add_argument("--table-scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--ref-dir", default=None, help="1 s runs already made: DIR/SCENARIO-STRATEGY/kpis.json")
    ap.add_argument("--study-dir", default=None, help="study runs already made (`edge-ems sim --study`), same layout")
    ap.add_argument("--no-run", action="store_true", help="table: only the runs found in --ref-dir / --study-dir")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# machine: {os.cpu_count()} cores, load average {load_avg()} (shared with other jobs)", flush=True)
    if a.table:
        print(TABLE_HEAD, flush=True)
        rows = period_table(a.table_strategies.split(","), a.period_s, a.replan_s, out,
                            Path(a.ref_dir) if a.ref_dir else None, a.table_scenarios.split(","),
                            Path(a.study_dir) if a.study_dir else None, not a.no_run)
        (out / "period-table.json").write_text(json.dumps(rows, indent=2) + "\n")
        print(f"# load average at the end {load_avg()}")
        return 0 if all(r["within_limit"] for r in rows) else 1
    name = Path(a.scenario).stem
    run_year(a.scenario, a.strategy, a.hours, out / f"{name}-{a.strategy}", a.period_s, a.replan_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
