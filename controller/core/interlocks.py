"""Battery and genset interlocks: the last word on every setpoint.

The allowed charge and discharge power is the minimum of the configured maxima, the BMS's current
limits, its enable flags and alarms, the hard SOC band with a hold state (hysteresis, minimum time),
curves on cell voltage, cell temperature and SOC (OpenEMS and dbus-serialbattery practice), a recovery
delay after any drop to zero, and a force-charge state on low cell voltage. Decreases apply at once,
increases follow the ramp. Everything depends only on the image, params and the interlocks' own
carried state — never on the strategy — so no planner bug, cloud command or TUI action gets past it.
"""
from numba import njit

from controller.core.layout import (
    CURVE_CHARGE_VS_CELL_V_MAX, CURVE_CHARGE_VS_SOC_PCT, CURVE_CHARGE_VS_TEMP_C, CURVE_DISCHARGE_VS_CELL_V_MIN,
    CURVE_DISCHARGE_VS_SOC_PCT, CURVE_DISCHARGE_VS_TEMP_C, CURVE_MAX_POINTS, CURVE_SLOTS, GEN_START_RING,
    N_SCALAR_PARAMS, P_CHARGE_MAX_KW, P_DISCHARGE_MAX_KW, P_FORCE_CHARGE_BELOW_V, P_FORCE_CHARGE_MIN_S,
    P_FORCE_CHARGE_RELEASE_V, P_GEN_COOLDOWN_S, P_GEN_MAX_STARTS_PER_H, P_GEN_MIN_RUN_S, P_HAS_GENSET,
    P_HOLD_HYSTERESIS_PCT, P_HOLD_MIN_S, P_NOMINAL_V, P_PCS_RATED_KW, P_RAMP_KW_PER_S, P_RECOVERY_DELAY_S,
    P_SOC_MAX_PCT, P_SOC_MIN_PCT, R_BMS_CURRENT, R_BMS_FORBIDS, R_CELL_VOLTAGE_CURVE, R_CONFIGURED_MAX,
    R_FORCE_CHARGE, R_HOLD, R_RAMP, R_RECOVERY_DELAY, R_SAFE_STATE, R_SOC_CURVE, R_SOC_HARD_LIMIT,
    R_TEMPERATURE_CURVE, S_CEILING_HOLD, S_CEILING_HOLD_S, S_CHARGE_BLOCK_S, S_DISCHARGE_BLOCK_S,
    S_FLOOR_HOLD, S_FLOOR_HOLD_S, S_FORCE_CHARGE, S_FORCE_CHARGE_S, S_GEN_OFF_S, S_GEN_ON_S, S_GEN_START_TIMES,
)
from controller.points import (
    BATTERY_V, BMS_ALARM_BITS, BMS_CCL_A, BMS_CHARGE_ENABLE, BMS_DCL_A, BMS_DISCHARGE_ENABLE, BMS_FORCE_CHARGE,
    CELL_TEMP_MAX_C, CELL_TEMP_MIN_C, CELL_V_MAX, CELL_V_MIN, GENSET_AVAILABLE, Q_OK, SOC_PCT,
)


@njit(cache=True)
def curve_fraction(params, curve, x):
    """Piecewise-linear curve from PARAMS, clamped at both ends; 1.0 when the curve is not configured."""
    base = N_SCALAR_PARAMS + curve * CURVE_SLOTS
    n = int(params[base])
    if n == 0 or x != x:      # no curve, or NaN input
        return 1.0
    xs = base + 1
    ys = base + 1 + CURVE_MAX_POINTS
    if x <= params[xs]:
        return params[ys]
    for i in range(1, n):
        if x <= params[xs + i]:
            x0, x1 = params[xs + i - 1], params[xs + i]
            y0, y1 = params[ys + i - 1], params[ys + i]
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return params[ys + n - 1]


@njit(cache=True)
def _tighten(limit, reason, candidate, candidate_reason):
    if candidate < limit:
        return max(0.0, candidate), candidate_reason
    return limit, reason


@njit(cache=True)
def _hold(state, st, flag, timer, active_now, release_ok, dt_s, min_s):
    """A hold with minimum time: on at once, off only when released and held long enough. -> (on, edge)."""
    on = state[flag] > 0.5
    if not on and active_now:
        st[flag], st[timer] = 1.0, 0.0
        return True, 1
    if on:
        st[timer] = state[timer] + dt_s
        if release_ok and st[timer] >= min_s:
            st[flag] = 0.0
            return False, -1
        return True, 0
    return False, 0


