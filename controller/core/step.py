"""The pure step: step(params, state, t_s, value, quality) -> (state, commands, events, n_events).

No I/O, no clock (time is the image's t_s), no unseeded randomness: the same inputs give the same
outputs bit for bit, which is what lets `edge-ems replay --verify` reproduce a field recording.
Order inside: estimate -> strategy -> fallbacks (stale meter, lost BMS) -> interlocks.
"""
import numpy as np
from numba import njit

from controller.core.interlocks import clamp_battery_kw, genset_permitted
from controller.core.layout import (
    C_BATTERY_KW, C_CHARGE_LIMIT_KW, C_DISCHARGE_LIMIT_KW, C_GENSET_KW, C_GENSET_RUN, C_MODE, C_PV_LIMIT_KW,
    EV_BATTERY_LIMITED, EV_BATTERY_UNLIMITED, EV_BMS_BACK, EV_BMS_STALE, EV_GENSET_START, EV_GENSET_STOP,
    EV_GRID_BACK, EV_GRID_LOST, EV_METER_BACK, EV_METER_STALE, MAX_EVENTS, MODE_CONSERVATIVE, MODE_NORMAL,
    MODE_SAFE, N_COMMANDS, P_BMS_STALE_CYCLES, P_GEN_PMIN_KW, P_GEN_RATED_KW, P_GRID_EXPORT_MAX_KW,
    P_GRID_IMPORT_MAX_KW, P_GRID_MARGIN_KW, P_HAS_GENSET, P_METER_STALE_CYCLES, P_PERIOD_S, P_PV_RATED_KW,
    P_RESERVE_PCT, P_STRATEGY, S_BMS_STALE_N, S_CONSERVATIVE, S_CYCLES, S_GEN_OFF_S, S_GEN_ON, S_GEN_ON_S,
    S_GEN_STARTS, S_GRID_UP, S_LAST_BATTERY_KW, S_LAST_T_S, S_LIMITED, S_LOAD_KW, S_METER_STALE_N,
    S_SAFE_BMS, S_TRIPS, STRATEGY_RULE,
)
from controller.core.rule import rule_setpoints
from controller.points import (
    AUX_KW, BATTERY_KW, BMS_CCL_A, BMS_DCL_A, COOLING_KW, GENSET_KW, GRID_AVAILABLE, GRID_KW, IT_KW, PV_AVAILABLE_KW, PV_KW,
    Q_OK, SOC_PCT,
)

LIMIT_EPS_KW = 0.5  # a cut smaller than this is rounding, not a trip


@njit(cache=True)
def _emit(events, n, code, val):
    if n < MAX_EVENTS:
        events[n, 0] = code
        events[n, 1] = val
        return n + 1
    return n


@njit(cache=True)
def estimate_load_kw(value, quality, last_load_kw):
    """Site load from the balance of the meters; the compute telemetry when a meter is stale."""
    if quality[GRID_KW] == Q_OK and quality[PV_KW] == Q_OK and quality[BATTERY_KW] == Q_OK:
        gen_kw = value[GENSET_KW] if quality[GENSET_KW] == Q_OK else 0.0
        return max(0.0, value[GRID_KW] + value[PV_KW] + value[BATTERY_KW] + gen_kw), True
    if quality[IT_KW] == Q_OK and quality[COOLING_KW] == Q_OK:
        aux_kw = value[AUX_KW] if quality[AUX_KW] == Q_OK else 0.0
        return value[IT_KW] + value[COOLING_KW] + aux_kw, False
    return last_load_kw, False


