"""Site physics between two scan cycles: battery + BMS, genset, PV, loads, the weak grid, the AC balance.

The site meters here are the truth the KPIs are computed from; the controller sees them only through
the devices (tools/sim/devices.py), with their staleness and silences.

Balance rules (docs/scenarios.md, "Physics rules"): the PCS follows its setpoint within the BMS limits; import is
physically capped at the feeder limit; a shortfall beyond grid and setpoint is picked up by the PCS's
grid-forming backup (within the BMS discharge limit), then by a running genset, else it is unserved;
a surplus beyond export is curtailed at the PV inverters (or absorbed by the grid-forming PCS in island).
On-site wind (tools/sim/wind.py) is a source the controller does not limit: it feeds the bus as it blows,
and a surplus left after the PV inverters are cut is shed by the turbines' own pitch control (their
export limiter), before the genset backs off.

A genset that takes no kW setpoint (a Deep Sea GenComm controller: run/stop keys only) follows the load
instead: the grid carries up to the set's mains import level first, as a DSE set configured for mains
import control (peak lopping) does, commissioned at the controller's import cap (feeder limit less its
margin), and the set covers the rest from its minimum load up to its rating, ahead of the PCS's
grid-forming backup (in island the running set is the grid-former). The controller then steers the set's
output through the battery setpoint.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

# LFP open-circuit voltage per cell vs SOC (typical published LFP curve shape).
OCV_SOC = np.array([0.0, 5.0, 10.0, 20.0, 30.0, 50.0, 70.0, 90.0, 95.0, 100.0])
OCV_V = np.array([2.80, 3.05, 3.18, 3.24, 3.26, 3.29, 3.31, 3.33, 3.36, 3.50])
_OCV = (tuple(OCV_SOC.tolist()), tuple(OCV_V.tolist()))
_CCL_TAPER = ((0.0, 90.0, 97.0, 100.0), (1.0, 1.0, 0.3, 0.05))
_DCL_TAPER = ((0.0, 3.0, 12.0, 100.0), (0.0, 0.0, 1.0, 1.0))


def interp1(x: float, table: tuple) -> float:
    """np.interp for one float, bit for bit (the same branches and the same two operations), without its
    ~2 us of array overhead: the BMS model asks it several times per scan cycle."""
    xp, fp = table
    if x > xp[-1]:
        return fp[-1]
    if x < xp[0]:
        return fp[0]
    if x == xp[-1]:
        return fp[-1]
    j = bisect_right(xp, x) - 1
    if xp[j] == x:
        return fp[j]
    slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
    y = slope * (x - xp[j]) + fp[j]
    if y != y:                                   # NaN: numpy's fallback from the right end of the segment
        y = slope * (x - xp[j + 1]) + fp[j + 1]
        if y != y and fp[j] == fp[j + 1]:
            y = fp[j]
    return y


@dataclass
class Battery:
    """Pack + BMS: SOC, cell voltages, temperature, and the CCL/DCL a Pylontech-style BMS would send."""

    capacity_kwh: float
    charge_max_kw: float
    discharge_max_kw: float
    eta_charge: float
    eta_discharge: float
    cells: int
    nominal_v: float
    soc_pct: float
    temp_c: float
    cell_r_ohm: float = 0.00012
    spread_v: float = 0.008
    power_kw: float = 0.0          # + discharge
    soh_pct: float = 97.0

    def ocv_cell_v(self) -> float:
        return interp1(self.soc_pct, _OCV)

    def current_a(self) -> float:
        return self.power_kw * 1000.0 / max(self.pack_v(), 1.0)

    def pack_v(self) -> float:
        return self.cells * self.ocv_cell_v()

    def cell_v_range(self) -> tuple[float, float]:
        """(max, min): ohmic rise under charge, sag under discharge, spread widening at the ends."""
        ocv = self.ocv_cell_v()
        i_a = self.power_kw * 1000.0 / max(self.cells * ocv, 1.0)
        v = ocv - i_a * self.cell_r_ohm
        edge = 1.0 + 3.0 * (max(0.0, self.soc_pct - 90.0) + max(0.0, 10.0 - self.soc_pct)) / 10.0
        return v + self.spread_v * edge, v - self.spread_v * edge

    def ccl_a(self) -> float:
        """Charge current limit: full up to 90 % SOC, tapering to 5 % at 100 %, zero outside 0-55 °C."""
        i_max = self.charge_max_kw * 1000.0 / self.nominal_v
        taper = interp1(self.soc_pct, _CCL_TAPER)
        if self.temp_c <= 0.0 or self.temp_c >= 55.0:
            taper = 0.0
        elif self.temp_c < 10.0:
            taper *= 0.5
        return i_max * taper

    def dcl_a(self) -> float:
        i_max = self.discharge_max_kw * 1000.0 / self.nominal_v
        taper = interp1(self.soc_pct, _DCL_TAPER)
        if self.temp_c <= -20.0 or self.temp_c >= 60.0:
            taper = 0.0
        return i_max * taper

    def limits_kw(self) -> tuple[float, float]:
        """(charge_kw, discharge_kw) the PCS may draw: the BMS's currents at the pack voltage."""
        v = self.pack_v()
        charge = min(self.charge_max_kw, self.ccl_a() * v / 1000.0) if self.soc_pct < 99.9 else 0.0
        discharge = min(self.discharge_max_kw, self.dcl_a() * v / 1000.0) if self.soc_pct > 1.0 else 0.0
        return charge, discharge

    def advance(self, power_kw: float, dt_s: float, ambient_c: float) -> None:
        self.power_kw = power_kw
        if power_kw >= 0.0:
            energy_kwh = -power_kw / self.eta_discharge * dt_s / 3600.0
        else:
            energy_kwh = -power_kw * self.eta_charge * dt_s / 3600.0
        self.soc_pct = min(100.0, max(0.0, self.soc_pct + 100.0 * energy_kwh / self.capacity_kwh))
        # First-order thermal model: I^2R heat against a cabinet held near 25 °C by its HVAC.
        heat_w = (self.current_a() ** 2) * self.cell_r_ohm * self.cells
        cabinet_c = 25.0 + 0.1 * (ambient_c - 25.0)
        self.temp_c += dt_s * (heat_w / 400000.0 - (self.temp_c - cabinet_c) / 3600.0)


