"""The effect of deferrable jobs: each reference scenario with flexibility on (`--flex`) and off (`--no-flex`), same
seed, same strategy, same jobs; the table of docs/compute.md.

    python -m tools.bench.flex [--hours 48] [--seed 1 | --seeds 1-10] [--strategy mpc] [--oracle]
                               [--objective carbon] [--jobs 2] [--out out/flex]

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

`--seeds A-B` runs every seed (OUT/seed-N/...) and adds, per scenario and strategy, the effect seed by seed
(flex on minus off) and its mean, with how many seeds flexibility helped: one seed's effect at a site with
random unannounced batches is partly luck (a batch that happens to land on a moved job), so a claim about
the planner is read off many seeds.
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


def run(scenario: str, flex: bool, args, strategy: str | None = None, seed: int | None = None) -> dict:
    strategy = strategy or args.strategy
    seed = args.seed if seed is None else seed
    tag = "" if strategy == args.strategy else f"-{strategy}"
    out = Path(args.out) / (f"seed-{seed}" if len(args.seed_list) > 1 else "") / f"{scenario}{tag}-{'flex' if flex else 'noflex'}"
    cmd = [sys.executable, "-m", "controller.cli", "sim", "--scenario", scenario, "--hours", str(args.hours),
           "--seed", str(seed), "--strategy", strategy, "--out", str(out), "--flex" if flex else "--no-flex"]
    if args.objective:
        cmd += ["--objective", args.objective]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-2000:]}")
    k = json.loads((out / "kpis.json").read_text())
    jobs = json.loads((out / "compute.json").read_text())["jobs"] if (out / "compute.json").exists() else []
    rep = out / "ledger-report.json"        # the oracle writes no ledger
    k["ledger_cfe_pct"] = json.loads(rep.read_text())["total"]["kpi"]["cfe_pct"] if rep.exists() else None
    return {"scenario": scenario, "seed": seed, "flex": flex, "strategy": strategy + (f"-{args.objective}" if args.objective else ""), "kpis": k, "jobs": jobs, "out": str(out)}


def row(r: dict) -> dict:
    k = r["kpis"]
    return {"scenario": r["scenario"], "seed": r["seed"], "strategy": r["strategy"], "flex": r["flex"], "co2_kg": k["co2_kg"], "co2_adjusted_kg": k.get("co2_adjusted_kg"),
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
    seeded = len({r["seed"] for r in rows}) > 1
    head = ["scenario"] + (["seed"] if seeded else []) + ["strategy", "flex", "CO2 kg"] + (["CO2 adj. kg"] if adj else []) + [
        "renewable", "CFE (sim)", "CFE (ledger)", "grid kWh", "diesel kWh", "curtailed kWh", "cost", "held", "moved h", "missed", "job kWh"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["scenario"]] + ([str(r["seed"])] if seeded else []) + [r["strategy"], "on" if r["flex"] else "off", f"{r['co2_kg']:.1f}"] + (
            [f"{r['co2_adjusted_kg']:.1f}"] if adj else []) + [
            f"{100 * r['renewable_share']:.2f} %", _pct(r["cfe_share"], 100.0), _pct(r["ledger_cfe_pct"], 1.0),
            f"{r['grid_import_kwh']:.1f}", f"{r['diesel_kwh']:.1f}",
            f"{r['pv_curtailed_kwh']:.1f}", f"{r['cost']:.2f} {r['currency']}",
            f"{r['jobs_held']}/{r['jobs_deferrable']}", f"{r['jobs_moved_hours']:.2f}",
            str(r["jobs_deadline_missed"]), f"{r['jobs_kwh']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seeds(text: str) -> list[int]:
    """"3" or "1-10" -> the seeds (at most 100)."""
    lo, _, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds: expected N or A-B, not {text!r}") from None
    if not 0 <= first <= last or last - first >= 100:
        raise argparse.ArgumentTypeError(f"--seeds: expected 0 <= A <= B, at most 100 seeds, not {text!r}")
    return list(range(first, last + 1))


# (header, row key, scale, format, +1 when higher is better / -1 when lower is)
EFFECT = (("CO2 adj. kg", "co2_adjusted_kg", 1.0, "{:+.2f}", -1), ("CFE (sim) pts", "cfe_share", 100.0, "{:+.3f}", 1),
          ("CFE (ledger) pts", "ledger_cfe_pct", 1.0, "{:+.2f}", 1), ("cost", "cost", 1.0, "{:+.2f}", -1))


def effect_table(rows: list[dict]) -> str:
    """Per scenario and strategy: flex on minus off, seed by seed, then the mean and in how many seeds the
    effect went the right way (CO2 and cost down, CFE up)."""
    by = {(r["scenario"], r["strategy"], r["seed"], r["flex"]): r for r in rows}
    keys = sorted({(r["scenario"], r["strategy"]) for r in rows})
    head = ["scenario", "strategy", "seed"] + [h for h, *_ in EFFECT] + ["missed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scn, strat in keys:
        seeds = sorted({r["seed"] for r in rows if (r["scenario"], r["strategy"]) == (scn, strat)})
        deltas: dict[str, list[float]] = {h: [] for h, *_ in EFFECT}
        missed = 0
        for seed in seeds:
            on, off = by[(scn, strat, seed, True)], by[(scn, strat, seed, False)]
            cells = [scn, strat, str(seed)]
            for h, key, scale, fmt, _ in EFFECT:
                if on[key] is None or off[key] is None:
                    cells.append("-")
                    continue
                d = scale * (on[key] - off[key])
                deltas[h].append(d)
                cells.append(fmt.format(d))
            m = on["jobs_deadline_missed"] + off["jobs_deadline_missed"]
            missed += m
            lines.append("| " + " | ".join(cells + [str(m)]) + " |")
        cells = [scn, strat, f"mean of {len(seeds)}"]
        for h, key, scale, fmt, sign in EFFECT:
            d = deltas[h]
            better = sum(1 for x in d if sign * x > 0)
            cells.append("-" if not d else f"{fmt.format(sum(d) / len(d))} ({better}/{len(d)} better)")
        lines.append("| " + " | ".join(cells + [str(missed)]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=48.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", type=_seeds, default=None, help="A-B: every seed, and the effect seed by seed")
    ap.add_argument("--strategy", default="mpc", choices=("mpc", "rule", "none"))
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (each is one process)")
    ap.add_argument("--oracle", action="store_true", help="also the oracle, flex on (jobs as decisions) and off")
    ap.add_argument("--only-oracle", action="store_true", help="the oracle runs alone")
    ap.add_argument("--objective", choices=("cost", "carbon"), default=None,
                    help="override the profiles' [control] objective for mpc and the oracle")
    ap.add_argument("--out", default="out/flex")
    args = ap.parse_args(argv)
    args.seed_list = args.seeds or [args.seed]
    strategies = ([] if args.only_oracle else [args.strategy]) + (["oracle"] if args.oracle or args.only_oracle else [])
    todo = [(s, f, g, n) for n in args.seed_list for s in args.scenarios for g in strategies for f in (True, False)]
    with ThreadPoolExecutor(max(1, args.jobs)) as ex:
        results = list(ex.map(lambda sf: run(sf[0], sf[1], args, sf[2], sf[3]), todo))
    rows = [row(r) for r in results]
    for r in rows:
        print(json.dumps(r))
    print()
    seeds = f"seed {args.seed}" if len(args.seed_list) == 1 else f"seeds {args.seed_list[0]}-{args.seed_list[-1]}"
    print(f"{args.hours:g} h, {seeds}, {args.strategy}, objective {args.objective or 'of the profile'}; "
          "flex on vs off (--no-flex)\n")
    print(table(rows))
    if len(args.seed_list) > 1:
        print("\nflex on minus off\n")
        print(effect_table(rows))
    bad = [r for r in rows if r["jobs_deadline_missed"]]
    by = {(r["scenario"], r["strategy"].split("-")[0], r["seed"], r["flex"]): r for r in rows}
    unfair = [(s, n) for n in args.seed_list for s in args.scenarios for g in strategies if g != "oracle"
              and abs(by[(s, g, n, True)]["jobs_kwh"] - by[(s, g, n, False)]["jobs_kwh"]) > 0.01]
    for r in bad:
        print(f"DEADLINE MISSED: {r['scenario']} seed {r['seed']} flex={r['flex']}: {r['jobs_deadline_missed']}",
              file=sys.stderr)
    for s, n in unfair:
        print(f"UNEQUAL JOB ENERGY: {s} seed {n}: {by[(s, args.strategy, n, True)]['jobs_kwh']} vs "
              f"{by[(s, args.strategy, n, False)]['jobs_kwh']} kWh", file=sys.stderr)
    return 1 if bad or unfair else 0


if __name__ == "__main__":
    raise SystemExit(main())
