"""Alarm evaluation: raise on a condition, clear with hysteresis and a delay, latch where it must.

Each alarm has a raise condition and a looser "still there" condition (the hysteresis); it clears once
the latter has been false for alarm_clear_s. A latching alarm (its bit in alarm_latch_mask) then also
waits for an acknowledgement, which arrives as the op_ack_bits image point (TUI or verified cloud
command), so an ack replays like any other input. Texts, severities and what to check live in
profiles/alarms.toml; here only bits.
"""
import numpy as np
from numba import njit

from controller.core.events import emit
from controller.core.layout import (
    EV_ALARM_ACKED, EV_ALARM_CLEARED, EV_ALARM_RAISED, A_BMS_ALARM, A_BMS_LOST, A_CELL_OVERVOLTAGE, A_CELL_UNDERVOLTAGE, A_FORCE_CHARGE, A_FUEL_LOW,
    A_GENSET_MAX_STARTS, A_GENSET_START_FAILED, A_GRID_LOST, A_LOOP_OVERRUN, A_METER_LOST, A_OVER_TEMPERATURE,
    A_SOC_LOW, A_UNDER_TEMPERATURE, A_MARKET_STALE, ALARM_NAMES, P_ALARM_CLEAR_S, P_MARKET_EXPECTED, P_ALARM_LATCH_MASK, P_CELL_V_MAX, P_CELL_V_MIN,
    P_HOLD_HYSTERESIS_PCT, P_SOC_MIN_PCT, P_TEMP_MAX_C, P_TEMP_MIN_C, S_ALARM_ACTIVE, S_ALARM_CLEAR_S,
    S_ALARM_UNACKED,
)
from controller.points import (
    BMS_ALARM_BITS, CELL_TEMP_MAX_C, CELL_TEMP_MIN_C, CELL_V_MAX, CELL_V_MIN, FUEL_PCT, MKT_T1_S, OP_ACK_BITS,
    Q_OK, SOC_PCT,
)

N_ALARMS = len(ALARM_NAMES)


@njit(cache=True)
def _bit(mask, cond, bit):
    return mask | (np.int64(1) << bit) if cond else mask


