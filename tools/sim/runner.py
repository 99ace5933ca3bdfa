"""Run the real controller loop against a simulated site and report KPIs.

`edge-ems sim` and `edge-ems demo` are thin wrappers around `run_sim`.
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from controller.loop import ScanLoop
from controller.params import build_params
from controller.core import layout as L
from controller.replay import Recorder
from controller.runtime.site import SiteRuntime
from tools.sim.exogenous import Series
from tools.sim.provider import SimClock, SimProvider  # noqa: F401  (SimClock re-exported for old callers)
from tools.sim.scenario import Scenario
from tools.sim.site import SimSite
from tools.sim.study import apply_study, write_ledger_report


EVENT_LOG_MAX = 200_000     # events kept for OUT/events.jsonl (a year is ~10^4; a flapping site is bounded)


@dataclass
class SimResult:
    kpis: dict
    site: SimSite
    loop: ScanLoop
    wall_s: float
    report: dict | None = None      # the ledger's report (OUT/ledger-report.json): months, years, total


def kpis_of(site: SimSite, loop: ScanLoop, hours: float, wall_s: float) -> dict:
    """The KPI set of `DIR/kpis.json`: from the simulator's own meters (the truth), plus loop health.

    Every run is credited for the energy it leaves in the battery (docs/kpis.md, "stored-energy credit"):
    the stored kWh at the end minus at the start, x eta_discharge (what it can deliver), valued at the run's
    mean grid intensity (location-based, the series the meters bill) and mean import price, both plain
    means over the run's minutes; co2_adjusted_kg = co2_kg - that CO2, cost_adjusted = cost - that cost (a
    run that ends emptier is debited by the same rule)."""
    m, g = site.meters, site.genset
    cfg = site.scn.site
    litres = g.litres if g else 0.0
    diesel_kwh = g.energy_kwh if g else 0.0
    gen_cfg = cfg.get("genset") or {}
    # the demand charge bills each calendar month's highest 15-min import (site zone; tools/sim/study.py)
    months = getattr(site, "month_peaks", None)
    if months is not None and site.t_s - m.window_start_s >= 900:      # the last window, when complete
        months.add(m.window_start_s, m.window_import_kwh / (900.0 / 3600.0))
    billed = months.billed(site.t_s) if months is not None else {}
    peak_kw = max(m.peak_15min_kw, m.window_import_kwh / (900.0 / 3600.0) if site.t_s - m.window_start_s >= 900 else 0.0)
    billed_kw = sum(billed.values()) if billed else peak_kw
    supplied = m.pv_used_kwh + m.wind_used_kwh + m.grid_import_kwh + diesel_kwh     # wind: on-site renewable
    co2 = m.co2_kg_grid + litres * cfg["emissions"]["diesel_kg_per_l"]
    cost = (m.cost + litres * gen_cfg.get("fuel_price_per_l", 0.0) + (g.starts if g else 0) * gen_cfg.get("start_cost", 0.0)
            + cfg["tariff"]["peak_price_per_kw"] * billed_kw)
    bat = site.battery
    soc0 = float(site.scn["init"]["soc_pct"])
    stored0, stored1 = bat.capacity_kwh * soc0 / 100.0, bat.capacity_kwh * bat.soc_pct / 100.0
    usable = (stored1 - stored0) * bat.eta_discharge
    n_min = max(1, min(len(site.series.price_per_kwh), int(round(site.t_s / 60.0))))
    mean_co2 = float(np.mean(site.series.co2_kg_per_kwh[:n_min]))
    mean_price = float(np.mean(site.series.price_per_kwh[:n_min]))
    objective = {0: "cost", 1: "carbon"}.get(int(loop.params[L.P_OBJECTIVE]), "?")
    stats = loop.stats.as_dict()
    return {
        "scenario": site.scn.name, "hours": hours, "strategy": L.STRATEGY_NAMES[int(loop.params[L.P_STRATEGY])],
        "objective": objective if int(loop.params[L.P_STRATEGY]) == L.STRATEGY_MPC else None,
        "currency": cfg["site"]["currency"],
        "grid_import_kwh": round(m.grid_import_kwh, 3), "grid_export_kwh": round(m.grid_export_kwh, 3),
        "grid_peak_kw": round(peak_kw, 3), "grid_peak_by_month_kw": {k: round(v, 3) for k, v in billed.items()}, "pv_used_kwh": round(m.pv_used_kwh, 3),
        "pv_curtailed_kwh": round(m.pv_avail_kwh - m.pv_used_kwh, 3), "diesel_kwh": round(diesel_kwh, 3),
        "diesel_litres": round(litres, 3), "genset_starts": g.starts if g else 0,
        "wind_used_kwh": round(m.wind_used_kwh, 3), "wind_curtailed_kwh": round(m.wind_avail_kwh - m.wind_used_kwh, 3),
        "renewable_share": round((m.pv_used_kwh + m.wind_used_kwh) / supplied, 4) if supplied > 0 else 0.0,
        # on-site renewables + the grid's carbon-free share of the kWh imported, minute by minute (None
        # without a pushed share): what moving load to a windy grid hour raises
        "grid_cfe_kwh": round(m.grid_cfe_kwh, 3) if site.series.cfe_pct is not None else None,
        "cfe_share": (round((m.pv_used_kwh + m.wind_used_kwh + m.grid_cfe_kwh) / supplied, 4) if supplied > 0 else 0.0)
        if site.series.cfe_pct is not None else None,
        "co2_kg": round(co2, 3), "cost": round(cost, 2), "unserved_kwh": round(m.unserved_kwh, 3),
        "stored_start_kwh": round(stored0, 3), "stored_end_kwh": round(stored1, 3),
        "stored_credit_kwh": round(usable, 3), "credit_grid_kg_per_kwh": round(mean_co2, 5),
        "credit_price_per_kwh": round(mean_price, 5), "credit_co2_kg": round(usable * mean_co2, 3),
        "credit_cost": round(usable * mean_price, 2),
        "co2_adjusted_kg": round(co2 - usable * mean_co2, 3), "cost_adjusted": round(cost - usable * mean_price, 2),
        "load_kwh": round(m.load_kwh, 3), "it_kwh": round(m.it_kwh, 3),
        "battery_charge_kwh": round(m.battery_charge_kwh, 3), "battery_discharge_kwh": round(m.battery_discharge_kwh, 3),
        "soc_start_pct": site.scn["init"]["soc_pct"], "soc_end_pct": round(site.battery.soc_pct, 2),
        "soc_min_pct": round(m.soc_min_pct, 2), "soc_max_pct": round(m.soc_max_pct, 2),
        "interlock_trips": int(loop.state[L.S_TRIPS]), "cycle_overruns": stats["overruns"],
        "cycle_p99_ms": round(stats["p99_ms"], 4), "cycle_max_ms": round(stats["max_ms"], 3),
        "cycles": stats["cycles"], "wall_s": round(wall_s, 2),
        "speedup_x": round(hours * 3600.0 / wall_s, 1) if wall_s > 0 else None,
    }


def run_sim(scn: Scenario, hours: float | None = None, seed: int = 1, strategy: str | None = None,
            out_dir: str | Path | None = None, speed: float = 0.0,
            progress: Callable[[float], None] | None = None, hooks: list | None = None,
            install_signals: bool = False, wire: bool = False, wire_baud: int | None = None,
            ledger: bool = True, ledger_on_record: Callable[[dict], None] | None = None,
            series: Series | None = None, as_profiles: bool = False, account=None,
            compute: dict | None = None, period_s: float | None = None,
            replan_s: float | None = None) -> SimResult:
    """Simulate `hours` of the scenario with the real scan loop; write kpis.json, recording, events.

    ``wire``: the Modbus devices and the BMS behind real ports read by the real drivers (tools/sim/wire.py);
    ``wire_baud`` additionally paces the RS-485 bytes at that baud rate. ``series``: the exogenous series
    already computed for (scn, hours, seed), e.g. in a child process so that this one never loads pvlib and
    pandas (`edge-ems run`, tools/sim/exogenous.start_series_apart); by default they are computed here.
    ``as_profiles``: the in-process devices offer only what their profiles carry, as on the wire
    (tools/sim/devices.limit_to_profiles). ``account``: the controller/carbon/account.py EnergyAccount the
    caller's uplink and IPC hooks read (the ledger integrates into it; one integration for all three).
    ``compute``: keywords for the simulated compute platform (tools/sim/compute_platform.attach_platform,
    e.g. ``{"flex": False}``); it runs when the scenario marks any job deferrable. ``period_s``,
    ``replan_s``: a study's control period and MPC re-plan interval (tools/sim/study.py; `--study`).
    """
    hours = float(hours if hours is not None else scn["scenario"]["hours"])
    cfg = scn.site
    provided = SimProvider(scn, hours, seed, speed=speed, wire=wire, wire_baud=wire_baud, as_profiles=as_profiles,
                           series=series).provide(cfg)
    site = provided.extra["site"]
    params = build_params(cfg, strategy, t_ref_s=scn.start.timestamp())
    study = apply_study(params, period_s, replan_s)          # {} unless a study setting was given
    state0 = L.new_state(provided.clock.utc_s() - params[L.P_PERIOD_S])
    recorder = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        recorder = Recorder(out / "recording", params, state0, meta={
            "site": cfg.name, "gateway": cfg["site"]["gateway_id"], "scenario": scn.name, "seed": seed,
            "strategy": strategy or cfg["control"]["strategy"]}, flush_every=256)
    rt = SiteRuntime(cfg, provided, params=params, state0=state0, recorder=recorder)
    event_log: deque = deque(maxlen=EVENT_LOG_MAX)
    events_dropped = [0]

    def keep_events(loop, image, cmd, events, n):
        if len(event_log) + n > EVENT_LOG_MAX:
            events_dropped[0] += len(event_log) + n - EVENT_LOG_MAX
        for i in range(n):
            event_log.append((float(image["t_s"]), int(events[i, 0]), float(events[i, 1])))

    rt.add("record", "events", keep_events)
    from tools.sim.compute_platform import attach_platform   # deferrable jobs: the platform + cabinet hook
    compute_run = attach_platform(rt, scn, site, seed, hours, **(compute or {}))
    carbon = None
    if out_dir is not None and ledger:        # OUT/ledger + OUT/ledger.pub (controller/carbon)
        from tools.sim.carbon import sim_carbon_hook
        carbon = sim_carbon_hook(scn, site, Path(out_dir), seed=seed, hours=hours, on_record=ledger_on_record,
                                 account=account, jobs=compute_run.book if compute_run else None)
        rt.add("ledger", "carbon", carbon, carbon.close)
    for i, hook in enumerate(hooks or []):    # the caller's (uplink, IPC, watchdog...) after the ledger
        rt.add("uplink", getattr(hook, "hook_name", f"extra{i}"), hook)
    loop = rt.start()
    if install_signals:
        rt.install_signals()
    cycles = int(round(hours * 3600.0 / loop.period_s))
    wall0 = time.perf_counter()
    chunk = max(1, int(600 / loop.period_s))        # report progress every 10 simulated minutes
    rt.run(cycles, progress=(lambda done: progress(done / cycles)) if progress else None, chunk=chunk)
    wall_s = time.perf_counter() - wall0
    rt.close()
    kpis = kpis_of(site, loop, hours, wall_s)
    kpis["wire"] = bool(wire)                    # which I/O path produced these figures
    if study:
        kpis["study"] = study
    if compute_run is not None:                  # jobs_*: deadlines missed, hours moved (docs/compute.md)
        kpis.update(compute_run.platform.kpis(site.t_s))
    # a part of the cycle that raised or blocked: say so, never hide it (slow: a call over loop.SLOW_PART_S)
    failed = {k: h.as_dict() for k, h in loop.health.items() if h.failures}
    slow = {k: h.as_dict() for k, h in loop.health.items() if h.slow and not h.failures}
    if failed:
        kpis["part_faults"] = failed
    if slow:
        kpis["slow_parts"] = slow
    if events_dropped[0]:
        kpis["events_dropped"] = events_dropped[0]
    if recorder is not None and (recorder.degraded or recorder.dropped):
        kpis["recording_degraded"] = {"records": recorder.records, "dropped": recorder.dropped,
                                      "error": recorder.last_error}
    if carbon is not None and (carbon.degraded or carbon.dropped_intervals):
        kpis["ledger_degraded"] = {"faults": carbon.faults, "dropped_intervals": carbon.dropped_intervals,
                                   "unwritten_records": len(carbon.pending), "error": carbon.last_error}
    output_errors: list[str] = []
    if out_dir is not None:
        output_errors = _write_outputs(Path(out_dir), kpis, event_log, site)
        if compute_run is not None and (err := compute_run.platform.write(Path(out_dir), site.t_s)):
            output_errors.append(err)
        report = None
        if carbon is not None:                   # the ledger's monthly / annual report beside kpis.json
            report, err = write_ledger_report(Path(out_dir))
            if err:
                output_errors.append(err)
        if output_errors:
            kpis["output_errors"] = output_errors
        return SimResult(kpis, site, loop, wall_s, report)
    return SimResult(kpis, site, loop, wall_s)


def _write_outputs(out: Path, kpis: dict, event_log, site) -> list[str]:
    """OUT/kpis.json, events.jsonl, minutes.npy (the minute log, tools/sim/site.py) and wind-minutes.npy (on-site
    wind available and shed per minute, for tools/bench/cases.py), each on its own: a full disk costs the file it hits
    (named in the list returned, and by `edge-ems sim` on stderr with exit 1), never the run's figures
    (printed on stdout either way) nor the other files."""
    def kpis_file(f):
        f.write(json.dumps(kpis, indent=2) + "\n")

    def events_file(f):
        for t_s, code, value in event_log:
            f.write(json.dumps({"t_s": t_s, "code": code, "event": L.EVENT_NAMES.get(code, str(code)),
                                "value": value}) + "\n")

    errors = []
    for name, mode, write in (("kpis.json", "w", kpis_file), ("events.jsonl", "w", events_file),
                              ("minutes.npy", "wb", lambda f: np.save(f, np.asarray(site.meters.log))),
                              ("wind-minutes.npy", "wb", lambda f: np.save(f, np.asarray(site.meters.wind_log)))):
        tmp = out / (name + ".tmp")                # whole or absent: never a half-written file under its name
        try:
            with open(tmp, mode) as f:
                write(f)
            os.replace(tmp, out / name)
        except OSError as exc:
            errors.append(f"{out / name}: not written ({exc.strerror or exc})")
            try:
                tmp.unlink()
            except OSError:
                pass
    return errors
