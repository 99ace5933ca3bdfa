"""In-process virtual devices: the simulated site behind the same Device contract as real drivers.

Each speaks its class's canonical points (drivers/base.py). Scenario silences (bms_silent,
meter_silent) make a device say nothing, exactly as a dead RS-485 or CAN link would.
"""
from __future__ import annotations

from controller.netinputs import MARKET_POINT_NAMES
from controller.points import MKT_SLOTS
from drivers.base import QUALITY_OK, Sink
from drivers.compute import deferrable_slots
from tools.sim.site import SimSite


class SimDevice:
    kind = ""

    def __init__(self, name: str, site: SimSite):
        self.name = name
        self.site = site

    def silent(self) -> bool:
        return False

    def acquire(self, now_mono_s: float, sink: Sink) -> None:
        if self.silent():
            return
        name = self.name
        for point, value in self.read():
            sink(name, point, value, now_mono_s, QUALITY_OK)

    def read(self):
        return ()

    def actuate(self, commands: dict[str, float], now_mono_s: float) -> None:
        pass

    def close(self) -> None:
        pass


class SimGridMeter(SimDevice):
    kind = "meter"

    def silent(self):
        return self.site.series.flag("meter_silent", self.site.t_s)

    def read(self):
        f, m = self.site.flows, self.site.meters
        up = self.site.grid_up()
        return (("power_kw", f.grid_kw), ("voltage_v", 230.0 if up else 0.0),
                ("frequency_hz", 50.0 if up else 0.0), ("import_kwh", m.grid_import_kwh),
                ("export_kwh", m.grid_export_kwh))


class SimPvMeter(SimDevice):
    kind = "meter"

    def read(self):
        return (("power_kw", self.site.flows.pv_kw), ("import_kwh", self.site.meters.pv_used_kwh))


class SimWindMeter(SimDevice):
    """The meter on the turbines' feeder (a second generation meter beside PV; tools/sim/wind.py)."""

    kind = "meter"

    def read(self):
        return (("power_kw", self.site.flows.wind_kw), ("import_kwh", self.site.meters.wind_used_kwh))


class SimPvInverter(SimDevice):
    kind = "pv_inverter"

    def read(self):
        f = self.site.flows
        if not self.site.pv_available_visible:
            return (("power_kw", f.pv_kw), ("limit_kw", self.site.pv_limit_kw))
        return (("power_kw", f.pv_kw), ("available_kw", f.pv_kw + f.curtailed_kw),
                ("limit_kw", self.site.pv_limit_kw))

    def actuate(self, commands, now_mono_s):
        if "limit_kw" in commands:
            self.site.actuate_pv_limit(commands["limit_kw"])


class SimPcs(SimDevice):
    kind = "pcs"

    def read(self):
        return (("power_kw", self.site.flows.battery_kw), ("setpoint_kw", self.site.battery_sp_kw))

    def actuate(self, commands, now_mono_s):
        if "setpoint_kw" in commands:
            self.site.actuate_pcs(commands["setpoint_kw"])


class SimBms(SimDevice):
    kind = "bms"

    def silent(self):
        return self.site.series.flag("bms_silent", self.site.t_s)

    def read(self):
        b = self.site.battery
        cell_max, cell_min = b.cell_v_range()
        cell_max += self.site.series.at("cell_offset_v", self.site.t_s)
        pack_v = b.pack_v()
        return (("soc_pct", round(b.soc_pct, 1)), ("soh_pct", b.soh_pct), ("voltage_v", pack_v),
                ("current_a", b.current_a()), ("temp_c", b.temp_c), ("cvl_v", b.cells * 3.5),
                ("ccl_a", b.ccl_a()), ("dcl_a", b.dcl_a()), ("dvl_v", b.cells * 2.9),
                ("cell_v_max", cell_max), ("cell_v_min", cell_min), ("cell_temp_max_c", b.temp_c + 1.5),
                ("cell_temp_min_c", b.temp_c - 1.5), ("charge_enable", 1.0 if b.soc_pct < 99.9 else 0.0),
                ("discharge_enable", 1.0 if b.soc_pct > 1.0 else 0.0), ("force_charge", 0.0),
                ("alarm_bits", 0.0))


