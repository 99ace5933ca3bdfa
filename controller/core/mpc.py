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
same DP with g_t <= min(cap_t, P), and h(P) = Phi(P) + peak_price*P is convex and PL in P, so P is
found by tangent intersection (Kelley's cutting planes in 1-D, finite for PL functions; slopes by
one-sided differences), at most PEAK_EVALS backward passes, which also yields a lower bound.

With a genset the problem is mixed-integer (p_min, start cost). The convex relaxation (on_t in
[0,1], start cost dropped) is solved the same way and gives a certified lower bound LB. On/off
patterns come from rounding the relaxed diesel use and from unit-commitment rounds (price stored
energy at the plan's dual dV/dE, decide each step off/on with a two-state Viterbi over start
costs); the best is improved by a first-improvement local search (extend/shrink/shift/drop runs, fill gaps,
start new runs), every candidate an exact DP over stage tables built once. The search is capped
at GENSET_EVALS passes; gap_bound = (objective - LB) / max(1, |objective|) is reported per call.

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
GENSET_EVALS = 1500
LAGRANGE_ROUNDS = 4

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


@njit(cache=True, error_model="numpy")
def _stage_function(t, steps, prm, mode_t, pcap, lo, hi, cost, order, cand, fval, tl, ts):
    """Build the reflected stage function f~(v) = f_t(-v) (v = -e, kWh) as convex PL segments
    (tl lengths, ts slopes ascending). Returns (nseg, x0, value at x0, feasible)."""
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
        if nseg > 0 and s == ts[nseg - 1]:
            tl[nseg - 1] += de
        else:
            tl[nseg] = de
            ts[nseg] = s
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


@njit(cache=True, error_model="numpy")
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
    for i in range(nm):
        for t in range(H):
            n, x0, v0, ok = _stage_function(t, steps, prm, modes[i], pcap, lo, hi, cost, order,
                                            cand, fval, tl[i, t], ts[i, t])
            tn[i, t] = n if ok else -1
            tx0[i, t] = x0
            tv0[i, t] = v0
    return tl, ts, tn, tx0, tv0


@njit(cache=True, error_model="numpy")
def _backward(steps, prm, sel, want_store, tabs):
    """Build V_0..V_{H-1} (merged with their origin flags for the forward pass) and return
    (V_0(E0), store...). sel[t] picks the table (genset mode) of step t. V = +inf when the
    pattern is infeasible."""
    tab_l, tab_s, tab_n, tab_x0, tab_v0 = tabs
    H = steps.shape[1]
    dt, ehi, e0 = prm[P_DT], prm[P_EHI], prm[P_E0]
    sf_slope = -dt * prm[P_SF]
    wcap = H * (MAX_CAND + 2) + 8
    wl = np.empty(wcap)
    ws = np.empty(wcap)
    nw = 0
    wx0, wv0 = 0.0, 0.0
    if ehi > 0.0:
        wl[0], ws[0], nw = ehi, -prm[P_TV], 1
    scap = H * 16 + 64 if want_store else 1
    sl = np.empty(scap)
    ss = np.empty(scap)
    sk = np.empty(scap, np.int8)
    start = np.zeros(H + 1, np.int64)
    cnt = np.zeros(H, np.int64)
    x0s = np.zeros(H)
    wx0s = np.zeros(H)
    ml = np.empty(wcap + MAX_CAND)
    ms = np.empty(wcap + MAX_CAND)
    mk = np.empty(wcap + MAX_CAND, np.int8)
    used = 0
    for t in range(H - 1, -1, -1):
        nw, wv0 = _add_floor_penalty(wl, ws, nw, wx0, wv0, steps[S_FLOOR, t], sf_slope)
        m_t = sel[t]
        nt, tx0, tv0 = tab_n[m_t, t], tab_x0[m_t, t], tab_v0[m_t, t]
        if nt < 0:
            return INF, sl, ss, sk, start, cnt, x0s, wx0s
        tl, ts = tab_l[m_t, t], tab_s[m_t, t]
        # infimal convolution: merge W and f~ segments by slope
        i = j = n = 0
        while i < nw or j < nt:
            if j >= nt or (i < nw and ws[i] <= ts[j]):
                ml[n], ms[n], mk[n] = wl[i], ws[i], 0
                i += 1
            else:
                ml[n], ms[n], mk[n] = tl[j], ts[j], 1
                j += 1
            n += 1
        mx0, mv0 = wx0 + tx0, wv0 + tv0
        if want_store:
            sl = _grow(sl, used + n)
            ss = _grow(ss, used + n)
            sk = _grow(sk, used + n)
            sl[used: used + n] = ml[:n]
            ss[used: used + n] = ms[:n]
            sk[used: used + n] = mk[:n]
            start[t] = used
            cnt[t] = n
            used += n
        x0s[t] = mx0
        wx0s[t] = wx0
        if t == 0:
            return _pl_value(ml, ms, n, mx0, mv0, e0), sl, ss, sk, start, cnt, x0s, wx0s
        # V_t restricted to the hard band [0, ehi] becomes the next W (equal slopes coalesced)
        pos, val, k = mx0, mv0, 0
        while k < n and pos + ml[k] <= 0.0:
            val += ms[k] * ml[k]
            pos += ml[k]
            k += 1
        first_cut = 0.0
        if pos < 0.0:
            if k >= n:
                if pos < -1e-9:
                    return INF, sl, ss, sk, start, cnt, x0s, wx0s
            else:
                first_cut = -pos
                val += ms[k] * first_cut
            pos = 0.0
        if pos > ehi + 1e-9:
            return INF, sl, ss, sk, start, cnt, x0s, wx0s
        wx0, wv0 = pos, val
        nw = 0
        while k < n and pos < ehi:
            take = min(ml[k] - first_cut, ehi - pos)
            first_cut = 0.0
            if take > TINY:
                if nw > 0 and ws[nw - 1] == ms[k]:
                    wl[nw - 1] += take
                else:
                    wl[nw] = take
                    ws[nw] = ms[k]
                    nw += 1
            pos += take
            k += 1
    return INF, sl, ss, sk, start, cnt, x0s, wx0s