@dataclass
class Genset:
    """Diesel set: start delay, min load, linear fuel curve L/h = a*P + b."""

    rated_kw: float
    p_min_kw: float
    fuel_l_per_kwh: float
    fuel_l_per_h_on: float
    start_delay_s: float
    tank_l: float = 400.0
    fuel_pct: float = 80.0
    state: str = "off"             # off / starting / running
    since_s: float = 0.0
    power_kw: float = 0.0
    run_s: float = 0.0
    starts: int = 0
    litres: float = 0.0
    energy_kwh: float = 0.0

    @property
    def running(self) -> bool:
        return self.state == "running"

    def command(self, run: bool, now_s: float) -> None:
        if run and self.state == "off":
            self.state, self.since_s = "starting", now_s
            self.starts += 1
        elif not run and self.state != "off":
            self.state, self.since_s, self.power_kw = "off", now_s, 0.0

    def advance(self, now_s: float, dt_s: float) -> None:
        if self.state == "starting" and now_s - self.since_s >= self.start_delay_s:
            self.state = "running"
        if self.state == "running":
            litres = (self.fuel_l_per_kwh * self.power_kw + self.fuel_l_per_h_on) * dt_s / 3600.0
            self.litres += litres
            self.fuel_pct = max(0.0, self.fuel_pct - 100.0 * litres / self.tank_l)
            self.energy_kwh += self.power_kw * dt_s / 3600.0
            self.run_s += dt_s