class SimGenset(SimDevice):
    kind = "genset"

    def read(self):
        g = self.site.genset
        if g is None:
            return ()
        return (("power_kw", g.power_kw if g.running else 0.0), ("running", 1.0 if g.running else 0.0),
                ("available", 1.0 if g.fuel_pct > 1.0 else 0.0), ("fuel_pct", g.fuel_pct),
                ("run_hours_h", g.run_s / 3600.0), ("starts", float(g.starts)))

    def actuate(self, commands, now_mono_s):
        if "run" in commands:
            sp_kw = None if self.site.gen_follows_load else commands.get("setpoint_kw")
            self.site.actuate_genset(commands["run"] > 0.5, sp_kw)


def _announced(site: SimSite, kind: str, notice_h):
    """The scenario event of `kind` announced by now and not yet over (the latest such), or None.
    notice_h(ev): hours before the event's start at which the gateway hears of it."""
    now_h = site.t_s / 3600.0
    found = None
    for ev in site.scn["events"]:
        if ev["kind"] != kind:
            continue
        start_h = ev["start_h"] if kind == "job_announce" else ev["at_h"]
        if start_h - notice_h(ev) <= now_h < start_h + ev["duration_min"] / 60.0:
            found = (ev, start_h)
    return found


EMPTY_SLOTS = tuple(deferrable_slots((), 0.0))


class SimCompute(SimDevice):
    kind = "compute"

    def read(self):
        s, t = self.site.series, self.site.t_s
        job_kw = job_start = job_end = 0.0
        platform = getattr(self.site, "compute", None)
        flex = platform is not None and platform.flex
        hit = _announced(self.site, "job_announce", lambda ev: ev["start_h"] - ev["at_h"])
        if hit is not None and not (flex and hit[0].get("deferrable", False)):
            ev, start_h = hit     # the compute platform's announcement (MQTT in the field)
            t0 = self.site.scn.start.timestamp()
            job_kw, job_start = ev["kw"], t0 + start_h * 3600.0
            job_end = job_start + ev["duration_min"] * 60.0
        it_kw, cooling_kw = self.site.it_cooling_kw(t)      # the compute platform's jobs as they run
        # deferrable jobs (flexibility on): the slots the MPC places, from what the platform announced to the
        # gateway's consumer (drivers/compute.py deferrable_slots, as in the field)
        slots = deferrable_slots(list(platform.telemetry.jobs.values()), platform.t0 + t) if flex else EMPTY_SLOTS
        return (("it_kw", it_kw), ("cooling_kw", cooling_kw), ("aux_kw", s.at("aux_kw", t)),
                ("job_kw", job_kw), ("job_start_s", job_start), ("job_end_s", job_end), *slots)


class SimGrid(SimDevice):
    """The utility side: availability (a relay contact) and the cloud-pushed price and intensity."""

    kind = "grid"

    def read(self):
        s, t = self.site.series, self.site.t_s
        start = end = 0.0
        risk = 1.0
        hit = _announced(self.site, "grid_outage", lambda ev: ev["warn_min"] / 60.0)
        if hit is not None and hit[0]["warn_min"] > 0:   # the utility's maintenance notice
            ev, start_h = hit
            start = self.site.scn.start.timestamp() + start_h * 3600.0
            end = start + ev["duration_min"] * 60.0
            risk = ev["grid_risk"] if ev["grid_risk"] >= 0 else 1.0
        cfe = (("cfe_pct", s.at("cfe_pct", t)),) if s.cfe_pct is not None else ()
        return (("available", 1.0 if self.site.grid_up() else 0.0), ("price_per_kwh", s.at("price_per_kwh", t)),
                ("co2_kg_per_kwh", s.at("co2_kg_per_kwh", t)), *cfe, ("outage_start_s", start),
                ("outage_end_s", end), ("outage_grid_risk", risk))


