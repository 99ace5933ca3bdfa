"""The perfect-foresight optimum of a whole simulated run (`edge-ems sim --strategy oracle`).

Two stages:

1. **Plan** -- one sparse MILP (HiGHS via scipy.optimize.milp) over the whole run at `step_min`
   resolution (15 min by default: the demand-charge window), fed with the TRUE future of the scenario's
   1-minute Series averaged per step: load = it + cooling + aux, pv_avail (events included), grid_up
   (import and export caps scaled by the share of the step the grid is up, 0 during an outage),
   import price, grid CO2 intensity, genset_fail windows. The objective is the planning contract's of
   issue 4: energy cost - export revenue + carbon price x CO2 + battery wear + fuel (a*P + b*on) x
   (fuel price + carbon price x kgCO2/L) + start cost x starts + unserved penalty + peak price x the
   largest 15-min average import. Genset: MIP (on/off binaries, p_min, start cost, the profile's
   min_run_s as a minimum up time) by default; `genset="lp"` relaxes on_t to [0, 1].
   SOC: hard [soc_min, soc_max] band (no reserve by default: with perfect foresight no outage is a
   surprise; `reserve=True` adds the contract's soft reserve floor), the BMS charge/discharge taper of
   tools/sim/physics.py as linear limits on end-of-step SOC (conservative), and a terminal condition
   soc_end >= soc_start (soft, at the unserved penalty) so the oracle cannot win by emptying the battery.
   Objective modes (issue 16, the site's `[control] objective` or `edge-ems sim --objective`): "cost" is the
   above; "carbon" is lexicographic by two solves - first minimise the carbon tier K (kg CO2e: grid import x
   its intensity + diesel litres x kg/L, with the unserved and terminal penalties at kappa kg per currency
   unit, controller/params.objective_kappa), then money (the cost objective without carbon price and
   penalties) subject to K <= K* (1 + 1e-9) - the same tiers as the planner's (controller/core/mpc/objective.py).

2. **Replay through the physics** -- the schedule drives a SimSite (the same Battery/Genset models and
   `balance` rules the rule strategy is scored on) at `sim_step_s` (60 s default, 1 s possible): per
   step the PV limit is the plan's (proportional curtailment), the genset runs as planned at its
   planned power, and the PCS setpoint makes the grid follow the plan's import (so the 15-min peak is
   the plan's) while the battery absorbs the minute-to-minute deviations from the step means; at each
   step start a proportional term pulls SOC back to the plan. No interlocks (the oracle is not the
   controller). KPIs are those of `runner.kpis_of`, computed by it from the SimSite meters.
"""
from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from controller.config import OBJECTIVES
from controller.core import layout as L
from controller.params import objective_kappa
from tools.sim.scenario import Scenario, load_scenario
from tools.sim.site import SimSite

__all__ = ["OraclePlan", "build_inputs", "solve_plan", "simulate_plan", "run_oracle"]

# The BMS taper of tools/sim/physics.Battery (ccl: 1 at 90 % -> 0.3 at 97 %; dcl: 0 at 3 % -> 1 at 12 %)
CCL_KNEE_PCT, CCL_SLOPE_PER_PCT = 90.0, 0.7 / 7.0
DCL_ZERO_PCT, DCL_FULL_PCT = 3.0, 12.0


class OraclePlan(SimpleNamespace):
    """Arrays of length N (kW, step means) + soc_pct (N+1) + objective, status, solve_s, mip_gap."""


def build_inputs(scn: Scenario, series, hours: float, step_min: int) -> dict:
    """Step means of the true 1-min series over the run."""
    n = int(round(hours * 60 / step_min))
    m = step_min
    tot = n * m

    def steps(a):
        return np.asarray(a[:tot], dtype=float).reshape(n, m)

    s = series
    load = steps(s.it_kw) + steps(s.cooling_kw) + steps(s.aux_kw)
    up = steps(s.grid_up) > 0.5
    fail = steps(s.genset_fail) > 0.5
    cfg = scn.site
    return {
        "n": n, "m": m, "dt_h": step_min / 60.0,
        "load_kw": load.mean(axis=1), "pv_kw": steps(s.pv_avail_kw).mean(axis=1),
        "price": steps(s.price_per_kwh).mean(axis=1), "co2": steps(s.co2_kg_per_kwh).mean(axis=1),
        "up_frac": up.mean(axis=1), "gen_ok": ~fail.any(axis=1),
        "import_max_kw": cfg["grid"]["import_max_kw"] * up.mean(axis=1),
        "export_max_kw": cfg["grid"]["export_max_kw"] * up.mean(axis=1),
        "export_price": float(cfg["tariff"]["export_price_per_kwh"]),
    }


