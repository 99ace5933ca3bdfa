"""Turn a validated site profile into the kernels' PARAMS vector."""
import numpy as np

from controller.config import SiteConfig
from controller.core import layout as L


def build_params(cfg: SiteConfig, strategy: str | None = None) -> np.ndarray:
    """The PARAMS vector for `step`; `strategy` overrides [control].strategy (the sim's --strategy)."""
    p = np.zeros(L.N_PARAMS, dtype=np.float64)
    bat, grid, ctl, gen = cfg["battery"], cfg["grid"], cfg["control"], cfg.get("genset")
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
    return p
