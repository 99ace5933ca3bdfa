"""Benchmark: risk-aware warnings (issue 16, docs/risk.md).

`python -m tools.bench.grid_risk [--seed 1] [--hours H] [--out DIR] [--no-tree] [--no-sim] [--from DIR]`

1. The two-branch plan (controller/core/mpc/branch.py) against HiGHS's scenario-tree optimum
   (controller/core/mpc_tree_reference.py) on seeded instances: gap and solve times.
2. The mine's afternoon sandstorm (profiles/scenarios/mine-sandstorm-{holds,trips}.toml), each variant with
   the risk-aware MPC (the warning's grid_risk) and the risk-blind MPC (the same warning, grid_risk
   removed): cost, stored-energy-credited cost, diesel, unserved, SOC at the warning / the event / the trip.
   Checks: "trips", risk-aware: SOC >= 90 % at the event, no diesel, no unserved; "holds": risk-aware
   cost within 3 % of risk-blind.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

SOC_AT_EVENT_MIN = 90.0
HOLDS_COST_TOL = 0.03


def tree_table(seeds: int = 6) -> list[dict]:
    from controller.core.mpc.branch import solve_tree
    from controller.core.mpc_tree_reference import solve_tree_reference
    from controller.core.plan_instance import instance_from_dict
    from tools.bench.mpc import make_instance_dict

    rows = []
    for kind, H, n in (("convex", 96, seeds), ("peak", 96, seeds), ("genset", 48, max(1, seeds // 2))):
        for seed in range(n):
            inst = instance_from_dict(make_instance_dict(seed, H, kind))
            rng = np.random.default_rng(seed + 100)
            k0 = int(rng.integers(2, H * 2 // 3))
            k1 = min(H, k0 + int(rng.integers(4, 16)))
            g = inst.grid_import_max_kw.copy()
            g[k0:k1] = 0.0
            trip, p = replace(inst, grid_import_max_kw=g), float(rng.uniform(0.1, 0.9))
            solve_tree(inst, trip, k0, p)            # kernels loaded before the timed call
            ours = solve_tree(inst, trip, k0, p)
            ref = solve_tree_reference(inst, trip, k0, p)
            rows.append({"kind": kind, "H": H, "seed": seed, "k0": k0, "p": round(p, 3),
                         "tree_dp": ours.objective, "highs": ref.objective,
                         "gap": (ours.objective - ref.objective) / max(1.0, abs(ref.objective)),
                         "dp_ms": ours.solve_ms, "highs_ms": ref.solve_ms})
    return rows


def _soc_at(log: np.ndarray, h: float) -> float:
    i = int(np.searchsorted(log[:, 0], h))
    return float(log[min(i, len(log) - 1), 1])


def sandstorm_runs(seed: int, hours: float | None, out: Path) -> list[dict]:
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario

    rows = []
    for variant in ("holds", "trips"):
        base = load_scenario(f"mine-sandstorm-{variant}")
        for planner in ("risk-aware", "risk-blind"):
            scn = copy.copy(base)
            scn["events"] = copy.deepcopy(base["events"])
            if planner == "risk-blind":
                for ev in scn["events"]:
                    if ev["kind"] == "pv_derate":
                        ev["grid_risk"] = -1.0          # the same warning, without grid_risk
            for a in ("path", "site", "start"):
                setattr(scn, a, getattr(base, a))
            t0 = time.perf_counter()
            res = run_sim(scn, hours=hours, seed=seed, strategy="mpc", out_dir=out / f"{variant}-{planner}")
            rows.append(_row(variant, planner, res.kpis, np.asarray(res.site.meters.log), base,
                             time.perf_counter() - t0))
    return rows


def rows_from(out: Path) -> list[dict]:
    """The table from runs already made: OUT/{holds,trips}-{risk-aware,risk-blind}/ (kpis.json, minutes.npy)."""
    from tools.sim.scenario import load_scenario

    rows = []
    for variant in ("holds", "trips"):
        base = load_scenario(f"mine-sandstorm-{variant}")
        for planner in ("risk-aware", "risk-blind"):
            d = out / f"{variant}-{planner}"
            k = json.loads((d / "kpis.json").read_text())
            rows.append(_row(variant, planner, k, np.load(d / "minutes.npy"), base, float(k.get("wall_s", 0.0))))
    return rows


def _row(variant, planner, k, log, scn, wall) -> dict:
    wx = next(ev for ev in scn["events"] if ev["kind"] == "pv_derate")
    trip = next((ev for ev in scn["events"] if ev["kind"] == "grid_outage"), None)
    ev_h, ev_end = wx["at_h"], wx["at_h"] + wx["duration_min"] / 60.0
    in_ev = (log[:, 0] >= ev_h) & (log[:, 0] < ev_end)
    dt_h = np.diff(log[:, 0], prepend=log[0, 0])
    row = {"variant": variant, "planner": planner, "cost": k["cost"], "cost_adjusted": k.get("cost_adjusted"),
           "co2_kg": k["co2_kg"], "diesel_l": k["diesel_litres"], "unserved_kwh": k["unserved_kwh"],
           "soc_warning": _soc_at(log, ev_h - wx["warn_min"] / 60.0), "soc_event": _soc_at(log, ev_h),
           "soc_min_event": float(log[in_ev, 1].min()),
           "diesel_kwh_event": float(np.sum(log[in_ev, 6] * dt_h[in_ev])),
           "unserved_kwh_event": float(np.sum(log[in_ev, 7] * dt_h[in_ev])),
           "soc_end": float(log[-1, 1]), "wall_s": wall}
    if trip is not None:
        row["soc_trip"] = _soc_at(log, trip["at_h"])
    return row


def checks(rows: list[dict]) -> list[tuple[str, bool]]:
    by = {(r["variant"], r["planner"]): r for r in rows}
    out = []
    t = by.get(("trips", "risk-aware"))
    if t:
        out.append((f"trips, risk-aware: SOC at the event {t['soc_event']:.1f} % >= {SOC_AT_EVENT_MIN:.0f} %",
                    t["soc_event"] >= SOC_AT_EVENT_MIN))
        out.append((f"trips, risk-aware: diesel {t['diesel_l']:.2f} L, unserved {t['unserved_kwh']:.2f} kWh (both 0)",
                    t["diesel_l"] <= 1e-6 and t["unserved_kwh"] <= 1e-6))
    a, b = by.get(("holds", "risk-aware")), by.get(("holds", "risk-blind"))
    if a and b:
        for key in ("cost", "cost_adjusted"):
            if a.get(key) is None or b.get(key) is None:
                continue
            r = a[key] / b[key] - 1.0
            out.append((f"holds: risk-aware {key} {a[key]:.2f} vs risk-blind {b[key]:.2f} ({100 * r:+.2f} %, "
                        f"<= +{100 * HOLDS_COST_TOL:.0f} %)", r <= HOLDS_COST_TOL))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hours", type=float, default=None)
    ap.add_argument("--out", default=None, help="keep the runs' outputs here")
    ap.add_argument("--no-tree", action="store_true")
    ap.add_argument("--no-sim", action="store_true")
    ap.add_argument("--json", default=None, help="also write every row here")
    ap.add_argument("--from", dest="from_dir", default=None,
                    help="tabulate runs already made in DIR/{holds,trips}-{risk-aware,risk-blind}")
    a = ap.parse_args(argv)
    result = {}
    if not a.no_tree:
        rows = tree_table()
        result["tree"] = rows
        print("| kind | H | seed | k0 | p | tree DP | HiGHS tree | gap | DP ms | HiGHS ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['kind']} | {r['H']} | {r['seed']} | {r['k0']} | {r['p']} | {r['tree_dp']:.4f} | "
                  f"{r['highs']:.4f} | {r['gap']:.2e} | {r['dp_ms']:.2f} | {r['highs_ms']:.1f} |")
        print()
    ok = True
    if not a.no_sim:
        if a.from_dir:
            rows = rows_from(Path(a.from_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="bench-grid-risk-") as tmp:
                rows = sandstorm_runs(a.seed, a.hours, Path(a.out or tmp))
        result["sandstorm"] = rows
        print("| variant | planner | cost | cost_adjusted | co2_kg | diesel_l | unserved_kwh | SOC warning | "
              "SOC event | SOC trip | SOC min in event | SOC end | wall s |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['variant']} | {r['planner']} | {r['cost']:.2f} | {r['cost_adjusted']:.2f} | {r['co2_kg']:.1f} | "
                  f"{r['diesel_l']:.2f} | {r['unserved_kwh']:.2f} | {r['soc_warning']:.1f} | {r['soc_event']:.1f} | "
                  f"{r.get('soc_trip', float('nan')):.1f} | {r['soc_min_event']:.1f} | {r['soc_end']:.1f} | "
                  f"{r['wall_s']:.0f} |")
        print()
        for text, passed in checks(rows):
            print(f"{'PASS' if passed else 'FAIL'}  {text}")
            ok &= passed
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
