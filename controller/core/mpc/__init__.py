"""The MPC planner: an exact dynamic programme over convex piecewise-linear SOC value functions.

Why not an LP solver: with one battery and no genset, the planning problem of issue 4 has a single
state (stored energy E, kWh) and every step's cost, minimised over everything but the battery, is a
convex piecewise-linear (PL) function f_t of the energy moved e_t. So the value function
V_t(E) = min_e f_t(e) + pen_t(E+e) + V_{t+1}(E+e) is convex PL as well, and V_t is the infimal
convolution of two convex PL functions: merging their segments by slope, O(segments) per step.
A backward pass builds all V_t exactly; a forward pass reads the optimal split at E0. No grid, no
iteration to convergence: the work per call is bounded by H * (segments per step).

The stage function f_t is built exactly by evaluating the stage at every candidate kink: the greedy
merit order of the bus sources (pv, export, grid, diesel, unserved; each linear with a box) gives
F(y), the cheapest way to supply a bus demand y; the battery maps a SOC rate r to a bus demand
(with its losses and wear) and may charge and discharge at once ("burn") when bus energy has a
negative marginal cost, exactly as the LP would.

The peak term (peak_price * max_t g_t) couples the steps: for a fixed peak level P the problem is the
same DP with g_t <= min(cap_t, P), and h(P) = Phi(P) + peak_price*P is convex and PL in P. P is found
by chord cutting planes: one DP pass per point (no finite differences), the chords of neighbouring
points bound h from below between them, the next point is where that bound is least; the bound
certifies the result (PEAK_TOL) and is reported. At most PEAK_EVALS passes.

With a genset the problem is mixed-integer (p_min, start cost). The convex relaxation (on_t in
[0,1], start cost dropped) is solved the same way and gives a certified lower bound LB. On/off
patterns start from a DP over (stored energy on a grid, genset on/off) with the start costs, p_min and
on0 exact, on a tube of levels around the all-off plan's and the relaxed plan's stored-energy paths (the
battery's exact moves along them are on the grid; commit.py), then all-off, all-on, the relaxed diesel
use rounded, and unit-commitment rounds (price stored energy at the plan's dual dV/dE, decide each step
off/on with a two-state Viterbi over start costs). The best start is first moved by tube DPs around its
own exact plan's path (never worse: that plan is on the grid; coarse to fine). They are improved by first-improvement local search (extend/shrink/shift/drop
runs, fill gaps) and a window sweep (set any window of up to SWEEP_WINDOW steps all-off or all-on:
runs dropped, split, merged or started anywhere; the best of all of them). Every candidate is
valued exactly, but only over the steps it changes: the cost-to-arrive C_t and cost-to-go V_t of
the incumbent are stored, so a pattern that differs on [a, b) costs O(b - a) merges plus
min_E C_a + V_a (the sweep pushes C_a through the window one step at a time: O(H * window) for
all windows). Multi-start, best start first; with a peak term the peak level is re-searched for
the committed pattern and the commitment re-searched at that level (PEAK_ROUNDS). The work is
capped at GENSET_EVALS DP-pass equivalents; gap_bound = (objective - LB) / max(1, |objective|) is
reported per call (the relaxation's bound: loose for MIP instances; the benchmark compares with
HiGHS's MIP optimum).

The package, by job: `layout` (the kernel's array layout), `stage` (one step's stage function), `dp` (the
exact DP for a fixed pattern and peak level, forward pass, objective), `peak` (the peak level search),
`genset` (the commitment search); here, `plan_kernel` puts them together and `solve` is the Python entry.
Everything below `solve` is numba `@njit(cache=True, error_model="numpy")` on plain arrays; `plan_kernel` is
the raw entry the controller's numba step can call directly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from controller.core.mpc.dp import _plan_at, _plan_objective
from controller.core.mpc.genset import _genset_patterns
from controller.core.mpc.layout import (  # noqa: F401 (re-exported: the strategy builds instances)
    P_DT, P_XMAX, P_UNS, P_SF, P_CAP, P_E0, P_EHI, P_CMAX, P_DMAX, P_ETAC, P_ETAD, P_WEAR, P_TV, P_PMIN,
    P_PMAX, P_QCOST, P_ONCOST, P_START, P_ON0, P_PEAK, P_HASD, P_SOC0, P_PEAK0, N_PRM, S_LOAD, S_PV, S_GCOST,
    S_XPRICE, S_GMAX, S_FLOOR, N_STEPS, MODE_OFF, MODE_ON, MODE_RELAX, SRC_PV, SRC_EXPORT, SRC_GRID,
    SRC_DIESEL, SRC_UNSERVED, N_SRC, MAX_CAND, TINY, INF)
from controller.core.mpc.objective import OBJECTIVES, OBJ_CARBON, OBJ_COST, fold_carbon  # noqa: F401
from controller.core.mpc.peak import _max_grid, _peak_for, _peak_search
from controller.core.plan_instance import PlanArrays, PlanInstance

__all__ = ["PlanResult", "solve", "plan_kernel", "pack_instance", "pack_weighted", "warm_up", "warm_instance",
           "fold_carbon", "PEAK_EVALS", "GENSET_EVALS", "OBJECTIVES", "OBJ_COST", "OBJ_CARBON"]

# Bounded work: evaluations of the backward pass spent on the peak level and on genset patterns.
PEAK_EVALS = 24
GENSET_EVALS = 400   # DP-pass equivalents (x H step merges) for the genset pattern search
PEAK_ROUNDS = 2      # genset + peak: peak search, re-commitment at that level (budget / 4), peak search


@njit(cache=True, error_model="numpy")
def plan_kernel(steps, prm, peak_evals, genset_evals):
    """The raw planner. steps: (N_STEPS, H) float64; prm: (N_PRM,) float64 (see pack_instance).
    Returns (out, objective, lower_bound): out rows g x c d q u l soc(H+1) on, each H+1 wide."""
    H = steps.shape[1]
    out = np.zeros((10, H + 1))
    p_hi = 0.0
    for t in range(H):
        p_hi = max(p_hi, steps[S_GMAX, t])
    has_peak = prm[P_PEAK] > 0.0
    p_top = p_hi
    mode = np.zeros(H, np.int64)
    if prm[P_HASD] > 0.5:
        mode[:] = MODE_RELAX
    # the plan without a peak constraint (relaxed mode has no fixed costs: its value is h(p_hi) - peak term)
    v = _plan_at(steps, prm, mode, p_hi, out)
    p, lb = p_hi, v
    if has_peak:  # the best peak is at most the peak of the plan without a peak constraint
        p_hi = min(p_hi, _max_grid(out, H))
        p, v, lb = _peak_search(steps, prm, mode, p_hi, v + prm[P_PEAK] * p_hi, peak_evals)
        if p < p_hi:
            _plan_at(steps, prm, mode, p, out)
    if prm[P_HASD] > 0.5:
        q_relax = np.zeros(H)  # the relaxed plan's diesel use, from its balance
        for t in range(H):
            q_relax[t] = max(0.0, steps[S_LOAD, t] + out[2, t] + out[1, t] - steps[S_PV, t] + out[5, t]
                             - out[3, t] - out[0, t] - out[6, t])
        dual = out[9, :H].copy()
        init = np.full(H, -1, np.int64)
        mode, gv = _genset_patterns(steps, prm, p if has_peak else p_hi, q_relax, dual, genset_evals, init)
        if has_peak:  # the commitment moves the best peak level: re-search it, then re-commit there
            for r in range(PEAK_ROUNDS):
                p2, v2 = _peak_for(steps, prm, mode, p_top, peak_evals, out)
                if v2 <= gv:
                    p, gv = p2, v2
                if r == PEAK_ROUNDS - 1:
                    break
                m2, gv2 = _genset_patterns(steps, prm, p, q_relax, dual, genset_evals // 4, mode)
                if not gv2 < gv - 1e-9 * (1.0 + abs(gv)):
                    break  # no better pattern at this peak level
                mode, gv = m2, gv2
        _plan_at(steps, prm, mode, p, out)
    obj = _plan_objective(steps, prm, out)[0]
    return out, obj, min(lb, obj)


# ---------------------------------------------------------------- Python entry
@dataclass
class PlanResult(PlanArrays):
    lower_bound: float       # certified: no plan is cheaper (relaxation / exact DP value)
    gap_bound: float         # (objective - lower_bound) / max(1, |objective|)
    peak_kw: float
    solve_ms: float
    co2_weight: float = 0.0  # carbon objective: the weight W on kg (objective = W*K + C); 0 in cost mode


def pack_instance(inst: PlanInstance, objective: str = "cost", kappa: float = 1.0,
                  terminal_co2_kg_per_kwh: float | None = None):
    """The kernel's plain arrays: (steps (N_STEPS, H), prm (N_PRM,)), costs folded per kWh (see pack_weighted)."""
    return pack_weighted(inst, objective, kappa, terminal_co2_kg_per_kwh)[:2]