@njit(cache=True)
def battery_limits(params, value, quality, state, st, dt_s, safe):
    """(charge_kw, discharge_kw, charge_reason, discharge_reason, hold_edge, force_edge); updates `st`.

    hold_edge: +1/-1 ceiling hold on/off, +2/-2 floor hold on/off, 0 none. force_edge: +1 on, -1 off.
    """
    cmax = min(params[P_CHARGE_MAX_KW], params[P_PCS_RATED_KW])
    dmax = min(params[P_DISCHARGE_MAX_KW], params[P_PCS_RATED_KW])
    charge, c_reason = cmax, R_CONFIGURED_MAX
    discharge, d_reason = dmax, R_CONFIGURED_MAX
    hold_edge, force_edge = 0, 0
    soc = value[SOC_PCT]

    # Hard SOC band, held with hysteresis and a minimum time so it cannot chatter.
    hyst = params[P_HOLD_HYSTERESIS_PCT]
    ceiling, e = _hold(state, st, S_CEILING_HOLD, S_CEILING_HOLD_S, soc >= params[P_SOC_MAX_PCT],
                       soc <= params[P_SOC_MAX_PCT] - hyst, dt_s, params[P_HOLD_MIN_S])
    if e != 0:
        hold_edge = e
    floor, e = _hold(state, st, S_FLOOR_HOLD, S_FLOOR_HOLD_S, soc <= params[P_SOC_MIN_PCT],
                     soc >= params[P_SOC_MIN_PCT] + hyst, dt_s, params[P_HOLD_MIN_S])
    if e != 0:
        hold_edge = 2 * e

    # Force charge on low cells (or the BMS's request), released with hysteresis and a minimum time.
    cell_min_ok = quality[CELL_V_MIN] == Q_OK
    low_cells = cell_min_ok and value[CELL_V_MIN] < params[P_FORCE_CHARGE_BELOW_V]
    bms_asks = quality[BMS_FORCE_CHARGE] == Q_OK and value[BMS_FORCE_CHARGE] > 0.5
    recovered = (not cell_min_ok or value[CELL_V_MIN] >= params[P_FORCE_CHARGE_RELEASE_V]) and not bms_asks
    force, force_edge = _hold(state, st, S_FORCE_CHARGE, S_FORCE_CHARGE_S, (low_cells or bms_asks) and not safe,
                              recovered or safe, dt_s, params[P_FORCE_CHARGE_MIN_S])
    if safe:
        st[S_FORCE_CHARGE] = 0.0
        force = False

    if safe:
        st[S_CHARGE_BLOCK_S] = params[P_RECOVERY_DELAY_S]
        st[S_DISCHARGE_BLOCK_S] = params[P_RECOVERY_DELAY_S]
        return 0.0, 0.0, R_SAFE_STATE, R_SAFE_STATE, hold_edge, force_edge

    volts = value[BATTERY_V] if quality[BATTERY_V] == Q_OK and value[BATTERY_V] > 1.0 else params[P_NOMINAL_V]
    if quality[BMS_CCL_A] == Q_OK:
        charge, c_reason = _tighten(charge, c_reason, max(0.0, value[BMS_CCL_A]) * volts / 1000.0, R_BMS_CURRENT)
    if quality[BMS_DCL_A] == Q_OK:
        discharge, d_reason = _tighten(discharge, d_reason, max(0.0, value[BMS_DCL_A]) * volts / 1000.0,
                                       R_BMS_CURRENT)
    if quality[CELL_V_MAX] == Q_OK:
        charge, c_reason = _tighten(charge, c_reason, cmax * curve_fraction(
            params, CURVE_CHARGE_VS_CELL_V_MAX, value[CELL_V_MAX]), R_CELL_VOLTAGE_CURVE)
    if cell_min_ok:
        discharge, d_reason = _tighten(discharge, d_reason, dmax * curve_fraction(
            params, CURVE_DISCHARGE_VS_CELL_V_MIN, value[CELL_V_MIN]), R_CELL_VOLTAGE_CURVE)
    if quality[CELL_TEMP_MAX_C] == Q_OK and quality[CELL_TEMP_MIN_C] == Q_OK:
        t_hi, t_lo = value[CELL_TEMP_MAX_C], value[CELL_TEMP_MIN_C]
        f = min(curve_fraction(params, CURVE_CHARGE_VS_TEMP_C, t_hi), curve_fraction(params, CURVE_CHARGE_VS_TEMP_C, t_lo))
        charge, c_reason = _tighten(charge, c_reason, cmax * f, R_TEMPERATURE_CURVE)
        f = min(curve_fraction(params, CURVE_DISCHARGE_VS_TEMP_C, t_hi),
                curve_fraction(params, CURVE_DISCHARGE_VS_TEMP_C, t_lo))
        discharge, d_reason = _tighten(discharge, d_reason, dmax * f, R_TEMPERATURE_CURVE)
    charge, c_reason = _tighten(charge, c_reason, cmax * curve_fraction(params, CURVE_CHARGE_VS_SOC_PCT, soc),
                                R_SOC_CURVE)
    discharge, d_reason = _tighten(discharge, d_reason, dmax * curve_fraction(
        params, CURVE_DISCHARGE_VS_SOC_PCT, soc), R_SOC_CURVE)
    if soc >= params[P_SOC_MAX_PCT]:
        charge, c_reason = 0.0, R_SOC_HARD_LIMIT
    if soc <= params[P_SOC_MIN_PCT]:
        discharge, d_reason = 0.0, R_SOC_HARD_LIMIT
    if ceiling and charge > 0.0:
        charge, c_reason = 0.0, R_HOLD
    if floor and discharge > 0.0:
        discharge, d_reason = 0.0, R_HOLD
    alarmed = quality[BMS_ALARM_BITS] == Q_OK and value[BMS_ALARM_BITS] != 0.0
    if alarmed or (quality[BMS_CHARGE_ENABLE] == Q_OK and value[BMS_CHARGE_ENABLE] < 0.5):
        charge, c_reason = 0.0, R_BMS_FORBIDS
    if alarmed or (quality[BMS_DISCHARGE_ENABLE] == Q_OK and value[BMS_DISCHARGE_ENABLE] < 0.5):
        discharge, d_reason = 0.0, R_BMS_FORBIDS
    if force and discharge > 0.0:
        discharge, d_reason = 0.0, R_FORCE_CHARGE

    charge, c_reason = _recovery(charge, c_reason, state, st, S_CHARGE_BLOCK_S, dt_s, params[P_RECOVERY_DELAY_S])
    discharge, d_reason = _recovery(discharge, d_reason, state, st, S_DISCHARGE_BLOCK_S, dt_s,
                                    params[P_RECOVERY_DELAY_S])
    return charge, discharge, c_reason, d_reason, hold_edge, force_edge


