"""The pure step: step(params, state, t_s, value, quality) -> (state, commands, events, n_events).

No I/O, no clock (time is the image's t_s), no unseeded randomness: the same inputs give the same
outputs bit for bit, which is what lets `edge-ems replay --verify` reproduce a field recording.
Order inside: estimate -> strategy (or the operator's manual request) -> fallbacks (stale meter, lost
BMS, a loop that cannot keep its period, force charge) -> interlocks -> alarms.
"""
import numpy as np
from numba import njit

from controller.core.alarms import alarm_conditions, update_alarms
from controller.core.events import emit
from controller.core.interlocks import battery_limits, clamp_battery_kw, genset_permitted, grid_limits_kw
from controller.core.layout import (
    A_GENSET_START_FAILED, C_ALARMS_ACTIVE, C_ALARMS_UNACKED, C_BATTERY_KW, C_CHARGE_LIMIT_KW, C_CHARGE_REASON,
    C_DISCHARGE_LIMIT_KW, C_DISCHARGE_REASON, C_GENSET_KW, C_GENSET_RUN, C_MODE, C_PV_LIMIT_KW,
    EV_BATTERY_LIMITED, EV_BATTERY_UNLIMITED, EV_BMS_BACK, EV_BMS_STALE, EV_FORCE_CHARGE_OFF, EV_FORCE_CHARGE_ON,
    EV_GENSET_START, EV_GENSET_START_FAILED, EV_GENSET_STOP, EV_GRID_BACK, EV_GRID_LOST, EV_HOLD_OFF, EV_HOLD_ON,
    EV_LOOP_SAFE_OFF, EV_LOOP_SAFE_ON, EV_METER_BACK, EV_METER_STALE, EV_MODE_CHANGED, GEN_START_RING,
    MAX_EVENTS, MODE_CONSERVATIVE, MODE_FORCE_CHARGE, MODE_MANUAL, MODE_NORMAL, MODE_SAFE, MODE_STANDBY,
    N_COMMANDS, OP_MANUAL, OP_STANDBY, P_BMS_STALE_CYCLES, P_FORCE_CHARGE_FROM_GRID, P_FORCE_CHARGE_KW,
    P_GEN_PMIN_KW, P_GEN_RATED_KW, P_GEN_START_TIMEOUT_S, P_GRID_EXPORT_MAX_KW, P_GRID_IMPORT_MAX_KW,
    P_GRID_MARGIN_KW, P_HAS_GENSET, P_LOOP_SAFE_CYCLES, P_METER_STALE_CYCLES, P_PERIOD_S, P_PV_RATED_KW,
    P_RESERVE_PCT, P_SOC_MAX_PCT, P_SOC_MIN_PCT, P_STRATEGY, S_BMS_STALE_N, S_CONSERVATIVE, S_CYCLES,
    S_GEN_FAILED, S_GEN_OFF_S, S_GEN_ON, S_GEN_ON_S, S_GEN_START_TIMES, S_GEN_START_WAIT_S, S_GEN_STARTS,
    S_GRID_UP, S_LAST_BATTERY_KW, S_LAST_MODE, S_LAST_T_S, S_LIMITED, S_LOAD_KW, S_LOOP_SAFE, S_METER_STALE_N,
    R_GRID_EXPORT_LIMIT, R_GRID_IMPORT_LIMIT, S_SAFE_BMS, S_TRIPS, STRATEGY_RULE, S_FORCE_CHARGE, S_ALARM_ACTIVE,
    S_ALARM_UNACKED, STRATEGY_MPC, S_BOOT_READY, EV_STARTUP_HOLD, EV_STARTUP_READY, EV_BLACK_START,
    R_SAFE_STATE,
)
from controller.core.mpc_strategy import mpc_learn, mpc_setpoints
from controller.core.rule import rule_setpoints
from controller.points import (
    AUX_KW, BATTERY_KW, BMS_CCL_A, BMS_DCL_A, CELL_V_MIN, COOLING_KW, GENSET_KW, GENSET_RUNNING,
    GRID_AVAILABLE, GRID_KW, IT_KW, LOOP_LATE_CYCLES, OP_ACK_BITS, OP_BATTERY_KW, OP_GENSET, OP_MODE,
    OP_RESERVE_PCT, PV_AVAILABLE_KW, PV_KW, Q_OK, SOC_PCT, CELL_V_MAX, GRID_V, WIND_KW,
)