def pack_weighted(inst: PlanInstance, objective: str = "cost", kappa: float = 1.0,
                  terminal_co2_kg_per_kwh: float | None = None):
    """The kernel's plain arrays and the weight: (steps (N_STEPS, H), prm (N_PRM,), W).

    objective "cost": the contract's objective (money, carbon at carbon_price_per_kg). "carbon": kg CO2e
    first, money the tie-breaker (objective.py): the instance's carbon price is ignored, its unserved and
    shortfall penalties are converted to kg at `kappa` (kg per currency unit) and stored energy at the
    horizon's end is worth `terminal_co2_kg_per_kwh` (default: the mean grid intensity x eta_discharge)
    besides its money value. Returns (steps, prm, W): W the weight on kg (0 in cost mode)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {', '.join(OBJECTIVES)}, got {objective!r}")
    carbon = objective == "carbon"
    cp = 0.0 if carbon else inst.carbon_price_per_kg
    bat, dsl = inst.battery, inst.diesel
    cap = bat.capacity_kwh
    steps = np.empty((N_STEPS, inst.horizon))
    steps[S_LOAD] = inst.load_kw
    steps[S_PV] = inst.pv_kw
    steps[S_GCOST] = inst.grid_price + cp * inst.grid_co2_kg_per_kwh
    steps[S_XPRICE] = inst.export_price
    steps[S_GMAX] = inst.grid_import_max_kw
    steps[S_FLOOR] = cap * inst.floor_pct() / 100.0
    prm = np.zeros(N_PRM)
    prm[P_DT] = inst.dt_h
    prm[P_XMAX] = inst.export_max_kw
    prm[P_UNS] = inst.unserved_penalty_per_kwh
    prm[P_SF] = inst.soc_shortfall_penalty_per_kwh
    prm[P_CAP] = cap
    prm[P_E0] = cap * bat.soc0_pct / 100.0
    prm[P_SOC0] = bat.soc0_pct
    prm[P_EHI] = cap * inst.soc_ceiling_pct() / 100.0
    prm[P_CMAX] = bat.charge_max_kw
    prm[P_DMAX] = bat.discharge_max_kw
    prm[P_ETAC] = bat.eta_charge
    prm[P_ETAD] = bat.eta_discharge
    prm[P_WEAR] = bat.wear_cost_per_kwh
    prm[P_TV] = bat.terminal_value_per_kwh
    prm[P_PEAK] = inst.peak_price_per_kw
    q_kg = on_kg = 0.0
    if dsl is not None:
        per_l = dsl.fuel_price_per_l + cp * dsl.co2_kg_per_l
        prm[P_HASD] = 1.0
        prm[P_PMIN] = dsl.p_min_kw
        prm[P_PMAX] = dsl.p_max_kw
        prm[P_QCOST] = dsl.fuel_l_per_kwh * per_l
        prm[P_ONCOST] = dsl.fuel_l_per_h_on * per_l
        prm[P_START] = dsl.start_cost
        prm[P_ON0] = 1.0 if dsl.on0 else 0.0
        q_kg, on_kg = dsl.fuel_l_per_kwh * dsl.co2_kg_per_l, dsl.fuel_l_per_h_on * dsl.co2_kg_per_l
    w = 0.0
    if carbon:
        co2 = np.ascontiguousarray(inst.grid_co2_kg_per_kwh, dtype=np.float64)
        tv_kg = (float(np.mean(co2)) * bat.eta_discharge if terminal_co2_kg_per_kwh is None
                 else float(terminal_co2_kg_per_kwh))
        w = fold_carbon(steps, prm, co2, q_kg, on_kg, tv_kg, kappa * inst.unserved_penalty_per_kwh,
                        kappa * inst.soc_shortfall_penalty_per_kwh)
    return steps, prm, w


def solve(inst: PlanInstance, objective: str = "cost", kappa: float = 1.0,
          terminal_co2_kg_per_kwh: float | None = None) -> PlanResult:
    """Plan one instance (see the module docstring); deterministic, never infeasible. objective, kappa and
    terminal_co2_kg_per_kwh: see pack_weighted (the objective reported is the weighted one, W*K + C)."""
    t0 = time.perf_counter()
    steps, prm, w = pack_weighted(inst, objective, kappa, terminal_co2_kg_per_kwh)
    out, obj, lb = plan_kernel(steps, prm, PEAK_EVALS, GENSET_EVALS)
    solve_ms = (time.perf_counter() - t0) * 1e3
    H = inst.horizon
    on = out[8, :H] > 0.5
    return PlanResult(grid_kw=out[0, :H].copy(), export_kw=out[1, :H].copy(), charge_kw=out[2, :H].copy(),
                      discharge_kw=out[3, :H].copy(), diesel_kw=out[4, :H].copy(),
                      curtail_kw=out[5, :H].copy(), unserved_kw=out[6, :H].copy(),
                      soc_pct=out[7, :].copy(), diesel_on=on, objective=float(obj),
                      lower_bound=float(lb), gap_bound=float((obj - lb) / max(1.0, abs(obj))),
                      peak_kw=float(np.max(out[0, :H])), solve_ms=solve_ms, co2_weight=float(w))


def warm_instance(horizon: int, gmax_kw: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A tiny instance that takes every branch a kernel's types depend on (peak charge, genset), for
    compiling or loading the kernels before the first cycle (this module's and deferrable.py's warm_up)."""
    steps = np.zeros((N_STEPS, horizon))
    steps[S_LOAD] = 1.0
    steps[S_GMAX] = gmax_kw
    prm = np.zeros(N_PRM)
    prm[P_DT], prm[P_CAP], prm[P_ETAC], prm[P_ETAD], prm[P_EHI] = 1.0, 1.0, 1.0, 1.0, 1.0
    prm[P_PEAK], prm[P_HASD], prm[P_PMAX], prm[P_CMAX], prm[P_DMAX] = 1.0, 1.0, 1.0, 1.0, 1.0
    return steps, prm


def warm_up() -> None:
    """Compile (or load from the cache) every kernel before the first cycle."""
    steps, prm = warm_instance(2)
    plan_kernel(steps, prm, PEAK_EVALS, GENSET_EVALS)
