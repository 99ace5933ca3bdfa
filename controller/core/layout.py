"""Fixed layouts of the arrays the pure kernels exchange: params, state, commands and events.

Plain float64 vectors indexed by module constants keep the kernels numba-friendly and make a recording
a handful of contiguous bytes. Each layout is a list of names; the constants (P_PERIOD_S, S_GEN_ON,
C_BATTERY_KW...) are generated from it, so adding a slot is one word in one list.
`controller/params.py` fills PARAMS from a site profile.
"""
import numpy as np


def _constants(prefix: str, names: list[str], start: int = 0) -> int:
    for i, name in enumerate(names, start):
        globals()[f"{prefix}_{name.upper()}"] = i
    return start + len(names)


# --- params: constants of the site, fixed for a run -------------------------------------------------
PARAM_NAMES = (
    "period_s capacity_kwh soc_min_pct soc_max_pct reserve_pct charge_max_kw discharge_max_kw "
    "pcs_rated_kw eta_charge eta_discharge ramp_kw_per_s cell_v_max cell_v_min nominal_v "
    "grid_import_max_kw grid_export_max_kw grid_margin_kw pv_rated_kw has_genset gen_rated_kw "
    "gen_pmin_kw gen_min_run_s gen_cooldown_s gen_start_soc_pct gen_stop_soc_pct "
    "bms_stale_cycles meter_stale_cycles strategy "
    # interlocks
    "force_charge_below_v force_charge_release_v force_charge_kw force_charge_from_grid force_charge_min_s "
    "hold_hysteresis_pct hold_min_s recovery_delay_s temp_max_c temp_min_c loop_safe_cycles "
    "gen_max_starts_per_h gen_start_timeout_s alarm_clear_s alarm_latch_mask"
).split()
N_SCALAR_PARAMS = _constants("P", PARAM_NAMES)

# Protection curves (fraction of the configured maximum vs a measurement), piecewise linear, clamped
# at both ends. Each occupies CURVE_SLOTS floats at the end of PARAMS: n, x[0..7], y[0..7].
CURVE_NAMES = ("charge_vs_cell_v_max discharge_vs_cell_v_min charge_vs_temp_c discharge_vs_temp_c "
               "charge_vs_soc_pct discharge_vs_soc_pct").split()
CURVE_MAX_POINTS = 8
CURVE_SLOTS = 1 + 2 * CURVE_MAX_POINTS
_constants("CURVE", CURVE_NAMES)
N_PARAMS = N_SCALAR_PARAMS + CURVE_SLOTS * len(CURVE_NAMES)

# The MPC strategy's block (controller/core/mpc_strategy.py): planner settings and site economics, then
# the forecasters' PV parameter vector (forecast.N_PV_PARAMS = 14) and the 24 hourly tariff prices.
MPC_PARAM_NAMES = (
    "mpc_horizon mpc_dt_h mpc_replan_s mpc_genset_evals tz_offset_s tariff_spot export_price peak_price "
    "carbon_price grid_co2 fuel_l_per_kwh fuel_l_per_h_on fuel_price diesel_co2_per_l gen_start_cost "
    "wear_cost unserved_penalty reserve_penalty terminal_frac outage_assume_s storm_reserve_pct "
    "market_expected objective objective_kappa peak_reserve_pct"
).split()
P_PV_VECTOR = _constants("P", MPC_PARAM_NAMES, N_PARAMS)
P_TARIFF = P_PV_VECTOR + 14
# The site's UTC offset changes (DST) from the run's start on: n, then (utc_s, offset_after_s) pairs, so
# the TOU table's local hour is right across a change (controller/params.py tz_transitions).
TZ_MAX_CHANGES = 16
P_TZ_TABLE = P_TARIFF + 24
N_PARAMS = P_TZ_TABLE + 1 + 2 * TZ_MAX_CHANGES
# The billing months' starts in the site's time zone from the run's start on (UTC epoch s): n, then the
# instants, so the billed peak resets at a month start in a continuous run without the kernel reading a
# clock or a zone (controller/params.py month_starts; ten years, like the DST table's span).
MONTH_MAX_STARTS = 120
P_MONTH_TABLE = N_PARAMS
N_PARAMS = P_MONTH_TABLE + 1 + MONTH_MAX_STARTS

