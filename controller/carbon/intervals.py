"""15-minute carbon intervals: energy by source and sink, the battery carbon pool, Scope 1/2, CFE, KPIs.

Per scan cycle (`Interval.add`), from the measured image points, over the time since the previous image
(sample-and-hold of each reading over the span it closes; the simulator's meters integrate the same way):

  sources: PV (pv_kw), battery discharge (battery_kw > 0), grid import (grid_kw > 0), diesel (genset_kw)
           (on-site wind, wind_kw from a wind_meter, joins PV: both on-site renewable at zero emissions, so
           the "pv" source and a record's pv_kwh are on-site renewable generation; docs/cases.md)
  sinks:   loads = IT (it_kw) + cooling (cooling_kw) + aux (aux_kw), battery charge (battery_kw < 0),
           export (grid_kw < 0); curtailment = pv_available_kw - pv_kw (PV potential not generated)

Allocation of sources to sinks, per cycle (a policy, documented because the physics cannot tell):
PV serves the loads first, then the battery charge, then export; the other sources (battery discharge,
diesel, grid) share what remains of each sink's demand pro rata to their power. Discharge and charge,
import and export never coincide (one signed meter each), so no source feeds itself.

A point that is not fresh (quality != ok) is replaced by the balance of the others when it is the only
one missing (e.g. the site meter silent: grid = loads + charge - PV - discharge - diesel); such seconds
are counted in `estimated_s`. With two or more missing the last values are held and counted too.

Emissions per interval:
- Scope 1: diesel litres from the site's fuel curve (fuel_l_per_kwh * P + fuel_l_per_h_on while running)
  x diesel_kg_per_l.
- Scope 2 location-based: grid kWh x grid_co2_kg_per_kwh (the cloud-pushed hourly intensity) when that
  point is fresh, else the profile's grid_kg_per_kwh; `grid_pushed_s` / `grid_profile_s` say which.
- Scope 2 market-based: controller/carbon/contracts.py (PPA / certificates, residual mix).
Attribution to sinks (for CUE, per-job figures): PV 0; grid and diesel at their interval intensity;
battery discharge at the pool's intensity.

Per job (the job book's `power_at`, controller/compute/jobs.py): IT kWh from the job's kW over each span
(never more than the IT meter's reading in total), and the interval's loads, emissions and renewable kWh
in proportion to the job's share of IT energy. Each job's entry states its basis: the seconds its figure
came from measured per-job power (compute/power `jobs`, e.g. Kepler through the bridge) and from the
announcement (compute/job kW, the fallback when no fresh measurement exists): `basis` is "measured",
"announced" or "mixed"; `deferred_s` the seconds the cabinet held it deferred (the hours it was moved).

The battery carbon pool, settled once per interval (so a hand check is possible): discharges in the
interval draw (AC kWh / eta_discharge) stored kWh at the pool's intensity at the interval's start;
the interval's charges then join the pool (AC kWh x eta_charge stored) with their emissions and clean
kWh. Losses' emissions stay with the energy that is eventually delivered. After settling, the pool's
stored kWh is re-anchored to the BMS SOC when fresh (kg kept; clean kWh scaled with the energy).

24/7 CFE (per hour, capped at 100 %, weighted by consumption over longer spans; report.py):
clean = PV to loads + battery discharge to loads x the pool's clean share + hourly-matched carbon-free
contract volume + the grid's carbon-free share of grid import to loads not covered by those contracts;
consumption = loads. The grid's share is the pushed one of the cycle the kWh was drawn in (grid_cfe_pct,
the cloud's hourly figure: a load moved to a windy hour counts that hour's share) and the profile's static
carbon.grid_cfe_pct when none is fresh; cfe.grid_pushed_s says how much import rested on the pushed
one. Contract volume shifted through the battery is not credited (only on-site PV and grid CFE share enter
the pool's clean kWh).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from controller.carbon.contracts import settle_market, validate_carbon
from controller.compute.jobs import MEASURED
from controller.points import INDEX, Q_OK
from drivers.isotime import utc_iso as iso

INTERVAL_S = 900.0
DIESEL_KWH_PER_L = 9.9        # EN 50600-4 fuel energy conversion (REFERENCE.md)

# image slots used here
_GRID, _PV, _PVAV, _BAT, _GEN, _GRUN = (INDEX[n] for n in (
    "grid_kw", "pv_kw", "pv_available_kw", "battery_kw", "genset_kw", "genset_running"))
_IT, _COOL, _AUX, _CO2, _SOC = (INDEX[n] for n in ("it_kw", "cooling_kw", "aux_kw", "grid_co2_kg_per_kwh",
                                                    "soc_pct"))
_WIND, _CFE = INDEX["wind_kw"], INDEX["grid_cfe_pct"]
SRC = ("pv", "battery", "grid", "diesel")
SNK = ("loads", "charge", "export")


def interval_start(t_s: float) -> float:
    return math.floor(t_s / INTERVAL_S) * INTERVAL_S


def allocate(pv: float, dis: float, grid: float, diesel: float, loads: float, charge: float, export: float):
    """Split sources over sinks (kW or kWh alike). Returns a 4x3 nested list [source][sink]."""
    need = [loads, charge, export]
    m = [[0.0, 0.0, 0.0] for _ in range(4)]
    p = pv
    for j in range(3):
        x = p if p < need[j] else need[j]
        m[0][j] = x
        need[j] -= x
        p -= x
    others = dis + grid + diesel
    demand = need[0] + need[1] + need[2]
    if others > 0.0 and demand > 0.0:
        scale = others / demand if others < demand else 1.0
        for i, s in ((1, dis), (2, grid), (3, diesel)):
            if s > 0.0:
                share = s / others * scale
                for j in range(3):
                    m[i][j] = need[j] * share
    return m


@dataclass
class Pool:
    """The battery as a carbon pool: stored kWh and what came with them."""

    kwh: float = 0.0            # stored (DC side) energy
    kg_location: float = 0.0
    kg_market: float = 0.0
    cfe_kwh: float = 0.0        # carbon-free stored kWh (on-site PV, grid CFE share)
    ren_kwh: float = 0.0        # renewable stored kWh (on-site PV, renewable-covered grid)

    def as_dict(self) -> dict:
        return {k: _r(getattr(self, k)) for k in ("kwh", "kg_location", "kg_market", "cfe_kwh", "ren_kwh")}

    @classmethod
    def from_dict(cls, d: dict) -> "Pool":
        return cls(**{k: float(d[k]) for k in ("kwh", "kg_location", "kg_market", "cfe_kwh", "ren_kwh")})

    def draw(self, stored_kwh: float) -> tuple[float, float, float, float]:
        """Take stored kWh out at the pool's average; returns (kg_loc, kg_mkt, cfe_kwh, ren_kwh) taken."""
        if self.kwh <= 1e-12 or stored_kwh <= 0.0:
            return 0.0, 0.0, 0.0, 0.0
        f = min(1.0, stored_kwh / self.kwh)
        out = (self.kg_location * f, self.kg_market * f, self.cfe_kwh * f, self.ren_kwh * f)
        self.kwh -= min(stored_kwh, self.kwh)
        self.kg_location -= out[0]
        self.kg_market -= out[1]
        self.cfe_kwh -= out[2]
        self.ren_kwh -= out[3]
        return out