BLACK_V = 50.0  # V: below this the grid meter sees a dead feeder
LIMIT_EPS_KW = 0.5  # a cut smaller than this is rounding, not a trip
PV_PROBE_FRAC = 0.02  # of rated PV: the headroom offered to inverters that hide their available power


@njit(cache=True)
def estimate_load_kw(value, quality, last_load_kw):
    """Site load from the balance of the meters; the compute telemetry when a meter is stale.

    On-site wind (a wind_meter, docs/cases.md) is a source on the bus like PV: its fresh reading joins the
    balance (a site without one reads it stale, 0)."""
    if quality[GRID_KW] == Q_OK and quality[PV_KW] == Q_OK and quality[BATTERY_KW] == Q_OK:
        gen_kw = value[GENSET_KW] if quality[GENSET_KW] == Q_OK else 0.0
        wind_kw = value[WIND_KW] if quality[WIND_KW] == Q_OK else 0.0
        return max(0.0, value[GRID_KW] + value[PV_KW] + value[BATTERY_KW] + gen_kw + wind_kw), True
    if quality[IT_KW] == Q_OK and quality[COOLING_KW] == Q_OK:
        aux_kw = value[AUX_KW] if quality[AUX_KW] == Q_OK else 0.0
        return value[IT_KW] + value[COOLING_KW] + aux_kw, False
    return last_load_kw, False


@njit(cache=True)
def _flag_edge(state, st, slot, now_on, events, n, ev_on, ev_off, val):
    if now_on and state[slot] < 0.5:
        n = emit(events, n, ev_on, val)
    elif not now_on and state[slot] > 0.5:
        n = emit(events, n, ev_off, 0.0)
    st[slot] = 1.0 if now_on else 0.0
    return n


@njit(cache=True)
def _genset(params, value, quality, state, st, t_s, dt_s, want_gen, gen_on, soc_pct, events, n):
    """Genset command through its protections; start-failure detection and the starts ring.

    Returns (n, failed, starts_blocked, run)."""
    failed = state[S_GEN_FAILED] > 0.5
    if failed and quality[OP_ACK_BITS] == Q_OK and (int(value[OP_ACK_BITS]) >> A_GENSET_START_FAILED) & 1:
        failed = False                                  # the technician checked the set and acked
    run, starts_blocked = genset_permitted(params, value, quality, state, t_s, want_gen, gen_on, failed)
    if run and not gen_on:
        n = emit(events, n, EV_GENSET_START, soc_pct)
        st[S_GEN_STARTS] = state[S_GEN_STARTS] + 1.0
        st[S_GEN_ON_S] = 0.0
        st[S_GEN_START_TIMES + int(state[S_GEN_STARTS]) % GEN_START_RING] = t_s
        st[S_GEN_START_WAIT_S] = 0.0
    elif not run and gen_on:
        n = emit(events, n, EV_GENSET_STOP, soc_pct)
        st[S_GEN_OFF_S] = 0.0
    elif run:
        st[S_GEN_ON_S] = state[S_GEN_ON_S] + dt_s
    else:
        st[S_GEN_OFF_S] = state[S_GEN_OFF_S] + dt_s
    # Start failure: commanded on, but the set does not report running within the timeout.
    if run and quality[GENSET_RUNNING] == Q_OK and value[GENSET_RUNNING] < 0.5:
        st[S_GEN_START_WAIT_S] = state[S_GEN_START_WAIT_S] + dt_s if gen_on else 0.0
        if st[S_GEN_START_WAIT_S] > params[P_GEN_START_TIMEOUT_S]:
            failed = True
            run = False
            n = emit(events, n, EV_GENSET_START_FAILED, st[S_GEN_START_WAIT_S])
            n = emit(events, n, EV_GENSET_STOP, soc_pct)
            st[S_GEN_OFF_S] = 0.0
    else:
        st[S_GEN_START_WAIT_S] = 0.0
    st[S_GEN_FAILED] = 1.0 if failed else 0.0
    st[S_GEN_ON] = 1.0 if run else 0.0
    return n, failed, starts_blocked, run