STRATEGY_NONE, STRATEGY_RULE, STRATEGY_MPC = 0, 1, 2
STRATEGY_CODES = {"none": STRATEGY_NONE, "rule": STRATEGY_RULE, "mpc": STRATEGY_MPC}
STRATEGY_NAMES = {code: name for name, code in STRATEGY_CODES.items()}

# --- state: what step carries from one cycle to the next ---------------------------------------------
GEN_START_RING = 8  # start times kept for the starts-per-hour limit
STATE_NAMES = (
    "last_t_s gen_on gen_on_s gen_off_s last_battery_kw bms_stale_n meter_stale_n safe_bms conservative "
    "trips limited load_kw grid_up gen_starts cycles "
    "charge_block_s discharge_block_s ceiling_hold ceiling_hold_s floor_hold floor_hold_s force_charge "
    "force_charge_s alarm_active alarm_unacked gen_start_wait_s gen_failed loop_safe last_mode boot_ready"
).split()
N_STATE_SCALARS = _constants("S", STATE_NAMES)
S_ALARM_CLEAR_S = N_STATE_SCALARS            # 32 per-alarm "condition clear since" timers
S_GEN_START_TIMES = S_ALARM_CLEAR_S + 32      # ring of the last GEN_START_RING start times (t_s)
# The MPC strategy's block: the plan in force, the billing peak, then the forecasters' learned states
# (PV derate: forecast.N_DERATE_STATE = 6; load, price and grid-CO2 profiles: forecast.N_LOAD_STATE = 202 each).
MPC_STATE_NAMES = (
    "mpc_ready plan_t_s plan_key plan_grid_kw plan_export_kw plan_battery_kw plan_diesel_kw plan_diesel_on "
    "plan_soc_end_pct plan_objective plan_count peak_kw peak_win peak_win_kwh plan_peak_kw "
    "plan_job0_s plan_job1_s plan_job2_s"   # the planned start of each deferrable-job slot (UTC s; 0: none)
).split()
S_DERATE = _constants("S", MPC_STATE_NAMES, S_GEN_START_TIMES + GEN_START_RING)
S_LOADF = S_DERATE + 6
S_PRICEF = S_LOADF + 202
S_CO2F = S_PRICEF + 202
N_STATE = S_CO2F + 202

# --- commands: what actuate writes, plus what the interlocks decided and why ---------------------
COMMAND_NAMES = ("battery_kw genset_run genset_kw pv_limit_kw mode charge_limit_kw discharge_limit_kw "
                 "charge_reason discharge_reason alarms_active alarms_unacked").split()
N_COMMANDS = _constants("C", COMMAND_NAMES)
MODE_NORMAL, MODE_CONSERVATIVE, MODE_SAFE, MODE_FORCE_CHARGE, MODE_MANUAL, MODE_STANDBY = range(6)
MODE_NAMES = ("normal", "conservative", "safe", "force_charge", "manual", "standby")

# Operator / cloud requests arrive as image points (so replay sees them): op_mode values.
OP_AUTO, OP_MANUAL, OP_STANDBY = 0, 1, 2

# Which limit bounds a direction (C_CHARGE_REASON / C_DISCHARGE_REASON; event values).
LIMIT_REASONS = ("none configured_max bms_current bms_forbids soc_hard_limit cell_voltage_curve "
                 "temperature_curve soc_curve hold recovery_delay ramp safe_state force_charge grid_export_limit "
                 "grid_import_limit").split()
_constants("R", LIMIT_REASONS)

# --- alarms: bit positions; texts, severities and checks live in profiles/alarms.toml ------------
ALARM_NAMES = ("bms_lost meter_lost cell_overvoltage cell_undervoltage over_temperature "
               "under_temperature soc_low bms_alarm force_charge genset_start_failed genset_max_starts "
               "grid_lost loop_overrun fuel_low market_stale").split()
