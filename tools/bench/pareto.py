"""The Pareto view (issue 16): cost vs CO2 of the mpc and of the oracle as the carbon price sweeps from 0 to
the carbon-first limit, with rule and none as points, per reference scenario (48 h, seed 1 by default).

`python -m tools.bench.pareto [--scenarios a,b] [--hours 48] [--seed 1] [--prices 0,0.1,...] [--jobs N]
[--out out/pareto] [--fresh] [--save tools/bench/pareto.json] [--svg-dir docs/img]` runs every point (each
cached as OUT/<scenario>-<H>h-s<seed>/<point>.json; a cached point is read, not rerun, unless --fresh), prints
the table (markdown) and the monotonicity check, and with --save / --svg-dir writes the results file the demo
report draws from and one SVG chart per scenario. Not part of `make test` (18 runs of 48 h per scenario).

What a point of the sweep is. The carbon objective is J = W K + C (controller/core/mpc/objective.py: K the
carbon tier in kg, with unserved load and the reserve's shortfall at kappa kg per currency unit; C money; W
the instance's lexicographic weight, ~1e7 per kg). The sweep's point at carbon price p is the cost objective
plus p x the carbon tier: `[emissions] carbon_price_per_kg = p`, and the reliability terms raised with it,
VOLL x (1 + kappa p) and the reserve's weight (controller/params.MPC_RESERVE_PENALTY) x (1 + kappa p), so
that at every p reliability keeps against CO2 the weight the carbon mode gives it. p = 0 is the cost mode
exactly (factor 1); p -> W is the carbon mode, the sweep's last point (`objective = carbon`). Without the
raise a plain carbon price above VOLL / intensity (~65-80 CNY/kg on the mine) makes shedding load cheaper
than serving it, and well before that the reserve (0.03 per kWh-hour) stops counting against CO2 - a
different controller, not a point between cost and carbon first. The oracle takes the same objective
(its cost vector already carries p x CO2; its soft terminal condition is at the raised VOLL).

Both axes are credited for the stored energy at the end (`cost_adjusted`, `co2_adjusted_kg`, docs/kpis.md).
Sim runs keep every job as announced (no compute platform deferring any), as in tools/bench/objectives.py.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SCENARIOS = ("inner-mongolia-mine", "gansu-edge", "nordic-wind")
# site currency per kg CO2e: 0 (the cost mode), then half-decades from 0.1 (about the EU ETS's 2024-25 price
# in EUR, the Chinese ETS's ~0.1 CNY/kg is the first point too) to 30 (where a kWh of North China grid
# costs ~20 CNY of carbon: well past any battery arbitrage), then the carbon mode
PRICES = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
from tools.bench.pareto_chart import CARBON, RESULTS    # noqa: E402  (RESULTS: what `edge-ems demo` draws)
KEEP = ("co2_kg", "co2_adjusted_kg", "cost", "cost_adjusted", "unserved_kwh", "diesel_litres", "soc_end_pct",
        "grid_import_kwh", "renewable_share", "currency", "wall_s", "battery_charge_kwh", "battery_discharge_kwh")


# ---------------------------------------------------------------- one point
def points(prices=PRICES, mpc_prices=None) -> list[tuple[str, object]]:
    """(strategy, price | "carbon" | None) of a scenario's chart; the long mpc runs first. mpc_prices: the
    mpc's (default: prices; a 48 h mpc run costs ~100x an oracle's, so a loaded machine may take fewer)."""
    mpc_prices = prices if mpc_prices is None else mpc_prices
    out = [("mpc", p) for p in mpc_prices] + [("mpc", CARBON)]
    out += [("rule", None), ("none", None)]
    out += [("oracle", p) for p in prices] + [("oracle", CARBON)]
    return out


def label(strategy: str, price) -> str:
    if price is None:
        return strategy
    if price == CARBON:
        return f"{strategy}-carbon"
    return f"{strategy}-p{price:g}"


def run_point(scenario: str, strategy: str, price, hours: float, seed: int) -> dict:
    """One point's KPIs (the subset KEEP, plus what ran): a run of the real scan loop or of the oracle."""
    import time
    from controller import params as P
    from tools.sim.scenario import load_scenario
    scn = load_scenario(scenario)
    cfg = scn.site
    kappa = P.objective_kappa(cfg)
    voll0 = float(cfg["control"]["voll_per_kwh"])
    meta = {"scenario": scenario, "strategy": strategy, "price": price, "hours": hours, "seed": seed,
            "kappa": kappa}
    factor = 1.0
    if price == CARBON:
        cfg["control"]["objective"] = "carbon"
    elif price is not None:
        cfg["control"]["objective"] = "cost"
        factor = 1.0 + kappa * float(price)
        cfg["emissions"]["carbon_price_per_kg"] = float(price)
        cfg["control"]["voll_per_kwh"] = voll0 * factor
    meta.update(voll_per_kwh=voll0 * factor, reserve_penalty=P.MPC_RESERVE_PENALTY * factor,
                objective=cfg["control"]["objective"] if price is not None else None)
    t0 = time.perf_counter()
    if strategy == "oracle":
        from tools.sim.oracle import run_oracle
        k = run_oracle(scn, hours, seed, objective=cfg["control"]["objective"])
        meta["oracle_status"] = k["oracle"]["status"]
        meta["oracle_mip_gap"] = k["oracle"]["mip_gap"]
    else:
        import inspect
        from tools.sim import runner
        extra = {"compute": {"flex": False}} if "compute" in inspect.signature(runner.run_sim).parameters else {}
        build = runner.build_params

        def scaled(c, st=None, t_ref_s=None):
            prm = build(c, st, t_ref_s=t_ref_s)
            prm[P.L.P_RESERVE_PENALTY] *= factor         # the reserve raised with the carbon price (docstring)
            return prm

        runner.build_params = scaled
        try:
            k = runner.run_sim(scn, hours=hours, seed=seed, strategy=strategy, out_dir=None, ledger=False,
                               **extra).kpis
        finally:
            runner.build_params = build
    k["wall_s"] = round(time.perf_counter() - t0, 1)
    return json.loads(json.dumps({**meta, **{key: k.get(key) for key in KEEP}}, default=float))


