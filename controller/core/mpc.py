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
patterns start from all-off, all-on, the relaxed diesel use rounded, and unit-commitment rounds
(price stored energy at the plan's dual dV/dE, decide each step off/on with a two-state Viterbi
over start costs). They are improved by first-improvement local search (extend/shrink/shift/drop
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

Everything below the public `solve` is numba `@njit(cache=True, error_model="numpy")` on plain arrays; `plan_kernel` is
the raw entry the controller's numba step can call directly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from controller.core.plan_instance import PlanInstance

__all__ = ["PlanResult", "solve", "plan_kernel", "pack_instance", "warm_up",
           "PEAK_EVALS", "GENSET_EVALS"]

# Bounded work: evaluations of the backward pass spent on the peak level and on genset patterns.
PEAK_EVALS = 24
PEAK_TOL = 1e-6      # the peak search stops when its certified bound is this close (relative)
PEAK_MARGIN = 0.02   # a new peak point stays this fraction of its interval off the ends
PEAK_START = (0.5, 0.75)  # first peak levels tried, as fractions of [billed peak, unconstrained peak]
GENSET_EVALS = 1500  # DP-pass equivalents (x H step merges) for the genset pattern search
LAGRANGE_ROUNDS = 4
SWEEP_WINDOW = 96    # longest window of the window sweep (steps; longer: drop-run / fill-gap moves)
PEAK_ROUNDS = 2      # genset + peak: peak search, re-commitment at that level (budget / 4), peak search

# prm (float64 scalars) layout
P_DT, P_XMAX, P_UNS, P_SF, P_CAP, P_E0, P_EHI, P_CMAX, P_DMAX, P_ETAC, P_ETAD, P_WEAR, P_TV = range(13)
P_PMIN, P_PMAX, P_QCOST, P_ONCOST, P_START, P_ON0, P_PEAK, P_HASD, P_SOC0 = range(13, 22)
P_PEAK0 = 22  # peak already billed in this period (kW): import up to it is free of the peak term
N_PRM = 23
# steps (2-D float64, one column per step) layout
S_LOAD, S_PV, S_GCOST, S_XPRICE, S_GMAX, S_FLOOR = range(6)
N_STEPS = 6
# diesel mode per step
MODE_OFF, MODE_ON, MODE_RELAX = 0, 1, 2
# bus sources, in tie-break order
SRC_PV, SRC_EXPORT, SRC_GRID, SRC_DIESEL, SRC_UNSERVED = range(5)
N_SRC = 5
MAX_CAND = 24
TINY = 1e-12
INF = np.inf


# ---------------------------------------------------------------- stage: bus sources and battery
@njit(cache=True, error_model="numpy", inline="always")
def _sources(t, steps, prm, mode_t, pcap, lo, hi, cost, order):
    """Fill the bus sources of step t (box + unit cost per kWh) sorted by cost into `order`.
    Returns (Lsum, F(Lsum)): the least bus demand the sources can take and its cost."""
    load = steps[S_LOAD, t]
    lo[SRC_PV], hi[SRC_PV], cost[SRC_PV] = 0.0, steps[S_PV, t], 0.0
    lo[SRC_EXPORT], hi[SRC_EXPORT], cost[SRC_EXPORT] = -prm[P_XMAX], 0.0, steps[S_XPRICE, t]
    lo[SRC_GRID], hi[SRC_GRID], cost[SRC_GRID] = 0.0, min(steps[S_GMAX, t], pcap), steps[S_GCOST, t]
    if mode_t == MODE_ON:
        lo[SRC_DIESEL], hi[SRC_DIESEL], cost[SRC_DIESEL] = prm[P_PMIN], prm[P_PMAX], prm[P_QCOST]
    elif mode_t == MODE_RELAX:  # perspective relaxation: on = q / p_max, p_min dropped
        lo[SRC_DIESEL], hi[SRC_DIESEL] = 0.0, prm[P_PMAX]
        cost[SRC_DIESEL] = prm[P_QCOST] + prm[P_ONCOST] / prm[P_PMAX]
    else:
        lo[SRC_DIESEL], hi[SRC_DIESEL], cost[SRC_DIESEL] = 0.0, 0.0, 0.0
    # unserved is unbounded; no bus demand can exceed load + charge_max, so this box is never binding
    lo[SRC_UNSERVED], cost[SRC_UNSERVED] = 0.0, prm[P_UNS]
    hi[SRC_UNSERVED] = load + prm[P_CMAX] + prm[P_XMAX] + 1.0
    lsum = 0.0
    f0 = 0.0
    for k in range(N_SRC):
        order[k] = k
        lsum += lo[k]
        f0 += cost[k] * lo[k]
    for k in range(1, N_SRC):  # stable insertion sort by cost: deterministic ties
        j = k
        while j > 0 and cost[order[j - 1]] > cost[order[j]]:
            order[j - 1], order[j] = order[j], order[j - 1]
            j -= 1
    return lsum, f0


@njit(cache=True, error_model="numpy", inline="always")
def _f_eval(y, lsum, f0, lo, hi, cost, order):
    """F(y): the cheapest cost per hour of supplying bus demand y (greedy merit order)."""
    v = f0
    rest = y - lsum
    for i in range(N_SRC):
        if rest <= 0.0:
            break
        k = order[i]
        take = min(hi[k] - lo[k], rest)
        v += cost[k] * take
        rest -= take
    return v


@njit(cache=True, error_model="numpy", inline="always")
def _ystar(rho, lsum, lo, hi, cost, order):
    """Leftmost bus demand where F's slope reaches -rho: burning bus energy in battery losses
    (cost rho per kW absorbed) pays only below it."""
    pos = lsum
    for i in range(N_SRC):
        k = order[i]
        if cost[k] >= -rho:
            return pos
        pos += hi[k] - lo[k]
    return pos


@njit(cache=True, error_model="numpy", inline="always")
def _battery_point(r, load, ystar, use_max_burn, prm):
    """Charge/discharge (kW) realising SOC rate r (kW of stored energy per hour), with the bus-power
    burn (simultaneous charge and discharge) moved towards ystar, or at its maximum."""
    cmax, dmax, ec, ed = prm[P_CMAX], prm[P_DMAX], prm[P_ETAC], prm[P_ETAD]
    ecd = ec * ed
    if r >= 0.0:
        c, d = r / ec, 0.0
    else:
        c, d = 0.0, -r * ed
    if ecd < 1.0:
        y0 = load + c - d
        if r >= 0.0:
            kap = (1.0 - ecd) / ecd
            bmax = kap * max(0.0, min(dmax, ed * (cmax * ec - r)))
        else:
            kap = 1.0 - ecd
            bmax = kap * max(0.0, min(cmax, (dmax + r * ed) / ecd))
        beta = bmax if use_max_burn else min(max(ystar - y0, 0.0), bmax)
        if beta > 0.0:
            if r >= 0.0:
                d = beta / kap
                c = (r + d / ed) / ec
            else:
                c = beta / kap
                d = ed * (c * ec - r)
    return min(c, cmax), min(d, dmax)


@njit(cache=True, error_model="numpy", inline="always")
def _hmax(r, load, prm):
    """Largest bus demand reachable at SOC rate r (charging as hard as the limits allow)."""
    c, d = _battery_point(r, load, 0.0, True, prm)
    return load + c - d


@njit(cache=True, error_model="numpy", inline="always")
def _inv_y0(y, load, prm):
    """The SOC rate at which the plain (no-burn) bus demand equals y."""
    if y >= load:
        return (y - load) * prm[P_ETAC]
    return (y - load) / prm[P_ETAD]


@njit(cache=True, error_model="numpy", inline="always")
def _inv_hmax(y, load, prm):
    """The SOC rate at which _hmax equals y (_hmax is increasing and PL with kinks at 0 and
    charge_max*eta_c - discharge_max/eta_d)."""
    ra = -prm[P_DMAX] / prm[P_ETAD]
    rd = prm[P_CMAX] * prm[P_ETAC]
    rk = rd - prm[P_DMAX] / prm[P_ETAD]
    prev_r, prev_h = ra, _hmax(ra, load, prm)
    if y <= prev_h:
        return ra
    for i in range(3):  # the kinks min(rk, 0), max(rk, 0), then the end rd (no allocation)
        rr = min(rk, 0.0) if i == 0 else (max(rk, 0.0) if i == 1 else rd)
        rr = min(max(rr, ra), rd)
        hh = _hmax(rr, load, prm)
        if y <= hh:
            if hh - prev_h <= TINY:
                return rr
            return prev_r + (rr - prev_r) * (y - prev_h) / (hh - prev_h)
        prev_r, prev_h = rr, hh
    return rd


@njit(cache=True, error_model="numpy", inline="always")
def _stage_cost(r, load, ystar, lsum, f0, lo, hi, cost, order, prm):
    """Stage cost per hour at SOC rate r: bus supply F(y) plus battery wear."""
    c, d = _battery_point(r, load, ystar, False, prm)
    y = load + c - d
    return _f_eval(y, lsum, f0, lo, hi, cost, order) + prm[P_WEAR] * (c + d)


@njit(cache=True, error_model="numpy", inline="always")
def _rate_range(load, lsum, prm):
    """Feasible SOC rates [rlo, rhi] of a step (the bus must be able to take the sources' minimum,
    e.g. a running genset's p_min); rlo > rhi means the step is infeasible."""
    ra = -prm[P_DMAX] / prm[P_ETAD]
    rd = prm[P_CMAX] * prm[P_ETAC]
    if _hmax(rd, load, prm) < lsum - 1e-9:
        return 1.0, 0.0
    if _hmax(ra, load, prm) >= lsum:
        return ra, rd
    return min(_inv_hmax(lsum, load, prm), rd), rd


@njit(cache=True, error_model="numpy", inline="always")
def _add_cand(cand, n, r, rlo, rhi):
    if r > rlo and r < rhi and n < MAX_CAND:
        cand[n] = r
        return n + 1
    return n


@njit(cache=True, error_model="numpy", inline="always")
def _points_general(load, ys, rlo, rhi, lsum, f0, lo, hi, cost, order, cand, fval, prm):
    """Stage function points by evaluation at every candidate kink (used when burning bus energy
    in battery losses can pay: F has slopes below -rho)."""
    dt = prm[P_DT]
    ec, ed = prm[P_ETAC], prm[P_ETAD]
    burn = True
    n = 0
    cand[n] = rlo
    n += 1
    n = _add_cand(cand, n, 0.0, rlo, rhi)
    pos = lsum
    for i in range(N_SRC + 1):  # every kink of F, reached by the plain or the max-burn demand
        n = _add_cand(cand, n, _inv_y0(pos, load, prm), rlo, rhi)
        if burn and pos <= ys:
            n = _add_cand(cand, n, _inv_hmax(pos, load, prm), rlo, rhi)
        if i < N_SRC:
            k = order[i]
            pos += hi[k] - lo[k]
    if burn:
        n = _add_cand(cand, n, prm[P_CMAX] * ec - prm[P_DMAX] / ed, rlo, rhi)
    if rhi > rlo:
        cand[n] = rhi
        n += 1
    for i in range(1, n):  # insertion sort (n <= MAX_CAND)
        j = i
        while j > 0 and cand[j - 1] > cand[j]:
            cand[j - 1], cand[j] = cand[j], cand[j - 1]
            j -= 1
    m = 0
    for i in range(n):  # dedupe
        if m == 0 or cand[i] - cand[m - 1] > TINY * (1.0 + abs(cand[i])):
            cand[m] = cand[i]
            m += 1
    for i in range(m):
        fval[i] = dt * _stage_cost(cand[i], load, ys, lsum, f0, lo, hi, cost, order, prm)
    return m


@njit(cache=True, error_model="numpy", inline="always")
def _points_plain(load, ys, rlo, rhi, lsum, f0, lo, hi, cost, order, cand, fval, prm):
    """Stage function points when no voluntary burn pays: f = F(y0(r)) + wear above the rate r_s
    where the plain bus demand reaches the sources' minimum (slopes read off F's merit order, one
    walk), and a forced-burn stretch [rlo, r_s] below it (linear but for the kink at r = 0)."""
    dt = prm[P_DT]
    ec, ed, w = prm[P_ETAC], prm[P_ETAD], prm[P_WEAR]
    r_s = max(rlo, min(_inv_y0(lsum, load, prm), rhi))
    n = 0
    cand[n] = rlo
    fval[n] = dt * _stage_cost(rlo, load, ys, lsum, f0, lo, hi, cost, order, prm)
    n += 1
    if rlo < 0.0 and r_s > 0.0:
        cand[n] = 0.0
        fval[n] = dt * _stage_cost(0.0, load, ys, lsum, f0, lo, hi, cost, order, prm)
        n += 1
    if r_s > cand[n - 1]:
        cand[n] = r_s
        fval[n] = dt * _stage_cost(r_s, load, ys, lsum, f0, lo, hi, cost, order, prm)
        n += 1
    r = cand[n - 1]
    v = fval[n - 1]
    y = load + (r / ec if r >= 0.0 else r * ed)
    pos = lsum
    i = 0
    while i < N_SRC - 1 and pos + (hi[order[i]] - lo[order[i]]) <= y + TINY * (1.0 + abs(y)):
        pos += hi[order[i]] - lo[order[i]]
        i += 1
    while r < rhi and n < MAX_CAND:
        k = order[i]
        last = i >= N_SRC - 1
        y_end = pos + (hi[k] - lo[k])
        r_next = rhi if last else min(_inv_y0(y_end, load, prm), rhi)
        crosses_zero = r < 0.0 and r_next > 0.0
        if crosses_zero:
            r_next = 0.0
        if r_next > r:
            dfdr = ed * (cost[k] - w) if r < 0.0 else (cost[k] + w) / ec
            v += dt * dfdr * (r_next - r)
            cand[n] = r_next
            fval[n] = v
            n += 1
            r = r_next
        if not crosses_zero:  # the end of F's segment i (or of the rate range) is reached
            if last:
                break
            pos = y_end
            i += 1
    return n


@njit(cache=True, error_model="numpy", inline="always")
def _stage_function(t, steps, prm, mode_t, pcap, lo, hi, cost, order, cand, fval, tl, ts, i_tab):
    """Build the reflected stage function f~(v) = f_t(-v) (v = -e, kWh) as convex PL segments
    (tl[i_tab, t] lengths, ts[i_tab, t] slopes ascending; indexed, not sliced: a view per step costs
    two atomic refcount updates). Returns (nseg, x0, value at x0, feasible)."""
    dt = prm[P_DT]
    load = steps[S_LOAD, t]
    lsum, f0 = _sources(t, steps, prm, mode_t, pcap, lo, hi, cost, order)
    rlo, rhi = _rate_range(load, lsum, prm)
    if rlo > rhi:
        return 0, 0.0, 0.0, False
    ec, ed = prm[P_ETAC], prm[P_ETAD]
    rho = prm[P_WEAR] * (1.0 + ec * ed) / (1.0 - ec * ed) if ec * ed < 1.0 else INF
    ys = _ystar(rho, lsum, lo, hi, cost, order)
    if ec * ed < 1.0 and ys > lsum:
        m = _points_general(load, ys, rlo, rhi, lsum, f0, lo, hi, cost, order, cand, fval, prm)
    else:
        m = _points_plain(load, ys, rlo, rhi, lsum, f0, lo, hi, cost, order, cand, fval, prm)
    # drop points closer than rounding can resolve (a slope over a 1e-116 sliver is noise that the
    # convexity guard below would spread over the whole function); the last point stays the end
    eps = 1e-9 * max(1.0, abs(cand[0]), abs(cand[m - 1]))
    n = 1
    for i in range(1, m):
        if cand[i] - cand[n - 1] > eps:
            cand[n] = cand[i]
            fval[n] = fval[i]
            n += 1
        elif i == m - 1 and n > 1:
            cand[n - 1] = cand[i]
            fval[n - 1] = fval[i]
    m = n
    # reflect: segments of f from right to left, slopes negated (ascending); clamp rounding noise
    nseg = 0
    prev = -INF
    for i in range(m - 2, -1, -1):
        de = (cand[i + 1] - cand[i]) * dt
        s = -(fval[i + 1] - fval[i]) / de
        if s < prev:
            s = prev
        if nseg > 0 and s == ts[i_tab, t, nseg - 1]:
            tl[i_tab, t, nseg - 1] += de
        else:
            tl[i_tab, t, nseg] = de
            ts[i_tab, t, nseg] = s
            nseg += 1
        prev = s
    return nseg, -cand[m - 1] * dt, fval[m - 1], True


# ---------------------------------------------------------------- the backward pass
@njit(cache=True, error_model="numpy")
def _grow(a, need):
    if need <= a.shape[0]:
        return a
    b = np.empty(max(2 * a.shape[0], need), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True, error_model="numpy", inline="always")
def _add_floor_penalty(wl, ws, nw, wx0, wv0, floor_kwh, slope):
    """W += slope * min(0, E - floor): the soft SOC floor's shortfall penalty (slope <= 0).
    Splits the segment holding the floor. Returns (nw, wv0)."""
    if slope == 0.0 or floor_kwh <= wx0:
        return nw, wv0
    wv0 += -slope * (floor_kwh - wx0)
    pos = wx0
    for k in range(nw):
        end = pos + wl[k]
        if end <= floor_kwh + TINY:
            ws[k] += slope
            pos = end
            continue
        if floor_kwh - pos > TINY:  # split k at the floor
            for j in range(nw, k, -1):
                wl[j] = wl[j - 1]
                ws[j] = ws[j - 1]
            wl[k] = floor_kwh - pos
            wl[k + 1] = end - floor_kwh
            ws[k] += slope
            nw += 1
        break
    return nw, wv0


@njit(cache=True, error_model="numpy", inline="always")
def _clip_at(ml, ms, n, mx0, mv0, ehi):
    """Restrict a convex PL function to the hard band [0, ehi] in place: the kept segments are
    ml[k:k+nw] (their end lengths trimmed). Returns (k, nw, x0, v0, feasible). Only the few
    segments at either end are walked; nothing is copied (the backward pass's hot loop)."""
    pos, val, k = mx0, mv0, 0
    while k < n and pos + ml[k] <= 0.0:
        val += ms[k] * ml[k]
        pos += ml[k]
        k += 1
    first_cut = 0.0
    if pos < 0.0:
        if k >= n:
            if pos < -1e-9:
                return 0, 0, 0.0, 0.0, False
        else:
            first_cut = -pos
            val += ms[k] * first_cut
        pos = 0.0
    if pos > ehi + 1e-9:
        return 0, 0, 0.0, 0.0, False
    x0, v0 = pos, val
    if k >= n or pos >= ehi:
        return k, 0, x0, v0, True
    end = pos - first_cut
    for q in range(k, n):
        end += ml[q]
    kk = n - 1
    while kk > k and end - ml[kk] >= ehi:  # whole segments beyond the band
        end -= ml[kk]
        kk -= 1
    nw = kk - k + 1
    ml[k] -= first_cut
    if end > ehi:
        ml[kk] -= end - ehi
    if nw > 1 and ml[kk] <= TINY:
        nw -= 1
    if ml[k] <= TINY and nw > 1:
        k += 1
        nw -= 1
    elif ml[k] <= TINY:
        nw = 0
    return k, nw, x0, v0, True


@njit(cache=True, error_model="numpy", inline="always")
def _clip_band(ml, ms, n, mx0, mv0, ehi, wl, ws):
    """_clip_at, the kept segments copied to (wl, ws). Returns (nw, x0, v0, feasible)."""
    k, nw, x0, v0, ok = _clip_at(ml, ms, n, mx0, mv0, ehi)
    for q in range(nw):
        wl[q] = ml[k + q]
        ws[q] = ms[k + q]
    return nw, x0, v0, ok


@njit(cache=True, error_model="numpy", inline="always")
def _merge_flags(al, a_s, na, bl, bs, nb, ml, ms, mk, flags):
    """Infimal convolution of two convex PL functions: their segments merged by slope (a's first
    on ties). b has few segments: a's runs between them are copied by a linear scan (predictable
    branches beat a binary search's here). flags: also write the origin of each segment to mk
    (0: a, 1: b)."""
    n = 0
    i = 0
    for j in range(nb):
        s = bs[j]
        while i < na and a_s[i] <= s:
            ml[n] = al[i]
            ms[n] = a_s[i]
            if flags:
                mk[n] = 0
            n += 1
            i += 1
        ml[n] = bl[j]
        ms[n] = s
        if flags:
            mk[n] = 1
        n += 1
    while i < na:
        ml[n] = al[i]
        ms[n] = a_s[i]
        if flags:
            mk[n] = 0
        n += 1
        i += 1
    return n


@njit(cache=True, error_model="numpy", inline="always")
def _merge(al, a_s, na, bl, bs, nb, ml, ms):
    """Infimal convolution of two convex PL functions (as _merge_flags, without the flags)."""
    n = 0
    i = 0
    for j in range(nb):
        s = bs[j]
        while i < na and a_s[i] <= s:
            ml[n] = al[i]
            ms[n] = a_s[i]
            n += 1
            i += 1
        ml[n] = bl[j]
        ms[n] = s
        n += 1
    while i < na:
        ml[n] = al[i]
        ms[n] = a_s[i]
        n += 1
        i += 1
    return n


@njit(cache=True, error_model="numpy")
def _tables(steps, prm, modes, pcap):
    """Reflected stage functions of every step, for each genset mode in `modes` (built once, then
    reused by every DP pass that shares the peak level pcap). tn < 0 marks an infeasible step."""
    H = steps.shape[1]
    nm = modes.shape[0]
    tl = np.empty((nm, H, MAX_CAND))
    ts = np.empty((nm, H, MAX_CAND))
    tn = np.zeros((nm, H), np.int64)
    tx0 = np.zeros((nm, H))
    tv0 = np.zeros((nm, H))
    lo, hi, cost = np.empty(N_SRC), np.empty(N_SRC), np.empty(N_SRC)
    order = np.empty(N_SRC, np.int64)
    cand, fval = np.empty(MAX_CAND), np.empty(MAX_CAND)
    _fill_tables(steps, prm, modes, pcap, lo, hi, cost, order, cand, fval, tl, ts, tn, tx0, tv0)
    return tl, ts, tn, tx0, tv0


@njit(cache=True, error_model="numpy", _nrt=False)
def _fill_tables(steps, prm, modes, pcap, lo, hi, cost, order, cand, fval, tl, ts, tn, tx0, tv0):
    """The tables' loop, compiled without reference counting: it only reads and writes arrays its
    caller owns, and numba's per-call and per-inlined-argument refcounts (atomic) were a third of
    a DP pass."""
    for i in range(modes.shape[0]):
        for t in range(steps.shape[1]):
            n, x0, v0, ok = _stage_function(t, steps, prm, modes[i], pcap, lo, hi, cost, order,
                                            cand, fval, tl, ts, i)
            tn[i, t] = n if ok else -1
            tx0[i, t] = x0
            tv0[i, t] = v0


@njit(cache=True, error_model="numpy")
def _backward(steps, prm, sel, want_store, tabs):
    """Build V_0..V_{H-1} (merged with their origin flags for the forward pass) and return
    (V_0(E0), store...). sel[t] picks the table (genset mode) of step t. V = +inf when the
    pattern is infeasible. Allocates; the pass itself runs without reference counting."""
    H = steps.shape[1]
    wcap = H * (MAX_CAND + 2) + 8 + MAX_CAND
    bl = np.empty((2, wcap))
    bs = np.empty((2, wcap))
    mk = np.empty(wcap, np.int8)
    tl = np.empty(MAX_CAND)
    ts = np.empty(MAX_CAND)
    start = np.zeros(H + 1, np.int64)
    cnt = np.zeros(H, np.int64)
    x0s = np.zeros(H)
    wx0s = np.zeros(H)
    scap = H * 128 + 64 if want_store else 1
    while True:
        sl = np.empty(scap)
        ss = np.empty(scap)
        sk = np.empty(scap, np.int8)
        v, used = _backward_run(steps, prm, sel, want_store, tabs, bl, bs, mk, tl, ts, sl, ss, sk,
                                start, cnt, x0s, wx0s)
        if used <= scap:
            return v, sl, ss, sk, start, cnt, x0s, wx0s
        scap = max(2 * scap, 2 * used)  # the store ran out of room: again, with more


@njit(cache=True, error_model="numpy", _nrt=False)
def _backward_run(steps, prm, sel, want_store, tabs, bl, bs, mk, tl, ts, sl, ss, sk, start, cnt, x0s, wx0s):
    """The backward pass over the caller's buffers, compiled without reference counting (numba's
    atomic refcounts on every view and inlined argument were a third of the pass). Two buffers in
    turn: W is a view of one, the merge writes the other, the clip only trims it. Returns
    (V_0(E0), segments stored); stored > sl.shape[0] means the store ran out of room."""
    tab_l, tab_s, tab_n, tab_x0, tab_v0 = tabs
    H = steps.shape[1]
    dt, ehi, e0 = prm[P_DT], prm[P_EHI], prm[P_E0]
    sf_slope = -dt * prm[P_SF]
    scap = sl.shape[0]
    cur, off = 0, 0
    nw = 0
    wx0, wv0 = 0.0, 0.0
    if ehi > 0.0:
        bl[0, 0], bs[0, 0], nw = ehi, -prm[P_TV], 1
    used = 0
    for t in range(H - 1, -1, -1):
        wl = bl[cur, off:]
        ws = bs[cur, off:]
        nw, wv0 = _add_floor_penalty(wl, ws, nw, wx0, wv0, steps[S_FLOOR, t], sf_slope)
        m_t = sel[t]
        nt, tx0, tv0 = tab_n[m_t, t], tab_x0[m_t, t], tab_v0[m_t, t]
        if nt < 0:
            return INF, used
        for q in range(nt):
            tl[q] = tab_l[m_t, t, q]
            ts[q] = tab_s[m_t, t, q]
        # infimal convolution: merge W and f~ segments by slope
        cur = 1 - cur
        ml = bl[cur]
        ms = bs[cur]
        n = _merge_flags(wl, ws, nw, tl, ts, nt, ml, ms, mk, want_store)
        mx0, mv0 = wx0 + tx0, wv0 + tv0
        if want_store:
            if used + n > scap:
                return INF, used + n
            for q in range(n):
                sl[used + q] = ml[q]
                ss[used + q] = ms[q]
                sk[used + q] = mk[q]
            start[t] = used
            cnt[t] = n
            used += n
        x0s[t] = mx0
        wx0s[t] = wx0
        if t == 0:
            return _pl_value(ml, ms, n, mx0, mv0, e0), used
        # V_t restricted to the hard band [0, ehi] becomes the next W
        off, nw, wx0, wv0, ok = _clip_at(ml, ms, n, mx0, mv0, ehi)
        if not ok:
            return INF, used
    return INF, used


@njit(cache=True, error_model="numpy", _nrt=False)
def _pl_value(ml, ms, n, x0, v0, e):
    """Value of a PL function (x0, v0, segments) at e; +inf outside its domain."""
    if e < x0 - 1e-9:
        return INF
    v, pos = v0, x0
    for k in range(n):
        if e <= pos:
            return v
        take = min(ml[k], e - pos)
        v += ms[k] * take
        pos += take
    if e > pos + 1e-9:
        return INF
    return v


@njit(cache=True, error_model="numpy", _nrt=False)
def _fixed_costs(mode, prm):
    """Genset costs that depend only on the on/off pattern: on-hours and starts."""
    total = 0.0
    prev = prm[P_ON0] > 0.5
    for t in range(mode.shape[0]):
        on = mode[t] == MODE_ON
        if on:
            total += prm[P_DT] * prm[P_ONCOST]
            if not prev:
                total += prm[P_START]
        prev = on
    return total


@njit(cache=True, error_model="numpy")
def _tables_for(steps, prm, mode, pcap):
    """Stage tables for a pattern: `mode` is OFF/ON per step (the selector indexes [OFF, ON]) or
    RELAX everywhere (one table). Returns (tables, selector)."""
    H = steps.shape[1]
    sel = np.zeros(H, np.int64)
    if H > 0 and mode[0] == MODE_RELAX:
        return _tables(steps, prm, np.array([MODE_RELAX]), pcap), sel
    any_on = False
    for t in range(H):
        if mode[t] == MODE_ON:
            sel[t] = 1
            any_on = True
    if any_on:
        return _tables(steps, prm, np.array([MODE_OFF, MODE_ON]), pcap), sel
    return _tables(steps, prm, np.array([MODE_OFF]), pcap), sel


@njit(cache=True, error_model="numpy")
def _value(steps, prm, mode, pcap):
    """Objective of the best plan for a genset pattern at peak level pcap (peak charged at pcap)."""
    tabs, sel = _tables_for(steps, prm, mode, pcap)
    v = _backward(steps, prm, sel, False, tabs)[0]
    return v + _fixed_costs(mode, prm) + prm[P_PEAK] * pcap


# ---------------------------------------------------------------- forward pass: the plan
@njit(cache=True, error_model="numpy")
def _forward(steps, prm, mode, pcap, sl, ss, sk, start, cnt, x0s, wx0s, out):
    """Read the optimal SOC path off the stored merges and dispatch each step. out rows:
    g x c d q u l soc(H+1) on, and the marginal cost of stored energy dV_t/dE (a dual)."""
    H = steps.shape[1]
    dt, ehi, cap = prm[P_DT], prm[P_EHI], prm[P_CAP]
    ec, ed = prm[P_ETAC], prm[P_ETAD]
    lo, hi, cost = np.empty(N_SRC), np.empty(N_SRC), np.empty(N_SRC)
    order = np.empty(N_SRC, np.int64)
    val = np.empty(N_SRC)
    rho = prm[P_WEAR] * (1.0 + ec * ed) / (1.0 - ec * ed) if ec * ed < 1.0 else INF
    e = prm[P_E0]
    out[7, 0] = prm[P_SOC0]
    for t in range(H):
        s = e - x0s[t]
        sw = 0.0
        slope = 0.0
        for k in range(start[t], start[t] + cnt[t]):
            slope = ss[k]
            if s <= 0.0:
                break
            take = min(sl[k], s)
            if sk[k] == 0:
                sw += take
            s -= take
        out[9, t] = slope
        e_next = min(max(wx0s[t] + sw, 0.0), ehi)
        load = steps[S_LOAD, t]
        lsum, f0 = _sources(t, steps, prm, mode[t], pcap, lo, hi, cost, order)
        rlo, rhi = _rate_range(load, lsum, prm)
        r = min(max((e_next - e) / dt, rlo), rhi)
        ys = _ystar(rho, lsum, lo, hi, cost, order)
        c, d = _battery_point(r, load, ys, False, prm)
        rest = max(load + c - d - lsum, 0.0)
        for i in range(N_SRC):
            k = order[i]
            take = min(hi[k] - lo[k], rest)
            val[k] = lo[k] + take
            rest -= take
        out[0, t] = val[SRC_GRID]
        out[1, t] = -val[SRC_EXPORT]
        out[2, t] = c
        out[3, t] = d
        out[4, t] = val[SRC_DIESEL] if mode[t] == MODE_ON else 0.0
        out[5, t] = steps[S_PV, t] - val[SRC_PV]
        out[6, t] = val[SRC_UNSERVED]
        out[8, t] = 1.0 if mode[t] == MODE_ON else 0.0
        e = min(max(e + dt * (ec * c - d / ed), 0.0), ehi)
        out[7, t + 1] = 100.0 * e / cap


@njit(cache=True, error_model="numpy")
def _plan_objective(steps, prm, out):
    """The contract's objective evaluated on the plan (z is the implied SOC shortfall)."""
    H = steps.shape[1]
    dt, cap = prm[P_DT], prm[P_CAP]
    total = 0.0
    peak = 0.0
    prev = prm[P_ON0] > 0.5
    for t in range(H):
        g, x, c, d, q, l, on = out[0, t], out[1, t], out[2, t], out[3, t], out[4, t], out[6, t], out[8, t]
        e_next = out[7, t + 1] * cap / 100.0
        short = max(0.0, steps[S_FLOOR, t] - e_next)
        total += dt * (steps[S_GCOST, t] * g - steps[S_XPRICE, t] * x + prm[P_WEAR] * (c + d)
                       + prm[P_QCOST] * q + prm[P_ONCOST] * on + prm[P_UNS] * l + prm[P_SF] * short)
        if on > 0.5 and not prev:
            total += prm[P_START]
        prev = on > 0.5
        peak = max(peak, g)
    total += prm[P_PEAK] * peak
    total -= prm[P_TV] * out[7, H] * cap / 100.0
    return total, peak


# ---------------------------------------------------------------- peak level and genset search
@njit(cache=True, error_model="numpy")
def _plan_at(steps, prm, mode, pcap, out):
    """The plan for a genset pattern at peak level pcap, written to out. Returns its DP value."""
    tabs, sel = _tables_for(steps, prm, mode, pcap)
    res = _backward(steps, prm, sel, True, tabs)
    if res[0] < INF:
        _forward(steps, prm, mode, pcap, res[1], res[2], res[3], res[4], res[5], res[6], res[7], out)
    return res[0]


@njit(cache=True, error_model="numpy")
def _chord_bound(xs, hs, n, i):
    """Lower bound of the convex h on [xs[i], xs[i+1]] and where the model attains it: the
    chords through the pairs on either side, extended into the interval, are below h there
    (convexity); their max is the model. With no chord the bound is -inf at the midpoint."""
    lo, hi = xs[i], xs[i + 1]
    has1 = i >= 1
    has2 = i + 2 < n
    s1 = c1 = s2 = c2 = 0.0
    if has1:
        s1 = (hs[i] - hs[i - 1]) / (xs[i] - xs[i - 1])
        c1 = hs[i] - s1 * lo
    if has2:
        s2 = (hs[i + 2] - hs[i + 1]) / (xs[i + 2] - xs[i + 1])
        c2 = hs[i + 1] - s2 * hi
    if not has1 and not has2:
        return -INF, 0.5 * (lo + hi)
    best_v, best_x = INF, lo
    for k in range(3):
        if k == 2:
            if not (has1 and has2) or s1 == s2:
                break
            x = (c2 - c1) / (s1 - s2)
            if x <= lo or x >= hi:
                break
        else:
            x = lo if k == 0 else hi
        v = -INF
        if has1:
            v = max(v, c1 + s1 * x)
        if has2:
            v = max(v, c2 + s2 * x)
        if v < best_v:
            best_v, best_x = v, x
    return best_v, best_x


@njit(cache=True, error_model="numpy")
def _peak_search(steps, prm, mode, p_hi, h_hi, evals):
    """Minimise the convex PL h(P) = Phi(P) + peak_price*P on [a0, p_hi] (h_hi = h(p_hi), known from
    the unconstrained plan) by chord cutting planes: every DP pass adds one point; the chords of
    neighbouring points bound h from below between them (convexity), the next point is where that
    model is least, kept a fraction of its interval away from the ends (so a far chord cannot stall
    the search on one side). Finite for PL h; stops when the model certifies PEAK_TOL, or after
    `evals` passes. One pass per point (no finite differences). Returns (P, h(P), lower bound)."""
    a0 = min(max(prm[P_PEAK0], 0.0), p_hi)
    if prm[P_PEAK] <= 0.0 or p_hi <= 0.0 or a0 >= p_hi:
        v = _value(steps, prm, mode, p_hi)
        return p_hi, v, v
    cap = evals + 4
    xs = np.empty(cap)
    hs = np.empty(cap)
    w = p_hi - a0
    n = 0
    for f in PEAK_START:
        xs[n] = a0 + f * w
        hs[n] = _value(steps, prm, mode, xs[n])
        n += 1
    xs[n], hs[n] = p_hi, h_hi
    # a virtual point beyond p_hi: above the unconstrained peak h grows at exactly peak_price, so the
    # chord to it is a tangent at p_hi (a valid cut); it is never chosen nor searched beyond
    xs[n + 1], hs[n + 1] = p_hi + w, h_hi + prm[P_PEAK] * w
    n += 2
    used = n - 2
    lb = -INF
    while True:
        ib = 0
        for i in range(1, n - 1):
            if hs[i] < hs[ib]:
                ib = i
        best = hs[ib]
        if ib == 0:
            if xs[0] <= a0:
                bl, _ = _chord_bound(xs, hs, n, 0)
                lb = min(best, bl)
                if best - lb <= PEAK_TOL * max(1.0, abs(best)) or used >= evals:
                    break
                x = 0.5 * (xs[0] + xs[1])
            else:  # extend the bracket to the left
                x = max(a0, xs[0] - 2.0 * (xs[1] - xs[0]))
                if x - a0 < 0.05 * w:
                    x = a0
                lb = -INF
        else:
            bl, xl = _chord_bound(xs, hs, n, ib - 1)
            br, xr = _chord_bound(xs, hs, n, ib) if ib + 2 < n else (INF, 0.0)  # not beyond p_hi
            lb = min(best, min(bl, br))
            if best - lb <= PEAK_TOL * max(1.0, abs(best)) or used >= evals:
                break
            j = ib - 1 if bl <= br else ib
            x = xl if bl <= br else xr
            gap = xs[j + 1] - xs[j]
            x = min(max(x, xs[j] + PEAK_MARGIN * gap), xs[j + 1] - PEAK_MARGIN * gap)
        if used >= evals:
            break
        hx = _value(steps, prm, mode, x)
        used += 1
        k = n
        while k > 0 and xs[k - 1] > x:  # sorted insert
            xs[k] = xs[k - 1]
            hs[k] = hs[k - 1]
            k -= 1
        xs[k], hs[k] = x, hx
        n += 1
    ib = 0
    for i in range(1, n - 1):
        if hs[i] < hs[ib]:
            ib = i
    return xs[ib], hs[ib], min(lb, hs[ib])


# ---------------------------------------------------------------- windowed DP: cheap pattern moves
@njit(cache=True, error_model="numpy")
def _stores(steps, prm, m, tabs):
    """For pattern m: V_t (cost-to-go from E_t, t = 1..H, clipped to the band) and C_t (cost to
    arrive at E_t from E0, t = 1..H). A pattern that differs from m only on steps [a, b) is then
    valued by re-running the backward pass over the window alone, from V_b, and taking
    min_E C_a(E) + V_a(E): O(b - a) merges instead of O(H). Each store: (lengths, slopes, start,
    count (-1: +inf), x0, v0). Allocates; the passes run without reference counting."""
    H = steps.shape[1]
    wcap = H * (MAX_CAND + 2) + 8
    wl, ws = np.empty(wcap), np.empty(wcap)
    ml, ms = np.empty(wcap + MAX_CAND), np.empty(wcap + MAX_CAND)
    rl, rs = np.empty(MAX_CAND), np.empty(MAX_CAND)
    vstart, vn, vx, vv = np.zeros(H + 2, np.int64), np.zeros(H + 1, np.int64), np.zeros(H + 1), np.zeros(H + 1)
    cstart, cn, cx, cv = np.zeros(H + 2, np.int64), np.zeros(H + 1, np.int64), np.zeros(H + 1), np.zeros(H + 1)
    vcap, ccap = 64 * H + 64, 64 * H + 64
    while True:
        vl, vs = np.empty(vcap), np.empty(vcap)
        cl, cs = np.empty(ccap), np.empty(ccap)
        vneed, cneed = _stores_run(steps, prm, m, tabs, wl, ws, ml, ms, rl, rs, vl, vs, vstart, vn, vx, vv,
                                   cl, cs, cstart, cn, cx, cv)
        if vneed <= vcap and cneed <= ccap:
            return (vl, vs, vstart, vn, vx, vv), (cl, cs, cstart, cn, cx, cv)
        vcap, ccap = max(vcap, 2 * vneed), max(ccap, 2 * cneed)  # out of room: again, with more


@njit(cache=True, error_model="numpy", _nrt=False)
def _stores_run(steps, prm, m, tabs, wl, ws, ml, ms, rl, rs, vl, vs, vstart, vn, vx, vv, cl, cs, cstart, cn,
                cx, cv):
    """The passes of _stores over its buffers, compiled without reference counting. Returns the
    segments each store needed (more than its length: it ran out of room, its content is void)."""
    tab_l, tab_s, tab_n, tab_x0, tab_v0 = tabs
    H = steps.shape[1]
    dt, ehi, e0 = prm[P_DT], prm[P_EHI], prm[P_E0]
    sf_slope = -dt * prm[P_SF]
    vcap, ccap = vl.shape[0], cl.shape[0]
    # backward: V_H = terminal value; V_t = clip(f~_t box (V_{t+1} + pen_t)), stored at vstart[t]
    nw = 0
    if ehi > 0.0:
        wl[0], ws[0], nw = ehi, -prm[P_TV], 1
    wx0, wv0, ok = 0.0, 0.0, True
    pos = 0
    for t in range(H, 0, -1):
        if t < H and ok:
            nw, wv0 = _add_floor_penalty(wl, ws, nw, wx0, wv0, steps[S_FLOOR, t], sf_slope)
            mt = m[t]
            nt = tab_n[mt, t]
            if nt < 0:
                ok = False
            else:
                for q in range(nt):
                    rl[q] = tab_l[mt, t, q]
                    rs[q] = tab_s[mt, t, q]
                n = _merge(wl, ws, nw, rl, rs, nt, ml, ms)
                nw, wx0, wv0, ok = _clip_band(ml, ms, n, wx0 + tab_x0[mt, t], wv0 + tab_v0[mt, t],
                                              ehi, wl, ws)
        vstart[t] = pos
        vn[t] = nw if ok else -1
        vx[t], vv[t] = wx0, wv0
        if ok:
            if pos + nw > vcap:
                return pos + nw, 0
            for q in range(nw):
                vl[pos + q] = wl[q]
                vs[pos + q] = ws[q]
            pos += nw
    # forward: C_0 is the point E0; C_{t+1} = clip((C_t box f_t) + pen_t)
    pos = 0
    nc, cx0, cv0, ok = 0, e0, 0.0, True
    for t in range(H):
        if ok:
            mt = m[t]
            nt = tab_n[mt, t]
            if nt < 0:
                ok = False
            else:  # f(e) = f~(-e): segments reversed, slopes negated
                fend, fvend = tab_x0[mt, t], tab_v0[mt, t]
                for q in range(nt):
                    fend += tab_l[mt, t, q]
                    fvend += tab_l[mt, t, q] * tab_s[mt, t, q]
                    rl[q] = tab_l[mt, t, nt - 1 - q]
                    rs[q] = -tab_s[mt, t, nt - 1 - q]
                n = _merge(wl, ws, nc, rl, rs, nt, ml, ms)
                mx0, mv0 = cx0 - fend, cv0 + fvend
                n, mv0 = _add_floor_penalty(ml, ms, n, mx0, mv0, steps[S_FLOOR, t], sf_slope)
                nc, cx0, cv0, ok = _clip_band(ml, ms, n, mx0, mv0, ehi, wl, ws)
        cstart[t + 1] = pos
        cn[t + 1] = nc if ok else -1
        cx[t + 1], cv[t + 1] = cx0, cv0
        if ok:
            if pos + nc > ccap:
                return 0, pos + nc
            for q in range(nc):
                cl[pos + q] = wl[q]
                cs[pos + q] = ws[q]
            pos += nc
    return 0, 0


@njit(cache=True, error_model="numpy", _nrt=False)
def _seg_at(l, s, st, n, x0, v0, x):
    """(index of the segment starting at or containing x to its right, its start, value at x)."""
    pos, val = x0, v0
    k = 0
    while k < n and pos + l[st + k] <= x:
        pos += l[st + k]
        val += s[st + k] * l[st + k]
        k += 1
    if k < n and x > pos:
        val += s[st + k] * (x - pos)
    return k, pos, val


@njit(cache=True, error_model="numpy", _nrt=False)
def _min_sum(al, a_s, ast, na, ax0, av0, bl, bs, bst, nb, bx0, bv0):
    """min_E A(E) + B(E) of two convex PL functions (walks the merged breakpoints to the point
    where the summed slope turns non-negative); +inf when their domains do not meet."""
    aend, bend = ax0, bx0
    for k in range(na):
        aend += al[ast + k]
    for k in range(nb):
        bend += bl[bst + k]
    lo, hi = max(ax0, bx0), min(aend, bend)
    if lo > hi + 1e-9:
        return INF
    hi = max(lo, hi)
    ia, pa, va = _seg_at(al, a_s, ast, na, ax0, av0, lo)
    ib, pb, vb = _seg_at(bl, bs, bst, nb, bx0, bv0, lo)
    x, v = lo, va + vb
    while x < hi and ia < na and ib < nb:
        slope = a_s[ast + ia] + bs[bst + ib]
        if slope >= 0.0:
            break
        ea, eb = pa + al[ast + ia], pb + bl[bst + ib]
        nxt = min(ea, eb, hi)
        v += slope * (nxt - x)
        x = nxt
        if ea <= x:
            pa = ea
            ia += 1
        if eb <= x:
            pb = eb
            ib += 1
    return v


@njit(cache=True, error_model="numpy", _nrt=False)
def _window_value(steps, prm, m, tabs, a, b, vst, cst, wl, ws, ml, ms):
    """DP value (fixed genset costs excluded) of pattern m, known to equal the stored pattern
    outside steps [a, b): the backward pass over the window from the stored V_b, met with C_a."""
    tab_l, tab_s, tab_n, tab_x0, tab_v0 = tabs
    vl, vs, vstart, vn, vx, vv = vst
    cl, cs, cstart, cn, cx, cv = cst
    H = steps.shape[1]
    dt, ehi = prm[P_DT], prm[P_EHI]
    sf_slope = -dt * prm[P_SF]
    if b < H:
        nw = vn[b]
        if nw < 0:
            return INF
        st = vstart[b]
        for q in range(nw):
            wl[q] = vl[st + q]
            ws[q] = vs[st + q]
        wx0, wv0 = vx[b], vv[b]
    else:
        nw = 0
        if ehi > 0.0:
            wl[0], ws[0], nw = ehi, -prm[P_TV], 1
        wx0, wv0 = 0.0, 0.0
    for t in range(b - 1, a - 1, -1):
        nw, wv0 = _add_floor_penalty(wl, ws, nw, wx0, wv0, steps[S_FLOOR, t], sf_slope)
        mt = m[t]
        nt = tab_n[mt, t]
        if nt < 0:
            return INF
        n = _merge(wl, ws, nw, tab_l[mt, t], tab_s[mt, t], nt, ml, ms)
        mx0, mv0 = wx0 + tab_x0[mt, t], wv0 + tab_v0[mt, t]
        if t == 0:
            return _pl_value(ml, ms, n, mx0, mv0, prm[P_E0])
        nw, wx0, wv0, ok = _clip_band(ml, ms, n, mx0, mv0, ehi, wl, ws)
        if not ok:
            return INF
    nc = cn[a]
    if nc < 0:
        return INF
    return _min_sum(cl, cs, cstart[a], nc, cx[a], cv[a], wl, ws, 0, nw, wx0, wv0)


@njit(cache=True, error_model="numpy", _nrt=False)
def _runs(mode, rs, re):
    """On-runs of a pattern as [rs[j], re[j]) intervals. Returns their count."""
    nr = 0
    t = 0
    H = mode.shape[0]
    while t < H:
        if mode[t] == MODE_ON:
            u = t
            while u < H and mode[u] == MODE_ON:
                u += 1
            rs[nr], re[nr] = t, u
            nr += 1
            t = u
        else:
            t += 1
    return nr


MOVE_STEPS = (1, 2, 4, 8)
MOVES_PER_RUN = 24          # 6 kinds (extend/shrink either end, shift left/right) x MOVE_STEPS
FLIP_STEPS = (1, 4, 12, 32)  # local-search flips, only when the budget cannot pay for a sweep


@njit(cache=True, error_model="numpy", _nrt=False)
def _apply_move(mode, rs, re, nr, idx, m):
    """Neighbour number idx of a pattern, written to m: per on-run, extend/shrink either end or
    shift the whole run by 1/2/4/8 steps (24 moves), drop it, fill the gap after it; then flip the
    window of 1/4/12/32 steps starting at any step to the opposite of that step's state (starts a run
    at an off step, splits or cuts a run at an on step). Returns False when the move does not apply."""
    H = mode.shape[0]
    for t in range(H):  # (a slice copy would allocate for its overlap check)
        m[t] = mode[t]
    if idx < MOVES_PER_RUN * nr:
        j, kind, k = idx // MOVES_PER_RUN, (idx % MOVES_PER_RUN) // 4, MOVE_STEPS[idx % 4]
        s, e = rs[j], re[j]
        if kind == 4 or kind == 5:  # shift the run (a start cost moved, not added)
            d = -k if kind == 4 else k
            if s + d < 0 or e + d > H:
                return False
            m[s:e] = MODE_OFF
            m[s + d:e + d] = MODE_ON
            return True
        if kind == 0:
            if s - k < 0:
                return False
            m[s - k: s] = MODE_ON
        elif kind == 1:
            if e + k > H:
                return False
            m[e: e + k] = MODE_ON
        elif kind == 2:
            if k >= e - s:
                return False
            m[s: s + k] = MODE_OFF
        else:
            if k >= e - s:
                return False
            m[e - k: e] = MODE_OFF
        return True
    idx -= MOVES_PER_RUN * nr
    if idx < nr:
        m[rs[idx]: re[idx]] = MODE_OFF
        return True
    idx -= nr
    if idx < nr - 1:
        m[re[idx]: rs[idx + 1]] = MODE_ON
        return True
    idx -= nr - 1 if nr > 0 else 0
    for length in FLIP_STEPS:
        if idx < H:
            if idx + length > H and length > 1 and idx + length // 2 >= H:
                return False  # the shorter flip already reached the end
            m[idx: min(H, idx + length)] = MODE_OFF if mode[idx] == MODE_ON else MODE_ON
            return True
        idx -= H
    return False


@njit(cache=True, error_model="numpy")
def _pattern_objective(steps, prm, m, tabs, extra):
    return _backward(steps, prm, m, False, tabs)[0] + _fixed_costs(m, prm) + extra


@njit(cache=True, error_model="numpy")
def _lagrange_pattern(steps, prm, tabs, dual, m):
    """A genset pattern from a price of stored energy: with the value of energy fixed at the dual
    dV/dE of a plan, steps decouple; each step's best cost with the genset off and on, then a
    two-state Viterbi pass with start costs gives the pattern (the unit-commitment heuristic)."""
    H = steps.shape[1]
    tab_l, tab_s, tab_n, tab_x0, tab_v0 = tabs
    cost = np.empty((2, H))
    for mi in range(2):
        for t in range(H):
            n = tab_n[mi, t]
            if n < 0:
                cost[mi, t] = INF
                continue
            lam = dual[t]
            v = tab_v0[mi, t] - lam * tab_x0[mi, t]  # f~(x) - lam*x, x = -e
            best = v
            for k in range(n):
                v += (tab_s[mi, t, k] - lam) * tab_l[mi, t, k]
                best = min(best, v)
            cost[mi, t] = best + (prm[P_DT] * prm[P_ONCOST] if mi == 1 else 0.0)
    acc = np.empty((2, H + 1))
    frm = np.zeros((2, H), np.int64)
    acc[0, 0] = INF if prm[P_ON0] > 0.5 else 0.0  # the state before step 0 is on0
    acc[1, 0] = 0.0 if prm[P_ON0] > 0.5 else INF
    for t in range(H):
        off_prev = min(acc[0, t], acc[1, t])
        frm[0, t] = 0 if acc[0, t] <= acc[1, t] else 1
        acc[0, t + 1] = off_prev + cost[0, t]
        via_off = acc[0, t] + prm[P_START]
        frm[1, t] = 0 if via_off < acc[1, t] else 1
        acc[1, t + 1] = min(via_off, acc[1, t]) + cost[1, t]
    st = 0 if acc[0, H] <= acc[1, H] else 1
    for t in range(H - 1, -1, -1):
        m[t] = MODE_ON if st == 1 else MODE_OFF
        st = frm[st, t]


@njit(cache=True, error_model="numpy")
def _local_search(steps, prm, tabs, extra, best, best_v, work_cap, work, flips):
    """First-improvement local search over the moves of _apply_move from pattern `best` (improved
    in place). Each candidate differs from the incumbent on a window [a, b) of steps only, so it is
    valued exactly by the windowed DP (O(b - a) merges); accepting a move rebuilds the stores
    (O(H)). Work is counted in step merges and capped at work_cap. Returns (best_v, work)."""
    H = steps.shape[1]
    vst, cst = _stores(steps, prm, best, tabs)
    work += 2 * H
    cap = H * (MAX_CAND + 2) + 8
    wl, ws = np.empty(cap), np.empty(cap)
    ml, ms = np.empty(cap + MAX_CAND), np.empty(cap + MAX_CAND)
    rs = np.empty(H + 1, np.int64)
    re = np.empty(H + 1, np.int64)
    m = np.empty(H, np.int64)
    nr = _runs(best, rs, re)
    idx = 0
    since = 0  # moves tried since the last improvement
    while work < work_cap:
        total = ((MOVES_PER_RUN + 2) * nr - 1 if nr > 0 else 0) + (len(FLIP_STEPS) * H if flips else 0)
        if since >= total:
            break  # a local optimum: no move improves
        idx = idx % total
        if _apply_move(best, rs, re, nr, idx, m):
            a = 0
            while a < H and m[a] == best[a]:
                a += 1
            if a < H:
                b = H
                while m[b - 1] == best[b - 1]:
                    b -= 1
                v = _window_value(steps, prm, m, tabs, a, b, vst, cst, wl, ws, ml, ms)
                work += b - a + 4  # the window, plus the O(H) copy and the meeting with C_a
                v += _fixed_costs(m, prm) + extra
                if v < best_v - 1e-9 * (1.0 + abs(best_v)):
                    best_v = v
                    best[:] = m
                    nr = _runs(best, rs, re)
                    vst, cst = _stores(steps, prm, best, tabs)
                    work += 2 * H
                    since = 0
                    continue
        idx += 1
        since += 1
    return best_v, work


@njit(cache=True, error_model="numpy")
def _window_sweep(steps, prm, tabs, extra, best, best_v, work_cap, work):
    """The deep move: set any window [a, b) of steps to all-off or all-on (a run dropped, split,
    grown, merged or started anywhere, of any length) and take the best of all O(H^2) of them.
    For a fixed a, C_a is pushed through the window one step at a time and met with the stored
    V_b at every b, so the whole sweep costs O(H^2) merges, not O(H^3). Applies the best window to
    `best` if it improves. Returns (best_v, work, improved)."""
    H = steps.shape[1]
    vst, cst = _stores(steps, prm, best, tabs)
    work += 2 * H
    cap = H * (MAX_CAND + 2) + 8
    wl, ws = np.empty(cap), np.empty(cap)
    ml, ms = np.empty(cap + MAX_CAND), np.empty(cap + MAX_CAND)
    rl, rs = np.empty(MAX_CAND), np.empty(MAX_CAND)
    # starts of `best` before step t (prefix), to price the starts of a windowed pattern in O(1)
    on0 = prm[P_ON0] > 0.5
    spre = np.zeros(H + 1, np.int64)
    onpre = np.zeros(H + 1, np.int64)
    for t in range(H):
        prev_on = on0 if t == 0 else best[t - 1] == MODE_ON
        spre[t + 1] = spre[t] + (1 if best[t] == MODE_ON and not prev_on else 0)
        onpre[t + 1] = onpre[t] + (1 if best[t] == MODE_ON else 0)
    bv, ba, bb, bs_, work = _sweep_run(steps, prm, tabs, extra, best, best_v, work_cap, work, vst, cst,
                                       wl, ws, ml, ms, rl, rs, spre, onpre)
    if ba < 0:
        return best_v, work, False
    best[ba:bb] = MODE_ON if bs_ == 1 else MODE_OFF
    return bv, work, True


@njit(cache=True, error_model="numpy", _nrt=False)
def _sweep_run(steps, prm, tabs, extra, best, best_v, work_cap, work, vst, cst, wl, ws, ml, ms, rl, rs,
               spre, onpre):
    """The window sweep's loops over buffers _window_sweep allocated, compiled without reference
    counting (numba's atomic refcounts on the inlined helpers' arguments were a third of the
    search). Returns (best value, a, b, window mode, work); a < 0: no window improves."""
    tab_l, tab_s, tab_n, tab_x0, tab_v0 = tabs
    vl, vs, vstart, vn, vx, vv = vst
    cl, cs, cstart, cn, cx, cv = cst
    H = steps.shape[1]
    dt, ehi, e0 = prm[P_DT], prm[P_EHI], prm[P_E0]
    sf_slope = -dt * prm[P_SF]
    on0 = prm[P_ON0] > 0.5
    on_cost, start_cost = dt * prm[P_ONCOST], prm[P_START]
    bv, ba, bb, bs_ = best_v, -1, -1, 0
    tol = 1e-9 * (1.0 + abs(best_v))
    for s in range(2):  # 0: window off, 1: window on
        for a in range(H):
            if work >= work_cap:
                break  # out of budget: the best window found so far still counts
            if best[a] == s:
                continue  # the same pattern as a window starting later
            if a == 0:
                nc, cx0, cv0 = 0, e0, 0.0
            else:
                nc = cn[a]
                if nc < 0:
                    continue
                st = cstart[a]
                for q in range(nc):
                    wl[q] = cl[st + q]
                    ws[q] = cs[st + q]
                cx0, cv0 = cx[a], cv[a]
            prev_on = on0 if a == 0 else best[a - 1] == MODE_ON
            start_a = 1 if (s == 1 and not prev_on) else 0
            for b in range(a + 1, min(H, a + SWEEP_WINDOW) + 1):
                t = b - 1
                nt = tab_n[s, t]
                if nt < 0:
                    break
                fend, fvend = tab_x0[s, t], tab_v0[s, t]
                for q in range(nt):
                    fend += tab_l[s, t, q]
                    fvend += tab_l[s, t, q] * tab_s[s, t, q]
                    rl[q] = tab_l[s, t, nt - 1 - q]
                    rs[q] = -tab_s[s, t, nt - 1 - q]
                n = _merge(wl, ws, nc, rl, rs, nt, ml, ms)
                mx0, mv0 = cx0 - fend, cv0 + fvend
                n, mv0 = _add_floor_penalty(ml, ms, n, mx0, mv0, steps[S_FLOOR, t], sf_slope)
                nc, cx0, cv0, ok = _clip_band(ml, ms, n, mx0, mv0, ehi, wl, ws)
                work += 1
                if not ok:
                    break
                if best[t] == s:
                    continue  # the same pattern as the window ending a step earlier
                work += 2  # the meeting with V_b
                # the pattern: best outside [a, b), s inside
                n_on = onpre[a] + (b - a) * s + (onpre[H] - onpre[b])
                n_st = spre[a] + start_a + (spre[H] - spre[b])
                if b < H and best[b] == MODE_ON:
                    if s == 1 and best[b - 1] != MODE_ON:
                        n_st -= 1  # best started at b; now the window runs into it
                    elif s == 0 and best[b - 1] == MODE_ON:
                        n_st += 1  # best ran through b; now it restarts there
                fixed = n_on * on_cost + n_st * start_cost
                if vn[b] < 0:
                    continue
                v = _min_sum(wl, ws, 0, nc, cx0, cv0, vl, vs, vstart[b], vn[b], vx[b], vv[b])
                v += fixed + extra
                if v < bv - tol:
                    bv, ba, bb, bs_ = v, a, b, s
    return bv, ba, bb, bs_, work


@njit(cache=True, error_model="numpy")
def _improve(steps, prm, tabs, extra, m, v, cap, work):
    """Local search to a local optimum, then the window sweep to leave it, until neither improves
    or the work cap is reached. When what is left of the budget cannot pay for a whole sweep
    (O(H * SWEEP_WINDOW) merges; a cut-off sweep would only try windows early in the horizon), the
    local search tries short flips anywhere instead. Returns (v, work)."""
    H = steps.shape[1]
    sweep_cost = 3 * H * min(H, SWEEP_WINDOW) // 2
    while True:
        v, work = _local_search(steps, prm, tabs, extra, m, v, cap, work, cap - work < sweep_cost)
        if cap - work < sweep_cost:
            break
        v, work, improved = _window_sweep(steps, prm, tabs, extra, m, v, cap, work)
        if not improved:
            break
    return v, work


@njit(cache=True, error_model="numpy")
def _genset_patterns(steps, prm, pcap, q_relax, dual, budget, init):
    """Bounded search over on/off patterns at peak level pcap. Starts: the pattern `init` (if
    init[0] >= 0), all-off, the relaxation rounded at four thresholds, unit-commitment rounds
    (_lagrange_pattern at the plan's dual, then at the dual of each re-plan) and all-on; then
    local search (_local_search) from each distinct start, best first, while the budget lasts
    (multi-start: one run alone stalls in a local optimum that a drop-one-run-and-grow-another
    pair of moves would leave). budget is in DP-pass equivalents (budget * H step merges).
    Returns (best pattern, its objective)."""
    H = steps.shape[1]
    tabs = _tables(steps, prm, np.array([MODE_OFF, MODE_ON]), pcap)
    extra = prm[P_PEAK] * pcap
    ns = 3 + 4 + LAGRANGE_ROUNDS
    starts = np.zeros((ns, H), np.int64)
    vals = np.full(ns, INF)
    n = 0
    vals[n] = _pattern_objective(steps, prm, starts[n], tabs, extra)  # all off
    n += 1
    for t in range(H):  # all on where a running genset is feasible
        starts[n, t] = MODE_ON if tabs[2][1, t] >= 0 else MODE_OFF
    vals[n] = _pattern_objective(steps, prm, starts[n], tabs, extra)
    n += 1
    if H > 0 and init[0] >= 0:
        starts[n] = init
        vals[n] = _pattern_objective(steps, prm, starts[n], tabs, extra)
        n += 1
    for frac in (1e-6, 0.25, 0.5, 1.0):
        for t in range(H):
            if q_relax[t] > 1e-6 and q_relax[t] >= frac * prm[P_PMIN] and tabs[2][1, t] >= 0:
                starts[n, t] = MODE_ON
        vals[n] = _pattern_objective(steps, prm, starts[n], tabs, extra)
        n += 1
    used = n
    # unit-commitment rounds: price stored energy at the current plan's dual, re-commit, re-plan
    out = np.zeros((10, H + 1))
    d = dual.copy()
    for _ in range(LAGRANGE_ROUNDS):
        m = starts[n]
        _lagrange_pattern(steps, prm, tabs, d, m)
        res = _backward(steps, prm, m, True, tabs)
        used += 1
        vals[n] = res[0] + _fixed_costs(m, prm) + extra
        n += 1
        if res[0] == INF:
            break
        _forward(steps, prm, m, pcap, res[1], res[2], res[3], res[4], res[5], res[6], res[7], out)
        d[:] = out[9, :H]
    order = np.argsort(vals[:n], kind="mergesort")  # stable: deterministic ties
    best = starts[order[0]].copy()
    best_v = vals[order[0]]
    work = used * H
    cap = budget * H
    for i in range(n):
        k = order[i]
        if vals[k] == INF or work >= cap:
            break
        dup = False
        for j in range(i):
            if vals[order[j]] < INF and np.array_equal(starts[order[j]], starts[k]):
                dup = True
                break
        if dup:
            continue
        m = starts[k].copy()
        if i == 0:  # the most promising start gets the deep move (window sweep, O(H^2) merges) first
            v, work = _improve(steps, prm, tabs, extra, m, vals[k], cap, work)
        else:  # the others: local search, and the deep move only if they overtake the best
            v, work = _local_search(steps, prm, tabs, extra, m, vals[k], cap, work,
                                    cap - work < 3 * H * min(H, SWEEP_WINDOW) // 2)
            if v < best_v - 1e-9 * (1.0 + abs(best_v)) and work < cap:
                v, work = _improve(steps, prm, tabs, extra, m, v, cap, work)
        if i == 0 or v < best_v - 1e-9 * (1.0 + abs(best_v)):
            best, best_v = m, v
    return best, best_v


@njit(cache=True, error_model="numpy")
def _max_grid(out, H):
    p = 0.0
    for t in range(H):
        p = max(p, out[0, t])
    return p


@njit(cache=True, error_model="numpy")
def _peak_for(steps, prm, mode, p_top, peak_evals, out):
    """Best peak level for a fixed genset pattern: the pattern's own unconstrained plan bounds it
    (a committed pattern can import more than the relaxation did). Returns (P, h(P)); clobbers out."""
    H = steps.shape[1]
    v = _plan_at(steps, prm, mode, p_top, out)
    if v == INF:
        return p_top, INF
    ph = min(p_top, _max_grid(out, H))
    p, hv, _ = _peak_search(steps, prm, mode, ph, v + _fixed_costs(mode, prm) + prm[P_PEAK] * ph, peak_evals)
    return p, hv


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
class PlanResult:
    grid_kw: np.ndarray
    export_kw: np.ndarray
    charge_kw: np.ndarray
    discharge_kw: np.ndarray
    diesel_kw: np.ndarray
    curtail_kw: np.ndarray
    unserved_kw: np.ndarray
    soc_pct: np.ndarray      # H+1 values, soc0 first
    diesel_on: np.ndarray    # bool per step
    objective: float         # the contract formula on this plan
    lower_bound: float       # certified: no plan is cheaper (relaxation / exact DP value)
    gap_bound: float         # (objective - lower_bound) / max(1, |objective|)
    peak_kw: float
    solve_ms: float


def pack_instance(inst: PlanInstance):
    """The kernel's plain arrays: (steps (N_STEPS, H), prm (N_PRM,)), costs folded per kWh."""
    bat, dsl = inst.battery, inst.diesel
    cap = bat.capacity_kwh
    steps = np.empty((N_STEPS, inst.horizon))
    steps[S_LOAD] = inst.load_kw
    steps[S_PV] = inst.pv_kw
    steps[S_GCOST] = inst.grid_price + inst.carbon_price_per_kg * inst.grid_co2_kg_per_kwh
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
    if dsl is not None:
        per_l = dsl.fuel_price_per_l + inst.carbon_price_per_kg * dsl.co2_kg_per_l
        prm[P_HASD] = 1.0
        prm[P_PMIN] = dsl.p_min_kw
        prm[P_PMAX] = dsl.p_max_kw
        prm[P_QCOST] = dsl.fuel_l_per_kwh * per_l
        prm[P_ONCOST] = dsl.fuel_l_per_h_on * per_l
        prm[P_START] = dsl.start_cost
        prm[P_ON0] = 1.0 if dsl.on0 else 0.0
    return steps, prm


def solve(inst: PlanInstance) -> PlanResult:
    """Plan one instance (see the module docstring); deterministic, never infeasible."""
    t0 = time.perf_counter()
    steps, prm = pack_instance(inst)
    out, obj, lb = plan_kernel(steps, prm, PEAK_EVALS, GENSET_EVALS)
    solve_ms = (time.perf_counter() - t0) * 1e3
    H = inst.horizon
    on = out[8, :H] > 0.5
    return PlanResult(grid_kw=out[0, :H].copy(), export_kw=out[1, :H].copy(), charge_kw=out[2, :H].copy(),
                      discharge_kw=out[3, :H].copy(), diesel_kw=out[4, :H].copy(),
                      curtail_kw=out[5, :H].copy(), unserved_kw=out[6, :H].copy(),
                      soc_pct=out[7, :].copy(), diesel_on=on, objective=float(obj),
                      lower_bound=float(lb), gap_bound=float((obj - lb) / max(1.0, abs(obj))),
                      peak_kw=float(np.max(out[0, :H])), solve_ms=solve_ms)


def warm_up() -> None:
    """Compile (or load from the cache) every kernel before the first cycle."""
    steps = np.zeros((N_STEPS, 2))
    steps[S_LOAD] = 1.0
    steps[S_GMAX] = 1.0
    prm = np.zeros(N_PRM)
    prm[P_DT], prm[P_CAP], prm[P_ETAC], prm[P_ETAD], prm[P_EHI] = 1.0, 1.0, 1.0, 1.0, 1.0
    prm[P_PEAK], prm[P_HASD], prm[P_PMAX], prm[P_CMAX], prm[P_DMAX] = 1.0, 1.0, 1.0, 1.0, 1.0
    plan_kernel(steps, prm, PEAK_EVALS, GENSET_EVALS)
