"""A commitment start from a dynamic programme over (stored energy on a grid, genset on/off).

Why: the search of genset.py improves patterns by local moves, and its other starts (the relaxation rounded,
unit-commitment rounds at a fixed price of stored energy) see p_min and the start cost only through a
relaxation that drops them. Where those matter most (an island, p_min == p_max: a pure on/off decision, large
start costs) the starts were far off and the moves stalled in a local optimum (1.6-2.9 % above HiGHS's MIP
optimum). Here the on/off state is a state of the DP, so start costs, p_min and on0 are exact; only the stored
energy is restricted to K+1 levels. On a uniform grid (0, ehi/K, ..., ehi) that restriction is biased:
where the battery must serve the net load exactly (an outage at night), no grid move matches it, the
rounding is paid as unserved load and a running genset (which absorbs it) looks better than it is. So the
levels of step t are a tube c_t + (i - K/2) * step around a stored-energy path c (tube_pattern): along the
path of an exact plan every move is on the grid, and deviations from it are multiples of step on top of
its moves. Every stage cost is read from the exact stage tables the convex DP uses; the search then values
the pattern exactly and polishes it. Work per step: two convolutions of K+1 levels with a convex kernel,
O((K + band) log K) by the monotone argmin (about one DP pass per 8 levels, GRID_PASS_LEVELS in genset.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from controller.core.mpc.layout import INF, MODE_OFF, MODE_ON, P_DT, P_E0, P_EHI, P_ON0, P_ONCOST, P_SF, \
    P_START, P_TV, S_FLOOR


@njit(cache=True, error_model="numpy", _nrt=False)
def _band(tn, tx0, tl, mi, t, step, off):
    """Integer moves [dlo, dhi] (in grid levels) with e = off + d * step inside the stage's domain of e;
    dlo > dhi: none."""
    n = tn[mi, t]
    if n < 0:
        return 1, 0
    length = 0.0
    for k in range(n):
        length += tl[mi, t, k]
    emin, emax = -(tx0[mi, t] + length) - off, -tx0[mi, t] - off
    if step <= 0.0:
        return (0, 0) if emin <= 1e-9 and emax >= -1e-9 else (1, 0)
    return int(np.ceil(emin / step - 1e-9)), int(np.floor(emax / step + 1e-9))


@njit(cache=True, error_model="numpy", _nrt=False)
def _tabulate(tl, ts, n, x0, v0, mi, t, off, step, dlo, dhi, fv):
    """fv[d - dlo] = f_t(off + d * step) for d in [dlo, dhi] (f(e) = f~(-e): one walk of the table, v
    ascending)."""
    pos, val, k = x0, v0, 0
    end = x0
    for q in range(n):
        end += tl[mi, t, q]
    for d in range(dhi, dlo - 1, -1):
        v = min(max(-(off + d * step), x0), end)
        while k < n and pos + tl[mi, t, k] < v:
            val += ts[mi, t, k] * tl[mi, t, k]
            pos += tl[mi, t, k]
            k += 1
        fv[d - dlo] = val + (ts[mi, t, k] * (v - pos) if k < n else 0.0)


@njit(cache=True, error_model="numpy", _nrt=False)
def _convolve(a, fv, dlo, dhi, j0, j1, K, g, jd, stack):
    """g[i] = min_j a[j] + fv[j - i - dlo] over the band j - i in [dlo, dhi], j in [0, K], jd[i] its
    smallest argmin. fv is convex in j - i, so the smallest argmin never decreases with i (a Monge
    kernel; a is finite on [j0, j1], the levels inside the band [0, ehi]): divide and conquer over i with the
    argmin bracket, O((K + band) log K) instead of O(K band)."""
    top = 0
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = 0, K, j0, j1
    top = 1
    while top > 0:
        top -= 1
        ilo, ihi, jlo, jhi = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
        if ilo > ihi:
            continue
        i = (ilo + ihi) // 2
        best, bj = INF, -1
        for j in range(max(jlo, i + dlo), min(jhi, i + dhi) + 1):
            v = a[j] + fv[j - i - dlo]
            if v < best:
                best, bj = v, j
        g[i] = best
        jd[i] = bj
        lo_r, hi_l = (jlo, jhi) if bj < 0 else (bj, bj)
        stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = ilo, i - 1, jlo, hi_l
        stack[top + 1, 0], stack[top + 1, 1], stack[top + 1, 2], stack[top + 1, 3] = i + 1, ihi, lo_r, jhi
        top += 2


@njit(cache=True, error_model="numpy", _nrt=False)
def _levels(c, K, step, ehi):
    """The levels c + (i - K/2) * step inside the band [0, ehi]: (first, last)."""
    h = K // 2
    if step <= 0.0:
        return h, h
    i0 = max(0, int(np.ceil(h - c / step - 1e-9)))
    i1 = min(K, int(np.floor(h + (ehi - c) / step + 1e-9)))
    return i0, i1


@njit(cache=True, error_model="numpy", _nrt=False)
def _grid_run(steps, prm, tl, ts, tn, tx0, tv0, center, K, step, u, a, g, fv, jdec, sdec, stack, m):
    """The gridded DP over the caller's buffers (u, g: (2, K+1); a: (K+1,); fv: a stage table's values at
    the grid moves; jdec, sdec: (H, 2, K+1) decisions): level i of step t is E = center[t] + (i - K/2) *
    step (center[0] = E0: step 0 has only its middle level). Writes the pattern to m. Returns its gridded
    value (+inf: no gridded path; m is then all off)."""
    H = steps.shape[1]
    dt, ehi = prm[P_DT], prm[P_EHI]
    h = K // 2
    on_cost, start_cost = dt * prm[P_ONCOST], prm[P_START]
    sf = dt * prm[P_SF]
    for t in range(H):
        m[t] = MODE_OFF
    if H == 0:
        return INF
    j0, j1 = _levels(center[H], K, step, ehi)
    for i in range(K + 1):  # V_H: stored energy at its terminal value, the same in either genset state
        e = center[H] + (i - h) * step
        u[0, i] = -prm[P_TV] * e if j0 <= i <= j1 else INF
        u[1, i] = u[0, i]
    for t in range(H - 1, -1, -1):
        floor = steps[S_FLOOR, t]
        i0, i1 = (h, h) if t == 0 else _levels(center[t], K, step, ehi)
        off = center[t + 1] - center[t]
        for s in range(2):  # g[s, i]: best cost from level i at step t with the genset in mode s
            for i in range(K + 1):
                g[s, i] = INF
            dlo, dhi = _band(tn, tx0, tl, s, t, step, off)
            dlo, dhi = max(dlo, -K), min(dhi, K)  # no move beyond the grid
            if dlo > dhi or j0 > j1:
                continue
            _tabulate(tl, ts, tn[s, t], tx0[s, t], tv0[s, t], s, t, off, step, dlo, dhi, fv)
            for j in range(j0, j1 + 1):
                e = center[t + 1] + (j - h) * step
                a[j] = u[s, j] + (sf * (floor - e) if e < floor else 0.0)
            _convolve(a, fv, dlo, dhi, j0, j1, K, g[s], jdec[t, s], stack)
            for i in range(K + 1):
                if i < i0 or i > i1:
                    g[s, i] = INF
        for i in range(K + 1):  # the state before step t is p: a start if p is off and step t on
            g1 = g[1, i] + on_cost
            for p in range(2):
                c1 = g1 + (start_cost if p == 0 else 0.0)
                if c1 < g[0, i]:
                    u[p, i] = c1
                    sdec[t, p, i] = 1
                else:
                    u[p, i] = g[0, i]
                    sdec[t, p, i] = 0
        j0, j1 = i0, i1
    p = 1 if prm[P_ON0] > 0.5 else 0
    best = u[p, h]
    if best == INF:
        return INF
    j = h
    for t in range(H):
        s = sdec[t, p, j]
        m[t] = MODE_ON if s == 1 else MODE_OFF
        j = jdec[t, s, j]
        p = s
    return best


@njit(cache=True, error_model="numpy")
def grid_pattern(steps, prm, tabs, K, m):
    """The genset pattern of the DP over (E on the K+1 levels 0, ehi/K, ..., ehi; on/off) with exact start
    costs, p_min and on0, written to m (see the module docstring). tabs: the stage tables for [OFF, ON]
    (dp._tables). Returns the gridded value (+inf when no gridded path exists: m all off)."""
    K += K % 2
    H = steps.shape[1]
    center = np.full(H + 1, 0.5 * prm[P_EHI])
    center[0] = prm[P_E0]
    return _grid_dp(steps, prm, tabs, center, K, prm[P_EHI] / K if K > 0 else 0.0, m)


@njit(cache=True, error_model="numpy")
def tube_pattern(steps, prm, tabs, center, K, step, m):
    """The same DP on the K+1 levels center[t] + (i - K/2) * step around a stored-energy path (center[t]:
    E at the start of step t, center[0] = E0): with the path of a pattern's exact plan as the center,
    that plan is on the grid, so the pattern found is at least as good as it (a descent step that may
    move every run at once: discrete differential dynamic programming). Returns the gridded value."""
    K += K % 2
    return _grid_dp(steps, prm, tabs, center, K, step, m)


@njit(cache=True, error_model="numpy")
def _grid_dp(steps, prm, tabs, center, K, step, m):
    H = steps.shape[1]
    tl, ts, tn, tx0, tv0 = tabs
    band = 1
    for s in range(2):
        for t in range(H):
            dlo, dhi = _band(tn, tx0, tl, s, t, step, center[t + 1] - center[t])
            band = max(band, min(dhi, K) - max(dlo, -K) + 1)
    u = np.empty((2, K + 1))
    g = np.empty((2, K + 1))
    a = np.empty(K + 1)
    fv = np.empty(band)
    jdec = np.full((max(H, 1), 2, K + 1), -1, np.int32)
    sdec = np.zeros((max(H, 1), 2, K + 1), np.int8)
    stack = np.zeros((2 * 64 + 4, 4), np.int64)
    return _grid_run(steps, prm, tl, ts, tn, tx0, tv0, center, K, step, u, a, g, fv, jdec, sdec, stack, m)