def from_table(md: Path, scenario: str, run: str) -> dict | None:
    """A rule or none point from the six-way table of tools/bench/objectives.py as docs/objectives.md holds it
    (48 h, seed 1: the same runs - neither strategy has an objective or a carbon price), marked with its
    source; None when the table has no such row."""
    for line in md.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0] == scenario and cells[1] == run:
            co2, co2_adj, cost, cost_adj, share, uns, dsl, soc = cells[2:]
            return {"scenario": scenario, "strategy": run, "price": None, "source": f"{md} (tools.bench.objectives)",
                    "co2_kg": float(co2), "co2_adjusted_kg": float(co2_adj), "cost": float(cost.split()[0]),
                    "cost_adjusted": float(cost_adj), "renewable_share": float(share), "unserved_kwh": float(uns),
                    "diesel_litres": float(dsl), "soc_end_pct": float(soc), "currency": cost.split()[1],
                    "grid_import_kwh": None, "wall_s": None}
    return None


def _cache_path(out: Path, scenario: str, hours: float, seed: int, strategy: str, price) -> Path:
    return out / f"{scenario}-{hours:g}h-s{seed}" / f"{label(strategy, price)}.json"


def priority(strategy: str, price) -> tuple:
    """Which runs first when the machine is short: the cheap oracle points, each mpc curve's ends (the cost
    and the carbon mode), its middle (3 per kg), rule and none, then 0.3 and 30 (a decade either side),
    then 1, 10, 0.1."""
    if strategy == "oracle":
        return (0, 0.0)
    if price is None:
        return (3, 0.0)
    if price == CARBON or price == 0:
        return (1, 0.0)
    lg = math.log10(float(price))
    coarse = abs((lg - math.floor(lg)) - math.log10(3.0)) < 0.05      # 0.3, 3, 30: a decade apart
    if coarse and abs(lg - math.log10(3.0)) < 0.05:
        return (2, 0.0)
    return (4 if coarse else 5, abs(lg - 0.5))


