"""Turn a validated site profile into the kernels' PARAMS vector."""
import math
from functools import lru_cache

import numpy as np

from controller.alarms import latch_mask
from controller.config import SiteConfig
from controller.core import layout as L


def _put_curve(p: np.ndarray, curve: int, points: list[list[float]]) -> None:
    base = L.N_SCALAR_PARAMS + curve * L.CURVE_SLOTS
    p[base] = len(points)
    for i, (x, y) in enumerate(points):
        p[base + 1 + i] = x
        p[base + 1 + L.CURVE_MAX_POINTS + i] = y


# MPC planner settings (issue 4): 24 h ahead in 15-min steps (the demand-charge window), re-planned
# every 60 s so the plan in force is never older than that; the genset pattern search is capped so a
# plan fits a cycle's budget (see tools/bench/mpc.py for its gap at this budget).
MPC_HORIZON, MPC_DT_H, MPC_REPLAN_S, MPC_GENSET_EVALS = 96, 0.25, 60.0, 100
MPC_UNSERVED_PENALTY = 50.0      # [control] voll_per_kwh's default: per kWh not served (site currency)
MPC_RESERVE_PENALTY = 0.03       # per kWh-hour under the reserve SOC: the genset backs the reserve up
MPC_TERMINAL_FRAC = 1.0          # stored energy at the horizon's end is worth this x mean grid cost x eta
MPC_OUTAGE_ASSUME_S = 3600.0     # an unannounced outage is assumed to last at least this long
OBJECTIVE_CODES = {"cost": 0.0, "carbon": 1.0}   # [control] objective (controller/core/mpc/objective.py)


def objective_kappa(cfg: SiteConfig) -> float:
    """kg CO2e per currency unit at which the carbon objective weighs its reliability terms (the value of
    lost load, the reserve floor, storm watch): the site's grid, whose kWh costs the mean import price of its
    tariff table and emits its static factor, so each of them keeps, against a kWh of grid, the weight it
    has in the cost objective. A table whose mean price is not positive falls back to the genset's fuel
    (kg/L over price/L), then to 1 kg per currency unit. docs/objectives.md."""
    price = cfg["tariff"]["import_price_per_kwh"]
    mean_price = float(np.mean(price)) if isinstance(price, list) else float(price)
    if mean_price > 0.0 and cfg["emissions"]["grid_kg_per_kwh"] > 0.0:
        return cfg["emissions"]["grid_kg_per_kwh"] / mean_price
    gen = cfg.get("genset") or {}
    if gen.get("fuel_price_per_l", 0.0) > 0.0 and cfg["emissions"]["diesel_kg_per_l"] > 0.0:
        return cfg["emissions"]["diesel_kg_per_l"] / gen["fuel_price_per_l"]
    return 1.0


@lru_cache(maxsize=4096)
def _offset_at_hour(tz: str, hour: int) -> float:
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo
    return datetime.fromtimestamp(hour * 3600.0, timezone.utc).astimezone(ZoneInfo(tz)).utcoffset().total_seconds()


