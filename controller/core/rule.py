"""The rule-based strategy: OpenEMS-style balancing, peak shaving and emergency reserve.

Self-consume PV through the battery, keep grid import under the connection cap, hold a reserve SOC for
outages (recharging it from the grid within the cap), and run the genset between a low and a high SOC.
It proposes setpoints only; interlocks decide what is applied.
"""
from numba import njit

from controller.core.layout import (
    P_GEN_PMIN_KW, P_GEN_RATED_KW, P_GEN_START_SOC_PCT, P_GEN_STOP_SOC_PCT, P_HAS_GENSET,
    P_CHARGE_MAX_KW, P_DISCHARGE_MAX_KW,
)


@njit(cache=True)
def running_set_kw(want_gen, gen_sp_kw, genset_kw):
    """The genset output a strategy balances the battery against. A running set delivers what is asked
    of it: a set with a kW setpoint by the setpoint, a load-following one (run/stop keys only, GenComm)
    because the battery setpoint leaves it that load; planning with the measured output instead pins a
    load-following set at its minimum while the battery drains. Until it runs: what the meter shows."""
    return gen_sp_kw if want_gen and genset_kw > 0.0 else genset_kw


@njit(cache=True)
def rule_setpoints(params, soc_pct, load_kw, pv_kw, genset_kw, cap_kw, grid_up, gen_on, reserve_pct):
    """(battery_kw, genset_on, genset_kw) proposed for this cycle. battery_kw: + discharge, - charge."""
    net_kw = load_kw - pv_kw                     # what battery + grid + genset must supply
    # Genset: hysteresis on SOC, plus a peak the battery cannot shave under the cap.
    want_gen = gen_on
    if params[P_HAS_GENSET] > 0.5:
        beyond_cap_kw = net_kw - cap_kw
        if not gen_on:
            if soc_pct < params[P_GEN_START_SOC_PCT] or beyond_cap_kw > params[P_DISCHARGE_MAX_KW]:
                want_gen = True
            elif not grid_up and soc_pct < reserve_pct and net_kw > 0.0:
                want_gen = True
        elif soc_pct >= params[P_GEN_STOP_SOC_PCT] and beyond_cap_kw < 0.8 * params[P_DISCHARGE_MAX_KW]:
            want_gen = False
    gen_sp_kw = 0.0
    if want_gen:
        # Grid first (cheaper and cleaner here), the set covers the rest and recharges at its best load.
        gen_sp_kw = net_kw - cap_kw + params[P_CHARGE_MAX_KW]
        gen_sp_kw = min(max(gen_sp_kw, params[P_GEN_PMIN_KW]), params[P_GEN_RATED_KW])
    gen_out_kw = running_set_kw(want_gen, gen_sp_kw, genset_kw)
    supply_kw = net_kw - gen_out_kw
    if gen_out_kw > 0.0:
        battery_kw = supply_kw - cap_kw                 # set running: recharge with it and the grid
    elif supply_kw > 0.0:
        if grid_up and soc_pct <= reserve_pct:
            battery_kw = max(0.0, supply_kw - cap_kw)   # hold the reserve: only shave above the cap
        else:
            battery_kw = supply_kw                      # self-consumption: grid to zero
    else:
        battery_kw = supply_kw                          # store the surplus
    if grid_up and soc_pct < reserve_pct:
        battery_kw = min(battery_kw, supply_kw - cap_kw)  # rebuild the reserve within the cap
    return battery_kw, want_gen, gen_sp_kw