@njit(cache=True, error_model="numpy")
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


@njit(cache=True, error_model="numpy")
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
def _peak_search(steps, prm, mode, p_hi, evals):
    """Minimise the convex PL h(P) = Phi(P) + peak_price*P on [0, p_hi] by tangent intersection
    (Kelley's method in 1-D: finite for PL functions), slopes by one-sided differences, at most
    `evals` DP passes. Returns (P, h(P), lower bound on min h)."""
    a0 = min(max(prm[P_PEAK0], 0.0), p_hi)
    if prm[P_PEAK] <= 0.0 or p_hi <= 0.0 or a0 >= p_hi:
        v = _value(steps, prm, mode, p_hi)
        return p_hi, v, v
    delta = 1e-7 * p_hi
    a, b = a0, p_hi
    ha = _value(steps, prm, mode, a)
    sa = (_value(steps, prm, mode, a + delta) - ha) / delta
    hb = _value(steps, prm, mode, b)
    sb = (hb - _value(steps, prm, mode, b - delta)) / delta
    used = 4
    best_p, best_v = (a, ha) if ha <= hb else (b, hb)
    if sa >= 0.0:
        return a, ha, ha
    if sb <= 0.0:
        return b, hb, hb
    lb = -INF
    while used + 2 <= evals:
        c = (hb - ha + sa * a - sb * b) / (sa - sb)
        lb = max(lb, ha + sa * (c - a))
        if best_v - lb <= 1e-9 * max(1.0, abs(best_v)):
            break
        w = b - a
        c = min(max(c, a + 1e-4 * w), b - 1e-4 * w)
        hc = _value(steps, prm, mode, c)
        sc = (_value(steps, prm, mode, c + delta) - hc) / delta
        used += 2
        if hc < best_v:
            best_p, best_v = c, hc
        if sc >= 0.0:
            b, hb, sb = c, hc, sc
        else:
            a, ha, sa = c, hc, sc
    return best_p, best_v, min(lb, best_v)


@njit(cache=True, error_model="numpy")
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
NEW_RUN_STEPS = (1, 4, 12, 32)


