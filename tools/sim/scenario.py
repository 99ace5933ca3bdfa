"""Scenario files (profiles/scenarios/*.toml): the site they run, the physics around it, and events.

Validated with the same schema machinery as site profiles, so a typo in an event names its key and line.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from controller.config import PROFILES_DIR, load_site, parse_toml, resolve_site, SiteConfig
from controller.schema import ArrayOf, Field as F, Problem, ProfileError, Table, Validator

SCENARIOS_DIR = PROFILES_DIR / "scenarios"
EVENT_KINDS = ("grid_outage", "pv_derate", "load_step", "bms_silent", "meter_silent", "job_announce",
               "cell_imbalance", "genset_fail")

SCENARIO_SCHEMA = Table({
    "scenario": Table({
        "name": F("string", required=True),
        "site": F("string", required=True),
        "start_utc": F("string", required=True),
        "hours": F("number", default=48.0, min=0, min_exclusive=True),
        "description": F("string", default=""),
        "sources": F("string", default=""),
    }, required=True),
    "pv": Table({
        "kwp": F("number", required=True, min=0),
        "tilt_deg": F("number", default=30.0, min=0, max=90),
        "azimuth_deg": F("number", default=180.0, min=0, max=360),
        "tmy_file": F("string", default="723170TYA.CSV"),
        "tmy_day_offset": F("integer", default=0, min=-365, max=365),
        "system_loss": F("number", default=0.14, min=0, max=0.9),
        "temp_coeff_per_c": F("number", default=-0.0037, min=-0.02, max=0),
        "soiling": F("number", default=0.03, min=0, max=0.9),
    }, required=True),
    "load": Table({
        "it_idle_kw": F("number", required=True, min=0),
        "it_nameplate_kw": F("number", required=True, min=0, min_exclusive=True),
        "inference_peak_kw": F("number", default=0.0, min=0),
        "inference_peak_hour": F("number", default=14.0, min=0, max=24),
        "training_jobs_per_day": F("number", default=0.0, min=0, max=48),
        "training_kw": F("number", default=0.0, min=0),
        "training_hours_min": F("number", default=2.0, min=0.1),
        "training_hours_max": F("number", default=6.0, min=0.1),
        "cooling_base_frac": F("number", default=0.10, min=0, max=2),
        "cooling_per_c": F("number", default=0.006, min=0, max=0.2),
        "free_cooling_below_c": F("number", default=10.0, min=-50, max=50),
        "aux_kw": F("number", default=2.0, min=0),
        "noise_kw": F("number", default=1.0, min=0),
    }, required=True),
    "ambient": Table({
        "mean_c": F("number", default=15.0, min=-60, max=60),
        "swing_c": F("number", default=6.0, min=0, max=40),
        "peak_hour": F("number", default=15.0, min=0, max=24),
    }),
    "market": Table({
        "kind": F("string", default="tariff", choices=("tariff", "spot")),
        "spot_base": F("number", default=0.08, min=-10, max=100),
        "spot_daily_amp": F("number", default=0.03, min=0, max=100),
        "spot_wind_coeff": F("number", default=0.07, min=0, max=100),
        "spot_noise": F("number", default=0.005, min=0, max=100),
        "co2_base_kg_per_kwh": F("number", default=0.0, min=0, max=2),
        "co2_wind_coeff": F("number", default=0.0, min=0, max=2),
        # spot only: the fossil part's factor, for the grid's carbon-free share 1 - co2 / it (pushed with the
        # intensity, the ledger's 24/7 CFE); 0: no share pushed
        "co2_fossil_kg_per_kwh": F("number", default=0.0, min=0, max=2),
        "wind_mean": F("number", default=0.5, min=0, max=1),
        "wind_persistence": F("number", default=0.9, min=0, max=0.999),
        # spot only: the day-ahead market feed a site receives (tools/sim/market_feed.py); the site
        # profile needs a `market` device for the controller to see it
        "feed": F("boolean", default=False),
        "publish_hour_local": F("number", default=13.0, min=0, max=24),
        "co2_forecast_sd": F("number", default=0.08, min=0, max=1),
    }),
    # on-site wind turbines (tools/sim/wind.py, docs/cases.md): the resource as a wind atlas gives it (mean
    # speed at a height, Weibull k), its time structure, and a turbine of windpowerlib's library scaled to
    # rated_kw; the site profile needs a wind_meter device for the controller and the ledger to see it
    "wind": Table({
        "rated_kw": F("number", required=True, min=0),
        "count": F("integer", default=1, min=0, max=1000),
        "turbine_type": F("string", default="E-53/800"),     # windpowerlib (oedb) name: the curve's shape
        "hub_height_m": F("number", default=60.0, min=5, max=250),
        "mean_speed_ms": F("number", required=True, min=0.5, max=20),
        "speed_height_m": F("number", default=100.0, min=2, max=250),
        "weibull_k": F("number", default=2.0, min=1.0, max=5.0),
        "roughness_length_m": F("number", default=0.1, min=0.0001, max=3),
        "persistence_per_h": F("number", default=0.97, min=0, max=0.9999),
        "market_correlation": F("number", default=0.0, min=0, max=0.99),   # with [market]'s wind driver
        "seasonal_amp": F("number", default=0.0, min=0, max=0.6),
        "seasonal_peak_doy": F("number", default=15.0, min=1, max=366),
        "diurnal_amp": F("number", default=0.0, min=0, max=0.6),
        "diurnal_peak_hour": F("number", default=15.0, min=0, max=24),
        "turbulence": F("number", default=0.05, min=0, max=0.3),
        "electrical_loss": F("number", default=0.03, min=0, max=0.5),
        "availability": F("number", default=0.97, min=0, max=1),
    }),
    "init": Table({
        "soc_pct": F("number", default=50.0, min=0, max=100),
        "battery_temp_c": F("number", default=25.0, min=-30, max=60),
        "fuel_pct": F("number", default=80.0, min=0, max=100),
        "fuel_tank_l": F("number", default=1000.0, min=0, min_exclusive=True),
    }),
    # the simulated compute platform (tools/sim/compute_platform.py): which jobs may wait for the sun, and
    # how it behaves; the defaults (no deferrable job) leave a run as it was before the platform existed
    "compute": Table({
        "deferrable_share": F("number", default=0.0, min=0, max=1),   # of the training batches, evenly spread
        "deadline_slack_h": F("number", default=12.0, min=0, max=168),  # deadline = natural end + this
        "flex": F("boolean", default=True),           # false: every job announced not deferrable (baseline)
        "power_period_s": F("number", default=15.0, min=0, max=600),   # per-job power to the gateway; 0: none
        "guard_s": F("number", default=60.0, min=0, max=3600),         # release before the latest start
    }),
    "events": ArrayOf(Table({
        "kind": F("string", required=True, choices=EVENT_KINDS),
        "at_h": F("number", required=True, min=0),
        "duration_min": F("number", default=60.0, min=0),
        "fraction": F("number", default=0.0, min=0, max=1),
        "ramp_min": F("number", default=0.0, min=0),
        "kw": F("number", default=0.0, min=-10000, max=10000),
        "mv": F("number", default=0.0, min=-1000, max=1000),
        "start_h": F("number", default=-1.0, min=-1),
        # pv_derate / grid_outage: minutes of advance notice the gateway gets (a weather service's
        # sandstorm warning, the utility's maintenance notice); 0: unannounced
        "warn_min": F("number", default=0.0, min=0),
        # pv_derate / grid_outage with warn_min > 0: the warning's grid_risk (docs/risk.md), the probability
        # the feeder trips during a weather event / that an announced outage happens (-1: not said)
        "grid_risk": F("number", default=-1.0, min=-1, max=1),
        "note": F("string", default=""),
        # job_announce: the platform may hold it (compute/job deferrable) until its latest end deadline_h
        # (hours from the start; -1: its natural end + compute.deadline_slack_h)
        "deferrable": F("boolean", default=False),
        "deadline_h": F("number", default=-1.0, min=-1),
    })),
})


class Scenario(dict):
    """A validated scenario, with its site profile loaded."""

    path: Path
    site: SiteConfig
    start: datetime

    @property
    def name(self) -> str:
        return self["scenario"]["name"]


def resolve_scenario(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    return SCENARIOS_DIR / f"{name_or_path}.toml"


def list_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    path = resolve_scenario(name_or_path)
    doc, text = parse_toml(path)
    validator = Validator(str(path), text)
    data = validator.walk(SCENARIO_SCHEMA, doc, "")
    start = None
    if not validator.problems:
        try:
            start = datetime.fromisoformat(data["scenario"]["start_utc"].replace("Z", "+00:00"))
            if start.tzinfo is None:
                raise ValueError("no UTC offset")
            start = start.astimezone(timezone.utc)
        except ValueError as exc:
            validator.problem("scenario.start_utc", f"expected an ISO 8601 UTC time like "
                              f"'2026-04-09T16:00:00Z', got {data['scenario']['start_utc']!r} ({exc})")
        load = data["load"]
        if load["training_hours_min"] > load["training_hours_max"]:
            validator.problem("load.training_hours_min", "must not exceed load.training_hours_max")
        for i, ev in enumerate(data["events"]):
            if ev["kind"] == "pv_derate" and ev["fraction"] <= 0:
                validator.problem(f"events[{i}].fraction", "pv_derate needs fraction > 0 (share of PV lost)")
            if ev["kind"] == "job_announce" and (ev["kw"] <= 0 or ev["start_h"] < ev["at_h"]):
                validator.problem(f"events[{i}]", "job_announce needs kw > 0 and start_h >= at_h")
            if ev["deferrable"] and ev["kind"] != "job_announce":
                validator.problem(f"events[{i}].deferrable", "only a job_announce event can be deferrable")
            if ev["deadline_h"] >= 0 and (ev["kind"] != "job_announce"
                                          or ev["deadline_h"] < ev["start_h"] + ev["duration_min"] / 60.0):
                validator.problem(f"events[{i}].deadline_h", "a job_announce's latest end: at least start_h + "
                                  "duration_min / 60")
        if data.get("wind"):
            from tools.sim.wind import turbine_problem
            if (why := turbine_problem(data["wind"]["turbine_type"])) is not None:
                validator.problem("wind.turbine_type", why)
    if validator.problems:
        raise ProfileError(validator.problems)
    site_ref = data["scenario"]["site"]
    site_path = resolve_site(site_ref)
    if not Path(site_ref).is_absolute() and not site_path.exists():
        site_path = (path.parent / site_ref)
    scenario = Scenario(data)
    scenario.path = path
    scenario.site = load_site(site_path)
    scenario.start = start
    if data.get("wind") and not any(d["role"] == "wind_meter" for d in scenario.site["devices"]):
        raise ProfileError([Problem(str(path), "wind", f"the turbines' output needs a meter: site {site_path} "
                                    "has no device with role 'wind_meter' (the controller and the carbon ledger "
                                    "would not see it)")])
    market = scenario["market"]
    if market["feed"] and market["kind"] != "spot":
        raise ProfileError([Problem(str(path), "market.feed", "a day-ahead feed needs kind = \"spot\" (a TOU "
                                    "tariff is already known to the controller from the site profile)")])
    if market["feed"] and not any(d["role"] == "market" for d in scenario.site["devices"]):
        raise ProfileError([Problem(str(path), "market.feed", f"the feed needs a receiver: site {site_path} has "
                                    "no device with role 'market' (the MPC would not see it)")])
    return scenario
