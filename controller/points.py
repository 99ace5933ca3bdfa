"""The point catalogue and the process image.

Every input the controller may use is a named point with a unit, a source (a device role and its
canonical point) and a max age. The catalogue's order *is* the process-image layout: numba kernels
index the image with the module constants below (``GRID_KW``...), which numba freezes as compile-time
constants, so a lookup costs nothing and a typo is an import error, not a silent zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FAST, BMS, SLOW, HELD = "fast", "bms", "slow", "held"  # which limits.* max age applies; HELD never ages
# Network inputs (controller/netinputs.py): the compute bridge publishes every 10-60 s, so its points get
# a class of their own (limits.compute_max_age_s, 3 x 60 s); a market feed is stale when its validity
# window ends or it is older than limits.market_max_age_s, whichever comes first (the device stamps it so).
COMPUTE, MARKET = "compute", "market"
MKT_SLOTS = 96                         # market horizon slots in the image: 24 h at 15 min, 96 h at 60 min
DEFAULT_MAX_AGE_S = {COMPUTE: 180.0, MARKET: 86400.0}


@dataclass(frozen=True)
class Point:
    name: str
    unit: str
    role: str           # site device role that feeds it
    device_point: str   # canonical point of that device class (drivers/base.py)
    age_class: str      # FAST (meter_max_age_s), BMS (bms_max_age_s), SLOW (slow_max_age_s), COMPUTE, MARKET
    doc: str = ""


CATALOGUE: tuple[Point, ...] = (
    Point("grid_kw", "kW", "grid_meter", "power_kw", FAST, "site import (+) / export (-) at the connection point"),
    Point("pv_kw", "kW", "pv_meter", "power_kw", FAST, "PV AC output"),
    Point("pv_available_kw", "kW", "pv_inverter", "available_kw", FAST, "PV the inverters could give unlimited"),
    Point("battery_kw", "kW", "pcs", "power_kw", FAST, "PCS AC power, + discharge / - charge"),
    Point("genset_kw", "kW", "genset", "power_kw", FAST, "genset output"),
    Point("genset_running", "bool", "genset", "running", FAST, "1 when the set is up and breaker closed"),
    Point("genset_available", "bool", "genset", "available", SLOW, "0 when in alarm / not in auto"),
    Point("fuel_pct", "%", "genset", "fuel_pct", SLOW, "fuel tank level"),
    Point("soc_pct", "%", "bms", "soc_pct", BMS, "BMS state of charge"),
    Point("soh_pct", "%", "bms", "soh_pct", SLOW, "BMS state of health"),
    Point("battery_v", "V", "bms", "voltage_v", BMS, "pack voltage"),
    Point("battery_a", "A", "bms", "current_a", BMS, "pack current, + discharge"),
    Point("battery_temp_c", "°C", "bms", "temp_c", BMS, "pack temperature"),
    Point("bms_cvl_v", "V", "bms", "cvl_v", BMS, "charge voltage limit"),
    Point("bms_ccl_a", "A", "bms", "ccl_a", BMS, "charge current limit"),
    Point("bms_dcl_a", "A", "bms", "dcl_a", BMS, "discharge current limit"),
    Point("cell_v_max", "V", "bms", "cell_v_max", BMS, "highest cell voltage"),
    Point("cell_v_min", "V", "bms", "cell_v_min", BMS, "lowest cell voltage"),
    Point("cell_temp_max_c", "°C", "bms", "cell_temp_max_c", BMS, "hottest cell"),
    Point("cell_temp_min_c", "°C", "bms", "cell_temp_min_c", BMS, "coldest cell"),
    Point("bms_charge_enable", "bool", "bms", "charge_enable", BMS, "0x35C bit 7"),
    Point("bms_discharge_enable", "bool", "bms", "discharge_enable", BMS, "0x35C bit 6"),
    Point("bms_force_charge", "bool", "bms", "force_charge", BMS, "0x35C bits 5/4"),
    Point("bms_alarm_bits", "bits", "bms", "alarm_bits", BMS, "protection flags (0 = none)"),
    Point("it_kw", "kW", "compute", "it_kw", COMPUTE, "IT load of the compute node"),
    Point("cooling_kw", "kW", "compute", "cooling_kw", COMPUTE, "cooling load"),
    Point("aux_kw", "kW", "compute", "aux_kw", COMPUTE, "auxiliary load (lights, controls)"),
    Point("grid_available", "bool", "grid", "available", FAST, "1 when the utility supply is present"),
    Point("grid_price", "cur/kWh", "grid", "price_per_kwh", SLOW, "current import price"),
    Point("grid_co2_kg_per_kwh", "kgCO2e/kWh", "grid", "co2_kg_per_kwh", SLOW, "current grid intensity"),
    Point("ambient_c", "°C", "weather", "ambient_c", SLOW, "outdoor temperature"),
    # Requests from the technician (TUI) or a verified cloud command; held until changed.
    Point("op_mode", "enum", "operator", "mode", HELD, "0 auto, 1 manual, 2 standby"),
    Point("op_battery_kw", "kW", "operator", "battery_kw", HELD, "manual battery setpoint, + discharge"),
    Point("op_genset", "enum", "operator", "genset", HELD, "manual genset: -1 no request, 0 stop, 1 run"),
    Point("op_reserve_pct", "%", "operator", "reserve_pct", HELD, "reserve SOC override (0: profile's)"),
    Point("op_ack_bits", "bits", "operator", "ack_bits", HELD, "alarms to acknowledge (a one-cycle pulse)"),
    # The scan loop's own health, put in the image so the safe state it triggers replays.
    Point("loop_late_cycles", "cycles", "self", "late_cycles", HELD, "consecutive cycles over their period"),
    # Announcements the MPC plans with (issue 4): pushed by the compute platform, a weather service and
    # the utility; times are UTC epoch seconds, 0 / 0 when nothing is announced.
    Point("job_kw", "kW", "compute", "job_kw", SLOW, "announced job: extra IT power"),
    Point("job_start_s", "s", "compute", "job_start_s", SLOW, "announced job: start (UTC epoch s)"),
    Point("job_end_s", "s", "compute", "job_end_s", SLOW, "announced job: end (UTC epoch s)"),
    Point("wx_pv_cut", "frac", "weather", "pv_cut_frac", SLOW, "weather warning: share of PV lost (sandstorm)"),
    Point("wx_start_s", "s", "weather", "warn_start_s", SLOW, "weather warning: start (UTC epoch s)"),
    Point("wx_end_s", "s", "weather", "warn_end_s", SLOW, "weather warning: end (UTC epoch s)"),
    Point("wx_ramp_s", "s", "weather", "warn_ramp_s", SLOW, "weather warning: time to full depth"),
    Point("outage_start_s", "s", "grid", "outage_start_s", SLOW, "announced grid outage: start (UTC epoch s)"),
    Point("outage_end_s", "s", "grid", "outage_end_s", SLOW, "announced grid outage: end (UTC epoch s)"),
    # The grid meter's voltage: with grid_available the field evidence of a dark site (safe start's
    # black-start rule); a meter on a dead feeder still answers from the cabinet's auxiliary supply.
    Point("grid_v", "V", "grid_meter", "voltage_v", FAST, "grid meter phase voltage (mean)"),
    # The market feed (drivers/market.py) as the MPC's horizon: slot k covers [mkt_t0_s + k*step, +step),
    # only inside the message's validity (< mkt_t1_s); mkt_series says which arrays the message had.
    Point("mkt_t0_s", "s", "market", "t0_s", MARKET, "market: start of slot 0 (UTC epoch s)"),
    Point("mkt_t1_s", "s", "market", "valid_until_s", MARKET, "market: end of the feed's validity (UTC epoch s)"),
    Point("mkt_step_s", "s", "market", "step_s", MARKET, "market: slot length (900 or 3600 s)"),
    Point("mkt_series", "bits", "market", "series", MARKET, "market: 1 import, 2 export, 4 co2 arrays present"),
) + tuple(Point(f"mkt_{series}_{k:02d}", unit, "market", f"{series}_{k:02d}", MARKET, f"market: {what}, slot {k}")
          for series, unit, what in (("import", "cur/kWh", "import price"), ("export", "cur/kWh", "export price"),
                                     ("co2", "kgCO2e/kWh", "grid intensity"))
          for k in range(MKT_SLOTS)) + (
    # Risk-aware warnings (issue 16, docs/risk.md): the probability that the feeder trips during the warned
    # event (the planner's two branches); appended so every index above keeps its place.
    Point("wx_grid_risk", "frac", "weather", "grid_risk", SLOW, "weather warning: probability the feeder trips"),
    Point("outage_grid_risk", "frac", "grid", "outage_grid_risk", SLOW,
          "announced outage: probability it happens (1: certain)"),
)
# Deferrable jobs the MPC places (issue 17, docs/compute.md): N_DJOB slots from the compute platform's
# announcements (drivers/compute.py deferrable_slots), earliest deadline first; appended, indices by name.
N_DJOB = 3
DJOB_FIELDS = (("kw", "kW", "extra IT power"), ("start_s", "s", "earliest start, or the start a running job runs from"),
               ("dur_s", "s", "run time"), ("deadline_s", "s", "latest end (UTC epoch s)"),
               ("state", "enum", "0 none, 1 waiting (announced or held), 2 running"))
CATALOGUE = CATALOGUE + tuple(Point(f"djob{k}_{f}", unit, "compute", f"djob{k}_{f}", SLOW,
                                    f"deferrable job {k}: {what}")
                              for k in range(N_DJOB) for f, unit, what in DJOB_FIELDS)

# On-site wind (issue 16, docs/cases.md): a second renewable generation meter beside PV. Appended last so
# every index above keeps its place; its index is looked up (WIND_KW below), not a literal.
CATALOGUE = CATALOGUE + (Point("wind_kw", "kW", "wind_meter", "power_kw", FAST, "on-site wind turbines' AC output"),)
# The grid's carbon-free share now (issue 17, docs/ledger.md#cfe): pushed with the intensity (a grid update's
# or the market feed's cfe_pct, e.g. Electricity Maps' fossilFreePercentage), so the ledger's 24/7 CFE
# follows the hour a load ran in; without it the profile's static [carbon] grid_cfe_pct. Appended last.
CATALOGUE = CATALOGUE + (Point("grid_cfe_pct", "%", "grid", "cfe_pct", SLOW, "carbon-free share of the grid supply now"),)

N_POINTS = len(CATALOGUE)
INDEX = {p.name: i for i, p in enumerate(CATALOGUE)}
BY_SOURCE = {(p.role, p.device_point): i for i, p in enumerate(CATALOGUE)}
WIND_KW = INDEX["wind_kw"]

# Compile-time indices for the kernels (numba treats module-level ints as constants).
GRID_KW, PV_KW, PV_AVAILABLE_KW, BATTERY_KW, GENSET_KW, GENSET_RUNNING, GENSET_AVAILABLE, FUEL_PCT = range(8)
SOC_PCT, SOH_PCT, BATTERY_V, BATTERY_A, BATTERY_TEMP_C, BMS_CVL_V, BMS_CCL_A, BMS_DCL_A = range(8, 16)
CELL_V_MAX, CELL_V_MIN, CELL_TEMP_MAX_C, CELL_TEMP_MIN_C = range(16, 20)
BMS_CHARGE_ENABLE, BMS_DISCHARGE_ENABLE, BMS_FORCE_CHARGE, BMS_ALARM_BITS = range(20, 24)
IT_KW, COOLING_KW, AUX_KW, GRID_AVAILABLE, GRID_PRICE, GRID_CO2, AMBIENT_C = range(24, 31)
OP_MODE, OP_BATTERY_KW, OP_GENSET, OP_RESERVE_PCT, OP_ACK_BITS, LOOP_LATE_CYCLES = range(31, 37)
JOB_KW, JOB_START_S, JOB_END_S, WX_PV_CUT, WX_START_S, WX_END_S, WX_RAMP_S = range(37, 44)
OUTAGE_START_S, OUTAGE_END_S, GRID_V = range(44, 47)
MKT_T0_S, MKT_T1_S, MKT_STEP_S, MKT_SERIES = range(47, 51)
MKT_IMPORT, MKT_EXPORT, MKT_CO2 = 51, 51 + MKT_SLOTS, 51 + 2 * MKT_SLOTS     # first slot of each series
WX_GRID_RISK, OUTAGE_GRID_RISK = INDEX["wx_grid_risk"], INDEX["outage_grid_risk"]
DJOB0 = INDEX["djob0_kw"]          # slot k, field f: DJOB0 + k * N_DJOB_FIELDS + f
N_DJOB_FIELDS = len(DJOB_FIELDS)
DJ_KW, DJ_START_S, DJ_DUR_S, DJ_DEADLINE_S, DJ_STATE = range(N_DJOB_FIELDS)
DJOB_WAITING, DJOB_RUNNING = 1, 2

# Quality codes, as in drivers/base.py (kept equal by a test).
Q_OK, Q_STALE, Q_ERROR = 0, 1, 2

# The process image: one record, fixed layout, that the kernels take as two contiguous arrays.
IMAGE_DTYPE = np.dtype([
    ("cycle", "<i8"),                       # scan counter since start
    ("t_s", "<f8"),                         # UTC epoch seconds at acquire (the step reads no clock)
    ("value", "<f8", (N_POINTS,)),
    ("quality", "u1", (N_POINTS,)),
])


def new_image() -> np.ndarray:
    """A zeroed image with every point marked stale (nothing read yet)."""
    image = np.zeros((), dtype=IMAGE_DTYPE)
    image["quality"][:] = Q_STALE
    return image


def max_ages_s(limits: dict) -> np.ndarray:
    """Per-point max age from the site profile's [limits] table."""
    by_class = {FAST: limits["meter_max_age_s"], BMS: limits["bms_max_age_s"], SLOW: limits["slow_max_age_s"],
                HELD: float("inf"),
                **{c: limits.get(f"{c}_max_age_s", d) for c, d in DEFAULT_MAX_AGE_S.items()}}
    return np.array([by_class[p.age_class] for p in CATALOGUE], dtype=np.float64)