def solve_plan(scn: Scenario, inp: dict, genset: str = "mip", reserve: bool = False,
               unserved_penalty_per_kwh: float = 50.0, mip_rel_gap: float = 1e-4,
               time_limit_s: float = 60.0, objective: str = "cost", jobs: list | None = None) -> OraclePlan:
    """The whole-run MILP (or LP with genset='lp'). Variable blocks of N: g x c d q u l s z [on st], then P, zT.
    objective "carbon": two solves, carbon tier then money within K <= K* (1 + 1e-9) (module docstring).
    jobs: deferrable jobs as decisions (issue 17, oracle_jobs): their series load (`baked_kw`) is taken out
    and one binary start variable per allowed start step adds `kw_t` (site kW per step) over its run."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {', '.join(OBJECTIVES)}, got {objective!r}")
    cfg = scn.site
    bat, emis = cfg["battery"], cfg["emissions"]
    gen = cfg.get("genset")
    has_g = gen is not None
    N, dt = inp["n"], inp["dt_h"]
    cap = bat["capacity_kwh"]
    cp = emis.get("carbon_price_per_kg", 0.0)
    soc0 = float(scn["init"]["soc_pct"])
    smin, smax = min(bat["soc_min_pct"], soc0), max(bat["soc_max_pct"], soc0)
    names = ["g", "x", "c", "d", "q", "u", "l", "s", "z"] + (["on", "st"] if has_g else [])
    B = {k: i for i, k in enumerate(names)}
    nv = len(names) * N + 2
    iP, iZT = nv - 2, nv - 1
    t = np.arange(N)

    def ix(name, tt=t):
        return B[name] * N + tt

    cost = np.zeros(nv)
    cost[ix("g")] = dt * (inp["price"] + cp * inp["co2"])
    cost[ix("x")] = -dt * inp["export_price"]
    cost[ix("c")] = dt * bat["wear_cost_per_kwh"]
    cost[ix("d")] = dt * bat["wear_cost_per_kwh"]
    cost[ix("l")] = dt * unserved_penalty_per_kwh
    cost[ix("z")] = dt * unserved_penalty_per_kwh * cap / 100.0   # reserve shortfall (when enabled)
    cost[iP] = cfg["tariff"]["peak_price_per_kw"]
    cost[iZT] = unserved_penalty_per_kwh * cap / 100.0
    # the carbon tier (objective "carbon"): kg CO2e, the reliability penalties at kappa kg per currency unit
    kappa = objective_kappa(cfg)
    kg = np.zeros(nv)
    kg[ix("g")] = dt * inp["co2"]
    kg[ix("l")] = dt * kappa * unserved_penalty_per_kwh
    kg[ix("z")] = dt * kappa * unserved_penalty_per_kwh * cap / 100.0
    kg[iZT] = kappa * unserved_penalty_per_kwh * cap / 100.0
    lo, hi = np.zeros(nv), np.full(nv, np.inf)
    hi[ix("g")] = inp["import_max_kw"]
    hi[ix("x")] = inp["export_max_kw"]
    hi[ix("c")] = bat["charge_max_kw"]
    hi[ix("d")] = bat["discharge_max_kw"]
    hi[ix("u")] = inp["pv_kw"]
    hi[ix("l")] = inp["load_kw"]
    lo[ix("s")], hi[ix("s")] = smin, smax
    if not reserve:
        hi[ix("z")] = 0.0
    if has_g:
        per_l = gen["fuel_price_per_l"] + cp * emis["diesel_kg_per_l"]
        cost[ix("q")] = dt * gen["fuel_l_per_kwh"] * per_l
        cost[ix("on")] = dt * gen["fuel_l_per_h_on"] * per_l
        cost[ix("st")] = gen.get("start_cost", 0.0)
        kg[ix("q")] = dt * gen["fuel_l_per_kwh"] * emis["diesel_kg_per_l"]
        kg[ix("on")] = dt * gen["fuel_l_per_h_on"] * emis["diesel_kg_per_l"]
        hi[ix("q")] = gen["rated_kw"] * inp["gen_ok"]
        hi[ix("on")] = inp["gen_ok"].astype(float)
        hi[ix("st")] = 1.0
    else:
        hi[ix("q")] = 0.0

    rows, cols, vals, rlo, rhi = [], [], [], [], []
    nrow = [0]

    def add(entries, lo_, hi_, k=N):
        """k rows at once; entries: (column index array of length k, coefficient scalar or array)."""
        r0 = nrow[0]
        for c_, v_ in entries:
            c_ = np.asarray(c_)
            rows.append(r0 + np.arange(k))
            cols.append(c_)
            vals.append(np.broadcast_to(np.asarray(v_, dtype=float), (k,)).copy())
        rlo.append(np.broadcast_to(np.asarray(lo_, dtype=float), (k,)).copy())
        rhi.append(np.broadcast_to(np.asarray(hi_, dtype=float), (k,)).copy())
        nrow[0] += k

    k_soc = 100.0 * dt / cap
    net = inp["load_kw"] - inp["pv_kw"]
    for job in jobs or ():
        net = net - job["baked_kw"]
    add([(ix("g"), 1), (ix("d"), 1), (ix("q"), 1), (ix("l"), 1), (ix("c"), -1), (ix("x"), -1), (ix("u"), -1)],
        net, net)
    # soc_t - soc_{t-1} - k*eta_c*c_t + k/eta_d*d_t = 0
    rhs = np.zeros(N)
    rhs[0] = soc0
    add([(ix("s"), 1), (ix("c"), -k_soc * bat["eta_charge"]), (ix("d"), k_soc / bat["eta_discharge"])], rhs, rhs)
    r_soc = nrow[0] - N
    rows.append(r_soc + np.arange(1, N))
    cols.append(ix("s", t[:-1]))
    vals.append(np.full(N - 1, -1.0))
    # BMS taper (end-of-step SOC; physics tapers with the SOC it is at, so this is conservative)
    cmax, dmax = bat["charge_max_kw"], bat["discharge_max_kw"]
    add([(ix("c"), 1), (ix("s"), cmax * CCL_SLOPE_PER_PCT)], -np.inf, cmax * (1 + CCL_SLOPE_PER_PCT * CCL_KNEE_PCT))
    add([(ix("d"), 1), (ix("s"), -dmax / (DCL_FULL_PCT - DCL_ZERO_PCT))], -np.inf,
        -dmax * DCL_ZERO_PCT / (DCL_FULL_PCT - DCL_ZERO_PCT))
    # reserve (soft): s_t + z_t >= max(soc_min, reserve)
    if reserve:
        add([(ix("s"), 1), (ix("z"), 1)], max(bat["soc_min_pct"], bat["reserve_pct"]), np.inf)
    # peak: mean import over each 15-min window <= P
    w = max(1, int(round(0.25 / dt)))
    nw = N // w
    if cfg["tariff"]["peak_price_per_kw"] > 0 and nw > 0:
        win = np.arange(nw)
        add([(ix("g", win * w + j), 1.0 / w) for j in range(w)] + [(np.full(nw, iP), -1.0)], -np.inf, 0.0, k=nw)
    # terminal: soc_end + zT >= soc0
    add([(np.array([ix("s", N - 1)]), 1.0), (np.array([iZT]), 1.0)], soc0, np.inf, k=1)
    integrality = np.zeros(nv)
    if has_g:
        pmin, pmax = gen["p_min_kw"], gen["rated_kw"]
        add([(ix("q"), 1), (ix("on"), -pmax)], -np.inf, 0.0)
        add([(ix("q"), -1), (ix("on"), pmin)], -np.inf, 0.0)
        # st_t >= on_t - on_{t-1} (off before the run)
        add([(ix("on"), 1), (ix("st"), -1)], -np.inf, 0.0)
        r_st = nrow[0] - N
        rows.append(r_st + np.arange(1, N))
        cols.append(ix("on", t[:-1]))
        vals.append(np.full(N - 1, -1.0))
        # minimum up time: on_t >= st_tau for tau in (t-R, t]
        R = int(math.ceil(gen.get("min_run_s", 0.0) / (dt * 3600.0) - 1e-9))
        for back in range(1, R):
            tt = t[back:]
            add([(ix("on", tt), 1), (ix("st", tt - back), -1)], 0.0, np.inf, k=len(tt))
        if genset == "mip":
            integrality[ix("on")] = 1
        elif genset != "lp":
            raise ValueError(f"genset must be 'mip' or 'lp', got {genset!r}")
    job_cols = []                         # (job, start s) per binary start column, after the nv columns
    step_s = dt * 3600.0
    for j, job in enumerate(jobs or ()):
        first = nv + len(job_cols)
        for a in job["starts_s"]:             # its release, then every step boundary its deadline allows
            c = nv + len(job_cols)
            k0, k1 = int(a // step_s), min(N, int(math.ceil((a + job["dur_s"]) / step_s - 1e-9)))
            tt = np.arange(k0, k1)
            share = (np.minimum((tt + 1) * step_s, a + job["dur_s"]) - np.maximum(tt * step_s, a)) / step_s
            rows.append(tt)                               # the balance rows are rows 0..N-1
            cols.append(np.full(len(tt), c))
            vals.append(-job["kw_t"][tt] * share)         # the share of each step it runs: its energy exactly
            job_cols.append((j, a))
        last = nv + len(job_cols)
        rows.append(np.full(last - first, nrow[0]))       # exactly one start
        cols.append(np.arange(first, last))
        vals.append(np.ones(last - first))
        rlo.append(np.ones(1))
        rhi.append(np.ones(1))
        nrow[0] += 1
    if job_cols:
        ny = len(job_cols)
        cost, kg = np.concatenate([cost, np.zeros(ny)]), np.concatenate([kg, np.zeros(ny)])
        lo, hi = np.concatenate([lo, np.zeros(ny)]), np.concatenate([hi, np.ones(ny)])
        integrality = np.concatenate([integrality, np.ones(ny)])
    nv_all = nv + len(job_cols)
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(nrow[0], nv_all))
    t0 = time.perf_counter()
    opts = {"mip_rel_gap": mip_rel_gap, "time_limit": time_limit_s, "presolve": True}
    integ = integrality if integrality.any() else None
    rlo_all, rhi_all = np.concatenate(rlo), np.concatenate(rhi)
    k_star = None
    if objective == "carbon":
        # phase 1: the carbon tier alone; phase 2: money (no carbon price, no penalties: they are in K)
        r1 = milp(kg, constraints=LinearConstraint(A, rlo_all, rhi_all), bounds=Bounds(lo, hi), integrality=integ,
                  options=opts)
        if r1.x is None:
            raise RuntimeError(f"oracle (carbon, phase 1): HiGHS found no solution ({r1.message})")
        k_star = float(kg @ r1.x)
        money = cost.copy()
        money[ix("g")] = dt * inp["price"]
        money[ix("l")] = money[ix("z")] = money[iZT] = 0.0
        if has_g:
            money[ix("q")] = dt * gen["fuel_l_per_kwh"] * gen["fuel_price_per_l"]
            money[ix("on")] = dt * gen["fuel_l_per_h_on"] * gen["fuel_price_per_l"]
        A = sp.vstack([A, sp.csr_matrix(kg.reshape(1, -1))]).tocsr()
        rlo_all = np.append(rlo_all, -np.inf)
        rhi_all = np.append(rhi_all, k_star + 1e-9 * max(1.0, abs(k_star)))
        cost = money
    res = milp(cost, constraints=LinearConstraint(A, rlo_all, rhi_all),
               bounds=Bounds(lo, hi), integrality=integ, options=opts)
    solve_s = time.perf_counter() - t0
    if res.x is None and k_star is not None:
        res = r1                    # phase 2 found nothing in its time: the carbon optimum without the tie-break
    if res.x is None:
        raise RuntimeError(f"oracle: HiGHS found no solution ({res.message})")
    xv = res.x[:len(names) * N].reshape(len(names), N)
    on = xv[B["on"]] if has_g else np.zeros(N)
    q = xv[B["q"]].copy()
    if genset == "mip":
        on = (on > 0.5).astype(float)
        q[on < 0.5] = 0.0
    gap = getattr(res, "mip_gap", 0.0) if integrality.any() else 0.0
    job_start = {}
    for c, (j, a) in enumerate(job_cols):
        if res.x[nv + c] > 0.5:
            job_start[j] = a
    return OraclePlan(grid_kw=xv[B["g"]], export_kw=xv[B["x"]], charge_kw=xv[B["c"]], discharge_kw=xv[B["d"]],
                      diesel_kw=q, curtail_kw=xv[B["u"]], unserved_kw=xv[B["l"]],
                      soc_pct=np.concatenate([[soc0], xv[B["s"]]]), diesel_on=on, peak_kw=float(res.x[iP]),
                      objective=float(res.fun), status=int(res.status), message=str(res.message),
                      solve_s=solve_s, mip_gap=float(gap if gap is not None else 0.0), n_vars=nv, n_rows=nrow[0],
                      genset=genset if has_g else "none", objective_mode=objective,
                      plan_co2_kg=float(kg @ res.x), kappa=kappa, job_start=job_start)


def simulate_plan(scn: Scenario, site: SimSite, plan: OraclePlan, inp: dict, hours: float,
                  sim_step_s: float = 60.0, soc_gain: float = 0.5) -> SimSite:
    """Drive the SimSite with the plan's schedule as setpoints (see the module docstring)."""
    cfg = scn.site
    bat = cfg["battery"]
    cap = bat["capacity_kwh"]
    s = site.series
    step_s = inp["dt_h"] * 3600.0
    n = inp["n"]
    steps = int(round(hours * 3600.0 / sim_step_s))
    gen = site.genset
    gen_on_prev = False
    corr_kw = 0.0
    block = -1
    for i in range(steps):
        now = i * sim_step_s
        k = min(int(now // step_s), n - 1)
        if k != block:
            block = k
            err_pct = plan.soc_pct[k] - site.battery.soc_pct
            corr_kw = soc_gain * err_pct * cap / 100.0 / inp["dt_h"]   # + : charge more than planned
        it, cooling = site.it_cooling_kw(now)     # the series, with the oracle's job moves (oracle_jobs)
        load = it + cooling + s.at("aux_kw", now)
        pv_avail = s.at("pv_avail_kw", now)
        up = s.flag("grid_up", now)
        pv_k = inp["pv_kw"][k]
        keep = 1.0 - plan.curtail_kw[k] / pv_k if pv_k > 1e-9 else 1.0
        pv_used = pv_avail * min(1.0, max(0.0, keep))
        uf = inp["up_frac"][k]
        g_t = plan.grid_kw[k] / uf if (up and uf > 0) else 0.0
        x_t = plan.export_kw[k] / uf if (up and uf > 0) else 0.0
        run = bool(plan.diesel_on[k] > 0.5 and plan.diesel_kw[k] > 1e-6)
        q_sp = plan.diesel_kw[k] if run else 0.0
        if gen is not None:
            if run != gen_on_prev:
                site.actuate_genset(run, q_sp)
                gen_on_prev = run
            else:
                site.gen_sp_kw = q_sp
        q_eff = q_sp if (gen is not None and gen.running) else 0.0
        bat_sp = load - pv_used - q_eff - g_t + x_t - corr_kw
        soc = site.battery.soc_pct
        if bat_sp < 0.0 and soc >= bat["soc_max_pct"]:
            bat_sp = 0.0
        if bat_sp > 0.0 and soc <= bat["soc_min_pct"] and up:
            bat_sp = 0.0
        site.actuate_pcs(bat_sp)
        # proportional curtailment as planned; when the battery is full, let surplus be curtailed by
        # the physics rather than exported beyond the plan
        site.actuate_pv_limit(pv_used if keep < 1.0 - 1e-9 else site.pv_rated_kw)
        site.advance_to(now + sim_step_s)
    return site


def _kpis(scn: Scenario, site: SimSite, hours: float, wall_s: float) -> dict:
    """runner.kpis_of on the SimSite meters (the same formulas as every other strategy), minus loop health."""
    from tools.sim.runner import kpis_of
    params = np.zeros(L.N_PARAMS)
    fake_loop = SimpleNamespace(params=params, state=np.zeros(L.N_STATE),
                                stats=SimpleNamespace(as_dict=lambda: {"overruns": 0, "p99_ms": 0.0, "max_ms": 0.0,
                                                                      "cycles": 0}))
    k = kpis_of(site, fake_loop, hours, wall_s)
    k["strategy"] = "oracle"
    for key in ("interlock_trips", "cycle_overruns", "cycle_p99_ms", "cycle_max_ms", "cycles"):
        k[key] = None
    return k


def energy_closure_kwh(site: SimSite) -> float:
    """load - (pv_used + import - export + discharge - charge + diesel + unserved): 0 when energy closes."""
    m = site.meters
    diesel = site.genset.energy_kwh if site.genset else 0.0
    return (m.load_kwh - (m.pv_used_kwh + m.grid_import_kwh - m.grid_export_kwh + m.battery_discharge_kwh
                          - m.battery_charge_kwh + diesel + m.unserved_kwh))


def oracle_jobs(scn: Scenario, site: SimSite, inp: dict, seed: int, hours: float):
    """The scenario's deferrable jobs (tools/sim/compute_platform.py platform_jobs, flexibility on) as the
    oracle's decisions: per job the site kW per step of running (IT + the cooling it draws at the step's
    mean ambient), its series load per step (to take out) and its window in steps (release .. deadline).
    Returns (platform, job dicts) - the platform replays the chosen starts (ScheduledRuns)."""
    from drivers import compute as C
    from tools.sim.compute_platform import SimPlatform, platform_jobs
    jobs = [j for j in platform_jobs(scn, site.series, seed, hours, flex=True)]
    t0 = scn.start.timestamp()
    tel = C.ComputeTelemetry("oracle", utc=lambda: t0 + site.t_s, mono=lambda: site.t_s)
    platform = SimPlatform(scn, site.series, jobs, t0, lambda: site.t_s, tel, power_period_s=0.0)
    n, m, step_s = inp["n"], inp["m"], inp["dt_h"] * 3600.0
    amb = np.asarray(site.series.ambient_c[:n * m], dtype=float).reshape(n, m).mean(axis=1)
    base, per_c, below = platform.cool
    frac = base + per_c * np.maximum(0.0, amb - below)
    minute_h = np.arange(n * m) / 60.0
    out = []
    for j in platform._deviated:
        latest = min(n * step_s, j.deadline_s) - j.duration_s
        if latest < j.release_s:
            continue                                  # no room to move it: left where the series has it
        starts = [j.release_s] + [k * step_s for k in range(int(j.release_s // step_s) + 1, n)
                                  if k * step_s <= latest + 1e-6]
        s_h, e_h = j.baked
        share = ((minute_h >= s_h) & (minute_h < e_h)).reshape(n, m).mean(axis=1)
        out.append({"id": j.id, "kw_t": j.kw * (1.0 + frac), "baked_kw": j.kw * (1.0 + frac) * share,
                    "dur_s": j.duration_s, "starts_s": starts, "job": j})
    return platform, out


class ScheduledRuns:
    """A compute platform that runs each moved job from the oracle's chosen start (SimSite.compute)."""

    def __init__(self, platform, starts: dict):
        self.platform, self.starts = platform, starts      # job id -> start (s from the run's start)

    def advance(self, t: float) -> None:
        pass                                               # nothing to decide: the plan fixed every start

    def delta_kw(self, t: float):
        for j in self.platform._deviated:
            a = self.starts.get(j.id, j.release_s)        # a job with no room to move runs at its hours
            j.running_since = a if a <= t < a + j.duration_s else None
        return self.platform.delta_kw(t)


def run_oracle(scn: Scenario | str, hours: float | None = None, seed: int = 1, step_min: int = 15,
               genset: str = "mip", reserve: bool = False, sim_step_s: float = 60.0,
               unserved_penalty_per_kwh: float | None = None, return_details: bool = False,
               objective: str | None = None, flex: bool = False) -> dict:
    """Perfect-foresight optimum of a run: plan with the true future, replay it through the physics.
    objective: "cost" | "carbon" (default the site's [control] objective); unserved_penalty_per_kwh: default
    the site's [control] voll_per_kwh, as the planner's.

    Returns the KPI dict of `runner.kpis_of` (strategy "oracle") plus an "oracle" entry with the plan's
    objective, HiGHS status and time, MIP gap, step and options. With return_details=True returns
    (kpis, plan, site, inputs).
    """
    if isinstance(scn, str):
        scn = load_scenario(scn)
    hours = float(hours if hours is not None else scn["scenario"]["hours"])
    if (hours * 60) % step_min:
        raise ValueError(f"hours*60 ({hours * 60:g} min) must be a multiple of step_min ({step_min})")
    wall0 = time.perf_counter()
    site = SimSite(scn, hours, seed)
    inp = build_inputs(scn, site.series, hours, step_min)
    objective = objective or scn.site["control"]["objective"]
    if unserved_penalty_per_kwh is None:
        unserved_penalty_per_kwh = scn.site["control"]["voll_per_kwh"]
    platform, jobs = oracle_jobs(scn, site, inp, seed, hours) if flex else (None, [])
    plan = solve_plan(scn, inp, genset=genset, reserve=reserve, unserved_penalty_per_kwh=unserved_penalty_per_kwh,
                      objective=objective, jobs=jobs, time_limit_s=300.0 if jobs else 60.0)
    moved = {}
    if jobs:                                          # the jobs run from the chosen starts (and nowhere else)
        starts = {job["id"]: plan.job_start[i] for i, job in enumerate(jobs)}
        site.compute = ScheduledRuns(platform, starts)
        moved = {job["id"]: round((starts[job["id"]] - job["job"].release_s) / 3600.0, 3) for job in jobs}
    simulate_plan(scn, site, plan, inp, hours, sim_step_s)
    wall_s = time.perf_counter() - wall0
    kpis = _kpis(scn, site, hours, wall_s)
    kpis["objective"] = objective
    kpis["oracle"] = {
        "objective": round(plan.objective, 3), "status": plan.status, "message": plan.message,
        "solve_s": round(plan.solve_s, 3), "mip_gap": plan.mip_gap, "step_min": step_min, "genset": plan.genset,
        "reserve": reserve, "sim_step_s": sim_step_s, "plan_grid_peak_kw": round(plan.peak_kw, 3),
        "plan_soc_end_pct": round(float(plan.soc_pct[-1]), 2),
        "plan_diesel_kwh": round(float(np.sum(plan.diesel_kw) * inp["dt_h"]), 3),
        "plan_unserved_kwh": round(float(np.sum(plan.unserved_kw) * inp["dt_h"]), 3),
        "objective_mode": objective, "plan_co2_tier_kg": round(plan.plan_co2_kg, 3), "kappa": round(plan.kappa, 6),
        "energy_closure_kwh": round(energy_closure_kwh(site), 6),
        "flex": bool(flex), "jobs_moved_h": moved,
    }
    if flex:
        kpis["jobs_moved_hours"] = round(sum(max(0.0, v) for v in moved.values()), 3)
        kpis["jobs_deadline_missed"] = 0          # every start is inside its window by construction
    if return_details:
        return kpis, plan, site, inp
    return kpis


def write_oracle(scn: Scenario | str, hours: float | None, seed: int, out_dir=None, objective: str | None = None,
                 flex: bool = False) -> dict:
    """`edge-ems sim --strategy oracle`: run_oracle, then OUT/kpis.json and OUT/minutes.npy like a sim.
    objective: "cost" | "carbon" (default the site's [control] objective); flex: deferrable jobs as decisions."""
    import json
    from pathlib import Path
    kpis, plan, site, inp = run_oracle(scn, hours, seed, return_details=True, objective=objective, flex=flex)
    kpis = json.loads(json.dumps(kpis, default=float))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "kpis.json").write_text(json.dumps(kpis, indent=2) + "\n")
        np.save(out / "minutes.npy", np.asarray(site.meters.log))
    return kpis
