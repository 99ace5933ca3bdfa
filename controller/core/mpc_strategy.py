"""The MPC strategy behind `step`: learn forecasts every cycle, re-plan every `mpc_replan_s`, follow the
plan in force with a real-time correction. Pure numba: the plan is a function of the recorded images and
the state, so `edge-ems replay --verify` reproduces every plan and every command bit for bit (the plan
is not an input: it is recomputed from the same inputs by the same kernel).

Why a plan every 60 s and not every cycle: the planner (controller/core/mpc/) costs 0.2-6 ms, the
forecasts change slowly, and a plan's first step is 15 minutes long. Between plans the step follows the
plan's *grid* import (the battery takes every deviation of load and PV from their forecasts), which is
what keeps the demand peak and a weak feeder where the plan put them; the cap and the reserve are
re-applied from what the meters show now. A new plan is made at once when the grid, the genset or an
announcement changes.

Inputs the planner sees (all from the image or learned in the state; none from a clock or a file):
- load: forecast.load_forecast (a 96-slot daily profile + decaying recent bias) + the announced job;
  the first step is the load measured now (persistence beats any profile over 15 minutes);
- PV: clear sky for the site x derate learned from measurement x the pushed weather warning;
- price: the site's TOU table by local hour (tariff_spot = 0; the local hour follows the PARAMS table
  of the zone's DST changes), else a learned daily profile of the received spot price; grid CO2: a
  learned profile of the received intensity (the profile's factor as a prior). A fresh market feed in
  the image (mkt_* points, controller/netinputs.py) overrides price, export price and CO2 for every
  step its validity covers, slot by slot; where it does not, the above is the fallback;
- grid import cap: the feeder's, 0 across an announced outage, and 0 for `outage_assume_s` from now
  when the grid is down without notice; the reserve SOC is a soft floor except where the grid is
  expected down (that is what the reserve is for);
- the demand peak already billed (the running 15-min maximum): import up to it is free of the peak term.
  It resets at each start of a month in the site's zone (a PARAMS table of the instants, as for DST), the
  window that closed before the 1st counting for the old month; a plan is made at once when it resets.
"""
import math

import numpy as np
from numba import njit

from controller.core import mpc as M
from controller.core import mpc_risk as R
from controller.core.mpc import branch as B
from controller.core.mpc import deferrable as D
from controller.core.forecast import (
    N_DERATE_STATE, N_LOAD_STATE, N_PV_PARAMS, clear_pv_kw, derate_new_state, derate_update, event_factor,
    load_forecast, load_new_state, load_update, pv_forecast,
)
from controller.core.layout import (
    P_CAPACITY_KWH, P_CARBON_PRICE, P_CHARGE_MAX_KW, P_DIESEL_CO2_PER_L, P_DISCHARGE_MAX_KW, P_ETA_CHARGE,
    P_ETA_DISCHARGE, P_EXPORT_PRICE, P_FUEL_L_PER_H_ON, P_FUEL_L_PER_KWH, P_FUEL_PRICE, P_GEN_PMIN_KW,
    P_GEN_RATED_KW, P_GEN_START_COST, P_GRID_CO2, P_GRID_IMPORT_MAX_KW, P_GRID_MARGIN_KW, P_HAS_GENSET, P_MPC_DT_H, P_MPC_GENSET_EVALS, P_MPC_HORIZON,
    P_OBJECTIVE, P_OBJECTIVE_KAPPA,
    P_MPC_REPLAN_S, P_OUTAGE_ASSUME_S, P_PEAK_PRICE, P_PEAK_RESERVE_PCT, P_PV_RATED_KW, P_PV_VECTOR, P_RESERVE_PENALTY,
    P_SOC_MAX_PCT, P_SOC_MIN_PCT, P_STORM_RESERVE_PCT, P_TARIFF, P_TARIFF_SPOT, P_TERMINAL_FRAC, P_TZ_OFFSET_S,
    P_TZ_TABLE, P_MONTH_TABLE,
    P_UNSERVED_PENALTY, P_WEAR_COST, S_CO2F, S_PLAN_JOB0_S, S_DERATE, S_GEN_FAILED, S_LOADF, S_MPC_READY, S_PEAK_KW,
    S_PEAK_WIN, S_PEAK_WIN_KWH, S_PLAN_BATTERY_KW, S_PLAN_COUNT, S_PLAN_DIESEL_KW, S_PLAN_DIESEL_ON,
    S_PLAN_EXPORT_KW, S_PLAN_GRID_KW, S_PLAN_KEY, S_PLAN_OBJECTIVE, S_PLAN_PEAK_KW, S_PLAN_SOC_END_PCT, S_PLAN_T_S,
    S_PRICEF,
)
from controller.core.rule import running_set_kw
from controller.points import (
    DJOB0, DJ_DUR_S, DJ_DEADLINE_S, DJ_KW, DJ_START_S, DJ_STATE, DJOB_RUNNING, DJOB_WAITING, N_DJOB, N_DJOB_FIELDS,
)
from controller.points import (
    GENSET_AVAILABLE, GRID_CO2, GRID_KW, GRID_PRICE, JOB_END_S, JOB_KW, JOB_START_S, MKT_CO2, MKT_EXPORT,
    MKT_IMPORT, MKT_SERIES, MKT_SLOTS, MKT_STEP_S, MKT_T0_S, MKT_T1_S, OUTAGE_END_S, OUTAGE_START_S,
    PV_AVAILABLE_KW, PV_KW, Q_OK, WX_END_S, WX_PV_CUT, WX_RAMP_S, WX_START_S, WIND_KW,
)
from controller.points import OUTAGE_GRID_RISK, WX_GRID_RISK