@njit(cache=True)
def _recovery(limit, reason, state, st, slot, dt_s, delay_s):
    """A drop to zero applies at once; coming back waits the recovery delay (then the ramp applies)."""
    if limit <= 0.0:
        st[slot] = delay_s
        return limit, reason
    st[slot] = max(0.0, state[slot] - dt_s)
    if state[slot] > 0.0:
        return 0.0, R_RECOVERY_DELAY
    return limit, reason


@njit(cache=True)
def ramp_battery_kw(wanted_kw, last_kw, ramp_kw_per_s, dt_s):
    """Limit increases of |power| to the ramp; decreases (towards 0) apply at once.

    A sign change passes through zero: the old direction drops at once, the new one ramps from 0.
    """
    step_kw = ramp_kw_per_s * dt_s
    if wanted_kw * last_kw < 0.0:
        last_kw = 0.0
    if abs(wanted_kw) <= abs(last_kw):
        return wanted_kw
    if wanted_kw > 0.0:
        return min(wanted_kw, last_kw + step_kw)
    return max(wanted_kw, last_kw - step_kw)


@njit(cache=True)
def grid_limits_kw(load_kw, pv_kw, gen_kw, import_cap_kw, export_max_kw):
    """(charge_kw, discharge_kw) the grid connection allows the battery this cycle.

    The strategies plan inside the feeder's import cap and the export limit themselves; an operator's
    manual setpoint does not, so for it these bound the battery like any other limit: discharging past
    the load must not export more than allowed, charging must not import past the cap."""
    discharge_kw = max(0.0, load_kw - pv_kw - gen_kw + export_max_kw)
    charge_kw = max(0.0, import_cap_kw + pv_kw + gen_kw - load_kw)
    return charge_kw, discharge_kw


@njit(cache=True)
def clamp_battery_kw(params, wanted_kw, last_kw, dt_s, charge_kw, discharge_kw, c_reason, d_reason):
    """(battery_kw, reason it was cut or -1) after the limits and the ramp."""
    kw = min(max(wanted_kw, -charge_kw), discharge_kw)
    reason = -1
    if kw > wanted_kw:
        reason = c_reason
    elif kw < wanted_kw:
        reason = d_reason
    ramped = ramp_battery_kw(kw, last_kw, params[P_RAMP_KW_PER_S], dt_s)
    if ramped != kw and reason < 0:
        reason = R_RAMP
    return ramped, reason


@njit(cache=True)
def starts_last_hour(state, t_s):
    count = 0
    for i in range(GEN_START_RING):
        if t_s - state[S_GEN_START_TIMES + i] < 3600.0:
            count += 1
    return count


@njit(cache=True)
def genset_permitted(params, value, quality, state, t_s, wanted_on, is_on, failed):
    """(run, blocked_by_starts): the genset command after availability, start failure, minimum run
    time, cool-down and the starts-per-hour limit."""
    if params[P_HAS_GENSET] < 0.5:
        return False, False
    if quality[GENSET_AVAILABLE] == Q_OK and value[GENSET_AVAILABLE] < 0.5:
        return False, False  # in alarm or not in auto: do not key it
    if failed:
        return False, False  # a failed start is latched until the technician acknowledges it
    if is_on and not wanted_on and state[S_GEN_ON_S] < params[P_GEN_MIN_RUN_S]:
        return True, False
    if not is_on and wanted_on:
        if state[S_GEN_OFF_S] < params[P_GEN_COOLDOWN_S]:
            return False, False
        if starts_last_hour(state, t_s) >= params[P_GEN_MAX_STARTS_PER_H]:
            return False, True
    return wanted_on, False
