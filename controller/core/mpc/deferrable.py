"""Deferrable jobs as decisions of the planner (issue 17): when each announced job runs inside its window.

The problem. A deferrable job j draws kw_j for dur_j steps, all inside [early_j, end_j) of the horizon;
contiguous (one start s_j: it runs on [s_j, s_j + dur_j)) unless splittable (any dur_j steps of the window).
The site load is the fixed load plus the jobs as placed, and the plan's objective is the planner's
(controller/core/mpc/: battery, grid, genset, peak). For a fixed placement the load is fixed and the DP
prices it exactly; the placement is the outer, discrete decision.

Why coordinate descent over exact window values, not a MILP. For one job, and the genset pattern and the
peak level of the incumbent plan held fixed, every candidate placement differs from "job j absent" only on
the steps it runs: with the cost-to-arrive C_t and cost-to-go V_t of the plan without job j stored
(window.py's `_stores`), a start s is valued exactly by the backward pass over [s, s + dur) alone from
V_{s+dur}, met with C_s (`_window_value`): O(dur) merges per start, O(window x dur) for all of them, the
same machinery genset.py values a pattern change with. The stage tables exist twice (without and with
the job's kW) and the selector picks per step. The best start is then re-planned in full (plan_kernel:
genset commitment and peak level re-searched for the new load) and kept only if the full objective is
lower, so the objective never rises. Jobs are first inserted one by one (largest energy first, each at
its best given the ones already placed), then improved one at a time against the others (coordinate
descent) for at most JOB_ROUNDS rounds or until no job moves. A splittable job is built step by step
(greedy: the step whose exact added cost is least, the stores recomputed after each; a convex LP value
makes this near-optimal) and compared with its best contiguous placement. The work is bounded: each
candidate costs its merges, counted against `job_evals` DP-pass equivalents (x H merges), and the full
re-plans are at most n_jobs x (JOB_ROUNDS + 1).

What is exact and what is not: for fixed genset pattern and peak level each job's best placement given the
others is exact (the DP is); the joint placement is a local optimum of coordinate descent. The benchmark
(tools/bench/deferrable.py) measures the gap to HiGHS's MILP with binary start variables
(controller/core/mpc_reference.py `solve_reference_jobs`).

Jobs are rows of a float64 array: J_KW, J_DUR (steps), J_EARLY (first step it may run), J_END (steps after
its last allowed step: the deadline, exclusive), J_SPLIT (1: splittable). The caller clips them to the
horizon (`clip_jobs`); the kernel returns the run mask per job (n, H) of 0/1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from controller.core.mpc import PlanResult, plan_kernel
from controller.core.mpc.dp import _backward, _tables
from controller.core.mpc.window import _stores, _window_buffers, _window_value
from controller.core.mpc.layout import INF, MODE_OFF, MODE_ON, P_HASD, P_PEAK, S_GMAX, S_LOAD

J_KW, J_DUR, J_EARLY, J_END, J_SPLIT = range(5)
N_JOB = 5
JOB_ROUNDS = 3       # coordinate-descent rounds after the insertion
JOB_EVALS = 400      # DP-pass equivalents (x H step merges) for the candidate placements of one call
REL_TOL = 1e-9       # a re-plan must be lower by this (relative) to be kept


@njit(cache=True, error_model="numpy")
def clip_jobs(jobs, H):
    """Each job's window clipped to the horizon and made feasible: dur in [1, H], early in [0, H - dur],
    end in [early + dur, H] (a window too short for the job - its latest start has passed - runs it as
    early as it may). Returns a clipped copy."""
    out = jobs.copy()
    for j in range(jobs.shape[0]):
        dur = int(min(max(round(jobs[j, J_DUR]), 1), H))
        early = int(min(max(round(jobs[j, J_EARLY]), 0), H - dur))
        end = int(min(max(round(jobs[j, J_END]), early + dur), H))
        out[j, J_DUR], out[j, J_EARLY], out[j, J_END] = dur, early, end
    return out


@njit(cache=True, error_model="numpy")
def _steps_with(steps, jobs, run, skip):
    """steps with the load of every job but `skip` (-1: none) added as placed."""
    s = steps.copy()
    for j in range(jobs.shape[0]):
        if j == skip:
            continue
        for t in range(steps.shape[1]):
            if run[j, t] > 0:
                s[S_LOAD, t] += jobs[j, J_KW]
    return s


@njit(cache=True, error_model="numpy")
def _pcap_of(steps, prm, out):
    """The incumbent plan's peak level: its largest import when a peak is charged, else no cap."""
    H = steps.shape[1]
    p = 0.0
    if prm[P_PEAK] > 0.0:
        for t in range(H):
            p = max(p, out[0, t])
        return p
    for t in range(H):
        p = max(p, steps[S_GMAX, t])
    return p