def _r(x: float, nd: int = 6) -> float:
    return round(float(x), nd)


@dataclass
class Interval:
    """Accumulates one 15-minute interval from scan-cycle images."""

    t_start: float
    e: dict = field(default_factory=lambda: dict.fromkeys(
        ("pv", "pv_avail", "battery_discharge", "grid_import", "diesel", "it", "cooling", "aux",
         "battery_charge", "export"), 0.0))
    alloc: list = field(default_factory=lambda: [[0.0, 0.0, 0.0] for _ in range(4)])
    grid_kg_loc: list = field(default_factory=lambda: [0.0, 0.0, 0.0])   # by sink, pushed/profile factor
    grid_kg_total: float = 0.0                                            # all import x factor (Scope 2)
    grid_cfe_kwh: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # by sink, carbon-free grid kWh
    grid_cfe_pushed_s: float = 0.0                                        # import s on a pushed CFE share
    diesel_l: float = 0.0
    grid_pushed_s: float = 0.0
    grid_profile_s: float = 0.0
    covered_s: float = 0.0
    estimated_s: float = 0.0
    clock_jumps: int = 0
    soc_start: float | None = None
    soc_end: float | None = None
    jobs_it_kwh: dict = field(default_factory=dict)
    jobs_basis_s: dict = field(default_factory=dict)     # job -> [measured s, announced s] with kWh attributed
    jobs_deferred_s: dict = field(default_factory=dict)  # job -> s held deferred by the cabinet
    first_t: float | None = None
    last_t: float | None = None

    def add(self, v: list, q: list, t0: float, dt_s: float, k: "Constants", jobs_kw: dict | None) -> None:
        """Integrate one span [t0, t0 + dt_s] with the image values v (list) and qualities q (list)."""
        h = dt_s / 3600.0
        grid, pv, bat, gen = v[_GRID], v[_PV], v[_BAT], v[_GEN]
        wind = v[_WIND] if q[_WIND] == Q_OK and v[_WIND] > 0.0 else 0.0     # on-site renewable, with PV
        pv += wind
        it, cool, aux = v[_IT], v[_COOL], v[_AUX]
        missing = [i for i in (_GRID, _PV, _BAT, _GEN, _IT, _COOL, _AUX) if q[i] != Q_OK]
        if missing:
            self.estimated_s += dt_s
            if len(missing) == 1:          # one unknown: the AC balance gives it
                i = missing[0]
                if i == _GRID:
                    grid = it + cool + aux - pv - bat - gen
                elif i == _PV:
                    pv = max(0.0, it + cool + aux - grid - bat - gen)
                elif i == _BAT:
                    bat = it + cool + aux - grid - pv - gen
                elif i == _GEN:
                    gen = max(0.0, it + cool + aux - grid - pv - bat)
        if pv < 0.0:
            pv = 0.0
        if gen < 0.0:
            gen = 0.0
        dis = bat if bat > 0.0 else 0.0
        chg = -bat if bat < 0.0 else 0.0
        imp = grid if grid > 0.0 else 0.0
        exp_ = -grid if grid < 0.0 else 0.0
        loads = it + cool + aux
        e = self.e
        e["pv"] += pv * h
        pvav = v[_PVAV] + wind if q[_PVAV] == Q_OK else pv
        e["pv_avail"] += (pvav if pvav > pv else pv) * h
        e["battery_discharge"] += dis * h
        e["grid_import"] += imp * h
        e["diesel"] += gen * h
        e["it"] += it * h
        e["cooling"] += cool * h
        e["aux"] += aux * h
        e["battery_charge"] += chg * h
        e["export"] += exp_ * h
        m = allocate(pv, dis, imp, gen, loads, chg, exp_)
        a = self.alloc
        for i in range(4):
            ai, mi = a[i], m[i]
            ai[0] += mi[0] * h
            ai[1] += mi[1] * h
            ai[2] += mi[2] * h
        f, pushed = k.grid_factor(v, q)
        if pushed:
            self.grid_pushed_s += dt_s if imp > 0.0 else 0.0
        else:
            self.grid_profile_s += dt_s if imp > 0.0 else 0.0
        g = m[2]
        self.grid_kg_total += imp * h * f
        self.grid_kg_loc[0] += g[0] * h * f
        self.grid_kg_loc[1] += g[1] * h * f
        self.grid_kg_loc[2] += g[2] * h * f
        c, pushed = k.grid_cfe(v, q)
        if pushed:
            self.grid_cfe_pushed_s += dt_s if imp > 0.0 else 0.0
        gc = self.grid_cfe_kwh
        gc[0] += g[0] * h * c
        gc[1] += g[1] * h * c
        gc[2] += g[2] * h * c
        running = (q[_GRUN] == Q_OK and v[_GRUN] > 0.5) or gen > 0.0
        if running:
            self.diesel_l += (k.fuel_a * gen + k.fuel_b) * h
        if q[_SOC] == Q_OK:
            if self.soc_start is None:
                self.soc_start = v[_SOC]
            self.soc_end = v[_SOC]
        if jobs_kw:
            left = it
            basis = getattr(jobs_kw, "basis", None)      # a JobPower says what each figure rests on
            for job, kw in jobs_kw.items():
                kw = min(kw, left)
                if kw > 0.0:
                    self.jobs_it_kwh[job] = self.jobs_it_kwh.get(job, 0.0) + kw * h
                    left -= kw
                    if basis is not None and job in basis:
                        b = self.jobs_basis_s.get(job)
                        if b is None:
                            b = self.jobs_basis_s[job] = [0.0, 0.0]
                        b[0 if basis[job] == MEASURED else 1] += dt_s
        deferred = getattr(jobs_kw, "deferred", None)
        if deferred:
            for job in deferred:
                self.jobs_deferred_s[job] = self.jobs_deferred_s.get(job, 0.0) + dt_s
        self.covered_s += dt_s
        if self.first_t is None:
            self.first_t = t0
        self.last_t = t0 + dt_s