@njit(cache=True)
def alarm_conditions(params, value, quality, bms_safe, conservative, force, gen_failed, starts_blocked,
                     grid_up, loop_safe):
    """(raise_mask, present_mask): present is the hysteresis-widened condition that keeps it active."""
    raise_m = np.int64(0)
    present = np.int64(0)
    raise_m = _bit(raise_m, bms_safe, A_BMS_LOST)
    present = _bit(present, bms_safe, A_BMS_LOST)
    raise_m = _bit(raise_m, conservative, A_METER_LOST)
    present = _bit(present, conservative, A_METER_LOST)
    if quality[CELL_V_MAX] == Q_OK:
        raise_m = _bit(raise_m, value[CELL_V_MAX] >= params[P_CELL_V_MAX], A_CELL_OVERVOLTAGE)
        present = _bit(present, value[CELL_V_MAX] >= params[P_CELL_V_MAX] - 0.05, A_CELL_OVERVOLTAGE)
    if quality[CELL_V_MIN] == Q_OK:
        raise_m = _bit(raise_m, value[CELL_V_MIN] <= params[P_CELL_V_MIN], A_CELL_UNDERVOLTAGE)
        present = _bit(present, value[CELL_V_MIN] <= params[P_CELL_V_MIN] + 0.10, A_CELL_UNDERVOLTAGE)
    if quality[CELL_TEMP_MAX_C] == Q_OK:
        raise_m = _bit(raise_m, value[CELL_TEMP_MAX_C] >= params[P_TEMP_MAX_C], A_OVER_TEMPERATURE)
        present = _bit(present, value[CELL_TEMP_MAX_C] >= params[P_TEMP_MAX_C] - 5.0, A_OVER_TEMPERATURE)
    if quality[CELL_TEMP_MIN_C] == Q_OK:
        raise_m = _bit(raise_m, value[CELL_TEMP_MIN_C] <= params[P_TEMP_MIN_C], A_UNDER_TEMPERATURE)
        present = _bit(present, value[CELL_TEMP_MIN_C] <= params[P_TEMP_MIN_C] + 3.0, A_UNDER_TEMPERATURE)
    if quality[SOC_PCT] == Q_OK:
        raise_m = _bit(raise_m, value[SOC_PCT] <= params[P_SOC_MIN_PCT], A_SOC_LOW)
        present = _bit(present, value[SOC_PCT] <= params[P_SOC_MIN_PCT] + params[P_HOLD_HYSTERESIS_PCT], A_SOC_LOW)
    if quality[BMS_ALARM_BITS] == Q_OK:
        raise_m = _bit(raise_m, value[BMS_ALARM_BITS] != 0.0, A_BMS_ALARM)
        present = _bit(present, value[BMS_ALARM_BITS] != 0.0, A_BMS_ALARM)
    raise_m = _bit(raise_m, force, A_FORCE_CHARGE)
    present = _bit(present, force, A_FORCE_CHARGE)
    raise_m = _bit(raise_m, gen_failed, A_GENSET_START_FAILED)
    present = _bit(present, gen_failed, A_GENSET_START_FAILED)
    raise_m = _bit(raise_m, starts_blocked, A_GENSET_MAX_STARTS)
    present = _bit(present, starts_blocked, A_GENSET_MAX_STARTS)
    raise_m = _bit(raise_m, not grid_up, A_GRID_LOST)
    present = _bit(present, not grid_up, A_GRID_LOST)
    raise_m = _bit(raise_m, loop_safe, A_LOOP_OVERRUN)
    present = _bit(present, loop_safe, A_LOOP_OVERRUN)
    if quality[FUEL_PCT] == Q_OK:
        raise_m = _bit(raise_m, value[FUEL_PCT] < 10.0, A_FUEL_LOW)
        present = _bit(present, value[FUEL_PCT] < 15.0, A_FUEL_LOW)
    # a site that expects a market feed: its validity point goes stale at valid_until or with the message's
    # age (controller/netinputs.py stamps it so); the MPC then plans with the profile's tariff
    mkt_stale = params[P_MARKET_EXPECTED] > 0.5 and quality[MKT_T1_S] != Q_OK
    raise_m = _bit(raise_m, mkt_stale, A_MARKET_STALE)
    present = _bit(present, mkt_stale, A_MARKET_STALE)
    return raise_m, present


@njit(cache=True)
def update_alarms(params, value, quality, state, st, dt_s, raise_m, present, events, n):
    """Advance the active/unacked masks in `st`; emit raise/clear/ack events. Returns n."""
    active = np.int64(state[S_ALARM_ACTIVE])
    unacked = np.int64(state[S_ALARM_UNACKED])
    latch = np.int64(params[P_ALARM_LATCH_MASK])
    ack = np.int64(value[OP_ACK_BITS]) if quality[OP_ACK_BITS] == Q_OK else np.int64(0)
    new_active = np.int64(0)
    new_unacked = unacked
    for bit in range(N_ALARMS):
        m = np.int64(1) << bit
        slot = S_ALARM_CLEAR_S + bit
        if present & m:
            st[slot] = 0.0
        else:
            st[slot] = state[slot] + dt_s
        cleared = st[slot] >= params[P_ALARM_CLEAR_S]
        was = (active & m) != 0
        if (ack & m) and (unacked & m):
            new_unacked &= ~m
            n = emit(events, n, EV_ALARM_ACKED, bit)
        if raise_m & m:
            is_on = True
            if not was:
                new_unacked |= m
                n = emit(events, n, EV_ALARM_RAISED, bit)
        elif was:
            latched = (latch & m) != 0 and (new_unacked & m) != 0
            is_on = not cleared or latched
            if not is_on:
                n = emit(events, n, EV_ALARM_CLEARED, bit)
        else:
            is_on = False
        if is_on:
            new_active |= m
        elif (latch & m) == 0:
            new_unacked &= ~m          # a non-latching alarm that went away needs no ack
    st[S_ALARM_ACTIVE] = float(new_active)
    st[S_ALARM_UNACKED] = float(new_unacked)
    return n