_constants("A", ALARM_NAMES)

# --- events: (code, value) rows, at most MAX_EVENTS a cycle ----------------------------------------
MAX_EVENTS = 16
EVENT_LIST = ("bms_stale bms_back meter_stale meter_back genset_start genset_stop battery_limited "
              "battery_unlimited grid_lost grid_back alarm_raised alarm_cleared alarm_acked "
              "force_charge_on force_charge_off hold_on hold_off genset_start_failed loop_safe_on "
              "loop_safe_off mode_changed startup_hold startup_ready black_start").split()
_constants("EV", EVENT_LIST, start=1)
EVENT_NAMES = {
    EV_BMS_STALE: "bms_stale: BMS data too old, battery to safe state (0 kW)",  # noqa: F821
    EV_BMS_BACK: "bms_back: BMS data fresh again, battery released with ramp",  # noqa: F821
    EV_METER_STALE: "meter_stale: conservative mode (no export, no grid charging, hold reserve)",  # noqa: F821
    EV_METER_BACK: "meter_back: site meter fresh again, normal mode",  # noqa: F821
    EV_GENSET_START: "genset_start (value: SOC %)",  # noqa: F821
    EV_GENSET_STOP: "genset_stop (value: SOC %)",  # noqa: F821
    EV_BATTERY_LIMITED: "battery_limited: interlocks cut the setpoint (value: reason code)",  # noqa: F821
    EV_BATTERY_UNLIMITED: "battery_unlimited: setpoint within limits again",  # noqa: F821
    EV_GRID_LOST: "grid_lost: utility supply absent",  # noqa: F821
    EV_GRID_BACK: "grid_back: utility supply present",  # noqa: F821
    EV_ALARM_RAISED: "alarm_raised (value: alarm bit)",  # noqa: F821
    EV_ALARM_CLEARED: "alarm_cleared (value: alarm bit)",  # noqa: F821
    EV_ALARM_ACKED: "alarm_acked (value: alarm bit)",  # noqa: F821
    EV_FORCE_CHARGE_ON: "force_charge_on: min cell voltage below threshold (value: V)",  # noqa: F821
    EV_FORCE_CHARGE_OFF: "force_charge_off: cells recovered (value: V)",  # noqa: F821
    EV_HOLD_ON: "hold_on: SOC at a hard limit (value: +1 ceiling, -1 floor)",  # noqa: F821
    EV_HOLD_OFF: "hold_off: SOC back inside the band by the hysteresis (value: +1/-1)",  # noqa: F821
    EV_GENSET_START_FAILED: "genset_start_failed: not running within the start timeout",  # noqa: F821
    EV_LOOP_SAFE_ON: "loop_safe_on: the scan cycle missed its period too often, safe state",  # noqa: F821
    EV_LOOP_SAFE_OFF: "loop_safe_off: the scan cycle keeps its period again",  # noqa: F821
    EV_MODE_CHANGED: "mode_changed (value: new mode code)",  # noqa: F821
    EV_STARTUP_HOLD: "startup_hold: not every point a decision needs is fresh yet; PCS 0 kW, no genset start",  # noqa: F821
    EV_STARTUP_READY: "startup_ready: SOC, cell limits and grid state fresh; control released (value: cycles held)",  # noqa: F821
    EV_BLACK_START: "black_start: site dark before the battery was known; genset started to restore supply",  # noqa: F821
}


def new_state(t0_s: float) -> np.ndarray:
    state = np.zeros(N_STATE, dtype=np.float64)
    state[S_LAST_T_S] = t0_s  # noqa: F821
    state[S_GEN_OFF_S] = 1e9  # noqa: F821  long off: no cool-down pending at start
    state[S_GRID_UP] = 1.0  # noqa: F821
    state[S_GEN_START_TIMES:S_GEN_START_TIMES + GEN_START_RING] = -1e18
    return state


def reason_name(code: float) -> str:
    return LIMIT_REASONS[int(code)] if 0 <= int(code) < len(LIMIT_REASONS) else str(code)
