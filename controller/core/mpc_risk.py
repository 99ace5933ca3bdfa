"""The risk-aware warning as the planner's two branches (issue 16, docs/risk.md): which event, where the
tree branches, with what weight, and the images each branch's instance is built from.

Why images: mpc_strategy.build_weighted already turns an announced outage into the import cap 0, the
reserve released where the grid is down, the genset planned where the grid is short and the terminal
value of stored energy; the "trips" branch is that same instance with the event announced as an
outage, so both branches are built by the one function and can differ only where the event is.
Pure numba on the image, like the rest of the step: replay recomputes the same tree.
"""
import math

from numba import njit

from controller.points import (OUTAGE_END_S, OUTAGE_GRID_RISK, OUTAGE_START_S, Q_OK, WX_END_S, WX_GRID_RISK,
                               WX_START_S)

RISK_NONE, RISK_WEATHER, RISK_OUTAGE = 0, 1, 2


@njit(cache=True)
def _outage(value, quality):
    if quality[OUTAGE_START_S] == Q_OK and quality[OUTAGE_END_S] == Q_OK \
            and value[OUTAGE_END_S] > value[OUTAGE_START_S]:
        return value[OUTAGE_START_S], value[OUTAGE_END_S]
    return 0.0, 0.0


@njit(cache=True)
def risk_event(value, quality, t_s):
    """The event the feeder may trip in: (source, start_s, end_s, p). A weather warning with grid_risk > 0
    (unless a certain outage is announced: that one is planned as today), else an announced outage whose
    grid_risk is in (0, 1). (RISK_NONE, 0, 0, 0) when there is none or it is over."""
    o_s, o_e = _outage(value, quality)
    o_risk = value[OUTAGE_GRID_RISK] if quality[OUTAGE_GRID_RISK] == Q_OK else 1.0
    certain = o_e > t_s and o_risk >= 1.0
    if not certain and quality[WX_GRID_RISK] == Q_OK and value[WX_GRID_RISK] > 0.0 \
            and quality[WX_START_S] == Q_OK and quality[WX_END_S] == Q_OK \
            and value[WX_END_S] > value[WX_START_S] and t_s < value[WX_END_S]:
        return RISK_WEATHER, value[WX_START_S], value[WX_END_S], min(1.0, value[WX_GRID_RISK])
    if o_e > t_s and 0.0 < o_risk < 1.0:
        return RISK_OUTAGE, o_s, o_e, o_risk
    return RISK_NONE, 0.0, 0.0, 0.0


@njit(cache=True)
def branch_point(t_s, ev_s, ev_e, p, H, step_s):
    """(k0, p_now): the step the tree branches at (the step holding the event's start; at least 1: the
    step in force is decided now, whatever happens) and the trip weight. Once the event has started
    and the grid still holds, the trip is still possible in what remains of it: p conditioned on no
    trip so far, the trip's instant uniform over the event. k0 = 0: no tree (beyond the horizon)."""
    k0 = int(math.floor((ev_s - t_s) / step_s))
    if k0 >= H:
        return 0, 0.0
    k0 = max(1, k0)
    if k0 >= H:
        return 0, 0.0
    if t_s > ev_s:
        f = (ev_e - t_s) / (ev_e - ev_s)
        p = p * f / max(1e-12, 1.0 - p * (1.0 - f))
    return k0, p


@njit(cache=True)
def with_outage(value, quality, o_s, o_e):
    """Copies of the image with the announced outage set to [o_s, o_e) (0 / 0: nothing announced)."""
    v, q = value.copy(), quality.copy()
    v[OUTAGE_START_S], v[OUTAGE_END_S] = o_s, o_e
    q[OUTAGE_START_S] = Q_OK
    q[OUTAGE_END_S] = Q_OK
    return v, q


@njit(cache=True)
def branch_images(value, quality, src, ev_s, ev_e, t_s, k0, step_s):
    """(v_hold, q_hold, v_trip, q_trip): the images of the two branches. Weather: holds = the image, trips
    = the event as an announced outage from the branch step on. Outage: holds = no outage, trips = it."""
    trip_s = max(ev_s, t_s + k0 * step_s)
    v_t, q_t = with_outage(value, quality, trip_s, ev_e)
    if src == RISK_OUTAGE:
        v_h, q_h = with_outage(value, quality, 0.0, 0.0)
        return v_h, q_h, v_t, q_t
    return value, quality, v_t, q_t


@njit(cache=True)
def down_through_event(value, quality, t_s, grid_up):
    """The feeder tripped while a risk event stands: it is assumed down to the event's end (not only for
    outage_assume_s), the outage the trip branch planned for. Returns the image to plan with."""
    if grid_up:
        return value, quality
    src, ev_s, ev_e, p = risk_event(value, quality, t_s)
    o_s, o_e = _outage(value, quality)
    if src == RISK_NONE or ev_s > t_s or (o_s <= t_s < o_e and o_e >= ev_e):
        return value, quality
    return with_outage(value, quality, t_s, ev_e)