@njit(cache=True)
def step(params, state, t_s, value, quality):
    st = state.copy()
    cmd = np.zeros(N_COMMANDS)
    events = np.zeros((MAX_EVENTS, 2))
    n = 0
    dt_s = t_s - state[S_LAST_T_S]
    if dt_s <= 0.0 or dt_s > 60.0:
        dt_s = params[P_PERIOD_S]
    st[S_LAST_T_S] = t_s
    st[S_CYCLES] = state[S_CYCLES] + 1.0

    # --- estimate -----------------------------------------------------------------------------------
    bms_fresh = quality[SOC_PCT] == Q_OK and quality[BMS_CCL_A] == Q_OK and quality[BMS_DCL_A] == Q_OK
    st[S_BMS_STALE_N] = 0.0 if bms_fresh else state[S_BMS_STALE_N] + 1.0
    bms_safe = st[S_BMS_STALE_N] >= params[P_BMS_STALE_CYCLES]
    if bms_safe and state[S_SAFE_BMS] < 0.5:
        n = _emit(events, n, EV_BMS_STALE, st[S_BMS_STALE_N])
    elif not bms_safe and state[S_SAFE_BMS] > 0.5:
        n = _emit(events, n, EV_BMS_BACK, 0.0)
    st[S_SAFE_BMS] = 1.0 if bms_safe else 0.0

    load_kw, meters_fresh = estimate_load_kw(value, quality, state[S_LOAD_KW])
    st[S_LOAD_KW] = load_kw
    st[S_METER_STALE_N] = 0.0 if meters_fresh else state[S_METER_STALE_N] + 1.0
    conservative = st[S_METER_STALE_N] >= params[P_METER_STALE_CYCLES]
    if conservative and state[S_CONSERVATIVE] < 0.5:
        n = _emit(events, n, EV_METER_STALE, st[S_METER_STALE_N])
    elif not conservative and state[S_CONSERVATIVE] > 0.5:
        n = _emit(events, n, EV_METER_BACK, 0.0)
    st[S_CONSERVATIVE] = 1.0 if conservative else 0.0

    if quality[GRID_AVAILABLE] == Q_OK:
        grid_up = value[GRID_AVAILABLE] > 0.5
    else:
        grid_up = quality[GRID_KW] == Q_OK and abs(value[GRID_KW]) > 0.1
    if grid_up and state[S_GRID_UP] < 0.5:
        n = _emit(events, n, EV_GRID_BACK, 0.0)
    elif not grid_up and state[S_GRID_UP] > 0.5:
        n = _emit(events, n, EV_GRID_LOST, 0.0)
    st[S_GRID_UP] = 1.0 if grid_up else 0.0
    cap_kw = max(0.0, params[P_GRID_IMPORT_MAX_KW] - params[P_GRID_MARGIN_KW]) if grid_up else 0.0
    export_max_kw = params[P_GRID_EXPORT_MAX_KW] if grid_up and not conservative else 0.0

    soc_pct = value[SOC_PCT]
    pv_kw = value[PV_KW] if quality[PV_KW] == Q_OK else 0.0
    if quality[PV_AVAILABLE_KW] == Q_OK:
        pv_kw = max(pv_kw, value[PV_AVAILABLE_KW])     # what PV could give if nobody curtailed it
    gen_kw = value[GENSET_KW] if quality[GENSET_KW] == Q_OK else 0.0
    gen_on = state[S_GEN_ON] > 0.5

    # --- strategy -----------------------------------------------------------------------------------
    battery_kw = 0.0
    want_gen = False
    gen_sp_kw = 0.0
    if params[P_STRATEGY] == STRATEGY_RULE:
        battery_kw, want_gen, gen_sp_kw = rule_setpoints(params, soc_pct, load_kw, pv_kw, gen_kw, cap_kw,
                                                         grid_up, gen_on)

    # --- fallbacks ----------------------------------------------------------------------------------
    if conservative:
        surplus_kw = max(0.0, pv_kw + gen_kw - load_kw)
        battery_kw = max(battery_kw, -surplus_kw)      # charge only from on-site surplus, not the grid
        if soc_pct <= params[P_RESERVE_PCT] and grid_up:
            battery_kw = min(battery_kw, 0.0)          # hold the reserve while blind
    if bms_safe and params[P_HAS_GENSET] > 0.5 and (not grid_up or load_kw - pv_kw > cap_kw):
        want_gen = True                                # the battery is out: the set carries the load
        gen_sp_kw = min(max(load_kw - pv_kw - cap_kw, params[P_GEN_PMIN_KW]), params[P_GEN_RATED_KW])

    # --- interlocks: the last word ------------------------------------------------------------------
    wanted_kw = battery_kw
    battery_kw, charge_lim_kw, discharge_lim_kw = clamp_battery_kw(
        params, value, quality, bms_safe, battery_kw, state[S_LAST_BATTERY_KW], dt_s)
    run = genset_permitted(params, value, quality, want_gen, gen_on, state[S_GEN_ON_S], state[S_GEN_OFF_S])
    if run and not gen_on:
        n = _emit(events, n, EV_GENSET_START, soc_pct)
        st[S_GEN_STARTS] = state[S_GEN_STARTS] + 1.0
        st[S_GEN_ON_S] = 0.0
    elif not run and gen_on:
        n = _emit(events, n, EV_GENSET_STOP, soc_pct)
        st[S_GEN_OFF_S] = 0.0
    elif run:
        st[S_GEN_ON_S] = state[S_GEN_ON_S] + dt_s
    else:
        st[S_GEN_OFF_S] = state[S_GEN_OFF_S] + dt_s
    st[S_GEN_ON] = 1.0 if run else 0.0
    if run and gen_sp_kw <= 0.0:
        gen_sp_kw = params[P_GEN_PMIN_KW]             # held on by min run time: lowest safe load
    if not run:
        gen_sp_kw = 0.0

    cut_kw = abs(wanted_kw - battery_kw)
    limited = cut_kw > LIMIT_EPS_KW and abs(battery_kw) < abs(wanted_kw)
    if limited and state[S_LIMITED] < 0.5:
        st[S_TRIPS] = state[S_TRIPS] + 1.0
        n = _emit(events, n, EV_BATTERY_LIMITED, cut_kw)
    elif not limited and state[S_LIMITED] > 0.5:
        n = _emit(events, n, EV_BATTERY_UNLIMITED, 0.0)
    st[S_LIMITED] = 1.0 if limited else 0.0
    st[S_LAST_BATTERY_KW] = battery_kw

    # PV limit: what load, battery charging and export can take; none without a strategy.
    pv_limit_kw = params[P_PV_RATED_KW]
    if params[P_STRATEGY] == STRATEGY_RULE or conservative:
        pv_limit_kw = min(pv_limit_kw, max(0.0, load_kw + charge_lim_kw + export_max_kw - gen_sp_kw))

    cmd[C_BATTERY_KW] = battery_kw
    cmd[C_GENSET_RUN] = 1.0 if run else 0.0
    cmd[C_GENSET_KW] = gen_sp_kw
    cmd[C_PV_LIMIT_KW] = pv_limit_kw
    cmd[C_MODE] = MODE_SAFE if bms_safe else (MODE_CONSERVATIVE if conservative else MODE_NORMAL)
    cmd[C_CHARGE_LIMIT_KW] = charge_lim_kw
    cmd[C_DISCHARGE_LIMIT_KW] = discharge_lim_kw
    return st, cmd, events, n
