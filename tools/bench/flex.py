"""The effect of deferrable jobs: each reference scenario with flexibility on (`--flex`) and off (`--no-flex`), same
seed, same strategy, same jobs; the table of docs/compute.md.

    python -m tools.bench.flex [--hours 48] [--seed 1] [--strategy mpc] [--oracle] [--objective carbon]
                               [--jobs 2] [--out out/flex]

`--oracle` adds the perfect-foresight oracle (tools/sim/oracle.py) both ways: with flexibility on the
deferrable jobs are its MILP decisions (a binary start per allowed step), off they stay at their hours.

Each run is `edge-ems sim ... --out OUT/SCENARIO-{flex,noflex}` in its own process (so `--jobs` runs them
side by side); the figures are read back from each run's kpis.json (the simulator's own meters) and
compute.json (every job's runs, holds and deadline). Prints one JSON line per run, then a Markdown table
of flex vs no-flex per scenario: CO2 (and CO2 credited for the energy left in the battery when kpis.json
has it), renewable share, the carbon-free share where the grid's is pushed (the simulator's meters: on-site
renewables + import x the grid's share that minute; and the gateway ledger's 24/7 CFE, ledger-report.json),
grid and diesel kWh, cost, jobs held, hours moved, deadlines missed. Exit 1 if
any deadline was missed or the two runs did not do the same job energy (the comparison would be unfair).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SCENARIOS = ("inner-mongolia-mine", "gansu-edge", "nordic-wind")
ROOT = Path(__file__).resolve().parents[2]


def run(scenario: str, flex: bool, args, strategy: str | None = None) -> dict:
    strategy = strategy or args.strategy
    tag = "" if strategy == args.strategy else f"-{strategy}"
    out = Path(args.out) / f"{scenario}{tag}-{'flex' if flex else 'noflex'}"
    cmd = [sys.executable, "-m", "controller.cli", "sim", "--scenario", scenario, "--hours", str(args.hours),
           "--seed", str(args.seed), "--strategy", strategy, "--out", str(out), "--flex" if flex else "--no-flex"]
    if args.objective:
        cmd += ["--objective", args.objective]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-2000:]}")
    k = json.loads((out / "kpis.json").read_text())
    jobs = json.loads((out / "compute.json").read_text())["jobs"] if (out / "compute.json").exists() else []
    rep = out / "ledger-report.json"        # the oracle writes no ledger
    k["ledger_cfe_pct"] = json.loads(rep.read_text())["total"]["kpi"]["cfe_pct"] if rep.exists() else None
    return {"scenario": scenario, "flex": flex, "strategy": strategy + (f"-{args.objective}" if args.objective else ""), "kpis": k, "jobs": jobs, "out": str(out)}


def row(r: dict) -> dict:
    k = r["kpis"]
    return {"scenario": r["scenario"], "strategy": r["strategy"], "flex": r["flex"], "co2_kg": k["co2_kg"], "co2_adjusted_kg": k.get("co2_adjusted_kg"),
            "renewable_share": k["renewable_share"], "cfe_share": k.get("cfe_share"),
            "ledger_cfe_pct": k.get("ledger_cfe_pct"), "grid_import_kwh": k["grid_import_kwh"],
            "diesel_kwh": k["diesel_kwh"], "pv_curtailed_kwh": k["pv_curtailed_kwh"], "cost": k["cost"],
            "cost_adjusted": k.get("cost_adjusted"), "currency": k["currency"],
            "jobs_deferrable": k.get("jobs_deferrable", 0), "jobs_held": k.get("jobs_held", 0),
            "jobs_moved_hours": k.get("jobs_moved_hours", 0.0), "jobs_deadline_missed": k.get("jobs_deadline_missed", 0),
            "jobs_kwh": k.get("jobs_kwh", 0.0), "unserved_kwh": k["unserved_kwh"], "wall_s": k["wall_s"]}


def _pct(x, scale: float) -> str:
    return "-" if x is None else f"{scale * x:.2f} %"


def table(rows: list[dict]) -> str:
    adj = all(r["co2_adjusted_kg"] is not None for r in rows)
    head = ["scenario", "strategy", "flex", "CO2 kg"] + (["CO2 adj. kg"] if adj else []) + [
        "renewable", "CFE (sim)", "CFE (ledger)", "grid kWh", "diesel kWh", "curtailed kWh", "cost", "held", "moved h", "missed", "job kWh"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["scenario"], r["strategy"], "on" if r["flex"] else "off", f"{r['co2_kg']:.1f}"] + (
            [f"{r['co2_adjusted_kg']:.1f}"] if adj else []) + [
            f"{100 * r['renewable_share']:.2f} %", _pct(r["cfe_share"], 100.0), _pct(r["ledger_cfe_pct"], 1.0),
            f"{r['grid_import_kwh']:.1f}", f"{r['diesel_kwh']:.1f}",
            f"{r['pv_curtailed_kwh']:.1f}", f"{r['cost']:.2f} {r['currency']}",
            f"{r['jobs_held']}/{r['jobs_deferrable']}", f"{r['jobs_moved_hours']:.2f}",
            str(r["jobs_deadline_missed"]), f"{r['jobs_kwh']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=48.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strategy", default="mpc", choices=("mpc", "rule", "none"))
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (each is one process)")
    ap.add_argument("--oracle", action="store_true", help="also the oracle, flex on (jobs as decisions) and off")
    ap.add_argument("--only-oracle", action="store_true", help="the oracle runs alone")
    ap.add_argument("--objective", choices=("cost", "carbon"), default=None,
                    help="override the profiles' [control] objective for mpc and the oracle")
    ap.add_argument("--out", default="out/flex")
    args = ap.parse_args(argv)
    strategies = ([] if args.only_oracle else [args.strategy]) + (["oracle"] if args.oracle or args.only_oracle else [])
    todo = [(s, f, g) for s in args.scenarios for g in strategies for f in (True, False)]
    with ThreadPoolExecutor(max(1, args.jobs)) as ex:
        results = list(ex.map(lambda sf: run(sf[0], sf[1], args, sf[2]), todo))
    rows = [row(r) for r in results]
    for r in rows:
        print(json.dumps(r))
    print()
    print(f"{args.hours:g} h, seed {args.seed}, {args.strategy}, objective {args.objective or 'of the profile'}; "
          "flex on vs off (--no-flex)\n")
    print(table(rows))
    bad = [r for r in rows if r["jobs_deadline_missed"]]
    by = {(r["scenario"], r["strategy"].split("-")[0], r["flex"]): r for r in rows}
    unfair = [s for s in args.scenarios for g in strategies if g != "oracle"
              and abs(by[(s, g, True)]["jobs_kwh"] - by[(s, g, False)]["jobs_kwh"]) > 0.01]
    for r in bad:
        print(f"DEADLINE MISSED: {r['scenario']} flex={r['flex']}: {r['jobs_deadline_missed']}", file=sys.stderr)
    for s in unfair:
        print(f"UNEQUAL JOB ENERGY: {s}: {by[(s, args.strategy, True)]['jobs_kwh']} vs "
              f"{by[(s, args.strategy, False)]['jobs_kwh']} kWh", file=sys.stderr)
    return 1 if bad or unfair else 0


if __name__ == "__main__":
    raise SystemExit(main())
