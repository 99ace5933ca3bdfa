"""The simulated site: exogenous series + physics, advanced by the scan loop's clock between cycles."""
from __future__ import annotations

from tools.sim.exogenous import Series, build_series
from tools.sim.physics import Battery, Flows, Genset, Meters, balance
from tools.sim.scenario import Scenario
from tools.sim.study import MinuteLog, MonthPeaks

DEMAND_WINDOW_S = 900.0   # demand charges are billed on 15-minute average import


class SimSite:
    """Owns the truth. Devices read it; actuate() sets what the PCS, genset and PV inverters follow."""

    def __init__(self, scn: Scenario, hours: float, seed: int, series: Series | None = None):
        self.scn = scn
        self.seed = seed
        self.series: Series = series if series is not None else build_series(scn, hours, seed)
        site = scn.site
        bat = site["battery"]
        self.battery = Battery(bat["capacity_kwh"], bat["charge_max_kw"], bat["discharge_max_kw"],
                               bat["eta_charge"], bat["eta_discharge"], bat["cells_series"], bat["nominal_v"],
                               scn["init"]["soc_pct"], scn["init"]["battery_temp_c"])
        gen = site.get("genset")
        self.genset = Genset(gen["rated_kw"], gen["p_min_kw"], gen["fuel_l_per_kwh"], gen["fuel_l_per_h_on"],
                             gen["start_delay_s"], tank_l=scn["init"]["fuel_tank_l"],
                             fuel_pct=scn["init"]["fuel_pct"]) if gen else None
        self.import_max_kw = site["grid"]["import_max_kw"]
        self.export_max_kw = site["grid"]["export_max_kw"]
        self.export_price = site["tariff"]["export_price_per_kwh"]
        self.pv_rated_kw = max(scn["pv"]["kwp"], 1e-9)
        self.meters = Meters()
        self.meters.log = MinuteLog(len(self.series.t_min), 12)     # bounded: preallocated for the run
        self.meters.wind_log = MinuteLog(len(self.series.t_min), 2)  # beside it: wind kW, wind shed kW
        self.month_peaks = MonthPeaks(site["site"]["timezone"], scn.start.timestamp(), hours)
        self.flows = Flows()
        self.t_s = 0.0
        # Last actuated commands (canonical), as the field devices would hold them.
        self.battery_sp_kw = 0.0
        self.gen_run = False
        self.gen_sp_kw = 0.0
        self.pv_limit_kw = self.pv_rated_kw
        # What the field devices can carry (devices.limit_to_profiles): a set without a kW setpoint
        # follows the load; inverters that do not report their available power hide it.
        self.gen_follows_load = False
        self.gen_import_level_kw = self.import_max_kw - site["grid"].get("import_margin_kw", 0.0)
        self.pv_available_visible = True
        self._minute_next = 0.0
        # the simulated compute platform (tools/sim/compute_platform.py) when the scenario has deferrable
        # jobs: what it holds draws nothing, what it resumes draws again; None: the series' IT load as is
        self.compute = None
        self.advance_to(0.0, first=True)

    def it_cooling_kw(self, t_s: float) -> tuple[float, float]:
        """IT and cooling kW at t_s: the series, corrected by the compute platform for the jobs it moved."""
        s = self.series
        it, cooling = s.at("it_kw", t_s), s.at("cooling_kw", t_s)
        if self.compute is not None:
            d_it, d_cooling = self.compute.delta_kw(t_s)
            it, cooling = it + d_it, cooling + d_cooling
        return it, cooling

    # --- the field devices' side ------------------------------------------------------------------
    def actuate_pcs(self, setpoint_kw: float) -> None:
        self.battery_sp_kw = setpoint_kw

    def actuate_genset(self, run: bool, setpoint_kw: float | None = None) -> None:
        self.gen_run = bool(run)
        if setpoint_kw is not None:
            self.gen_sp_kw = setpoint_kw
        if self.genset:
            broken = self.series.flag("genset_fail", self.t_s)
            self.genset.command(self.gen_run and not broken, self.t_s)

    def actuate_pv_limit(self, limit_kw: float) -> None:
        self.pv_limit_kw = limit_kw

    # --- physics ---------------------------------------------------------------------------------
    def grid_up(self) -> bool:
        return self.series.flag("grid_up", self.t_s)

    def advance_to(self, t_s: float, first: bool = False) -> None:
        """Integrate from self.t_s to t_s with the commands in force (one interval per call)."""
        dt_s = t_s - self.t_s
        if dt_s <= 0.0 and not first:
            return
        s = self.series
        now = self.t_s
        if self.compute is not None:
            self.compute.advance(now)            # releases, completions, its own guards, power samples
        it_kw, cooling_kw = self.it_cooling_kw(now)
        load_kw = it_kw + cooling_kw + s.at("aux_kw", now)
        pv_avail_kw = s.at("pv_avail_kw", now)
        wind_avail_kw = s.at("wind_kw", now) if s.wind_kw is not None else 0.0
        grid_up = s.flag("grid_up", now)
        charge_lim, discharge_lim = self.battery.limits_kw()
        gen = self.genset
        f = balance(load_kw, pv_avail_kw, self.pv_limit_kw, self.battery_sp_kw, charge_lim, discharge_lim,
                    bool(gen and gen.running), self.gen_sp_kw, gen.p_min_kw if gen else 0.0,
                    gen.rated_kw if gen else 0.0, grid_up, self.import_max_kw, self.export_max_kw,
                    self.gen_follows_load, self.gen_import_level_kw, wind_avail_kw)
        self.flows = f
        if dt_s > 0.0:
            self._account(f, now, dt_s, s, it_kw)
            self.battery.advance(f.battery_kw, dt_s, s.at("ambient_c", now))
            if gen:
                gen.power_kw = f.genset_kw
                gen.advance(now, dt_s)
        self.t_s = t_s

    def _account(self, f: Flows, now: float, dt_s: float, s: Series, it_kw: float) -> None:
        m = self.meters
        h = dt_s / 3600.0
        price = s.at("price_per_kwh", now)
        co2 = s.at("co2_kg_per_kwh", now)
        imp = max(0.0, f.grid_kw) * h
        exp = max(0.0, -f.grid_kw) * h
        m.grid_import_kwh += imp
        m.grid_export_kwh += exp
        m.pv_used_kwh += f.pv_kw * h
        m.pv_avail_kwh += (f.pv_kw + f.curtailed_kw) * h
        m.wind_used_kwh += f.wind_kw * h
        m.wind_avail_kwh += (f.wind_kw + f.wind_curtailed_kw) * h
        m.load_kwh += f.load_kw * h
        m.it_kwh += it_kw * h
        m.unserved_kwh += f.unserved_kw * h
        m.battery_charge_kwh += max(0.0, -f.battery_kw) * h
        m.battery_discharge_kwh += max(0.0, f.battery_kw) * h
        m.cost += imp * price - exp * self.export_price
        m.co2_kg_grid += imp * co2
        if s.cfe_pct is not None:
            m.grid_cfe_kwh += imp * s.at("cfe_pct", now) / 100.0
        soc = self.battery.soc_pct
        m.soc_min_pct = min(m.soc_min_pct, soc)
        m.soc_max_pct = max(m.soc_max_pct, soc)
        if now - m.window_start_s >= DEMAND_WINDOW_S:
            m.peak_15min_kw = max(m.peak_15min_kw, m.window_import_kwh / (DEMAND_WINDOW_S / 3600.0))
            self.month_peaks.add(m.window_start_s, m.window_import_kwh / (DEMAND_WINDOW_S / 3600.0))
            m.window_import_kwh, m.window_start_s = 0.0, now
        m.window_import_kwh += imp
        if now >= self._minute_next:
            self._minute_next += 60.0
            m.log.append((now / 3600.0, soc, f.pv_kw, f.load_kw, f.grid_kw, f.battery_kw, f.genset_kw,
                          f.unserved_kw, f.curtailed_kw, co2, price, s.at("pv_avail_kw", now)))
            m.wind_log.append((f.wind_kw, f.wind_curtailed_kw))
