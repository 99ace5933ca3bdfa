"""The exact DP for a fixed genset pattern and peak level: stage tables, the backward pass over convex
piecewise-linear value functions (infimal convolution = merging segments by slope), the forward pass that
reads the plan off it, and the contract objective. The hot loops run in functions compiled without
numba's reference counting (_nrt=False) over buffers their callers allocate: numba's atomic refcounts on
views and inlined arguments were half of a pass."""
from __future__ import annotations

import numpy as np
from numba import njit

from controller.core.mpc.layout import (
    INF, MAX_CAND, MODE_OFF, MODE_ON, MODE_RELAX, N_SRC, P_CAP, P_DT, P_E0, P_EHI, P_ETAC, P_ETAD, P_ON0,
    P_ONCOST, P_PEAK, P_QCOST, P_SF, P_SOC0, P_START, P_TV, P_UNS, P_WEAR, SRC_DIESEL, SRC_EXPORT, SRC_GRID,
    SRC_PV, SRC_UNSERVED, S_FLOOR, S_GCOST, S_LOAD, S_PV, S_XPRICE, TINY)
from controller.core.mpc.stage import _battery_point, _rate_range, _sources, _stage_function, _ystar


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
    for j in range(nb + 1):  # a's run up to b's segment j (the rest of a after the last one), then j
        s = bs[j] if j < nb else INF
        while i < na and a_s[i] <= s:
            ml[n] = al[i]
            ms[n] = a_s[i]
            if flags:
                mk[n] = 0
            n += 1
            i += 1
        if j < nb:
            ml[n] = bl[j]
            ms[n] = s
            if flags:
                mk[n] = 1
            n += 1
    return n


@njit(cache=True, error_model="numpy", inline="always")
def _merge(al, a_s, na, bl, bs, nb, ml, ms):
    """Infimal convolution of two convex PL functions (as _merge_flags, without the flags: ms stands
    in for the flag array, never written)."""
    return _merge_flags(al, a_s, na, bl, bs, nb, ml, ms, ms, False)


@njit(cache=True, error_model="numpy", inline="always")
def _push_forward(tabs, mt, t, wl, ws, nc, cx0, cv0, rl, rs, ml, ms, floor_kwh, sf_slope, ehi):
    """One step of the forward (cost-to-arrive) pass: C_{t+1} = clip((C_t box f_t) + pen_t), with C_t in
    (wl, ws) and C_{t+1} written back there. f(e) = f~(-e): the table's segments reversed, slopes negated.
    Returns (nc, x0, v0, feasible)."""
    tab_l, tab_s, tab_n, tab_x0, tab_v0 = tabs
    nt = tab_n[mt, t]
    if nt < 0:
        return nc, cx0, cv0, False
    fend, fvend = tab_x0[mt, t], tab_v0[mt, t]
    for q in range(nt):
        fend += tab_l[mt, t, q]
        fvend += tab_l[mt, t, q] * tab_s[mt, t, q]
        rl[q] = tab_l[mt, t, nt - 1 - q]
        rs[q] = -tab_s[mt, t, nt - 1 - q]
    n = _merge(wl, ws, nc, rl, rs, nt, ml, ms)
    mx0, mv0 = cx0 - fend, cv0 + fvend
    n, mv0 = _add_floor_penalty(ml, ms, n, mx0, mv0, floor_kwh, sf_slope)
    return _clip_band(ml, ms, n, mx0, mv0, ehi, wl, ws)


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
    caller owns, and numba's per-call and per-inlined-argument refcounts (atomic) were 60 % of it
    (86 -> 34 us for 288 steps)."""
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
    atomic refcounts on every view and inlined argument were a fifth of the pass: 75 -> 60 us for 288
    steps). Two buffers in
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

@njit(cache=True, error_model="numpy")
def _plan_at(steps, prm, mode, pcap, out):
    """The plan for a genset pattern at peak level pcap, written to out. Returns its DP value."""
    tabs, sel = _tables_for(steps, prm, mode, pcap)
    res = _backward(steps, prm, sel, True, tabs)
    if res[0] < INF:
        _forward(steps, prm, mode, pcap, res[1], res[2], res[3], res[4], res[5], res[6], res[7], out)
    return res[0]