def _check_layout() -> None:
    names = ("grid_kw pv_kw pv_available_kw battery_kw genset_kw genset_running genset_available fuel_pct soc_pct soh_pct "
             "battery_v battery_a battery_temp_c bms_cvl_v bms_ccl_a bms_dcl_a cell_v_max cell_v_min "
             "cell_temp_max_c cell_temp_min_c bms_charge_enable bms_discharge_enable bms_force_charge "
             "bms_alarm_bits it_kw cooling_kw aux_kw grid_available grid_price grid_co2_kg_per_kwh "
             "ambient_c op_mode op_battery_kw op_genset op_reserve_pct op_ack_bits loop_late_cycles "
             "job_kw job_start_s job_end_s wx_pv_cut wx_start_s wx_end_s wx_ramp_s "
             "outage_start_s outage_end_s grid_v mkt_t0_s mkt_t1_s mkt_step_s mkt_series").split()
    names += [f"mkt_{s}_{k:02d}" for s in ("import", "export", "co2") for k in range(MKT_SLOTS)]
    names += ["wx_grid_risk", "outage_grid_risk"]
    names += [f"djob{k}_{f[0]}" for k in range(N_DJOB) for f in DJOB_FIELDS]
    names += ["wind_kw", "grid_cfe_pct"]
    assert [p.name for p in CATALOGUE] == names, "index constants out of step with CATALOGUE"


_check_layout()
