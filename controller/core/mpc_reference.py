"""The reference optimum: the planning problem of issue 4 as one sparse LP / MILP for HiGHS (scipy).

Why it exists: the numba solver in mpc.py is only trusted because tests and the benchmark compare it to
this formulation, written independently and as literally as possible from the contract. Also the plan
checker (`check_plan`) lives here: it re-evaluates the objective formula and every constraint on a
returned plan, so neither solver grades its own homework. scipy is a sim/test extra; the gateway never
imports this module.

Variables per step t (blocks of H): g x c d q u l z s(=soc_{t+1}) [on st], then the peak level P.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from controller.core.plan_instance import PlanArrays, PlanInstance

__all__ = ["ReferenceResult", "solve_reference", "check_plan", "plan_objective", "solve_reference_jobs", "with_jobs_as_load",
           "check_jobs"]

G, X, C, D, Q, U, L, Z, S, ON, ST = range(11)


@dataclass
class ReferenceResult(PlanArrays):
    highs_objective: float  # what HiGHS reported (same up to its tolerances)
    solve_ms: float        # the HiGHS call only (model building excluded)
    build_ms: float
    status: int


def _costs(inst: PlanInstance):
    """Per-kW-per-hour costs shared by the LP and the checker."""
    grid_cost = inst.grid_price + inst.carbon_price_per_kg * inst.grid_co2_kg_per_kwh
    if inst.diesel is None:
        return grid_cost, 0.0, 0.0
    dsl = inst.diesel
    per_l = dsl.fuel_price_per_l + inst.carbon_price_per_kg * dsl.co2_kg_per_l
    return grid_cost, dsl.fuel_l_per_kwh * per_l, dsl.fuel_l_per_h_on * per_l


def _build(inst: PlanInstance):
    """Objective, bounds, sparse constraint rows and integrality of the MILP."""
    H, dt, bat = inst.horizon, inst.dt_h, inst.battery
    has_d = inst.diesel is not None
    nb = 11 if has_d else 9
    use_peak = inst.peak_price_per_kw > 0
    n = nb * H + (1 if use_peak else 0)
    iP = nb * H
    idx = lambda b, t: b * H + t  # noqa: E731
    t = np.arange(H)
    grid_cost, q_cost, on_cost = _costs(inst)
    cap = bat.capacity_kwh

    cost = np.zeros(n)
    cost[idx(G, t)] = dt * grid_cost
    cost[idx(X, t)] = -dt * inst.export_price
    cost[idx(C, t)] = dt * bat.wear_cost_per_kwh
    cost[idx(D, t)] = dt * bat.wear_cost_per_kwh
    cost[idx(L, t)] = dt * inst.unserved_penalty_per_kwh
    cost[idx(Z, t)] = dt * inst.soc_shortfall_penalty_per_kwh * cap / 100.0
    cost[idx(S, H - 1)] += -bat.terminal_value_per_kwh * cap / 100.0
    if has_d:
        cost[idx(Q, t)] = dt * q_cost
        cost[idx(ON, t)] = dt * on_cost
        cost[idx(ST, t)] = inst.diesel.start_cost
    if use_peak:
        cost[iP] = inst.peak_price_per_kw

    lo, hi = np.zeros(n), np.full(n, np.inf)
    hi[idx(G, t)] = inst.grid_import_max_kw
    hi[idx(X, t)] = inst.export_max_kw
    hi[idx(C, t)] = bat.charge_max_kw
    hi[idx(D, t)] = bat.discharge_max_kw
    hi[idx(U, t)] = inst.pv_kw
    hi[idx(S, t)] = inst.soc_ceiling_pct()  # lo 0: the physical floor; the contract's floor is soft
    if has_d:
        hi[idx(Q, t)] = inst.diesel.p_max_kw
        hi[idx(ON, t)] = 1.0
        hi[idx(ST, t)] = 1.0
    else:
        hi[idx(Q, t)] = 0.0

    rows, cols, vals, clo, chi = [], [], [], [], []
    r = 0

    def add(entries, lo_, hi_):
        nonlocal r
        for c_, v_ in entries:
            rows.append(np.full(H, r) + t if np.ndim(c_) else r)
            cols.append(c_)
            vals.append(np.full(H, v_) if np.ndim(c_) else v_)
        clo.append(lo_)
        chi.append(hi_)
        r += H

    k = 100.0 * dt / cap
    # balance: g + d + q + l - c - x - u = load - pv
    add([(idx(G, t), 1.0), (idx(D, t), 1.0), (idx(Q, t), 1.0), (idx(L, t), 1.0),
         (idx(C, t), -1.0), (idx(X, t), -1.0), (idx(U, t), -1.0)],
        inst.load_kw - inst.pv_kw, inst.load_kw - inst.pv_kw)
    # soc: s_t - s_{t-1} - k*eta_c*c_t + k/eta_d*d_t = 0 (s_{-1} = soc0)
    rhs = np.zeros(H)
    rhs[0] = bat.soc0_pct
    add([(idx(S, t), 1.0), (idx(C, t), -k * bat.eta_charge), (idx(D, t), k / bat.eta_discharge)], rhs, rhs)
    rows.append(np.arange(1, H) + (r - H))
    cols.append(idx(S, t[:-1]))
    vals.append(np.full(H - 1, -1.0))
    # soft floor: s_t + z_t >= max(soc_min, reserve_t)
    add([(idx(S, t), 1.0), (idx(Z, t), 1.0)], inst.floor_pct(), np.full(H, np.inf))
    if use_peak:  # g_t - P <= 0
        add([(idx(G, t), 1.0), (np.full(H, iP), -1.0)], np.full(H, -np.inf), np.zeros(H))
    if has_d:
        dsl = inst.diesel
        add([(idx(Q, t), 1.0), (idx(ON, t), -dsl.p_max_kw)], np.full(H, -np.inf), np.zeros(H))
        add([(idx(Q, t), -1.0), (idx(ON, t), dsl.p_min_kw)], np.full(H, -np.inf), np.zeros(H))
        # start: on_t - on_{t-1} - st_t <= 0 (on_{-1} = on0)
        rhs = np.zeros(H)
        rhs[0] = 1.0 if dsl.on0 else 0.0
        add([(idx(ON, t), 1.0), (idx(ST, t), -1.0)], np.full(H, -np.inf), rhs)
        rows.append(np.arange(1, H) + (r - H))
        cols.append(idx(ON, t[:-1]))
        vals.append(np.full(H - 1, -1.0))
    A = sp.csr_matrix((np.concatenate([np.atleast_1d(v) for v in vals]),
                       (np.concatenate([np.atleast_1d(v) for v in rows]),
                        np.concatenate([np.atleast_1d(v) for v in cols]))), shape=(r, n))
    integrality = np.zeros(n)
    if has_d:
        integrality[idx(ON, t)] = 1
    return cost, lo, hi, A, np.concatenate(clo), np.concatenate(chi), integrality, nb


def _result(inst: PlanInstance, res, nb: int, t0: float, t1: float, t2: float) -> ReferenceResult:
    """The plan read off HiGHS's solution (the first nb x H columns), valued by the same objective as ours."""
    H = inst.horizon
    xv = res.x[: nb * H].reshape(nb, H)
    q = xv[Q].copy()
    on = (xv[ON] > 0.5) if inst.diesel is not None else np.zeros(H, dtype=bool)
    q[~on] = 0.0
    soc = np.concatenate([[inst.battery.soc0_pct], xv[S]])
    plan = dict(grid_kw=xv[G].copy(), export_kw=xv[X].copy(), charge_kw=xv[C].copy(),
                discharge_kw=xv[D].copy(), diesel_kw=q, curtail_kw=xv[U].copy(),
                unserved_kw=xv[L].copy(), soc_pct=soc, diesel_on=on)
    obj = plan_objective(inst, **plan)
    return ReferenceResult(objective=obj, highs_objective=float(res.fun), solve_ms=(t2 - t1) * 1e3,
                           build_ms=(t1 - t0) * 1e3, status=int(res.status), **plan)


