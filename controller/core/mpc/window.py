"""Valuing a change on a window of steps exactly: the stored cost-to-go V_t and cost-to-arrive C_t of an
incumbent plan (`_stores`), and the DP value of a plan that differs from it only on steps [a, b)
(`_window_value`: the backward pass over the window alone, met with C_a). O(b - a) merges instead of O(H):
what makes the genset's pattern moves (genset.py) and a deferrable job's candidate starts (deferrable.py)
cheap enough to try many of within a cycle. Its own module because both searches rest on it."""
from __future__ import annotations

import numpy as np
from numba import njit

from controller.core.mpc.dp import _add_floor_penalty, _clip_band, _merge, _pl_value, _push_forward
from controller.core.mpc.layout import INF, MAX_CAND, P_DT, P_E0, P_EHI, P_SF, P_TV, S_FLOOR


@njit(cache=True, error_model="numpy")
def _window_buffers(H):
    """Scratch for the windowed DP of a search: W (lengths, slopes) and the merge target (one stage
    longer)."""
    cap = H * (MAX_CAND + 2) + 8
    return np.empty(cap), np.empty(cap), np.empty(cap + MAX_CAND), np.empty(cap + MAX_CAND)


@njit(cache=True, error_model="numpy")
def _stores(steps, prm, m, tabs):
    """For pattern m: V_t (cost-to-go from E_t, t = 1..H, clipped to the band) and C_t (cost to
    arrive at E_t from E0, t = 1..H). A pattern that differs from m only on steps [a, b) is then
    valued by re-running the backward pass over the window alone, from V_b, and taking
    min_E C_a(E) + V_a(E): O(b - a) merges instead of O(H). Each store: (lengths, slopes, start,
    count (-1: +inf), x0, v0). Allocates; the passes run without reference counting."""
    H = steps.shape[1]
    wl, ws, ml, ms = _window_buffers(H)
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
            nc, cx0, cv0, ok = _push_forward(tabs, m[t], t, wl, ws, nc, cx0, cv0, rl, rs, ml, ms,
                                             steps[S_FLOOR, t], sf_slope, ehi)
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
