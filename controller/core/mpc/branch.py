"""Risk-aware planning (issue 16, docs/risk.md): two branches after a warned event, exact in the DP.

A warning with `grid_risk` p says the feeder trips during the event with probability p. The plan is a
two-stage scenario tree: the steps before the event (0..k0-1) are decided once, the event and what
follows are planned twice, as "grid holds" (the instance as forecast) and "grid trips" (import cap 0
over the event), and the objective is cost(prefix) + (1-p) cost(holds) + p cost(trips). Why it is
exact in the DP: both branches' value functions at the event's start, V_hold,k0(E) and V_trip,k0(E),
are convex piecewise-linear in the stored energy E, so p V_trip + (1-p) V_hold is convex PL too (the
sum of two such functions: their breakpoints merged, slopes added with the weights); the backward pass
goes on from it over the shared steps exactly as over any other value function. The forward pass reads
the shared prefix off the mixed merges and each branch's tail off its own: the plan in force follows
the prefix; once the event starts, the next plan sees what the grid actually does.

dp.py's primitives are reused as they are (stage tables, slope merge, floor penalty, clip, forward
pass); only the pass over a span of steps from a given value function is new here (dp.py's pass always
runs the whole horizon from the terminal value). A genset is handled soundly but not optimally: the
tree is valued exactly for fixed on/off patterns (one per branch, equal on the prefix), and the caller
proposes them (see mpc_strategy: each branch's own best pattern, the prefix taken from either);
`branch_relaxed` gives the tree's convex relaxation, a certified lower bound.

The peak term: one peak level P caps the import in both branches and is charged once (each branch's
objective is then re-evaluated at its own peak): an upper bound of the tree with a peak per branch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from controller.core.mpc.dp import (_add_floor_penalty, _clip_at, _fixed_costs, _forward, _merge_flags,
                                    _pl_value, _plan_objective, _tables_for)
from controller.core.mpc import plan_kernel
from controller.core.mpc.layout import (INF, MAX_CAND, MODE_OFF, MODE_ON, MODE_RELAX, P_DT, P_E0, P_EHI, P_HASD,
                                        P_ON0, P_ONCOST, P_PEAK, P_PMAX, P_PMIN, P_QCOST, P_SF, P_START, P_TV,
                                        S_FLOOR, S_GMAX, TINY)
from controller.core.plan_instance import PlanArrays, PlanInstance

__all__ = ["branch_plan", "branch_relaxed", "tree_kernel", "check_branches", "solve_tree", "TreeResult"]


@njit(cache=True, error_model="numpy", _nrt=False)
def _span(steps, prm, sel, tabs, t_hi, t_lo, bl, bs, cur, off, nw, wx0, wv0, mk, tl, ts, sl, ss, sk, used,
          start, cnt, x0s, wx0s):
    """The backward pass over steps t_hi-1 .. t_lo from the value function W (in bl[cur, off:off+nw],
    starting at wx0 with value wv0): dp._backward_run's loop, stored the same way (the merges per step for
    dp._forward). Returns (cur, off, nw, wx0, wv0, used, ok): V_{t_lo} clipped to the band [0, ehi]."""
    tab_l, tab_s, tab_n, tab_x0, tab_v0 = tabs
    ehi = prm[P_EHI]
    sf_slope = -prm[P_DT] * prm[P_SF]
    scap = sl.shape[0]
    for t in range(t_hi - 1, t_lo - 1, -1):
        wl = bl[cur, off:]
        ws = bs[cur, off:]
        nw, wv0 = _add_floor_penalty(wl, ws, nw, wx0, wv0, steps[S_FLOOR, t], sf_slope)
        m_t = sel[t]
        nt, tx0, tv0 = tab_n[m_t, t], tab_x0[m_t, t], tab_v0[m_t, t]
        if nt < 0:
            return cur, 0, 0, 0.0, INF, used, False
        for q in range(nt):
            tl[q] = tab_l[m_t, t, q]
            ts[q] = tab_s[m_t, t, q]
        cur = 1 - cur
        ml = bl[cur]
        ms = bs[cur]
        n = _merge_flags(wl, ws, nw, tl, ts, nt, ml, ms, mk, True)
        mx0, mv0 = wx0 + tx0, wv0 + tv0
        if used + n > scap:
            return cur, 0, 0, 0.0, INF, used + n, False
        for q in range(n):
            sl[used + q] = ml[q]
            ss[used + q] = ms[q]
            sk[used + q] = mk[q]
        start[t] = used
        cnt[t] = n
        used += n
        x0s[t] = mx0
        wx0s[t] = wx0
        off, nw, wx0, wv0, ok = _clip_at(ml, ms, n, mx0, mv0, ehi)
        if not ok:
            return cur, 0, 0, 0.0, INF, used, False
    return cur, off, nw, wx0, wv0, used, True


@njit(cache=True, error_model="numpy", _nrt=False)
def _pl_at(l, s, n, x0, v0, x):
    """(value at x, index of the segment holding x from the right, what is left of it) of a convex PL
    function, x inside its domain."""
    v, pos = v0, x0
    for k in range(n):
        if x <= pos + l[k]:
            take = x - pos
            return v + s[k] * take, k, l[k] - take
        v += s[k] * l[k]
        pos += l[k]
    return v, n, 0.0


@njit(cache=True, error_model="numpy", _nrt=False)
def _mix(al, a_s, na, ax0, av0, wa, bl, bs, nb, bx0, bv0, wb, ol, os_):
    """wa*A + wb*B of two convex PL functions on the intersection of their domains (breakpoints merged,
    slopes weighted): convex PL. A weight of 0 drops that function (its domain too). Writes the segments
    to (ol, os_). Returns (n, x0, v0, feasible)."""
    if wb <= 0.0:
        for k in range(na):
            ol[k] = al[k]
            os_[k] = wa * a_s[k]
        return na, ax0, wa * av0, True
    if wa <= 0.0:
        for k in range(nb):
            ol[k] = bl[k]
            os_[k] = wb * bs[k]
        return nb, bx0, wb * bv0, True
    a_end, b_end = ax0, bx0
    for k in range(na):
        a_end += al[k]
    for k in range(nb):
        b_end += bl[k]
    lo, hi = max(ax0, bx0), min(a_end, b_end)
    if lo > hi + 1e-9:
        return 0, 0.0, INF, False
    va, i, ra = _pl_at(al, a_s, na, ax0, av0, lo)
    vb, j, rb = _pl_at(bl, bs, nb, bx0, bv0, lo)
    n = 0
    pos = lo
    while pos < hi - TINY and i < na and j < nb:
        take = min(ra, rb, hi - pos)
        if take > TINY:
            ol[n] = take
            os_[n] = wa * a_s[i] + wb * bs[j]
            n += 1
        pos += take
        ra -= take
        rb -= take
        if ra <= TINY:
            i += 1
            if i < na:
                ra = al[i]
        if rb <= TINY:
            j += 1
            if j < nb:
                rb = bl[j]
    return n, lo, wa * va + wb * vb, True


@njit(cache=True, error_model="numpy")
def _tree(steps_h, steps_t, prm, tv_h, tv_t, k0, p, tabs_h, sel_h, tabs_t, sel_t, want_store):
    """The tree's backward pass: each branch from the horizon's end to k0, mixed, then the shared steps.
    Returns (value at E0 without fixed costs, store, per-branch index arrays)."""
    H = steps_h.shape[1]
    wcap = 2 * H * (MAX_CAND + 2) + 16 + 2 * MAX_CAND
    mk = np.empty(wcap, np.int8)
    tl = np.empty(MAX_CAND)
    ts = np.empty(MAX_CAND)
    ehi = prm[P_EHI]
    start_h, cnt_h, x0s_h, wx0s_h = np.zeros(H + 1, np.int64), np.zeros(H, np.int64), np.zeros(H), np.zeros(H)
    start_t, cnt_t, x0s_t, wx0s_t = np.zeros(H + 1, np.int64), np.zeros(H, np.int64), np.zeros(H), np.zeros(H)
    scap = (2 * H * 128 + 64) if want_store else 1
    while True:
        sl, ss, sk = np.empty(scap), np.empty(scap), np.empty(scap, np.int8)
        used = 0
        ok = True
        # the two tails, each from its own terminal value
        wl_out = np.empty((2, wcap))
        ws_out = np.empty((2, wcap))
        wn = np.zeros(2, np.int64)
        wx = np.zeros(2)
        wv = np.zeros(2)
        for b in range(2):
            bl = np.empty((2, wcap))
            bs = np.empty((2, wcap))
            nw = 0
            if ehi > 0.0:
                bl[0, 0], bs[0, 0], nw = ehi, -(tv_h if b == 0 else tv_t), 1
            if b == 0:
                cur, off, nw, x0, v0, used, ok = _span(steps_h, prm, sel_h, tabs_h, H, k0, bl, bs, 0, 0, nw,
                                                       0.0, 0.0, mk, tl, ts, sl, ss, sk, used, start_h, cnt_h,
                                                       x0s_h, wx0s_h)
            else:
                cur, off, nw, x0, v0, used, ok = _span(steps_t, prm, sel_t, tabs_t, H, k0, bl, bs, 0, 0, nw,
                                                       0.0, 0.0, mk, tl, ts, sl, ss, sk, used, start_t, cnt_t,
                                                       x0s_t, wx0s_t)
            if not ok:
                break
            for q in range(nw):
                wl_out[b, q] = bl[cur, off + q]
                ws_out[b, q] = bs[cur, off + q]
            wn[b], wx[b], wv[b] = nw, x0, v0
        v = INF
        if ok:
            bl = np.empty((2, wcap))
            bs = np.empty((2, wcap))
            n, x0, v0, ok = _mix(wl_out[0], ws_out[0], wn[0], wx[0], wv[0], 1.0 - p,
                                 wl_out[1], ws_out[1], wn[1], wx[1], wv[1], p, bl[0], bs[0])
            if ok:  # the shared steps (one store, both branches' index arrays point at it)
                cur, off, n, x0, v0, used, ok = _span(steps_h, prm, sel_h, tabs_h, k0, 0, bl, bs, 0, 0, n,
                                                      x0, v0, mk, tl, ts, sl, ss, sk, used, start_h, cnt_h,
                                                      x0s_h, wx0s_h)
            if ok:
                v = _pl_value(bl[cur, off:], bs[cur, off:], n, x0, v0, prm[P_E0])
        if ok or used <= scap:
            for t in range(k0):
                start_t[t], cnt_t[t], x0s_t[t], wx0s_t[t] = start_h[t], cnt_h[t], x0s_h[t], wx0s_h[t]
            return v, sl, ss, sk, start_h, cnt_h, x0s_h, wx0s_h, start_t, cnt_t, x0s_t, wx0s_t
        scap = max(2 * scap, 2 * used)  # the store ran out of room: again, with more


@njit(cache=True, error_model="numpy")
def branch_plan(steps_h, steps_t, prm, tv_h, tv_t, k0, p, mode_h, mode_t, pcap, out_h, out_t):
    """The two-branch plan for fixed genset patterns (mode_h, mode_t equal before k0) at import level
    pcap. steps_h / steps_t: the kernel's step rows of each branch (equal before k0); prm shared but
    the terminal value per branch (tv_h, tv_t replace prm[P_TV]); 1 <= k0 < H; p the trip weight.
    Writes each branch's plan (plan_kernel's rows) to out_h / out_t; their first k0 steps are the same.
    Returns (tree DP value incl. fixed costs and the peak at pcap, tree objective: the contract's
    objective of each branch's plan, weighted)."""
    tabs_h, sel_h = _tables_for(steps_h, prm, mode_h, pcap)
    tabs_t, sel_t = _tables_for(steps_t, prm, mode_t, pcap)
    r = _tree(steps_h, steps_t, prm, tv_h, tv_t, k0, p, tabs_h, sel_h, tabs_t, sel_t, True)
    if not r[0] < INF:
        return INF, INF
    pr = prm.copy()
    pr[P_TV] = tv_h
    _forward(steps_h, pr, mode_h, pcap, r[1], r[2], r[3], r[4], r[5], r[6], r[7], out_h)
    obj_h = _plan_objective(steps_h, pr, out_h)[0]
    pr[P_TV] = tv_t
    _forward(steps_t, pr, mode_t, pcap, r[1], r[2], r[3], r[8], r[9], r[10], r[11], out_t)
    obj_t = _plan_objective(steps_t, pr, out_t)[0]
    fixed = (1.0 - p) * _fixed_costs(mode_h, prm) + p * _fixed_costs(mode_t, prm)
    return r[0] + fixed + prm[P_PEAK] * pcap, (1.0 - p) * obj_h + p * obj_t


@njit(cache=True, error_model="numpy")
def branch_relaxed(steps_h, steps_t, prm, tv_h, tv_t, k0, p, pcap):
    """The tree's convex relaxation at pcap (genset on in [0, 1], no start cost): a lower bound of every
    tree plan whose import stays under pcap (the peak charged at pcap). Exact without a genset."""
    H = steps_h.shape[1]
    mode = np.full(H, MODE_RELAX if prm[P_HASD] > 0.5 else MODE_OFF, np.int64)
    tabs_h, sel_h = _tables_for(steps_h, prm, mode, pcap)
    tabs_t, sel_t = _tables_for(steps_t, prm, mode, pcap)
    v = _tree(steps_h, steps_t, prm, tv_h, tv_t, k0, p, tabs_h, sel_h, tabs_t, sel_t, False)[0]
    return v + prm[P_PEAK] * pcap


@njit(cache=True, error_model="numpy")
def _max_row(a, H):
    m = 0.0
    for t in range(H):
        m = max(m, a[t])
    return m


@njit(cache=True, error_model="numpy")
def tree_kernel(steps_h, steps_t, prm_h, prm_t, k0, p, peak_evals, genset_evals):
    """The risk-aware plan: the two-branch tree for one event (branch at step k0, trip weight p).

    prm_h / prm_t: each branch's instance scalars as built alone; they may differ only in the terminal
    value (P_TV) and in whether the genset is planned (the genset's parameters are taken from the branch
    that has it). Without a genset and a peak charge this is exact: one tree pass. Otherwise the
    candidates are each branch's own plan (plan_kernel: genset commitment, peak level) with the prefix's
    pattern taken from either branch, at the hold plan's peak level, the larger of the two, or none; the
    best tree objective wins (a feasible tree plan, not a search over tree patterns: the gap is the
    relaxation's, reported as lower_bound when there is no peak charge).
    Returns (out_h, out_t, objective, lower_bound)."""
    H = steps_h.shape[1]
    prm = prm_h.copy()
    if prm_t[P_HASD] > 0.5 and prm_h[P_HASD] < 0.5:
        for i in (P_PMIN, P_PMAX, P_QCOST, P_ONCOST, P_START, P_ON0, P_HASD):
            prm[i] = prm_t[i]
    tv_h, tv_t = prm_h[P_TV], prm_t[P_TV]
    p_hi = max(_max_row(steps_h[S_GMAX], H), _max_row(steps_t[S_GMAX], H))
    has_d = prm[P_HASD] > 0.5
    has_peak = prm[P_PEAK] > 0.0
    lb = -INF
    if not has_peak:
        lb = branch_relaxed(steps_h, steps_t, prm, tv_h, tv_t, k0, p, p_hi)
    off = np.zeros(H, np.int64)
    if not has_d and not has_peak:
        out_h, out_t = np.zeros((10, H + 1)), np.zeros((10, H + 1))
        v, obj = branch_plan(steps_h, steps_t, prm, tv_h, tv_t, k0, p, off, off, p_hi, out_h, out_t)
        return out_h, out_t, obj, min(lb, obj)
    pr = prm.copy()
    pr[P_TV] = tv_h
    oh = plan_kernel(steps_h, pr, peak_evals, genset_evals)[0]
    pr[P_TV] = tv_t
    ot = plan_kernel(steps_t, pr, peak_evals, genset_evals)[0]
    mh, mt = off.copy(), off.copy()
    if has_d:
        for t in range(H):
            mh[t] = MODE_ON if oh[8, t] > 0.5 else MODE_OFF
            mt[t] = MODE_ON if ot[8, t] > 0.5 else MODE_OFF
    caps = np.array([p_hi, p_hi, p_hi])
    n_caps = 1
    if has_peak:
        ph, pt = _max_row(oh[0], H), _max_row(ot[0], H)
        caps[0], caps[1], n_caps = ph, max(ph, pt), 3
    best = INF
    best_h, best_t = np.zeros((10, H + 1)), np.zeros((10, H + 1))
    out_h, out_t = np.zeros((10, H + 1)), np.zeros((10, H + 1))
    for c in range(n_caps):
        for pre in range(2 if has_d else 1):
            a_h, a_t = mh.copy(), mt.copy()
            for t in range(k0):
                a_h[t] = mh[t] if pre == 0 else mt[t]
                a_t[t] = a_h[t]
            v, obj = branch_plan(steps_h, steps_t, prm, tv_h, tv_t, k0, p, a_h, a_t, caps[c], out_h, out_t)
            if obj < best:
                best = obj
                best_h[:, :] = out_h
                best_t[:, :] = out_t
    return best_h, best_t, best, min(lb, best)


def check_branches(steps_h, steps_t, k0: int, p: float) -> None:
    """The tree's preconditions, for Python callers (the kernel trusts its arrays)."""
    H = steps_h.shape[1]
    if steps_t.shape != steps_h.shape:
        raise ValueError(f"branches: steps of shape {steps_h.shape} and {steps_t.shape}")
    if not 1 <= k0 < H:
        raise ValueError(f"branches: event step k0 must be in 1..{H - 1}, got {k0}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"branches: grid_risk must be in 0..1, got {p}")
    if not np.array_equal(steps_h[:, :k0], steps_t[:, :k0]):
        raise ValueError("branches: the two branches differ before the event step")


# ---------------------------------------------------------------- Python entry (tests, bench, tools)
@dataclass
class TreeResult:
    hold: PlanArrays         # the plan if the grid holds (its first k0 steps are the shared prefix)
    trip: PlanArrays         # the plan if it trips over the event
    objective: float         # cost(prefix) + (1-p) cost(hold tail) + p cost(trip tail), the contract formula
    lower_bound: float       # the tree's relaxation (-inf with a peak charge)
    solve_ms: float


def _arrays(out, H, obj) -> PlanArrays:
    return PlanArrays(grid_kw=out[0, :H].copy(), export_kw=out[1, :H].copy(), charge_kw=out[2, :H].copy(),
                      discharge_kw=out[3, :H].copy(), diesel_kw=out[4, :H].copy(), curtail_kw=out[5, :H].copy(),
                      unserved_kw=out[6, :H].copy(), soc_pct=out[7, :].copy(), diesel_on=out[8, :H] > 0.5,
                      objective=float(obj))


def solve_tree(inst_hold: PlanInstance, inst_trip: PlanInstance, k0: int, p: float,
               peak_evals: int = 24, genset_evals: int = 1500) -> TreeResult:
    """Plan the two-branch tree of two instances that agree before step k0 (cost objective)."""
    from controller.core.mpc import pack_instance
    t0 = time.perf_counter()
    sh, ph = pack_instance(inst_hold)
    st, pt = pack_instance(inst_trip)
    check_branches(sh, st, k0, p)
    out_h, out_t, obj, lb = tree_kernel(sh, st, ph, pt, int(k0), float(p), peak_evals, genset_evals)
    ms = (time.perf_counter() - t0) * 1e3
    H = inst_hold.horizon
    return TreeResult(_arrays(out_h, H, _plan_objective(sh, ph, out_h)[0]),
                      _arrays(out_t, H, _plan_objective(st, pt, out_t)[0]), float(obj), float(lb), ms)