PEAK_WINDOW_S = 900.0        # demand charges are billed on 15-minute average import
PV_SUBSAMPLES = 3
PEAK_RESERVE_HOLD_H = 72.0   # with a demand charge: a kWh under the peak reserve this long costs a kW of peak
STORM_WINDOW_S = 3600.0      # storm watch: the raised floor spans the event's start +- this
STORM_PENALTY_FACTOR = 20.0  # and the reserve weighs this much more while a warning stands
# On-site wind (docs/cases.md) joins the PV row as a persistence forecast fading with the lead time: the
# hour-to-hour memory of the wind (the case's "forecasts local wind minutes to hours ahead" beyond this is
# not implemented; a pushed wind forecast would replace it)
WIND_PERSIST_S = 3.0 * 3600.0


@njit(cache=True)
def _init(params, st, load_kw):
    pv = params[P_PV_VECTOR:P_PV_VECTOR + N_PV_PARAMS]
    derate_new_state(pv, st[S_DERATE:S_DERATE + N_DERATE_STATE])
    load_new_state(st[S_LOADF:S_LOADF + N_LOAD_STATE], 0.3, 3600.0, load_kw)
    mean_price = 0.0
    for h in range(24):
        mean_price += params[P_TARIFF + h] / 24.0
    load_new_state(st[S_PRICEF:S_PRICEF + N_LOAD_STATE], 0.5, 3.0 * 3600.0, mean_price)
    load_new_state(st[S_CO2F:S_CO2F + N_LOAD_STATE], 0.5, 3.0 * 3600.0, params[P_GRID_CO2])
    st[S_PEAK_WIN] = -1.0
    st[S_MPC_READY] = 1.0


@njit(cache=True)
def _ok(value, quality, i):
    return quality[i] == Q_OK and value[i] > 0.0


@njit(cache=True)
def _job(value, quality):
    """The fixed jobs as the forecaster's arrays: the announced job and every running deferrable job (a
    running job is fixed load from the start it runs from; a waiting one is the planner's, _djobs)."""
    kw, start, dur = np.zeros(1 + N_DJOB), np.zeros(1 + N_DJOB), np.zeros(1 + N_DJOB)
    n = 0
    if _ok(value, quality, JOB_KW) and quality[JOB_START_S] == Q_OK and quality[JOB_END_S] == Q_OK \
            and value[JOB_END_S] > value[JOB_START_S]:
        kw[0], start[0], dur[0] = value[JOB_KW], value[JOB_START_S], value[JOB_END_S] - value[JOB_START_S]
        n = 1
    for k in range(N_DJOB):
        b = DJOB0 + k * N_DJOB_FIELDS
        if _djob_ok(value, quality, b) and value[b + DJ_STATE] == DJOB_RUNNING:
            kw[n], start[n], dur[n] = value[b + DJ_KW], value[b + DJ_START_S], value[b + DJ_DUR_S]
            n += 1
    return kw, start, dur, n


@njit(cache=True)
def _djob_ok(value, quality, b):
    for f in range(N_DJOB_FIELDS):
        if quality[b + f] != Q_OK:
            return False
    return value[b + DJ_KW] > 0.0 and value[b + DJ_DUR_S] > 0.0