@njit(cache=True, error_model="numpy")
def _both_tables(s_wo, prm, kw, pcap):
    """Stage tables without and with the job's kW (modes OFF[, ON]); selector index + nm = with the job."""
    if prm[P_HASD] > 0.5:
        modes = np.array([MODE_OFF, MODE_ON])
    else:
        modes = np.array([MODE_OFF])
    s_plus = s_wo.copy()
    for t in range(s_wo.shape[1]):
        s_plus[S_LOAD, t] += kw
    a = _tables(s_wo, prm, modes, pcap)
    b = _tables(s_plus, prm, modes, pcap)
    tabs = (np.concatenate((a[0], b[0])), np.concatenate((a[1], b[1])), np.concatenate((a[2], b[2])),
            np.concatenate((a[3], b[3])), np.concatenate((a[4], b[4])))
    return tabs, modes.shape[0]


@njit(cache=True, error_model="numpy")
def _place_one(s_wo, prm, out, job, budget):
    """The best run mask of one job given the rest (in s_wo) at the incumbent's genset pattern and peak
    level (from `out`). Returns (mask (H,), its DP value at that pattern/level, work in merges)."""
    H = s_wo.shape[1]
    pcap = _pcap_of(s_wo, prm, out)
    tabs, nm = _both_tables(s_wo, prm, job[J_KW], pcap)
    sel = np.zeros(H, np.int64)
    if prm[P_HASD] > 0.5:
        for t in range(H):
            if out[8, t] > 0.5:
                sel[t] = 1
    dur, early, end = int(job[J_DUR]), int(job[J_EARLY]), int(job[J_END])
    wl, ws, ml, ms = _window_buffers(H)
    vst, cst = _stores(s_wo, prm, sel, tabs)
    work = 2 * H
    best_s, best_v = early, INF
    for s in range(early, end - dur + 1):        # contiguous: every start, exactly, over its run alone
        if work >= budget and best_v < INF:
            break
        for t in range(s, s + dur):
            sel[t] += nm
        v = _window_value(s_wo, prm, sel, tabs, s, s + dur, vst, cst, wl, ws, ml, ms)
        for t in range(s, s + dur):
            sel[t] -= nm
        work += dur
        if v < best_v:
            best_s, best_v = s, v
    mask = np.zeros(H, np.int64)
    mask[best_s:best_s + dur] = 1
    if job[J_SPLIT] > 0.5 and end - early > dur:
        # splittable: add one step at a time where its exact added cost is least (stores after each)
        gm = np.zeros(H, np.int64)
        gsel = sel.copy()
        ok = True
        for k in range(dur):
            if work + 2 * H + (end - early) > budget:
                ok = False
                break
            g_vst, g_cst = _stores(s_wo, prm, gsel, tabs)
            work += 2 * H
            bt, bv = -1, INF
            for t in range(early, end):
                if gm[t] > 0:
                    continue
                gsel[t] += nm
                v = _window_value(s_wo, prm, gsel, tabs, t, t + 1, g_vst, g_cst, wl, ws, ml, ms)
                gsel[t] -= nm
                work += 1
                if v < bv:
                    bt, bv = t, v
            if bt < 0:
                ok = False
                break
            gm[bt] = 1
            gsel[bt] += nm
        if ok:
            gv = _backward(s_wo, prm, gsel, False, tabs)[0]
            work += H
            if gv < best_v - REL_TOL * (1.0 + abs(best_v)):
                mask, best_v = gm, gv
    return mask, best_v, work