def _job(args) -> dict:
    scenario, strategy, price, hours, seed, path = args
    if path.exists():                               # another sweep of the same cache got there first
        return json.loads(path.read_text())
    k = run_point(scenario, strategy, price, hours, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(k, indent=1) + "\n")
    tmp.replace(path)
    print(f"pareto: {scenario} {label(strategy, price)}: {k['co2_adjusted_kg']:.1f} kg, "
          f"{k['cost_adjusted']:.2f} {k['currency']} ({k['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return k


def sweep(scenarios, hours: float = 48.0, seed: int = 1, prices=PRICES, out: Path = Path("out/pareto"),
          jobs: int = 1, fresh: bool = False, mpc_prices=None, cached_only: bool = False,
          table: Path | None = None) -> dict:
    """{scenario: [point dict, ...]} in points() order; cached points read, the others run (jobs processes,
    in priority() order). cached_only: run nothing, leave the points not cached out. table: take rule and
    none, where not cached, from that markdown file's objectives table (from_table)."""
    todo, have = [], {}
    for scn in scenarios:
        for strategy, price in points(prices, mpc_prices):
            path = _cache_path(out, scn, hours, seed, strategy, price)
            if path.exists() and not fresh:
                have[(scn, strategy, price)] = json.loads(path.read_text())
            else:
                todo.append((scn, strategy, price, hours, seed, path))
    todo.sort(key=lambda t: priority(t[1], t[2]))
    if cached_only:
        todo = []
    if table is not None:               # rule and none not run here: the objectives table's, marked
        for scn in scenarios:
            for run in ("rule", "none"):
                if (scn, run, None) not in have and (k := from_table(Path(table), scn, run)) is not None:
                    have[(scn, run, None)] = k
        todo = [t for t in todo if (t[0], t[1], t[2]) not in have]
    if todo:
        print(f"pareto: {len(todo)} runs, {jobs} at a time", file=sys.stderr, flush=True)
        if jobs > 1:
            import multiprocessing as mp
            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex:
                done = list(ex.map(_job, todo))
        else:
            done = [_job(t) for t in todo]
        for t, k in zip(todo, done):
            have[(t[0], t[1], t[2])] = k
    return {scn: [have[(scn, s, p)] for s, p in points(prices, mpc_prices) if (scn, s, p) in have]
            for scn in scenarios}


# ---------------------------------------------------------------- what the figures say
def curve(pts: list[dict], strategy: str) -> list[dict]:
    """The strategy's sweep, carbon price ascending, the carbon mode last."""
    c = [p for p in pts if p["strategy"] == strategy and p["price"] is not None]
    return sorted(c, key=lambda p: float("inf") if p["price"] == CARBON else float(p["price"]))


def monotone(pts: list[dict], strategy: str, tol_kg: float = 0.05, tol_cost: float = 0.05) -> list[str]:
    """Where the sweep is not monotone: a step of the carbon price that raised credited CO2 (by more than
    tol_kg) or lowered credited cost (by more than tol_cost). [] when monotone."""
    c = curve(pts, strategy)
    bad = []
    for a, b in zip(c, c[1:]):
        d_kg = b["co2_adjusted_kg"] - a["co2_adjusted_kg"]
        d_c = b["cost_adjusted"] - a["cost_adjusted"]
        step = f"{_plabel(a['price'])} -> {_plabel(b['price'])}"
        if d_kg > tol_kg:
            bad.append(f"{step}: CO2 +{d_kg:.1f} kg")
        if d_c < -tol_cost:
            bad.append(f"{step}: cost {d_c:.2f}")
    return bad


def _plabel(price) -> str:
    return "carbon" if price == CARBON else ("none" if price is None else f"{price:g}")


def markdown(results: dict) -> str:
    lines = ["| scenario | run | carbon price /kg | co2_adj_kg | cost_adj | co2_kg | cost | unserved_kwh | "
             "diesel_l | soc_end_% | wall_s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for scn, pts in results.items():
        for p in pts:
            lines.append(f"| {scn} | {p['strategy']} | {_plabel(p['price']) if p['price'] is not None else '-'} | "
                         f"{p['co2_adjusted_kg']:.1f} | {p['cost_adjusted']:.2f} {p['currency']} | "
                         f"{p['co2_kg']:.1f} | {p['cost']:.2f} | {p['unserved_kwh']:.1f} | "
                         f"{p['diesel_litres']:.1f} | {p['soc_end_pct']:.1f} | "
                         f"{'table' if p.get('source') else format(p['wall_s'], '.0f')} |")
    return "\n".join(lines)


def commit_of() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                           cwd=Path(__file__).resolve().parent)
        return r.stdout.strip() or "?"
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=48.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--prices", default=",".join(f"{p:g}" for p in PRICES),
                    help="carbon prices, site currency per kg (the carbon mode is always the last point)")
    ap.add_argument("--mpc-prices", default=None, help="the mpc's carbon prices (default: --prices)")
    ap.add_argument("--out", default="out/pareto")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (processes); mind a shared machine")
    ap.add_argument("--fresh", action="store_true", help="rerun every point even when it is cached")
    ap.add_argument("--cached-only", action="store_true", help="run nothing: tabulate and draw what is cached")
    ap.add_argument("--rule-none-from", default=None, metavar="MD",
                    help="rule and none not cached: from this file's objectives table (docs/objectives.md)")
    ap.add_argument("--save", default=None, help=f"write the results file (the demo's: {RESULTS})")
    ap.add_argument("--svg-dir", default=None, help="write pareto-<scenario>.svg there")
    args = ap.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    prices = tuple(float(p) for p in args.prices.split(",") if p)
    mpc_prices = tuple(float(p) for p in args.mpc_prices.split(",") if p) if args.mpc_prices else prices
    results = sweep(scenarios, args.hours, args.seed, prices, Path(args.out), max(1, args.jobs), args.fresh,
                    mpc_prices, args.cached_only, args.rule_none_from)
    print(f"{args.hours:g} h, seed {args.seed}, carbon prices: oracle {', '.join(f'{p:g}' for p in prices)}, mpc "
          f"{', '.join(f'{p:g}' for p in mpc_prices)}, each + carbon mode (python -m tools.bench.pareto)\n")
    print(markdown(results))
    print()
    for scn, pts in results.items():
        for st in ("mpc", "oracle"):
            bad = monotone(pts, st)
            print(f"- {scn} {st}: " + ("monotone" if not bad else "NOT monotone: " + "; ".join(bad)))
    doc = {"hours": args.hours, "seed": args.seed, "prices": list(prices), "mpc_prices": list(mpc_prices),
           "commit": commit_of(),
           "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
           "load_avg": round(os.getloadavg()[0], 2), "command": "python -m tools.bench.pareto " + " ".join(
               a for a in (argv if argv is not None else sys.argv[1:])), "scenarios": results}
    if args.save:                       # other scenarios of the same horizon and seed already there are kept
        old = json.loads(Path(args.save).read_text()) if Path(args.save).exists() else {}
        if (old.get("hours"), old.get("seed")) == (args.hours, args.seed):
            doc["scenarios"] = {**old.get("scenarios", {}), **results}
        Path(args.save).write_text(json.dumps(doc, indent=1) + "\n")
    if args.svg_dir:
        from tools.bench.pareto_chart import chart_svg
        d = Path(args.svg_dir)
        d.mkdir(parents=True, exist_ok=True)
        for scn, pts in results.items():
            (d / f"pareto-{scn}.svg").write_text(chart_svg(scn, pts, args.hours, args.seed, standalone=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