@njit(cache=True)
def _djobs(value, quality, t_s, H, step_s):
    """The waiting deferrable jobs (issue 17) as the planner's rows (deferrable.py: kW, run steps, first
    and past-last allowed step; contiguous: a job is not suspended once it runs) and their slots."""
    rows = np.zeros((N_DJOB, D.N_JOB))
    slot = np.zeros(N_DJOB, np.int64)
    n = 0
    for k in range(N_DJOB):
        b = DJOB0 + k * N_DJOB_FIELDS
        if not (_djob_ok(value, quality, b) and value[b + DJ_STATE] == DJOB_WAITING):
            continue
        rows[n, D.J_KW] = value[b + DJ_KW]
        rows[n, D.J_DUR] = math.ceil(value[b + DJ_DUR_S] / step_s - 1e-9)
        rows[n, D.J_EARLY] = max(0.0, math.ceil((value[b + DJ_START_S] - t_s) / step_s - 1e-9))
        rows[n, D.J_END] = math.floor((value[b + DJ_DEADLINE_S] - t_s) / step_s + 1e-9)
        slot[n] = k
        n += 1
    return D.clip_jobs(rows[:n], H), slot[:n]


@njit(cache=True)
def _warning(value, quality):
    """The pushed weather warning as the forecaster's event arrays (one slot)."""
    s, e, f, r = np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1)
    n = 0
    if _ok(value, quality, WX_PV_CUT) and quality[WX_START_S] == Q_OK and quality[WX_END_S] == Q_OK \
            and value[WX_END_S] > value[WX_START_S]:
        s[0], e[0], f[0] = value[WX_START_S], value[WX_END_S], value[WX_PV_CUT]
        r[0] = value[WX_RAMP_S] if quality[WX_RAMP_S] == Q_OK else 0.0
        n = 1
    return s, e, f, r, n


@njit(cache=True)
def mpc_learn(params, st, t_s, dt_s, value, quality, load_kw, meters_fresh, pv_kw):
    """Every cycle, whatever the mode: feed the forecasters and the billing peak (in place in st)."""
    if st[S_MPC_READY] < 0.5:
        _init(params, st, load_kw if meters_fresh else -1.0)
    jk, js, jd, nj = _job(value, quality)
    if meters_fresh:
        load_update(st[S_LOADF:S_LOADF + N_LOAD_STATE], t_s, load_kw, jk, js, jd, nj)
    if params[P_PV_RATED_KW] > 0.0 and quality[PV_KW] == Q_OK:
        pv = params[P_PV_VECTOR:P_PV_VECTOR + N_PV_PARAMS]
        es, ee, ef, er, ne = _warning(value, quality)
        derate_update(st[S_DERATE:S_DERATE + N_DERATE_STATE], pv, t_s, pv_kw, clear_pv_kw(t_s, pv),
                      event_factor(t_s, es, ee, ef, er, ne), quality[PV_AVAILABLE_KW] != Q_OK)
    if quality[GRID_PRICE] == Q_OK:
        load_update(st[S_PRICEF:S_PRICEF + N_LOAD_STATE], t_s, value[GRID_PRICE], jk, js, jd, 0)
    if quality[GRID_CO2] == Q_OK:
        load_update(st[S_CO2F:S_CO2F + N_LOAD_STATE], t_s, value[GRID_CO2], jk, js, jd, 0)
    win = math.floor(t_s / PEAK_WINDOW_S)
    if win != st[S_PEAK_WIN]:
        if st[S_PEAK_WIN] >= 0.0:
            st[S_PEAK_KW] = max(st[S_PEAK_KW], st[S_PEAK_WIN_KWH] / (PEAK_WINDOW_S / 3600.0))
            # a new billing month: the window just closed belonged to the old one, the new one starts at 0
            if month_index(params, t_s) != month_index(params, st[S_PEAK_WIN] * PEAK_WINDOW_S):
                st[S_PEAK_KW] = 0.0
        st[S_PEAK_WIN] = win
        st[S_PEAK_WIN_KWH] = 0.0
    if quality[GRID_KW] == Q_OK:
        st[S_PEAK_WIN_KWH] += max(0.0, value[GRID_KW]) * dt_s / 3600.0


@njit(cache=True)
def _overlap(a, b, lo, hi):
    return max(0.0, min(b, hi) - max(a, lo))


@njit(cache=True)
def tz_offset_s(params, t_s):
    """The site's UTC offset at t_s: the offset at the run's start, then each DST change in the table."""
    off = params[P_TZ_OFFSET_S]
    for i in range(int(params[P_TZ_TABLE])):
        if t_s < params[P_TZ_TABLE + 1 + 2 * i]:
            break
        off = params[P_TZ_TABLE + 2 + 2 * i]
    return off


