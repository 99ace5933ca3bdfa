"""The stage function of one step: the cheapest way to run the bus at each SOC rate, as convex
piecewise-linear segments (see the package docstring). Built exactly by evaluating the greedy merit order of
the bus sources at every candidate kink."""
from __future__ import annotations

from numba import njit

from controller.core.mpc.layout import (
    INF, MAX_CAND, MODE_ON, MODE_RELAX, N_SRC, P_CMAX, P_DMAX, P_DT, P_ETAC, P_ETAD, P_ONCOST, P_PMAX,
    P_PMIN, P_QCOST, P_UNS, P_WEAR, P_XMAX, SRC_DIESEL, SRC_EXPORT, SRC_GRID, SRC_PV, SRC_UNSERVED, S_GCOST,
    S_GMAX, S_LOAD, S_PV, S_XPRICE, TINY)


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
