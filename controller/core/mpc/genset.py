"""The genset commitment (mixed-integer: p_min, start cost): on/off patterns from several starts,
improved by local search and a window sweep, every candidate valued exactly over only the steps it changes
(stored cost-to-arrive and cost-to-go), within a fixed work budget."""
from __future__ import annotations

import numpy as np
from numba import njit

from controller.core.mpc.layout import (
    INF, MAX_CAND, MODE_OFF, MODE_ON, MODE_RELAX, P_CAP, P_DT, P_E0, P_EHI, P_ON0, P_ONCOST, P_PEAK, P_PMIN, P_SF, P_START,
    S_FLOOR)
from controller.core.mpc.dp import _backward, _fixed_costs, _forward, _plan_at, _push_forward, _tables
from controller.core.mpc.commit import tube_pattern
from controller.core.mpc.window import _min_sum, _stores, _window_buffers, _window_value


LAGRANGE_ROUNDS = 4
GRID_LEVELS = (128,)  # stored-energy levels of the tube DP starts (commit.py), spanning the whole band
GRID_PASS_LEVELS = 8  # the gridded DP costs about one DP pass per this many levels (measured)
POLISH_STARTS = 2     # starts improved by local search, best first
TUBE_LEVELS = 64      # levels of the tube DP around the incumbent's stored-energy path (commit.tube_pattern)
TUBE_WIDTHS = (64, 256, 1024)  # its level spacing: ehi / each (the tube spans +-ehi/2, /8, /32)
TUBE_ROUNDS = 4       # re-centred tube passes per width while they improve
SWEEP_WINDOW = 96    # longest window of the window sweep (steps; longer: drop-run / fill-gap moves)


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
    wl, ws, ml, ms = _window_buffers(H)
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
    wl, ws, ml, ms = _window_buffers(H)
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
    counting (perf put ~30 % of the genset search in numba's atomic refcounts on the inlined helpers'
    arguments). Returns (best value, a, b, window mode, work); a < 0: no window improves."""
    tab_n = tabs[2]
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
                if tab_n[s, t] < 0:
                    break
                nc, cx0, cv0, ok = _push_forward(tabs, s, t, wl, ws, nc, cx0, cv0, rl, rs, ml, ms,
                                                 steps[S_FLOOR, t], sf_slope, ehi)
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
def _tube_descent(steps, prm, tabs, pcap, extra, m, v, cap, work, out):
    """Move the pattern m (value v) by tube DPs around its exact plan's stored-energy path, coarse to
    fine, re-centred after every improvement (commit.tube_pattern: never worse than m, any number of
    runs moved at once). Returns (v, work, improved)."""
    H = steps.shape[1]
    center = np.empty(H + 1)
    m2 = np.empty(H, np.int64)
    improved = False
    for wdt in TUBE_WIDTHS:
        for _ in range(TUBE_ROUNDS):
            if work >= cap:
                return v, work, improved
            res = _backward(steps, prm, m, True, tabs)
            if res[0] == INF:
                return v, work, improved
            _forward(steps, prm, m, pcap, res[1], res[2], res[3], res[4], res[5], res[6], res[7], out)
            for t in range(H + 1):
                center[t] = out[7, t] * prm[P_CAP] / 100.0
            center[0] = prm[P_E0]
            tube_pattern(steps, prm, tabs, center, TUBE_LEVELS, prm[P_EHI] / wdt, m2)
            v2 = _pattern_objective(steps, prm, m2, tabs, extra)
            work += (3 + TUBE_LEVELS // GRID_PASS_LEVELS) * H
            if not v2 < v - 1e-9 * (1.0 + abs(v)):
                break
            m[:] = m2
            v = v2
            improved = True
    return v, work, improved


@njit(cache=True, error_model="numpy")
def _genset_patterns(steps, prm, pcap, q_relax, dual, budget, init):
    """_genset_search with the default starts (GRID_LEVELS) and polish (POLISH_STARTS)."""
    return _genset_search(steps, prm, pcap, q_relax, dual, budget, init, np.array(GRID_LEVELS), POLISH_STARTS)


@njit(cache=True, error_model="numpy")
def _genset_search(steps, prm, pcap, q_relax, dual, budget, init, levels, polish):
    """Bounded search over on/off patterns at peak level pcap. Starts: the gridded commitment DP at
    each number of levels (commit.py: exact in on/off, p_min, starts and on0), the pattern `init` (if
    init[0] >= 0; the previous plan's), all-off, all-on, the relaxation rounded at four thresholds and
    unit-commitment rounds (_lagrange_pattern at the plan's dual, then at the dual of each re-plan).
    The best start gets local search and the window sweep (_improve); the next `polish` - 1 distinct
    ones local search, and the sweep only if they overtake it (multi-start: one run alone stalls in a
    local optimum that a drop-one-run-and-grow-another pair of moves would leave). budget is in DP-pass
    equivalents (budget * H step merges), the gridded DP counted at its measured cost.
    Returns (best pattern, its objective)."""
    H = steps.shape[1]
    tabs = _tables(steps, prm, np.array([MODE_OFF, MODE_ON]), pcap)
    extra = prm[P_PEAK] * pcap
    ns = 3 + 4 + LAGRANGE_ROUNDS + 2 * levels.shape[0]
    starts = np.zeros((ns, H), np.int64)
    vals = np.full(ns, INF)
    n = 0
    used = 0
    out = np.zeros((10, H + 1))
    center = np.empty(H + 1)
    relax = np.full(H, MODE_RELAX, np.int64)
    off = np.zeros(H, np.int64)
    for c in range(2):  # tube DPs spanning the whole band, around the all-off plan's and the relaxed plan's paths
        if c == 0:
            res = _backward(steps, prm, off, True, tabs)
            if res[0] == INF:
                continue
            _forward(steps, prm, off, pcap, res[1], res[2], res[3], res[4], res[5], res[6], res[7], out)
        else:
            _plan_at(steps, prm, relax, pcap, out)
        for t in range(H + 1):
            center[t] = out[7, t] * prm[P_CAP] / 100.0
        center[0] = prm[P_E0]
        for K in levels:  # exact in the on/off state and start costs, gridded in stored energy
            tube_pattern(steps, prm, tabs, center, K, 2.0 * prm[P_EHI] / K, starts[n])
            vals[n] = _pattern_objective(steps, prm, starts[n], tabs, extra)
            used += 3 + K // GRID_PASS_LEVELS
            n += 1
    if H > 0 and init[0] >= 0:
        starts[n] = init
        vals[n] = _pattern_objective(steps, prm, starts[n], tabs, extra)
        n += 1
    vals[n] = _pattern_objective(steps, prm, starts[n], tabs, extra)  # all off
    n += 1
    for t in range(H):  # all on where a running genset is feasible
        starts[n, t] = MODE_ON if tabs[2][1, t] >= 0 else MODE_OFF
    vals[n] = _pattern_objective(steps, prm, starts[n], tabs, extra)
    n += 1
    for frac in (1e-6, 0.25, 0.5, 1.0):
        for t in range(H):
            if q_relax[t] > 1e-6 and q_relax[t] >= frac * prm[P_PMIN] and tabs[2][1, t] >= 0:
                starts[n, t] = MODE_ON
        vals[n] = _pattern_objective(steps, prm, starts[n], tabs, extra)
        n += 1
    used += n
    # unit-commitment rounds: price stored energy at the current plan's dual, re-commit, re-plan
    d = dual.copy()
    for _ in range(LAGRANGE_ROUNDS):
        m = starts[n]
        _lagrange_pattern(steps, prm, tabs, d, m)
        res = _backward(steps, prm, m, True, tabs)
        used += 2
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
    tried = 0
    for i in range(n):
        k = order[i]
        if vals[k] == INF or work >= cap or tried >= polish:
            break
        dup = False
        for j in range(i):
            if vals[order[j]] < INF and np.array_equal(starts[order[j]], starts[k]):
                dup = True
                break
        if dup:
            continue
        tried += 1
        m = starts[k].copy()
        if i == 0:  # the most promising start gets the deep moves (tube DP, window sweep) first
            v, work, _ = _tube_descent(steps, prm, tabs, pcap, extra, m, vals[k], cap, work, out)
            while True:
                v2, work = _improve(steps, prm, tabs, extra, m, v, cap, work)
                if not v2 < v - 1e-9 * (1.0 + abs(v)):
                    break
                v, work, again = _tube_descent(steps, prm, tabs, pcap, extra, m, v2, cap, work, out)
                if not again:
                    break
        else:  # the others: local search, and the deep move only if they overtake the best
            v, work = _local_search(steps, prm, tabs, extra, m, vals[k], cap, work,
                                    cap - work < 3 * H * min(H, SWEEP_WINDOW) // 2)
            if v < best_v - 1e-9 * (1.0 + abs(best_v)) and work < cap:
                v, work = _improve(steps, prm, tabs, extra, m, v, cap, work)
        if i == 0 or v < best_v - 1e-9 * (1.0 + abs(best_v)):
            best, best_v = m, v
    return best, best_v