@njit(cache=True, error_model="numpy")
def _apply_move(mode, rs, re, nr, idx, m):
    """Neighbour number idx of a pattern, written to m: per on-run, extend/shrink either end or
    shift the whole run by 1/2/4/8 steps (24 moves), drop it, fill the gap after it; then start a
    run at any off step (1, 4, 12 or 32 steps long). Returns False when the move does not apply."""
    H = mode.shape[0]
    m[:] = mode
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
    for length in NEW_RUN_STEPS:  # start a new run of this many steps at any off step
        if idx < H:
            if mode[idx] == MODE_ON or idx + length > H:
                return False
            m[idx: idx + length] = MODE_ON
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
def _genset_patterns(steps, prm, pcap, q_relax, dual, budget):
    """Bounded search over on/off patterns at peak level pcap: rounded relaxations and all-off,
    then first-improvement local search on the incumbent (see _apply_move), each candidate an
    exact DP pass on stage tables built once. Returns (best pattern, its objective)."""
    H = steps.shape[1]
    tabs = _tables(steps, prm, np.array([MODE_OFF, MODE_ON]), pcap)
    extra = prm[P_PEAK] * pcap
    best = np.zeros(H, np.int64)
    best_v = _pattern_objective(steps, prm, best, tabs, extra)
    used = 1
    for frac in (1e-6, 0.25, 0.5, 1.0):
        m = np.zeros(H, np.int64)
        for t in range(H):
            if q_relax[t] > 1e-6 and q_relax[t] >= frac * prm[P_PMIN] and tabs[2][1, t] >= 0:
                m[t] = MODE_ON
        v = _pattern_objective(steps, prm, m, tabs, extra)
        used += 1
        if v < best_v:
            best, best_v = m, v
    # unit-commitment rounds: price stored energy at the current plan's dual, re-commit, re-plan
    out = np.zeros((10, H + 1))
    d = dual.copy()
    m = np.zeros(H, np.int64)
    for _ in range(LAGRANGE_ROUNDS):
        _lagrange_pattern(steps, prm, tabs, d, m)
        v = _pattern_objective(steps, prm, m, tabs, extra)
        used += 1
        if v < best_v:
            best, best_v = m.copy(), v
        sel = m.copy()
        res = _backward(steps, prm, sel, True, tabs)
        if res[0] == INF:
            break
        _forward(steps, prm, m, pcap, res[1], res[2], res[3], res[4], res[5], res[6], res[7], out)
        d[:] = out[9, :H]
    rs = np.empty(H + 1, np.int64)
    re = np.empty(H + 1, np.int64)
    m = np.empty(H, np.int64)
    nr = _runs(best, rs, re)
    idx = 0
    since = 0  # moves tried since the last improvement
    while used < budget:
        total = ((MOVES_PER_RUN + 2) * nr - 1 if nr > 0 else 0) + len(NEW_RUN_STEPS) * H
        if since >= total:
            break  # a local optimum: no move improves
        idx = idx % total
        if _apply_move(best, rs, re, nr, idx, m):
            v = _pattern_objective(steps, prm, m, tabs, extra)
            used += 1
            if v < best_v - 1e-9 * (1.0 + abs(best_v)):
                best_v = v
                best[:] = m
                nr = _runs(best, rs, re)
                since = 0
                continue
        idx += 1
        since += 1
    return best, best_v


@njit(cache=True, error_model="numpy")
def _max_grid(out, H):
    p = 0.0
    for t in range(H):
        p = max(p, out[0, t])
    return p


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
    mode = np.zeros(H, np.int64)
    if prm[P_HASD] > 0.5:
        mode[:] = MODE_RELAX
    if has_peak:  # the best peak is at most the peak of the plan without a peak constraint
        _plan_at(steps, prm, mode, p_hi, out)
        p_hi = min(p_hi, _max_grid(out, H))
    p, v, lb = _peak_search(steps, prm, mode, p_hi, peak_evals)
    _plan_at(steps, prm, mode, p, out)
    if prm[P_HASD] > 0.5:
        q_relax = np.zeros(H)  # the relaxed plan's diesel use, from its balance
        for t in range(H):
            q_relax[t] = max(0.0, steps[S_LOAD, t] + out[2, t] + out[1, t] - steps[S_PV, t] + out[5, t]
                             - out[3, t] - out[0, t] - out[6, t])
        mode, _ = _genset_patterns(steps, prm, p if has_peak else p_hi, q_relax, out[9, :H].copy(),
                                   genset_evals)
        if has_peak:
            p, v, _ = _peak_search(steps, prm, mode, p_hi, peak_evals)
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
