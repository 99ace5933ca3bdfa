"""The peak term: h(P) = Phi(P) + peak_price * P is convex and piecewise linear in the peak level P, and
minimised by chord cutting planes, one DP pass per point, with a certified lower bound."""
from __future__ import annotations

import numpy as np
from numba import njit

from controller.core.mpc.layout import INF, P_PEAK, P_PEAK0
from controller.core.mpc.dp import _fixed_costs, _plan_at, _value


PEAK_TOL = 1e-6      # the peak search stops when its certified bound is this close (relative)
PEAK_MARGIN = 0.02   # a new peak point stays this fraction of its interval off the ends
PEAK_START = (0.5, 0.75)  # first peak levels tried, as fractions of [billed peak, unconstrained peak]


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