@dataclass
class Constants:
    grid_kg_per_kwh: float
    diesel_kg_per_l: float
    fuel_a: float
    fuel_b: float
    eta_charge: float
    eta_discharge: float
    capacity_kwh: float
    carbon: dict
    grid_cfe_frac: float = field(init=False)   # the static carbon-free share, for cycles without a pushed one

    def __post_init__(self):
        self.grid_cfe_frac = self.carbon["grid_cfe_pct"] / 100.0

    # The grid's figures in force this cycle, for the ledger and for what the DCIM block shows of it: the
    # pushed one while fresh (an intensity must be positive), else the profile's. (value, pushed)
    def grid_factor(self, v, q) -> tuple[float, bool]:
        if q[_CO2] == Q_OK and v[_CO2] > 0.0:
            return v[_CO2], True
        return self.grid_kg_per_kwh, False

    def grid_cfe(self, v, q) -> tuple[float, bool]:
        if q[_CFE] == Q_OK:
            return v[_CFE] / 100.0, True
        return self.grid_cfe_frac, False

    @classmethod
    def from_site(cls, cfg: dict, carbon: dict | None = None) -> "Constants":
        em = cfg["emissions"]
        gen = cfg.get("genset") or {}
        bat = cfg["battery"]
        table = carbon if carbon is not None else cfg.get("carbon")
        return cls(em["grid_kg_per_kwh"], em["diesel_kg_per_l"], gen.get("fuel_l_per_kwh", 0.0),
                   gen.get("fuel_l_per_h_on", 0.0), bat["eta_charge"], bat["eta_discharge"], bat["capacity_kwh"],
                   validate_carbon(table, em["grid_kg_per_kwh"]))