@dataclass
class Meters:
    """Energy counters (kWh) the KPIs and the energy-closure checks read."""

    grid_import_kwh: float = 0.0
    grid_export_kwh: float = 0.0
    pv_used_kwh: float = 0.0
    pv_avail_kwh: float = 0.0
    load_kwh: float = 0.0
    it_kwh: float = 0.0
    unserved_kwh: float = 0.0
    battery_charge_kwh: float = 0.0
    battery_discharge_kwh: float = 0.0
    wind_used_kwh: float = 0.0       # on-site wind into the bus (after the turbines shed a surplus)
    wind_avail_kwh: float = 0.0
    cost: float = 0.0
    co2_kg_grid: float = 0.0
    grid_cfe_kwh: float = 0.0      # grid import x the grid's carbon-free share at that minute
    soc_min_pct: float = 100.0
    soc_max_pct: float = 0.0
    window_import_kwh: float = 0.0   # current 15-min demand window
    window_start_s: float = 0.0
    peak_15min_kw: float = 0.0
    log: list = field(default_factory=list)
    wind_log: list = field(default_factory=list)   # per minute beside `log`: (wind kW, wind shed kW)


@dataclass
class Flows:
    """The last cycle's AC flows, kW (what the meters show)."""

    load_kw: float = 0.0
    pv_kw: float = 0.0
    grid_kw: float = 0.0           # + import
    battery_kw: float = 0.0        # + discharge
    genset_kw: float = 0.0
    unserved_kw: float = 0.0
    curtailed_kw: float = 0.0
    wind_kw: float = 0.0
    wind_curtailed_kw: float = 0.0


def balance(load_kw, pv_avail_kw, pv_limit_kw, battery_sp_kw, charge_lim_kw, discharge_lim_kw,
            gen_running, gen_sp_kw, gen_min_kw, gen_rated_kw, grid_up, import_max_kw, export_max_kw,
            gen_follows_load=False, gen_import_level_kw=None, wind_avail_kw=0.0):
    """Resolve one interval's AC balance. Returns Flows. See the module docstring for the rules."""
    pv_kw = min(pv_avail_kw, max(0.0, pv_limit_kw))
    wind_kw = max(0.0, wind_avail_kw)
    gen_kw = min(max(gen_min_kw if gen_follows_load else gen_sp_kw, gen_min_kw), gen_rated_kw) if gen_running else 0.0
    bat_kw = min(max(battery_sp_kw, -charge_lim_kw), discharge_lim_kw)
    residual = load_kw - pv_kw - wind_kw - gen_kw - bat_kw
    grid_kw = 0.0
    if grid_up:
        grid_cap_kw = import_max_kw
        if gen_running and gen_follows_load and gen_import_level_kw is not None:
            grid_cap_kw = min(import_max_kw, gen_import_level_kw)
        grid_kw = min(residual, grid_cap_kw) if residual > 0.0 else max(residual, -export_max_kw)
        residual -= grid_kw
    unserved = 0.0
    if residual > 1e-9:                          # shortfall: grid-forming PCS, then genset headroom
        if gen_running and gen_follows_load:     # the set's governor takes it first
            extra = min(residual, gen_rated_kw - gen_kw)
            gen_kw += extra
            residual -= extra
        extra = min(residual, max(0.0, discharge_lim_kw - bat_kw))
        bat_kw += extra
        residual -= extra
        if gen_running:
            extra = min(residual, gen_rated_kw - gen_kw)
            gen_kw += extra
            residual -= extra
        unserved = max(0.0, residual)
    elif residual < -1e-9:                       # surplus nobody takes
        if not grid_up:                          # island: the grid-forming PCS absorbs what it can
            extra = min(-residual, max(0.0, charge_lim_kw + bat_kw))
            bat_kw -= extra
            residual += extra
        cut = min(-residual, pv_kw)
        pv_kw -= cut
        residual += cut
        if residual < -1e-9:                     # the turbines pitch out what PV could not shed
            cut = min(-residual, wind_kw)
            wind_kw -= cut
            residual += cut
        if residual < -1e-9 and gen_running:     # genset backs off to its minimum load
            back = min(-residual, max(0.0, gen_kw - gen_min_kw))
            gen_kw -= back
            residual += back
        if residual < -1e-9:
            if grid_up:                          # physics wins over the export limit: it flows out
                grid_kw += residual
            else:                                # island: the set's governor follows the load
                gen_kw = max(0.0, gen_kw + residual)
            residual = 0.0
    return Flows(load_kw, pv_kw, grid_kw, bat_kw, gen_kw, unserved, pv_avail_kw - pv_kw, wind_kw,
                 max(0.0, wind_avail_kw) - wind_kw)