@njit(cache=True, error_model="numpy")
def plan_jobs(steps, prm, jobs, peak_evals, genset_evals, job_evals):
    """The planner with deferrable jobs (module docstring). steps/prm as plan_kernel (load without the
    jobs), jobs (n, N_JOB) already clipped (clip_jobs). Returns (out, objective, lower_bound, run (n, H)):
    out/objective as plan_kernel's for the load with the jobs as placed; lower_bound is plan_kernel's for
    that placement (not a bound over placements)."""
    H = steps.shape[1]
    n = jobs.shape[0]
    run = np.zeros((n, H), np.int64)
    if n == 0:
        out, obj, lb = plan_kernel(steps, prm, peak_evals, genset_evals)
        return out, obj, lb, run
    energy = np.empty(n)
    for j in range(n):
        energy[j] = jobs[j, J_KW] * jobs[j, J_DUR]
    order = np.argsort(-energy, kind="mergesort")
    budget = job_evals * H
    work = 0
    # insertion: each job at its best given the ones already placed (the others absent)
    s_cur = steps.copy()
    out, obj, lb = plan_kernel(s_cur, prm, peak_evals, genset_evals)
    for i in range(n):
        j = order[i]
        mask, _, w = _place_one(s_cur, prm, out, jobs[j], max(budget - work, 1))
        work += w
        run[j] = mask
        for t in range(H):
            if mask[t] > 0:
                s_cur[S_LOAD, t] += jobs[j, J_KW]
        out, obj, lb = plan_kernel(s_cur, prm, peak_evals, genset_evals)
    # coordinate descent: one job at a time against the others, kept only when the full re-plan is lower
    for _ in range(JOB_ROUNDS):
        moved = False
        for i in range(n):
            if work >= budget:
                break
            j = order[i]
            s_wo = _steps_with(steps, jobs, run, j)
            mask, _, w = _place_one(s_wo, prm, out, jobs[j], max(budget - work, 1))
            work += w
            same = True
            for t in range(H):
                if mask[t] != run[j, t]:
                    same = False
                    break
            if same:
                continue
            for t in range(H):
                if mask[t] > 0:
                    s_wo[S_LOAD, t] += jobs[j, J_KW]
            out2, obj2, lb2 = plan_kernel(s_wo, prm, peak_evals, genset_evals)
            if obj2 < obj - REL_TOL * (1.0 + abs(obj)):
                out, obj, lb = out2, obj2, lb2
                run[j] = mask
                moved = True
        if not moved or work >= budget:
            break
    return out, obj, lb, run


def warm_up() -> None:
    """Compile (or load from the cache) the job kernels before the first cycle."""
    from controller.core.mpc import warm_instance
    steps, prm = warm_instance(4, gmax_kw=3.0)
    jobs = clip_jobs(np.array([[1.0, 2.0, 0.0, 4.0, 0.0], [1.0, 1.0, 0.0, 4.0, 1.0]]), 4)
    plan_jobs(steps, prm, jobs, 4, 4, 10)


# ---------------------------------------------------------------- Python entry
def jobs_array(jobs) -> np.ndarray:
    """plan_instance.Job rows as the kernel's (n, N_JOB) array."""
    a = np.zeros((len(jobs), N_JOB))
    for i, j in enumerate(jobs):
        a[i] = (j.kw, j.duration_steps, j.earliest_step, j.deadline_step, 1.0 if j.splittable else 0.0)
    return a


def solve_jobs(inst, objective: str = "cost", kappa: float = 1.0, terminal_co2_kg_per_kwh=None,
               job_evals: int = JOB_EVALS):
    """controller.core.mpc.solve with the instance's deferrable jobs placed by the planner. Returns a
    JobPlanResult: the plan for the load with the jobs as placed (objective as `solve` reports it) and
    `job_run` (n, H) bool; `lower_bound` / `gap_bound` are the fixed-placement DP's."""
    import time

    from controller.core import mpc as M
    t0 = time.perf_counter()
    steps, prm, w = M.pack_weighted(inst, objective, kappa, terminal_co2_kg_per_kwh)
    H = inst.horizon
    jobs = clip_jobs(jobs_array(inst.jobs), H)
    out, obj, lb, run = plan_jobs(steps, prm, jobs, M.PEAK_EVALS, M.GENSET_EVALS, job_evals)
    solve_ms = (time.perf_counter() - t0) * 1e3
    on = out[8, :H] > 0.5
    return JobPlanResult(grid_kw=out[0, :H].copy(), export_kw=out[1, :H].copy(), charge_kw=out[2, :H].copy(),
                         discharge_kw=out[3, :H].copy(), diesel_kw=out[4, :H].copy(),
                         curtail_kw=out[5, :H].copy(), unserved_kw=out[6, :H].copy(),
                         soc_pct=out[7, :].copy(), diesel_on=on, objective=float(obj),
                         lower_bound=float(lb), gap_bound=float((obj - lb) / max(1.0, abs(obj))),
                         peak_kw=float(np.max(out[0, :H])), solve_ms=solve_ms, co2_weight=float(w),
                         job_run=run.astype(bool))


@dataclass
class JobPlanResult(PlanResult):
    job_run: np.ndarray = None     # (n, H) bool: the steps each deferrable job runs
