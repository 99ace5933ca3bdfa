"""Battery and genset interlocks: the last word on every setpoint.

They depend only on the image, params and their own carried state (ramp, timers), never on the
strategy that proposed the setpoint, so no planner bug, cloud command or TUI action can push the
battery past a BMS or profile limit. The fuller protection curves (cell voltage, temperature, SOC
tapers, force charge, hold hysteresis) extend `battery_limits_kw`.
"""
from numba import njit

from controller.core.layout import (
    P_CELL_V_MAX, P_CELL_V_MIN, P_CHARGE_MAX_KW, P_DISCHARGE_MAX_KW, P_GEN_COOLDOWN_S, P_GEN_MIN_RUN_S,
    P_HAS_GENSET, P_NOMINAL_V, P_PCS_RATED_KW, P_RAMP_KW_PER_S, P_SOC_MAX_PCT, P_SOC_MIN_PCT,
)
from controller.points import (
    BATTERY_V, BMS_CCL_A, BMS_CHARGE_ENABLE, BMS_DCL_A, BMS_DISCHARGE_ENABLE, CELL_V_MAX, CELL_V_MIN,
    GENSET_AVAILABLE, Q_OK, SOC_PCT,
)


@njit(cache=True)
def battery_limits_kw(params, value, quality, bms_safe):
    """(charge_limit_kw, discharge_limit_kw), both >= 0, from profile maxima and the BMS's word."""
    charge = min(params[P_CHARGE_MAX_KW], params[P_PCS_RATED_KW])
    discharge = min(params[P_DISCHARGE_MAX_KW], params[P_PCS_RATED_KW])
    if bms_safe:
        return 0.0, 0.0
    volts = value[BATTERY_V] if quality[BATTERY_V] == Q_OK and value[BATTERY_V] > 1.0 else params[P_NOMINAL_V]
    if quality[BMS_CCL_A] == Q_OK:
        charge = min(charge, max(0.0, value[BMS_CCL_A]) * volts / 1000.0)
    if quality[BMS_DCL_A] == Q_OK:
        discharge = min(discharge, max(0.0, value[BMS_DCL_A]) * volts / 1000.0)
    if quality[BMS_CHARGE_ENABLE] == Q_OK and value[BMS_CHARGE_ENABLE] < 0.5:
        charge = 0.0
    if quality[BMS_DISCHARGE_ENABLE] == Q_OK and value[BMS_DISCHARGE_ENABLE] < 0.5:
        discharge = 0.0
    if value[SOC_PCT] >= params[P_SOC_MAX_PCT]:
        charge = 0.0
    if value[SOC_PCT] <= params[P_SOC_MIN_PCT]:
        discharge = 0.0
    if quality[CELL_V_MAX] == Q_OK and value[CELL_V_MAX] >= params[P_CELL_V_MAX]:
        charge = 0.0
    if quality[CELL_V_MIN] == Q_OK and value[CELL_V_MIN] <= params[P_CELL_V_MIN]:
        discharge = 0.0
    return charge, discharge


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
def clamp_battery_kw(params, value, quality, bms_safe, wanted_kw, last_kw, dt_s):
    """(battery_kw, charge_limit_kw, discharge_limit_kw) after limits and ramp."""
    charge_kw, discharge_kw = battery_limits_kw(params, value, quality, bms_safe)
    kw = min(max(wanted_kw, -charge_kw), discharge_kw)
    kw = ramp_battery_kw(kw, last_kw, params[P_RAMP_KW_PER_S], dt_s)
    return kw, charge_kw, discharge_kw


@njit(cache=True)
def genset_permitted(params, value, quality, wanted_on, is_on, on_s, off_s):
    """The genset run command after minimum run time and cool-down; none at all without a genset."""
    if params[P_HAS_GENSET] < 0.5:
        return False
    if quality[GENSET_AVAILABLE] == Q_OK and value[GENSET_AVAILABLE] < 0.5:
        return False  # in alarm or not in auto: do not key it
    if is_on and not wanted_on and on_s < params[P_GEN_MIN_RUN_S]:
        return True
    if not is_on and wanted_on and off_s < params[P_GEN_COOLDOWN_S]:
        return False
    return wanted_on
