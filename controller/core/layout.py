"""Fixed layouts of the arrays the pure kernels exchange: params, state, commands and events.

Plain float64 vectors indexed by module constants keep the kernels numba-friendly and make a recording
a handful of contiguous bytes. `controller/params.py` fills PARAMS from a site profile.
"""
import numpy as np

# --- params: constants of the site, fixed for a run -------------------------------------------------
(P_PERIOD_S, P_CAPACITY_KWH, P_SOC_MIN_PCT, P_SOC_MAX_PCT, P_RESERVE_PCT, P_CHARGE_MAX_KW,
 P_DISCHARGE_MAX_KW, P_PCS_RATED_KW, P_ETA_CHARGE, P_ETA_DISCHARGE, P_RAMP_KW_PER_S, P_CELL_V_MAX,
 P_CELL_V_MIN, P_NOMINAL_V, P_GRID_IMPORT_MAX_KW, P_GRID_EXPORT_MAX_KW, P_GRID_MARGIN_KW, P_PV_RATED_KW,
 P_HAS_GENSET, P_GEN_RATED_KW, P_GEN_PMIN_KW, P_GEN_MIN_RUN_S, P_GEN_COOLDOWN_S, P_GEN_START_SOC_PCT,
 P_GEN_STOP_SOC_PCT, P_BMS_STALE_CYCLES, P_METER_STALE_CYCLES, P_STRATEGY) = range(28)
N_PARAMS = 28
PARAM_NAMES = ("period_s capacity_kwh soc_min_pct soc_max_pct reserve_pct charge_max_kw discharge_max_kw "
               "pcs_rated_kw eta_charge eta_discharge ramp_kw_per_s cell_v_max cell_v_min nominal_v "
               "grid_import_max_kw grid_export_max_kw grid_margin_kw pv_rated_kw has_genset gen_rated_kw "
               "gen_pmin_kw gen_min_run_s gen_cooldown_s gen_start_soc_pct gen_stop_soc_pct "
               "bms_stale_cycles meter_stale_cycles strategy").split()

STRATEGY_NONE, STRATEGY_RULE, STRATEGY_MPC = 0, 1, 2
STRATEGY_CODES = {"none": STRATEGY_NONE, "rule": STRATEGY_RULE, "mpc": STRATEGY_MPC}

# --- state: what step carries from one cycle to the next ---------------------------------------------
(S_LAST_T_S, S_GEN_ON, S_GEN_ON_S, S_GEN_OFF_S, S_LAST_BATTERY_KW, S_BMS_STALE_N, S_METER_STALE_N,
 S_SAFE_BMS, S_CONSERVATIVE, S_TRIPS, S_LIMITED, S_LOAD_KW, S_GRID_UP, S_GEN_STARTS, S_CYCLES) = range(15)
N_STATE = 15
STATE_NAMES = ("last_t_s gen_on gen_on_s gen_off_s last_battery_kw bms_stale_n meter_stale_n safe_bms "
               "conservative trips limited load_kw grid_up gen_starts cycles").split()

# --- commands: what actuate writes ---------------------------------------------------------------
(C_BATTERY_KW, C_GENSET_RUN, C_GENSET_KW, C_PV_LIMIT_KW, C_MODE, C_CHARGE_LIMIT_KW,
 C_DISCHARGE_LIMIT_KW) = range(7)
N_COMMANDS = 7
COMMAND_NAMES = ("battery_kw genset_run genset_kw pv_limit_kw mode charge_limit_kw "
                 "discharge_limit_kw").split()
MODE_NORMAL, MODE_CONSERVATIVE, MODE_SAFE = 0, 1, 2
MODE_NAMES = ("normal", "conservative", "safe")

# --- events: (code, value) rows, at most MAX_EVENTS a cycle ----------------------------------------
MAX_EVENTS = 16
(EV_BMS_STALE, EV_BMS_BACK, EV_METER_STALE, EV_METER_BACK, EV_GENSET_START, EV_GENSET_STOP,
 EV_BATTERY_LIMITED, EV_BATTERY_UNLIMITED, EV_GRID_LOST, EV_GRID_BACK) = range(1, 11)
EVENT_NAMES = {
    EV_BMS_STALE: "bms_stale: battery to safe state (0 kW)",
    EV_BMS_BACK: "bms_back: BMS data fresh again, battery released with ramp",
    EV_METER_STALE: "meter_stale: conservative mode (no export, no grid charging, hold reserve)",
    EV_METER_BACK: "meter_back: site meter fresh again, normal mode",
    EV_GENSET_START: "genset_start (value: SOC %)",
    EV_GENSET_STOP: "genset_stop (value: SOC %)",
    EV_BATTERY_LIMITED: "battery_limited: interlocks cut the setpoint (value: kW cut)",
    EV_BATTERY_UNLIMITED: "battery_unlimited: setpoint within limits again",
    EV_GRID_LOST: "grid_lost: utility supply absent",
    EV_GRID_BACK: "grid_back: utility supply present",
}


def new_state(t0_s: float) -> np.ndarray:
    state = np.zeros(N_STATE, dtype=np.float64)
    state[S_LAST_T_S] = t0_s
    state[S_GEN_OFF_S] = 1e9  # long off: no cool-down pending at start
    state[S_GRID_UP] = 1.0
    return state

STRATEGY_NAMES = {code: name for name, code in STRATEGY_CODES.items()}