@njit(cache=True)
def month_index(params, t_s):
    """How many billing-month starts of the PARAMS table lie at or before t_s (0: the run's first month).
    Local month starts fall on whole quarter hours in every zone, so a 15-min window is in one month."""
    n = 0
    for i in range(int(params[P_MONTH_TABLE])):
        if t_s < params[P_MONTH_TABLE + 1 + i]:
            break
        n += 1
    return n


@njit(cache=True)
def _tariff_mean(params, a_s, b_s):
    """Mean TOU price over [a_s, b_s) by the site's local hour (three samples per step)."""
    acc = 0.0
    for j in range(3):
        t = a_s + (j + 0.5) * (b_s - a_s) / 3.0
        t += tz_offset_s(params, t)
        h = int(((t % 86400.0) + 86400.0) % 86400.0 // 3600.0) % 24
        acc += params[P_TARIFF + h]
    return acc / 3.0


@njit(cache=True)
def _market_ok(value, quality):
    """The market feed is usable: its header points fresh (they go stale at valid_until) and sane."""
    return (quality[MKT_T0_S] == Q_OK and quality[MKT_T1_S] == Q_OK and quality[MKT_STEP_S] == Q_OK
            and quality[MKT_SERIES] == Q_OK and value[MKT_STEP_S] > 0.0 and value[MKT_T1_S] > value[MKT_T0_S])


@njit(cache=True)
def _market_mean(value, quality, first, bit, a_s, b_s, fallback):
    """Mean of series `first` (mkt_import/export/co2) over [a_s, b_s), three samples like the tariff; a
    sample outside the feed's slots or validity takes `fallback` (the profile's figure for this step)."""
    if (int(value[MKT_SERIES]) & bit) == 0:
        return fallback
    t0, t1, step = value[MKT_T0_S], value[MKT_T1_S], value[MKT_STEP_S]
    acc = 0.0
    for j in range(3):
        t = a_s + (j + 0.5) * (b_s - a_s) / 3.0
        k = int(math.floor((t - t0) / step))
        if t0 <= t < t1 and 0 <= k < MKT_SLOTS and quality[first + k] == Q_OK:
            acc += value[first + k]
        else:
            acc += fallback
    return acc / 3.0


@njit(cache=True)
def build_instance(params, st, t_s, value, quality, soc_pct, load_kw, grid_up, gen_on, gen_ok, export_max_kw,
                   reserve_pct):
    """The planning instance of issue 4 as the kernel's arrays (steps, prm), from forecasts and the image."""
    steps, prm, _ = build_weighted(params, st, t_s, value, quality, soc_pct, load_kw, grid_up, gen_on, gen_ok,
                                   export_max_kw, reserve_pct)
    return steps, prm


@njit(cache=True)
def build_weighted(params, st, t_s, value, quality, soc_pct, load_kw, grid_up, gen_on, gen_ok, export_max_kw,
                   reserve_pct):
    """build_instance, and the weight W on kg of the carbon objective (0 in cost mode).

    [control] objective = "carbon" (controller/core/mpc/objective.py, docs/objectives.md): the money tier
    is this instance with no carbon price and without the demand charge's peak reserve (a money hedge);
    the carbon tier is grid CO2, diesel CO2, stored energy at the horizon's end at what it will displace in
    kg (the mean intensity x eta_d, or diesel where the grid is short) and the reliability terms (value of
    lost load, reserve floor, storm watch) at kappa kg per currency unit; fold_carbon weighs them."""
    carbon = params[P_OBJECTIVE] > 0.5
    kappa = params[P_OBJECTIVE_KAPPA]
    cp = 0.0 if carbon else params[P_CARBON_PRICE]
    H = int(params[P_MPC_HORIZON])
    dt_h = params[P_MPC_DT_H]
    step_s = dt_h * 3600.0
    steps = np.zeros((M.N_STEPS, H))
    prm = np.zeros(M.N_PRM)
    jk, js, jd, nj = _job(value, quality)
    row = np.zeros(H)
    load_forecast(t_s, H, dt_h, st[S_LOADF:S_LOADF + N_LOAD_STATE], jk, js, jd, nj, row)
    steps[M.S_LOAD, :] = row
    steps[M.S_LOAD, 0] = load_kw
    pv = params[P_PV_VECTOR:P_PV_VECTOR + N_PV_PARAMS]
    es, ee, ef, er, ne = _warning(value, quality)
    if params[P_PV_RATED_KW] > 0.0:
        pv_forecast(t_s, H, dt_h, pv, st[S_DERATE:S_DERATE + N_DERATE_STATE], es, ee, ef, er, ne,
                    PV_SUBSAMPLES, row)
        steps[M.S_PV, :] = row
    if quality[WIND_KW] == Q_OK and value[WIND_KW] > 0.0:
        for k in range(H):
            steps[M.S_PV, k] += value[WIND_KW] * math.exp(-k * step_s / WIND_PERSIST_S)
    price = np.zeros(H)
    if params[P_TARIFF_SPOT] > 0.5:
        load_forecast(t_s, H, dt_h, st[S_PRICEF:S_PRICEF + N_LOAD_STATE], jk, js, jd, 0, price)
        if quality[GRID_PRICE] == Q_OK:
            price[0] = value[GRID_PRICE]
    else:
        for k in range(H):
            price[k] = _tariff_mean(params, t_s + k * step_s, t_s + (k + 1) * step_s)
    co2 = np.zeros(H)
    load_forecast(t_s, H, dt_h, st[S_CO2F:S_CO2F + N_LOAD_STATE], jk, js, jd, 0, co2)
    if quality[GRID_CO2] == Q_OK:
        co2[0] = value[GRID_CO2]
    xprice = np.full(H, params[P_EXPORT_PRICE])
    if _market_ok(value, quality):          # the market feed wins wherever it covers a step
        for k in range(H):
            a = t_s + k * step_s
            price[k] = _market_mean(value, quality, MKT_IMPORT, 1, a, a + step_s, price[k])
            xprice[k] = _market_mean(value, quality, MKT_EXPORT, 2, a, a + step_s, xprice[k])
            co2[k] = _market_mean(value, quality, MKT_CO2, 4, a, a + step_s, co2[k])
    # grid availability: announced outage, or down now without notice
    o_s, o_e = 0.0, 0.0
    if quality[OUTAGE_START_S] == Q_OK and quality[OUTAGE_END_S] == Q_OK and value[OUTAGE_END_S] > value[OUTAGE_START_S]:
        o_s, o_e = value[OUTAGE_START_S], value[OUTAGE_END_S]
    down_end = t_s
    if not grid_up:
        down_end = o_e if (o_s <= t_s < o_e) else t_s + params[P_OUTAGE_ASSUME_S]
    cap_full = max(0.0, params[P_GRID_IMPORT_MAX_KW] - params[P_GRID_MARGIN_KW])
    floor_pct = max(params[P_SOC_MIN_PCT], reserve_pct)
    sf = params[P_RESERVE_PENALTY]
    if params[P_PEAK_PRICE] > 0.0 and not carbon:
        # A demand charge: keep a peak reserve ([control] peak_reserve_pct) for the load nobody announced
        # (a training job), weighted so that a kWh held below it for PEAK_RESERVE_HOLD_H is worth a kW of
        # billed peak; real-time shaving above the plan's peak level may still use it (see mpc_setpoints).
        floor_pct = max(floor_pct, min(params[P_PEAK_RESERVE_PCT], params[P_SOC_MAX_PCT]))
        sf = max(sf, params[P_PEAK_PRICE] / PEAK_RESERVE_HOLD_H)
    cap_kwh = params[P_CAPACITY_KWH]
    # diesel's cost per kWh at rated output (fuel and carbon), for the storm floor and the terminal value
    per_l = params[P_FUEL_PRICE] + cp * params[P_DIESEL_CO2_PER_L]
    diesel_kwh_cost = 0.0
    diesel_kwh_kg = 0.0
    if params[P_GEN_RATED_KW] > 0.0:
        l_per_kwh = params[P_FUEL_L_PER_KWH] + params[P_FUEL_L_PER_H_ON] / params[P_GEN_RATED_KW]
        diesel_kwh_cost = l_per_kwh * per_l
        diesel_kwh_kg = l_per_kwh * params[P_DIESEL_CO2_PER_L]
    mean_cost = 0.0
    mean_co2 = 0.0
    max_co2 = 0.0
    for k in range(H):
        a = t_s + k * step_s
        b = a + step_s
        down = _overlap(a, b, o_s, o_e) + _overlap(a, b, t_s, down_end)
        up_frac = 1.0 - min(step_s, down) / step_s
        steps[M.S_GMAX, k] = cap_full * up_frac
        steps[M.S_FLOOR, k] = cap_kwh * (floor_pct if up_frac >= 1.0 else params[P_SOC_MIN_PCT]) / 100.0
        gcost = price[k] + cp * co2[k]
        steps[M.S_GCOST, k] = gcost
        steps[M.S_XPRICE, k] = xprice[k]
        mean_cost += gcost / H
        mean_co2 += co2[k] / H
        max_co2 = max(max_co2, co2[k])
    # Storm watch (opt-in): a weather warning raises the soft floor around the event's start, and the
    # reserve's weight while the warning stands, so the plan goes into the event charged (with the
    # genset if it must: a warned sandstorm on a weak feeder is when the feeder trips).
    storm = params[P_STORM_RESERVE_PCT]
    sf_kg = kappa * sf                      # carbon objective: the reserve in kg per kWh-hour short
    if storm > 0.0 and ne > 0 and t_s < ee[0]:
        # per kWh-hour short: over the raised window this outweighs any source, diesel included
        dcost = diesel_kwh_cost
        for k in range(H):
            dcost = max(dcost, steps[M.S_GCOST, k])
        sf = max(sf * STORM_PENALTY_FACTOR, dcost * 3600.0 / STORM_WINDOW_S)
        sf_kg = max(sf_kg * STORM_PENALTY_FACTOR, max(diesel_kwh_kg, max_co2) * 3600.0 / STORM_WINDOW_S)
        for k in range(H):
            a = t_s + k * step_s
            if _overlap(a, a + step_s, es[0] - STORM_WINDOW_S, es[0] + STORM_WINDOW_S) > 0.0:
                steps[M.S_FLOOR, k] = max(steps[M.S_FLOOR, k], cap_kwh * min(storm, params[P_SOC_MAX_PCT]) / 100.0)
    eta_c, eta_d = params[P_ETA_CHARGE], params[P_ETA_DISCHARGE]
    prm[M.P_DT] = dt_h
    prm[M.P_XMAX] = export_max_kw
    prm[M.P_UNS] = params[P_UNSERVED_PENALTY]
    prm[M.P_SF] = sf
    prm[M.P_CAP] = cap_kwh
    soc0 = min(max(soc_pct, 0.0), 100.0)
    prm[M.P_SOC0] = soc0
    prm[M.P_E0] = cap_kwh * soc0 / 100.0
    prm[M.P_EHI] = cap_kwh * max(params[P_SOC_MAX_PCT], soc0) / 100.0
    prm[M.P_CMAX] = params[P_CHARGE_MAX_KW]
    prm[M.P_DMAX] = params[P_DISCHARGE_MAX_KW]
    prm[M.P_ETAC] = eta_c
    prm[M.P_ETAD] = eta_d
    prm[M.P_WEAR] = params[P_WEAR_COST]
    prm[M.P_TV] = params[P_TERMINAL_FRAC] * mean_cost * eta_d
    prm[M.P_PEAK] = params[P_PEAK_PRICE]
    prm[M.P_PEAK0] = st[S_PEAK_KW]
    # The genset is planned only where the grid cannot carry the forecast net load somewhere in the
    # horizon (a weak feeder, an outage): a backup set is not a peak shaver (its CO2 is 5x the grid's).
    short = not grid_up
    n_short = 0
    for k in range(H):
        if steps[M.S_GMAX, k] < steps[M.S_LOAD, k] - steps[M.S_PV, k]:
            short = True
            n_short += 1
    # Stored energy left at the horizon's end is worth what it will replace: grid energy at its mean
    # cost, or diesel where the grid is short of the load for part of the time (a weak feeder).
    tv_kg = params[P_TERMINAL_FRAC] * mean_co2 * eta_d
    if gen_ok and params[P_GEN_RATED_KW] > 0.0:
        prm[M.P_TV] = max(prm[M.P_TV], eta_d * diesel_kwh_cost * n_short / H)
        tv_kg = max(tv_kg, eta_d * diesel_kwh_kg * n_short / H)
    if gen_ok and (short or gen_on):
        prm[M.P_HASD] = 1.0
        prm[M.P_PMIN] = params[P_GEN_PMIN_KW]
        prm[M.P_PMAX] = params[P_GEN_RATED_KW]
        prm[M.P_QCOST] = params[P_FUEL_L_PER_KWH] * per_l
        prm[M.P_ONCOST] = params[P_FUEL_L_PER_H_ON] * per_l
        prm[M.P_START] = params[P_GEN_START_COST]
        prm[M.P_ON0] = 1.0 if gen_on else 0.0
    w = 0.0
    if carbon:
        w = M.fold_carbon(steps, prm, co2, params[P_FUEL_L_PER_KWH] * params[P_DIESEL_CO2_PER_L],
                          params[P_FUEL_L_PER_H_ON] * params[P_DIESEL_CO2_PER_L], tv_kg,
                          kappa * params[P_UNSERVED_PENALTY], sf_kg)
    return steps, prm, w


@njit(cache=True)
def _plan_key(value, quality, grid_up, gen_on, gen_ok):
    """What forces a new plan at once when it changes: grid, genset, announcements."""
    key = (1.0 if grid_up else 0.0) + (2.0 if gen_on else 0.0) + (4.0 if gen_ok else 0.0)
    ann = 0.0
    w = 1.0
    for i in (JOB_START_S, JOB_KW, WX_START_S, WX_PV_CUT, OUTAGE_START_S, OUTAGE_END_S, WX_GRID_RISK,
              OUTAGE_GRID_RISK):
        if quality[i] == Q_OK:
            ann += w * value[i]
        w += 2.0
    for k in range(N_DJOB):                 # a deferrable job announced, started or ended re-plans at once
        b = DJOB0 + k * N_DJOB_FIELDS
        if quality[b + DJ_STATE] == Q_OK:
            ann += w * (value[b + DJ_STATE] + 3.0 * value[b + DJ_START_S])
        w += 2.0
    if _market_ok(value, quality):          # a new market message (window or prices) re-plans at once
        ann += w * (value[MKT_T0_S] - value[MKT_T1_S]) + value[MKT_IMPORT] + value[MKT_IMPORT + MKT_SLOTS - 1]
    return key + 8.0 * ann


@njit(cache=True)
def _plan_branches(params, st, t_s, value, quality, soc_pct, load_kw, grid_up, gen_on, gen_ok, export_max_kw,
                   reserve_pct, src, ev_s, ev_e, k0, p, steps, prm):
    """A risk-aware warning (mpc_risk, docs/risk.md): the two-branch plan, both branches built by
    build_weighted from their images ("holds" is the instance already built for a weather warning).
    Returns (the holds branch's plan rows: its first k0 steps are the plan in force, tree objective)."""
    v_h, q_h, v_t, q_t = R.branch_images(value, quality, src, ev_s, ev_e, t_s, k0, params[P_MPC_DT_H] * 3600.0)
    if src == R.RISK_OUTAGE:
        steps, prm, _ = build_weighted(params, st, t_s, v_h, q_h, soc_pct, load_kw, grid_up, gen_on, gen_ok,
                                       export_max_kw, reserve_pct)
    steps_t, prm_t, _ = build_weighted(params, st, t_s, v_t, q_t, soc_pct, load_kw, grid_up, gen_on, gen_ok,
                                       export_max_kw, reserve_pct)
    out, _, obj, _ = B.tree_kernel(steps, steps_t, prm, prm_t, k0, p, M.PEAK_EVALS,
                                   int(params[P_MPC_GENSET_EVALS]))
    return out, obj


@njit(cache=True)
def mpc_plan(params, state, st, t_s, value, quality, soc_pct, load_kw, grid_up, gen_on, export_max_kw,
             reserve_pct):
    """Re-plan when the plan in force is older than mpc_replan_s or the situation changed; store its
    first step in st. Returns True when a plan was made this cycle."""
    gen_ok = params[P_HAS_GENSET] > 0.5 and state[S_GEN_FAILED] < 0.5 and not (
        quality[GENSET_AVAILABLE] == Q_OK and value[GENSET_AVAILABLE] < 0.5)
    key = _plan_key(value, quality, grid_up, gen_on, gen_ok)
    # the billed peak only falls at a month start (mpc_learn): the plan's free import level falls with it
    if state[S_PLAN_COUNT] > 0.0 and t_s - state[S_PLAN_T_S] < params[P_MPC_REPLAN_S] \
            and key == state[S_PLAN_KEY] and st[S_PEAK_KW] >= state[S_PEAK_KW]:
        return False
    value, quality = R.down_through_event(value, quality, t_s, grid_up)   # a trip in a risk event: to its end
    steps, prm, w = build_weighted(params, st, t_s, value, quality, soc_pct, load_kw, grid_up, gen_on, gen_ok,
                                   export_max_kw, reserve_pct)
    H = steps.shape[1]
    step_s = params[P_MPC_DT_H] * 3600.0
    jobs, slot = _djobs(value, quality, t_s, H, step_s)
    for k in range(N_DJOB):
        st[S_PLAN_JOB0_S + k] = 0.0
    if jobs.shape[0] > 0:                   # deferrable jobs waiting: their starts are the planner's too
        out, obj, _, run = D.plan_jobs(steps, prm, jobs, M.PEAK_EVALS, int(params[P_MPC_GENSET_EVALS]), D.JOB_EVALS)
        for i in range(jobs.shape[0]):
            for t in range(H):
                if run[i, t] > 0:
                    st[S_PLAN_JOB0_S + slot[i]] = t_s + t * step_s
                    break
    else:
        src, ev_s, ev_e, p = R.risk_event(value, quality, t_s)
        k0 = 0
        if src != R.RISK_NONE and grid_up and w == 0.0:   # the carbon objective plans risk-blind (docs/risk.md)
            k0, p = R.branch_point(t_s, ev_s, ev_e, p, H, step_s)
        if k0 > 0:
            out, obj = _plan_branches(params, st, t_s, value, quality, soc_pct, load_kw, grid_up, gen_on, gen_ok,
                                      export_max_kw, reserve_pct, src, ev_s, ev_e, k0, p, steps, prm)
        else:
            out, obj, _ = M.plan_kernel(steps, prm, M.PEAK_EVALS, int(params[P_MPC_GENSET_EVALS]))
    if w > 0.0:
        obj /= w                            # the carbon objective in kg: K + C / W
    st[S_PLAN_T_S] = t_s
    st[S_PLAN_KEY] = key
    st[S_PLAN_GRID_KW] = out[0, 0]
    st[S_PLAN_EXPORT_KW] = out[1, 0]
    st[S_PLAN_BATTERY_KW] = out[3, 0] - out[2, 0]
    st[S_PLAN_DIESEL_KW] = out[4, 0]
    st[S_PLAN_DIESEL_ON] = out[8, 0]
    st[S_PLAN_SOC_END_PCT] = out[7, 1]
    st[S_PLAN_OBJECTIVE] = obj
    peak = 0.0
    for k in range(out.shape[1] - 1):
        peak = max(peak, out[0, k])
    st[S_PLAN_PEAK_KW] = max(peak, st[S_PEAK_KW])
    st[S_PLAN_COUNT] = state[S_PLAN_COUNT] + 1.0
    return True


@njit(cache=True)
def mpc_setpoints(params, state, st, t_s, value, quality, soc_pct, load_kw, pv_kw, gen_kw, cap_kw,
                  export_max_kw, grid_up, gen_on, reserve_pct, discharge_lim_kw):
    """(battery_kw, want_gen, gen_sp_kw): the plan in force (re-planned if due), corrected for now.

    Where the grid is capped (a weak feeder) or a demand charge is billed, the grid follows the plan's
    import and the battery absorbs what the forecasts missed, but only above the planned import: below
    the plan's peak level (already billed or planned) the grid takes a load jump, so the battery keeps
    its energy for the hours the plan needs it. The import cap, the export limit and the reserve hold are
    applied to what the meters show this cycle."""
    mpc_plan(params, state, st, t_s, value, quality, soc_pct, load_kw, grid_up, gen_on, export_max_kw,
             reserve_pct)
    net_kw = load_kw - pv_kw
    want_gen = st[S_PLAN_DIESEL_ON] > 0.5
    gen_sp_kw = 0.0
    if params[P_HAS_GENSET] > 0.5:
        beyond_kw = net_kw - cap_kw - discharge_lim_kw      # more than grid and battery can carry now
        if beyond_kw > 0.0 or (not grid_up and soc_pct <= params[P_SOC_MIN_PCT] + 2.0 and net_kw > 0.0):
            want_gen = True
        if want_gen:
            gen_sp_kw = min(max(st[S_PLAN_DIESEL_KW], beyond_kw, params[P_GEN_PMIN_KW]), params[P_GEN_RATED_KW])
    supply_kw = net_kw - running_set_kw(want_gen, gen_sp_kw, gen_kw)
    if grid_up:
        battery_kw = supply_kw - (st[S_PLAN_GRID_KW] - st[S_PLAN_EXPORT_KW])
        lim_kw = cap_kw
        if params[P_PEAK_PRICE] > 0.0:      # between the planned import and the peak level: grid
            lim_kw = min(cap_kw, max(st[S_PLAN_PEAK_KW], st[S_PLAN_GRID_KW]))
            battery_kw = max(st[S_PLAN_BATTERY_KW], supply_kw - lim_kw)
        battery_kw = max(battery_kw, supply_kw - cap_kw)            # the feeder cap, whatever the plan
        battery_kw = min(battery_kw, supply_kw + export_max_kw)     # no export beyond the limit
        if soc_pct <= reserve_pct:          # hold the reserve: only the import above the limit
            battery_kw = min(battery_kw, max(0.0, supply_kw - lim_kw))
    else:
        battery_kw = supply_kw                                       # island: the battery balances
    return battery_kw, want_gen, gen_sp_kw