class SimWeather(SimDevice):
    kind = "weather"

    def read(self):
        cut = start = end = ramp = risk = 0.0
        hit = _announced(self.site, "pv_derate", lambda ev: ev["warn_min"] / 60.0)
        if hit is not None and hit[0]["warn_min"] > 0:   # a weather service's warning (sandstorm)
            ev, start_h = hit
            cut, ramp, risk = ev["fraction"], ev["ramp_min"] * 60.0, max(0.0, ev["grid_risk"])
            start = self.site.scn.start.timestamp() + start_h * 3600.0
            end = start + ev["duration_min"] * 60.0
        return (("ambient_c", self.site.series.at("ambient_c", self.site.t_s)), ("pv_cut_frac", cut),
                ("warn_start_s", start), ("warn_end_s", end), ("warn_ramp_s", ramp), ("grid_risk", risk))


class SimMarket(SimDevice):
    """The cloud's market message (tools/sim/market_feed.py: day-ahead prices, a CO2 forecast), received
    at each 15-minute boundary and put into the image as netinputs.MarketDevice does: written once per
    message and held by the image builder (a full horizon is ~290 points: not re-sunk every cycle)."""

    kind = "market"

    def __init__(self, name, site):
        super().__init__(name, site)
        from tools.sim.market_feed import DayAheadFeed
        scn = site.scn
        self.feed = DayAheadFeed(scn, site.series, site.seed) if scn["market"]["feed"] else None
        self._t0 = scn.start.timestamp()
        self._slot = None

    def acquire(self, now_mono_s, sink):
        if self.feed is None:
            return
        now = self._t0 + self.site.t_s
        slot = int(now // 900)
        if slot == self._slot:
            return
        self._slot = slot
        msg = self.feed.message(now)
        if msg is None:
            return
        valid_from, valid_until, imp, exp, co2 = msg
        name = self.name
        for point, v in (("t0_s", valid_from), ("valid_until_s", valid_until), ("step_s", 900.0), ("series", 7.0)):
            sink(name, point, v, now_mono_s, QUALITY_OK)
        for s, arr in (("import", imp), ("export", exp), ("co2", co2)):
            names = MARKET_POINT_NAMES[s]
            for k in range(min(MKT_SLOTS, len(arr))):
                sink(name, names[k], float(arr[k]), now_mono_s, QUALITY_OK)


SIM_DEVICE_BY_ROLE = {
    "grid_meter": SimGridMeter, "pv_meter": SimPvMeter, "pv_inverter": SimPvInverter, "pcs": SimPcs,
    "bms": SimBms, "genset": SimGenset, "compute": SimCompute, "grid": SimGrid, "weather": SimWeather,
    "wind_meter": SimWindMeter, "market": SimMarket,
}


def build_sim_devices(site: SimSite) -> dict[str, SimDevice]:
    """One virtual device per [[devices]] entry of the site profile, keyed by device name."""
    devices = {}
    for dev in site.scn.site["devices"]:
        devices[dev["name"]] = SIM_DEVICE_BY_ROLE[dev["role"]](dev["name"], site)
    return devices


def limit_to_profiles(site: SimSite) -> None:
    """Make the simulated devices offer only what the site's device profiles can carry.

    The in-process devices are ideal by default (a genset that takes a kW setpoint, inverters that report
    the PV they could give). Real ones, and the wire run, are what their register maps allow: a Deep Sea
    GenComm set has run/stop keys only, so it follows the load; a SunSpec 103/123 inverter does not
    report its available power. ``edge-ems sim --as-profiles`` runs in-process with these limits, the
    in-process twin of a ``--wire`` run.
    """
    from drivers.modbus.profile import load_profile
    for dev in site.scn.site["devices"]:
        if "profile" not in dev or dev["role"] not in ("genset", "pv_inverter"):
            continue
        prof = load_profile(dev["profile"])
        if dev["role"] == "genset":
            site.gen_follows_load = not any(c.name == "setpoint_kw" for c in prof.commands)
        elif prof.kind == "pv_inverter":
            site.pv_available_visible = any(p.name == "available_kw" for p in prof.points)