def utc_offset_s(tz: str, t_utc_s: float) -> float:
    """The site's UTC offset at t_utc_s: the TOU table is by local hour. Cached per UTC hour (every zone's
    changes in use fall on a whole UTC hour or half hour; the half-hour ones are resolved exactly)."""
    hour = int(t_utc_s // 3600.0)
    off = _offset_at_hour(tz, hour)
    if off != _offset_at_hour(tz, hour + 1):        # a change within this hour: look at the second
        from datetime import datetime, timezone
        from zoneinfo import ZoneInfo
        return datetime.fromtimestamp(t_utc_s, timezone.utc).astimezone(ZoneInfo(tz)).utcoffset().total_seconds()
    return off


def tz_transitions(tz: str, t0_s: float, n: int = L.TZ_MAX_CHANGES, span_days: float = 3660.0):
    """(offset at t0_s, [(utc_s, offset_after_s), ...]): the next n offset changes after t0_s within
    span_days, each to the second. Why a table in PARAMS and not one offset: a gateway runs for months
    and its MPC looks a day ahead, so both cross DST changes."""
    changes = [c for c in _tz_changes(tz, int(t0_s // 86400.0), n + 1, span_days) if c[0] > t0_s]
    return utc_offset_s(tz, t0_s), changes[:n]


@lru_cache(maxsize=16)
def _tz_changes(tz: str, day: int, n: int, span_days: float):
    t0_s = day * 86400.0
    out = []
    cur = utc_offset_s(tz, t0_s)
    lo = t0_s
    end = t0_s + span_days * 86400.0
    while lo < end and len(out) < n:                  # a scan by day (changes are months apart), then bisect
        hi = lo + 86400.0
        nxt = utc_offset_s(tz, hi)
        if nxt == cur:
            lo = hi
            continue
        while hi - lo > 1.0:
            mid = math.floor((lo + hi) / 2.0)
            if utc_offset_s(tz, mid) == cur:
                lo = mid
            else:
                hi = mid
        out.append((hi, nxt))
        cur, lo = nxt, hi
    return tuple(out)


def _utc_offset_s(tz: str, t_ref_s: float | None) -> float:
    """The site's UTC offset at t_ref_s (now if None)."""
    import time
    return utc_offset_s(tz, time.time() if t_ref_s is None else t_ref_s)


def _put_tz(p: np.ndarray, tz: str, t_ref_s: float | None) -> None:
    import time
    t0 = time.time() if t_ref_s is None else t_ref_s
    off0, changes = tz_transitions(tz, t0)
    p[L.P_TZ_OFFSET_S] = off0
    p[L.P_TZ_TABLE] = len(changes)
    for i, (t, off) in enumerate(changes):
        p[L.P_TZ_TABLE + 1 + 2 * i] = t
        p[L.P_TZ_TABLE + 2 + 2 * i] = off


def month_starts(tz: str, t0_s: float, n: int = L.MONTH_MAX_STARTS) -> list[float]:
    """The next n starts of a calendar month in the site's zone after t0_s (UTC epoch s, local midnight
    of the 1st). Why in PARAMS: the demand charge bills the month's peak, the kernel reads no clock, and a
    gateway runs across the 1st. A midnight that a DST change skips resolves (fold=0) to the change
    itself, a repeated one to its first occurrence: the month begins there in either case."""
    from datetime import datetime
    from zoneinfo import ZoneInfo
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(t0_s, zone)
    y, m = local.year, local.month
    out = []
    while len(out) < n:
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        out.append(datetime(y, m, 1, tzinfo=zone).timestamp())
    return out


def _put_months(p: np.ndarray, tz: str, t_ref_s: float | None) -> None:
    import time
    starts = month_starts(tz, time.time() if t_ref_s is None else t_ref_s)
    p[L.P_MONTH_TABLE] = len(starts)
    p[L.P_MONTH_TABLE + 1:L.P_MONTH_TABLE + 1 + len(starts)] = starts


def market_expected(cfg: SiteConfig) -> bool:
    """A market feed is expected when [market] expected = true or a device has role "market"."""
    return bool((cfg.get("market") or {}).get("expected", False)) or any(
        d["role"] == "market" for d in cfg["devices"])


def _put_mpc(p: np.ndarray, cfg: SiteConfig, t_ref_s: float | None) -> None:
    from controller.core.forecast import N_PV_PARAMS, pv_params
    site, tariff, emis, bat = cfg["site"], cfg["tariff"], cfg["emissions"], cfg["battery"]
    gen, pv = cfg.get("genset") or {}, cfg.get("pv") or {}
    p[L.P_MPC_HORIZON], p[L.P_MPC_DT_H] = MPC_HORIZON, MPC_DT_H
    p[L.P_MPC_REPLAN_S], p[L.P_MPC_GENSET_EVALS] = MPC_REPLAN_S, MPC_GENSET_EVALS
    _put_tz(p, site["timezone"], t_ref_s)
    _put_months(p, site["timezone"], t_ref_s)
    p[L.P_MARKET_EXPECTED] = 1.0 if market_expected(cfg) else 0.0
    p[L.P_TARIFF_SPOT] = 1.0 if tariff["kind"] == "spot" else 0.0
    p[L.P_EXPORT_PRICE] = tariff["export_price_per_kwh"]
    p[L.P_PEAK_PRICE] = tariff["peak_price_per_kw"]
    p[L.P_CARBON_PRICE] = emis["carbon_price_per_kg"]
    p[L.P_GRID_CO2] = emis["grid_kg_per_kwh"]
    p[L.P_FUEL_L_PER_KWH] = gen.get("fuel_l_per_kwh", 0.0)
    p[L.P_FUEL_L_PER_H_ON] = gen.get("fuel_l_per_h_on", 0.0)
    p[L.P_FUEL_PRICE] = gen.get("fuel_price_per_l", 0.0)
    p[L.P_DIESEL_CO2_PER_L] = emis["diesel_kg_per_l"]
    p[L.P_GEN_START_COST] = gen.get("start_cost", 0.0)
    # the site's battery wear alone, as in the oracle (tools/sim/oracle.py): it is what stops arbitrage
    # whose spread does not pay for the losses and the wear (see [battery] wear_cost_per_kwh)
    p[L.P_WEAR_COST] = bat["wear_cost_per_kwh"]
    p[L.P_UNSERVED_PENALTY] = cfg["control"]["voll_per_kwh"]
    p[L.P_RESERVE_PENALTY] = MPC_RESERVE_PENALTY
    p[L.P_TERMINAL_FRAC] = MPC_TERMINAL_FRAC
    p[L.P_OUTAGE_ASSUME_S] = MPC_OUTAGE_ASSUME_S
    p[L.P_STORM_RESERVE_PCT] = cfg["control"]["storm_reserve_pct"]
    p[L.P_PEAK_RESERVE_PCT] = cfg["control"]["peak_reserve_pct"]
    p[L.P_OBJECTIVE] = OBJECTIVE_CODES[cfg["control"]["objective"]]
    p[L.P_OBJECTIVE_KAPPA] = objective_kappa(cfg)
    p[L.P_PV_VECTOR:L.P_PV_VECTOR + N_PV_PARAMS] = pv_params(
        site["latitude"], site["longitude"], site["altitude_m"], pv.get("rated_kw", 0.0),
        tilt_deg=pv.get("tilt_deg", 30.0), azimuth_deg=pv.get("azimuth_deg", 180.0))
    price = tariff["import_price_per_kwh"]
    p[L.P_TARIFF:L.P_TARIFF + 24] = price if isinstance(price, list) else [price] * 24


def build_params(cfg: SiteConfig, strategy: str | None = None, t_ref_s: float | None = None) -> np.ndarray:
    """The PARAMS vector for `step`; `strategy` overrides [control].strategy (the sim's --strategy).
    `t_ref_s`: when the run starts (UTC epoch s; default now), for the site's UTC offset."""
    p = np.zeros(L.N_PARAMS, dtype=np.float64)
    bat, grid, ctl, gen, il = cfg["battery"], cfg["grid"], cfg["control"], cfg.get("genset"), cfg["interlocks"]
    p[L.P_PERIOD_S] = ctl["period_s"]
    p[L.P_CAPACITY_KWH] = bat["capacity_kwh"]
    p[L.P_SOC_MIN_PCT] = bat["soc_min_pct"]
    p[L.P_SOC_MAX_PCT] = bat["soc_max_pct"]
    p[L.P_RESERVE_PCT] = bat["reserve_pct"]
    p[L.P_CHARGE_MAX_KW] = bat["charge_max_kw"]
    p[L.P_DISCHARGE_MAX_KW] = bat["discharge_max_kw"]
    p[L.P_PCS_RATED_KW] = cfg["pcs"]["rated_kw"]
    p[L.P_ETA_CHARGE] = bat["eta_charge"]
    p[L.P_ETA_DISCHARGE] = bat["eta_discharge"]
    p[L.P_RAMP_KW_PER_S] = bat["ramp_kw_per_s"]
    p[L.P_CELL_V_MAX] = bat["cell_v_max"]
    p[L.P_CELL_V_MIN] = bat["cell_v_min"]
    p[L.P_NOMINAL_V] = bat["nominal_v"]
    p[L.P_GRID_IMPORT_MAX_KW] = grid["import_max_kw"]
    p[L.P_GRID_EXPORT_MAX_KW] = grid["export_max_kw"]
    p[L.P_GRID_MARGIN_KW] = grid["import_margin_kw"]
    p[L.P_PV_RATED_KW] = (cfg.get("pv") or {}).get("rated_kw", 0.0)
    if gen:
        p[L.P_HAS_GENSET] = 1.0
        p[L.P_GEN_RATED_KW] = gen["rated_kw"]
        p[L.P_GEN_PMIN_KW] = gen["p_min_kw"]
        p[L.P_GEN_MIN_RUN_S] = gen["min_run_s"]
        p[L.P_GEN_COOLDOWN_S] = gen["cooldown_s"]
        p[L.P_GEN_START_SOC_PCT] = gen["start_soc_pct"]
        p[L.P_GEN_STOP_SOC_PCT] = gen["stop_soc_pct"]
    p[L.P_BMS_STALE_CYCLES] = ctl["bms_stale_cycles"]
    p[L.P_METER_STALE_CYCLES] = ctl["meter_stale_cycles"]
    p[L.P_STRATEGY] = L.STRATEGY_CODES[strategy or ctl["strategy"]]
    p[L.P_FORCE_CHARGE_BELOW_V] = il["force_charge_below_cell_v"]
    p[L.P_FORCE_CHARGE_RELEASE_V] = il["force_charge_release_cell_v"]
    p[L.P_FORCE_CHARGE_KW] = il["force_charge_kw"]
    p[L.P_FORCE_CHARGE_FROM_GRID] = 1.0 if il["force_charge_from_grid"] else 0.0
    p[L.P_FORCE_CHARGE_MIN_S] = il["force_charge_min_s"]
    p[L.P_HOLD_HYSTERESIS_PCT] = il["hold_hysteresis_pct"]
    p[L.P_HOLD_MIN_S] = il["hold_min_s"]
    p[L.P_RECOVERY_DELAY_S] = il["recovery_delay_s"]
    p[L.P_TEMP_MAX_C] = il["temp_max_c"]
    p[L.P_TEMP_MIN_C] = il["temp_min_c"]
    p[L.P_LOOP_SAFE_CYCLES] = il["loop_safe_cycles"]
    p[L.P_GEN_MAX_STARTS_PER_H] = il["genset_max_starts_per_h"]
    p[L.P_GEN_START_TIMEOUT_S] = il["genset_start_timeout_s"]
    p[L.P_ALARM_CLEAR_S] = il["alarm_clear_s"]
    p[L.P_ALARM_LATCH_MASK] = float(latch_mask())
    smin, smax = bat["soc_min_pct"], bat["soc_max_pct"]
    curves = {
        "charge_vs_cell_v_max": il["charge_vs_cell_v_max"],
        "discharge_vs_cell_v_min": il["discharge_vs_cell_v_min"],
        "charge_vs_temp_c": il["charge_vs_temp_c"],
        "discharge_vs_temp_c": il["discharge_vs_temp_c"],
        # OpenEMS-like taper into the hard limits, placed relative to this site's SOC band
        "charge_vs_soc_pct": il["charge_vs_soc_pct"] or [[smax - 5.0, 1.0], [smax - 2.0, 0.4], [smax, 0.05]],
        "discharge_vs_soc_pct": il["discharge_vs_soc_pct"] or [[smin, 0.0], [smin + 2.0, 0.3], [smin + 5.0, 1.0]],
    }
    for name, points in curves.items():
        _put_curve(p, L.CURVE_NAMES.index(name), points)
    _put_mpc(p, cfg, t_ref_s)
    return p