@njit(cache=True)
def _startup_gate(value, quality, state, st, events, n):
    """Safe start (issue 14): until SOC, the BMS current limits, the cell voltages and the grid state
    have all been fresh in one image, the PCS is held at 0 kW and no genset starts - a boot before the
    first BMS frame once started the set on a SOC of 0 read from a stale point. The one exception is a
    dark site (grid known absent: the utility's flag or the grid meter's voltage, fresh) whose battery
    is not known yet: then the load is lost and the set may start (black start, with its event).

    Returns (n, ready, black_start)."""
    bms_known = (quality[SOC_PCT] == Q_OK and quality[BMS_CCL_A] == Q_OK and quality[BMS_DCL_A] == Q_OK
                 and quality[CELL_V_MAX] == Q_OK and quality[CELL_V_MIN] == Q_OK)
    grid_known = quality[GRID_AVAILABLE] == Q_OK or quality[GRID_KW] == Q_OK
    first = state[S_CYCLES] < 0.5
    if bms_known and grid_known:
        st[S_BOOT_READY] = 1.0
        if not first:
            n = emit(events, n, EV_STARTUP_READY, state[S_CYCLES])
        return n, True, False
    st[S_BOOT_READY] = 0.0
    if first:
        n = emit(events, n, EV_STARTUP_HOLD, 0.0)
    dark = ((quality[GRID_AVAILABLE] == Q_OK and value[GRID_AVAILABLE] < 0.5)
            or (quality[GRID_V] == Q_OK and value[GRID_V] < BLACK_V))
    if dark and state[S_GEN_ON] < 0.5:
        n = emit(events, n, EV_BLACK_START, 1.0)
    return n, False, dark


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
    n = _flag_edge(state, st, S_SAFE_BMS, bms_safe, events, n, EV_BMS_STALE, EV_BMS_BACK, st[S_BMS_STALE_N])
    loop_safe = value[LOOP_LATE_CYCLES] >= params[P_LOOP_SAFE_CYCLES]
    n = _flag_edge(state, st, S_LOOP_SAFE, loop_safe, events, n, EV_LOOP_SAFE_ON, EV_LOOP_SAFE_OFF,
                   value[LOOP_LATE_CYCLES])
    safe = bms_safe or loop_safe

    load_kw, meters_fresh = estimate_load_kw(value, quality, state[S_LOAD_KW])
    st[S_LOAD_KW] = load_kw
    st[S_METER_STALE_N] = 0.0 if meters_fresh else state[S_METER_STALE_N] + 1.0
    conservative = st[S_METER_STALE_N] >= params[P_METER_STALE_CYCLES]
    n = _flag_edge(state, st, S_CONSERVATIVE, conservative, events, n, EV_METER_STALE, EV_METER_BACK,
                   st[S_METER_STALE_N])

    if quality[GRID_AVAILABLE] == Q_OK:
        grid_up = value[GRID_AVAILABLE] > 0.5
    elif quality[GRID_V] == Q_OK:                     # no grid contact (a field site): the meter's voltage
        grid_up = value[GRID_V] >= BLACK_V
    else:
        grid_up = quality[GRID_KW] == Q_OK and abs(value[GRID_KW]) > 0.1
    n = _flag_edge(state, st, S_GRID_UP, grid_up, events, n, EV_GRID_BACK, EV_GRID_LOST, 0.0)
    cap_kw = max(0.0, params[P_GRID_IMPORT_MAX_KW] - params[P_GRID_MARGIN_KW]) if grid_up else 0.0
    export_max_kw = params[P_GRID_EXPORT_MAX_KW] if grid_up and not conservative else 0.0

    soc_pct = value[SOC_PCT]
    pv_meas_kw = value[PV_KW] if quality[PV_KW] == Q_OK else 0.0
    pv_kw = pv_meas_kw
    if quality[PV_AVAILABLE_KW] == Q_OK:
        pv_kw = max(pv_kw, value[PV_AVAILABLE_KW])     # what PV could give if nobody curtailed it
    elif pv_meas_kw > 0.0 and quality[GRID_KW] == Q_OK:
        # Inverters that do not report what they could give (SunSpec 103/123) hide a surplus their own
        # export limiter cut. While the grid sits at the export limit (the only time such a limiter
        # cuts), plan with a little more PV, so the battery draws it and the PV rises to fill it, until
        # the array really is at its maximum; at worst that imports the probe, never up to the cap.
        probe_kw = PV_PROBE_FRAC * params[P_PV_RATED_KW]
        if value[GRID_KW] < probe_kw - export_max_kw:
            pv_kw = pv_meas_kw + probe_kw
    gen_kw = value[GENSET_KW] if quality[GENSET_KW] == Q_OK else 0.0
    gen_on = state[S_GEN_ON] > 0.5
    reserve_pct = params[P_RESERVE_PCT]
    if quality[OP_RESERVE_PCT] == Q_OK and value[OP_RESERVE_PCT] > 0.0:
        reserve_pct = min(max(value[OP_RESERVE_PCT], params[P_SOC_MIN_PCT]), params[P_SOC_MAX_PCT])
    mpc = params[P_STRATEGY] == STRATEGY_MPC
    if mpc:                                            # forecasters learn in every mode
        mpc_learn(params, st, t_s, dt_s, value, quality, load_kw, meters_fresh, pv_kw)
    # On-site wind (docs/cases.md): from here on "PV" is on-site renewable, PV + wind, for every strategy
    # and fallback (the derate above learns the array alone; the MPC adds wind to its PV row itself).
    wind_kw = value[WIND_KW] if quality[WIND_KW] == Q_OK and value[WIND_KW] > 0.0 else 0.0
    pv_kw += wind_kw
    pv_meas_kw += wind_kw

    # --- interlock limits first: the strategy may plan with them, the clamp below enforces them -----
    charge_lim_kw, discharge_lim_kw, c_reason, d_reason, hold_edge, force_edge = battery_limits(
        params, value, quality, state, st, dt_s, safe)
    if hold_edge > 0:
        n = emit(events, n, EV_HOLD_ON, 1.0 if hold_edge == 1 else -1.0)
    elif hold_edge < 0:
        n = emit(events, n, EV_HOLD_OFF, 1.0 if hold_edge == -1 else -1.0)
    if force_edge > 0:
        n = emit(events, n, EV_FORCE_CHARGE_ON, value[CELL_V_MIN])
    elif force_edge < 0:
        n = emit(events, n, EV_FORCE_CHARGE_OFF, value[CELL_V_MIN])
    force = st[S_FORCE_CHARGE] > 0.5

    # --- strategy or operator -----------------------------------------------------------------------
    op_mode = int(value[OP_MODE]) if quality[OP_MODE] == Q_OK else 0
    battery_kw = 0.0
    want_gen = False
    gen_sp_kw = 0.0
    if op_mode == OP_MANUAL:
        battery_kw = value[OP_BATTERY_KW]
        want_gen = gen_on if value[OP_GENSET] < -0.5 else value[OP_GENSET] > 0.5
        if want_gen:
            gen_sp_kw = params[P_GEN_RATED_KW]
        grid_charge_kw, grid_discharge_kw = grid_limits_kw(load_kw, pv_meas_kw, gen_kw, cap_kw, export_max_kw)
        if grid_discharge_kw < discharge_lim_kw:
            discharge_lim_kw, d_reason = grid_discharge_kw, R_GRID_EXPORT_LIMIT
        if grid_charge_kw < charge_lim_kw:
            charge_lim_kw, c_reason = grid_charge_kw, R_GRID_IMPORT_LIMIT
    elif op_mode == OP_STANDBY:
        pass
    elif params[P_STRATEGY] == STRATEGY_RULE:
        battery_kw, want_gen, gen_sp_kw = rule_setpoints(params, soc_pct, load_kw, pv_kw, gen_kw, cap_kw,
                                                         grid_up, gen_on, reserve_pct)
    elif mpc:
        battery_kw, want_gen, gen_sp_kw = mpc_setpoints(params, state, st, t_s, value, quality, soc_pct, load_kw,
                                                        pv_kw, gen_kw, cap_kw, export_max_kw, grid_up, gen_on,
                                                        reserve_pct, discharge_lim_kw)

    if quality[SOC_PCT] != Q_OK and not gen_on:
        want_gen = False                               # never start the set on a SOC nobody read lately

    # --- fallbacks ----------------------------------------------------------------------------------
    if conservative:
        surplus_kw = max(0.0, pv_kw + gen_kw - load_kw)
        battery_kw = max(battery_kw, -surplus_kw)      # charge only from on-site surplus, not the grid
        if soc_pct <= reserve_pct and grid_up:
            battery_kw = min(battery_kw, 0.0)          # hold the reserve while blind
    if force:
        # Cells too low: charge now. From PV and the genset; from the grid only where allowed.
        onsite_kw = max(0.0, pv_kw + gen_kw - load_kw)
        source_kw = onsite_kw + (max(0.0, cap_kw - max(0.0, load_kw - pv_kw - gen_kw))
                                 if params[P_FORCE_CHARGE_FROM_GRID] > 0.5 else 0.0)
        battery_kw = -min(params[P_FORCE_CHARGE_KW], source_kw)
        if params[P_HAS_GENSET] > 0.5 and source_kw < params[P_FORCE_CHARGE_KW]:
            want_gen = True
            gen_sp_kw = min(max(load_kw - pv_kw + params[P_FORCE_CHARGE_KW], params[P_GEN_PMIN_KW]),
                            params[P_GEN_RATED_KW])
    if safe and params[P_HAS_GENSET] > 0.5 and (not grid_up or load_kw - pv_kw > cap_kw):
        want_gen = True                                # the battery is out: the set carries the load
        gen_sp_kw = min(max(load_kw - pv_kw - cap_kw, params[P_GEN_PMIN_KW]), params[P_GEN_RATED_KW])

    # --- safe start: nothing moves until the points a decision needs have been read once ------------
    held = False
    if state[S_BOOT_READY] < 0.5:
        n, ready, black = _startup_gate(value, quality, state, st, events, n)
        held = not ready
        if held:
            battery_kw = 0.0
            charge_lim_kw, discharge_lim_kw, c_reason, d_reason = 0.0, 0.0, R_SAFE_STATE, R_SAFE_STATE
            want_gen = black and params[P_HAS_GENSET] > 0.5
            if want_gen:
                gen_sp_kw = params[P_GEN_RATED_KW]     # islanded on the set: it follows the load
    else:
        st[S_BOOT_READY] = 1.0

    # --- interlocks: the last word ------------------------------------------------------------------
    wanted_kw = battery_kw
    battery_kw, cut_reason = clamp_battery_kw(params, battery_kw, state[S_LAST_BATTERY_KW], dt_s,
                                              charge_lim_kw, discharge_lim_kw, c_reason, d_reason)
    n, gen_failed, starts_blocked, run = _genset(params, value, quality, state, st, t_s, dt_s, want_gen,
                                                 gen_on, soc_pct, events, n)
    if run and gen_sp_kw <= 0.0:
        gen_sp_kw = params[P_GEN_PMIN_KW]             # held on by min run time: lowest safe load
    if not run:
        gen_sp_kw = 0.0

    cut_kw = abs(wanted_kw - battery_kw)
    limited = cut_kw > LIMIT_EPS_KW and abs(battery_kw) < abs(wanted_kw)
    if limited and state[S_LIMITED] < 0.5:
        st[S_TRIPS] = state[S_TRIPS] + 1.0
        n = emit(events, n, EV_BATTERY_LIMITED, float(cut_reason))
    elif not limited and state[S_LIMITED] > 0.5:
        n = emit(events, n, EV_BATTERY_UNLIMITED, 0.0)
    st[S_LIMITED] = 1.0 if limited else 0.0
    st[S_LAST_BATTERY_KW] = battery_kw

    # PV limit: what load, battery charging and export can take; none without a strategy.
    pv_limit_kw = params[P_PV_RATED_KW]
    if params[P_STRATEGY] == STRATEGY_RULE or mpc or conservative:
        pv_limit_kw = min(pv_limit_kw, max(0.0, load_kw + charge_lim_kw + export_max_kw - gen_sp_kw - wind_kw))

    # --- alarms -------------------------------------------------------------------------------------
    raise_m, present = alarm_conditions(params, value, quality, bms_safe, conservative, force, gen_failed,
                                        starts_blocked, grid_up, loop_safe)
    n = update_alarms(params, value, quality, state, st, dt_s, raise_m, present, events, n)

    mode = MODE_NORMAL
    if safe or held:
        mode = MODE_SAFE
    elif force:
        mode = MODE_FORCE_CHARGE
    elif op_mode == OP_STANDBY:
        mode = MODE_STANDBY
    elif op_mode == OP_MANUAL:
        mode = MODE_MANUAL
    elif conservative:
        mode = MODE_CONSERVATIVE
    if mode != int(state[S_LAST_MODE]) and st[S_CYCLES] > 1.0:
        n = emit(events, n, EV_MODE_CHANGED, float(mode))
    st[S_LAST_MODE] = mode

    cmd[C_BATTERY_KW] = battery_kw
    cmd[C_GENSET_RUN] = 1.0 if run else 0.0
    cmd[C_GENSET_KW] = gen_sp_kw
    cmd[C_PV_LIMIT_KW] = pv_limit_kw
    cmd[C_MODE] = mode
    cmd[C_CHARGE_LIMIT_KW] = charge_lim_kw
    cmd[C_DISCHARGE_LIMIT_KW] = discharge_lim_kw
    cmd[C_CHARGE_REASON] = c_reason
    cmd[C_DISCHARGE_REASON] = d_reason
    cmd[C_ALARMS_ACTIVE] = st[S_ALARM_ACTIVE]
    cmd[C_ALARMS_UNACKED] = st[S_ALARM_UNACKED]
    return st, cmd, events, n