def settle(iv: Interval, pool: Pool, k: Constants, remaining: dict[str, float], partial: bool = False) -> dict:
    """Close an interval: market coverage, the pool, emissions by sink, CFE inputs, KPIs. Mutates pool
    and remaining (certificate volumes). Returns the ledger payload's interval fields."""
    e, a = iv.e, iv.alloc
    hours = INTERVAL_S / 3600.0
    loads = e["it"] + e["cooling"] + e["aux"]
    carbon = k.carbon
    # Scope 1
    diesel_kg = iv.diesel_l * k.diesel_kg_per_l
    diesel_int = diesel_kg / e["diesel"] if e["diesel"] > 1e-9 else 0.0
    # Scope 2 location (per-cycle factor already applied) and market
    grid_kg_loc = iv.grid_kg_total
    mkt = settle_market(carbon["contracts"], remaining, e["grid_import"], iv.t_start, hours,
                        carbon["residual_mix_kg_per_kwh"])
    grid_int_mkt = mkt["kg"] / e["grid_import"] if e["grid_import"] > 1e-9 else 0.0
    grid_ren_frac = mkt["renewable_kwh"] / e["grid_import"] if e["grid_import"] > 1e-9 else 0.0
    # battery discharge at the pool's intensity at the interval's start
    pool_start = pool.as_dict()
    dis = e["battery_discharge"]
    kg_loc_b, kg_mkt_b, cfe_b, ren_b = pool.draw(dis / k.eta_discharge)
    # kg per AC kWh delivered (the losses' emissions ride along); clean/renewable share of the drawn energy
    drawn = dis / k.eta_discharge
    int_b = (kg_loc_b / dis, kg_mkt_b / dis, cfe_b / drawn, ren_b / drawn) if dis > 1e-9 else (0.0, 0.0, 0.0, 0.0)
    # emissions (location, market) by sink
    by_sink_loc, by_sink_mkt = [], []
    for j in range(3):
        loc = a[1][j] * int_b[0] + iv.grid_kg_loc[j] + a[3][j] * diesel_int
        mk = a[1][j] * int_b[1] + a[2][j] * grid_int_mkt + a[3][j] * diesel_int
        by_sink_loc.append(loc)
        by_sink_mkt.append(mk)
    if e["diesel"] <= 1e-9 and diesel_kg > 0.0:        # idling set: its fuel burns for the loads
        by_sink_loc[0] += diesel_kg
        by_sink_mkt[0] += diesel_kg
    # charges join the pool
    chg = e["battery_charge"]
    pool.kwh += chg * k.eta_charge
    pool.kg_location += by_sink_loc[1]
    pool.kg_market += by_sink_mkt[1]
    pool.cfe_kwh += (a[0][1] + iv.grid_cfe_kwh[1]) * k.eta_charge
    pool.ren_kwh += (a[0][1] + a[2][1] * grid_ren_frac) * k.eta_charge
    soc_delta_kwh = None
    if iv.soc_end is not None:
        measured = iv.soc_end / 100.0 * k.capacity_kwh
        if pool.kwh > 1e-9:
            s = measured / pool.kwh
            pool.cfe_kwh = min(measured, pool.cfe_kwh * s)
            pool.ren_kwh = min(measured, pool.ren_kwh * s)
        pool.kwh = measured
        if iv.soc_start is not None:
            soc_delta_kwh = (iv.soc_end - iv.soc_start) / 100.0 * k.capacity_kwh
    # CFE inputs (loads only)
    cfe_onsite = a[0][0] + a[1][0] * int_b[2]
    cfe_contract = mkt["cfe_volume_kwh"]
    grid_loads = a[2][0]
    # the contracts cover the first kWh; the rest carries the grid's share, hour by hour as drawn
    cfe_grid = max(0.0, grid_loads - cfe_contract) * (iv.grid_cfe_kwh[0] / grid_loads) if grid_loads > 1e-9 else 0.0
    ren_loads = a[0][0] + a[1][0] * int_b[3] + grid_loads * grid_ren_frac
    # closure (AC bus) and battery store
    sources = e["pv"] + dis + e["grid_import"] + e["diesel"]
    sinks = loads + chg + e["export"]
    model_loss = chg * (1.0 - k.eta_charge) + dis * (1.0 / k.eta_discharge - 1.0)
    fuel_kwh = iv.diesel_l * DIESEL_KWH_PER_L
    e_dc = loads + model_loss + max(0.0, fuel_kwh - e["diesel"])
    it = e["it"]
    jobs = {}
    for job in sorted(set(iv.jobs_it_kwh) | set(iv.jobs_deferred_s)):
        job_it = iv.jobs_it_kwh.get(job, 0.0)
        share = job_it / it if it > 1e-9 else 0.0
        d = jobs[job] = {"it_kwh": _r(job_it), "kwh": _r(loads * share), "kg_location": _r(by_sink_loc[0] * share),
                         "kg_market": _r(by_sink_mkt[0] * share), "renewable_kwh": _r(ren_loads * share)}
        if job in iv.jobs_basis_s:
            measured_s, announced_s = iv.jobs_basis_s[job]
            d["basis"] = "mixed" if measured_s > 0 and announced_s > 0 else "measured" if measured_s > 0 else "announced"
            d["measured_s"], d["announced_s"] = _r(measured_s, 3), _r(announced_s, 3)
        if iv.jobs_deferred_s.get(job):
            d["deferred_s"] = _r(iv.jobs_deferred_s[job], 3)
    scope1 = diesel_kg
    scope2_loc = grid_kg_loc
    return {
        "t_start": iso(iv.t_start), "t_end": iso(iv.t_start + INTERVAL_S), "partial": bool(partial),
        "covered_s": _r(iv.covered_s, 3), "estimated_s": _r(iv.estimated_s, 3), "clock_jumps": iv.clock_jumps,
        "energy_kwh": {
            "sources": {"pv_direct": _r(a[0][0]), "pv_to_battery": _r(a[0][1]), "pv_export": _r(a[0][2]),
                        "pv": _r(e["pv"]), "battery_discharge": _r(dis), "grid": _r(e["grid_import"]),
                        "diesel": _r(e["diesel"])},
            "sinks": {"it": _r(it), "cooling": _r(e["cooling"]), "aux": _r(e["aux"]), "battery_charge": _r(chg),
                      "export": _r(e["export"]), "curtailment": _r(max(0.0, e["pv_avail"] - e["pv"]))},
            "to_loads": {s: _r(a[i][0]) for i, s in enumerate(SRC)},
            "to_battery": {s: _r(a[i][1]) for i, s in enumerate(SRC)},
            "to_export": {s: _r(a[i][2]) for i, s in enumerate(SRC)},
            "battery_loss_model": _r(model_loss),
            "soc_delta": None if soc_delta_kwh is None else _r(soc_delta_kwh),
            "closure": {"sources": _r(sources), "sinks": _r(sinks), "residual": _r(sources - sinks),
                        "residual_pct": _r(100.0 * (sources - sinks) / sources, 4) if sources > 1e-9 else 0.0},
            "fuel": _r(fuel_kwh), "e_dc": _r(e_dc),
        },
        "diesel_l": _r(iv.diesel_l),
        "co2_kg": {"scope1_diesel": _r(scope1), "scope2_location": _r(scope2_loc), "scope2_market": _r(mkt["kg"]),
                   "loads_location": _r(by_sink_loc[0]), "loads_market": _r(by_sink_mkt[0]),
                   "to_battery_location": _r(by_sink_loc[1]), "to_battery_market": _r(by_sink_mkt[1]),
                   "export_location": _r(by_sink_loc[2]), "export_market": _r(by_sink_mkt[2]),
                   "battery_discharge_location": _r(kg_loc_b), "battery_discharge_market": _r(kg_mkt_b)},
        "grid_factor": {"mean_kg_per_kwh": _r(grid_kg_loc / e["grid_import"]) if e["grid_import"] > 1e-9 else None,
                        "pushed_s": _r(iv.grid_pushed_s, 3), "profile_s": _r(iv.grid_profile_s, 3)},
        "market": {"covered_kwh": {n: _r(x) for n, x in mkt["covered_kwh"].items()},
                   "residual_kwh": _r(mkt["residual_kwh"]),
                   "certificates_left_kwh": {n: _r(x) for n, x in sorted(remaining.items())}},
        "cfe": {"onsite_kwh": _r(cfe_onsite), "contract_kwh": _r(cfe_contract), "grid_kwh": _r(cfe_grid),
                "load_kwh": _r(loads), "grid_pushed_s": _r(iv.grid_cfe_pushed_s, 3)},
        "renewable_kwh": _r(ren_loads),
        "pool_start": pool_start, "pool": pool.as_dict(),
        "soc_pct": {"start": iv.soc_start, "end": iv.soc_end},
        "jobs": jobs,
        "kpi": {"pue": _r(e_dc / it, 4) if it > 1e-9 else None,
                "pue_electric": _r(loads / it, 4) if it > 1e-9 else None,
                "cue_location": _r((scope1 + scope2_loc) / it, 5) if it > 1e-9 else None,
                "cue_market": _r((scope1 + mkt["kg"]) / it, 5) if it > 1e-9 else None,
                "ref": _r(ren_loads / e_dc, 4) if e_dc > 1e-9 else None},
    }