def solve_reference(inst: PlanInstance, mip_rel_gap: float = 1e-6, time_limit_s: float = 60.0) -> ReferenceResult:
    """Solve the instance with HiGHS (LP when there is no genset, MILP otherwise)."""
    t0 = time.perf_counter()
    cost, lo, hi, A, clo, chi, integrality, nb = _build(inst)
    t1 = time.perf_counter()
    res = milp(cost, constraints=LinearConstraint(A, clo, chi), bounds=Bounds(lo, hi),
               integrality=integrality if integrality.any() else None,
               options={"mip_rel_gap": mip_rel_gap, "time_limit": time_limit_s, "presolve": True})
    t2 = time.perf_counter()
    if res.x is None:
        raise RuntimeError(f"HiGHS failed: {res.message}")
    return _result(inst, res, nb, t0, t1, t2)


def plan_objective(inst: PlanInstance, grid_kw, export_kw, charge_kw, discharge_kw, diesel_kw,
                   curtail_kw, unserved_kw, soc_pct, diesel_on, **_ignored) -> float:
    """The contract's objective formula evaluated on a plan (z is the implied SOC shortfall)."""
    dt, bat = inst.dt_h, inst.battery
    grid_cost, q_cost, on_cost = _costs(inst)
    cap = bat.capacity_kwh
    on = np.asarray(diesel_on, dtype=bool)
    z = np.maximum(0.0, inst.floor_pct() - np.asarray(soc_pct)[1:])
    total = np.sum(dt * (grid_cost * grid_kw - inst.export_price * export_kw
                         + bat.wear_cost_per_kwh * (charge_kw + discharge_kw)
                         + q_cost * diesel_kw + on_cost * on
                         + inst.unserved_penalty_per_kwh * unserved_kw
                         + inst.soc_shortfall_penalty_per_kwh * z * cap / 100.0))
    if inst.diesel is not None:
        prev = np.concatenate([[inst.diesel.on0], on[:-1]])
        total += inst.diesel.start_cost * np.count_nonzero(on & ~prev)
    if len(grid_kw):
        total += inst.peak_price_per_kw * max(0.0, float(np.max(grid_kw)))
    total -= bat.terminal_value_per_kwh * cap * soc_pct[-1] / 100.0
    return float(total)


def check_plan(inst: PlanInstance, plan) -> float:
    """Largest constraint violation of a plan (kW or % units; 0 means feasible). `plan` has the
    attributes of a PlanResult / ReferenceResult."""
    bat, dt, H = inst.battery, inst.dt_h, inst.horizon
    g, x, c, d = plan.grid_kw, plan.export_kw, plan.charge_kw, plan.discharge_kw
    q, u, l, soc = plan.diesel_kw, plan.curtail_kw, plan.unserved_kw, plan.soc_pct
    on = np.asarray(plan.diesel_on, dtype=bool)
    viol = [0.0]
    for arr in (g, x, c, d, q, u, l):
        viol.append(float(np.max(-arr)) if H else 0.0)
    viol.append(float(np.max(g - inst.grid_import_max_kw)))
    viol.append(float(np.max(x - inst.export_max_kw)))
    viol.append(float(np.max(c - bat.charge_max_kw)))
    viol.append(float(np.max(d - bat.discharge_max_kw)))
    viol.append(float(np.max(u - inst.pv_kw)))
    bal = inst.load_kw + c + x - (inst.pv_kw - u + d + g + q + l)
    viol.append(float(np.max(np.abs(bal))))
    if len(soc) != H + 1 or soc[0] != bat.soc0_pct:
        return float("inf")
    dyn = soc[1:] - soc[:-1] - 100.0 * dt * (bat.eta_charge * c - d / bat.eta_discharge) / bat.capacity_kwh
    viol.append(float(np.max(np.abs(dyn))))
    viol.append(float(np.max(soc[1:] - inst.soc_ceiling_pct())))
    viol.append(float(np.max(-soc[1:])))
    if inst.diesel is None:
        viol.append(float(np.max(np.abs(q))))
    else:
        dsl = inst.diesel
        viol.append(float(np.max(np.where(on, dsl.p_min_kw - q, 0.0))))
        viol.append(float(np.max(np.where(on, q - dsl.p_max_kw, 0.0))))
        viol.append(float(np.max(np.where(on, 0.0, np.abs(q)))))
    return max(viol)


def solve_reference_jobs(inst: PlanInstance, mip_rel_gap: float = 1e-6, time_limit_s: float = 120.0):
    """The instance with its deferrable jobs (inst.jobs, issue 17) as HiGHS MILP decisions: a contiguous job
    has one binary start variable per allowed start (sum = 1; it adds kw to the balance of every step it
    covers), a splittable one a binary run variable per step of its window (sum = duration_steps).
    Written from the contract, independently of controller/core/mpc/deferrable.py. Returns
    (ReferenceResult for the load with the jobs as placed, run (n, H) bool)."""
    t0 = time.perf_counter()
    cost, lo, hi, A, clo, chi, integrality, nb = _build(inst)
    H, n0 = inst.horizon, A.shape[1]
    cols_rows, cols_cols, cols_vals = [], [], []     # extra columns: the balance rows are rows 0..H-1
    sum_rows, sum_cols = [], []
    sum_rhs = []
    col_meta = []                                     # (job, start or step, contiguous)
    k = n0
    for j, job in enumerate(inst.jobs):
        if job.splittable:
            cands = range(job.earliest_step, job.deadline_step)
            for tt in cands:
                cols_rows.append(tt)
                cols_cols.append(k)
                cols_vals.append(-job.kw)
                sum_rows.append(j)
                sum_cols.append(k)
                col_meta.append((j, tt, False))
                k += 1
            sum_rhs.append(float(job.duration_steps))
        else:
            for s in range(job.earliest_step, job.deadline_step - job.duration_steps + 1):
                for tt in range(s, s + job.duration_steps):
                    cols_rows.append(tt)
                    cols_cols.append(k)
                    cols_vals.append(-job.kw)
                sum_rows.append(j)
                sum_cols.append(k)
                col_meta.append((j, s, True))
                k += 1
            sum_rhs.append(1.0)
    n = k
    nj = len(inst.jobs)
    ext = sp.csr_matrix((cols_vals, (cols_rows, [c - n0 for c in cols_cols])), shape=(A.shape[0], n - n0))
    A2 = sp.vstack([sp.hstack([A, ext]),
                    sp.csr_matrix((np.ones(len(sum_cols)), (sum_rows, sum_cols)), shape=(nj, n))]).tocsr()
    clo2 = np.concatenate([clo, sum_rhs])
    chi2 = np.concatenate([chi, sum_rhs])
    cost2 = np.concatenate([cost, np.zeros(n - n0)])
    lo2 = np.concatenate([lo, np.zeros(n - n0)])
    hi2 = np.concatenate([hi, np.ones(n - n0)])
    integ2 = np.concatenate([integrality, np.ones(n - n0)])
    t1 = time.perf_counter()
    res = milp(cost2, constraints=LinearConstraint(A2, clo2, chi2), bounds=Bounds(lo2, hi2), integrality=integ2,
               options={"mip_rel_gap": mip_rel_gap, "time_limit": time_limit_s, "presolve": True})
    t2 = time.perf_counter()
    if res.x is None:
        raise RuntimeError(f"HiGHS failed: {res.message}")
    run = np.zeros((nj, H), dtype=bool)
    for c, (j, s, contiguous) in enumerate(col_meta):
        if res.x[n0 + c] > 0.5:
            if contiguous:
                run[j, s:s + inst.jobs[j].duration_steps] = True
            else:
                run[j, s] = True
    return _result(inst, res, nb, t0, t1, t2), run


def with_jobs_as_load(inst: PlanInstance, run) -> PlanInstance:
    """The instance with its jobs added to load_kw as `run` places them (and no jobs): what check_plan and
    plan_objective grade a placement's plan against."""
    from dataclasses import replace
    load = inst.load_kw.copy()
    for job, r in zip(inst.jobs, run):
        load = load + job.kw * np.asarray(r, dtype=float)
    return replace(inst, load_kw=load, jobs=())


def check_jobs(inst: PlanInstance, run) -> str | None:
    """A placement's violation of the jobs' windows, durations and contiguity, or None."""
    for j, (job, r) in enumerate(zip(inst.jobs, np.asarray(run, dtype=bool))):
        on = np.flatnonzero(r)
        if len(on) != job.duration_steps:
            return f"job {j}: runs {len(on)} steps, expected {job.duration_steps}"
        if len(on) and (on[0] < job.earliest_step or on[-1] >= job.deadline_step):
            return f"job {j}: runs steps {on[0]}..{on[-1]}, outside [{job.earliest_step}, {job.deadline_step})"
        if not job.splittable and len(on) and on[-1] - on[0] + 1 != len(on):
            return f"job {j}: not contiguous"
    return None
