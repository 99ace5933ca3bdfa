"""The lab's physics: SimSite advanced with the wall clock, and what each device process must show each second.

This is the only lab process that imports pvlib and pandas (for the exogenous series, once at start-up);
the device processes get register words, CAN frames and MQTT payloads from it. The encoding is wire.py's
(RegisterEncoder over ``_sim_values``, WireBms' frames), so the lab's registers are the ``--wire``
simulator's, bit for bit.
"""
from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timedelta, timezone

from controller.uplink.topics import Topics
from drivers.isotime import utc_iso
from drivers.modbus.profile import load_profile
from tools.sim.devices import SIM_DEVICE_BY_ROLE, limit_to_profiles
from tools.sim.exogenous import build_series
from tools.sim.market_feed import slot_means
from tools.sim.site import SimSite
from tools.sim.wire import RegisterEncoder, WireBms, _full_scale, _pv_profile, _sim_values

MARKET_STEP_MIN = 15
MARKET_SLOTS = 96                 # a day ahead in 15-minute slots, as EU day-ahead markets now publish
NEGATIVE_HOURS = (11.0, 14.0)     # --market-negative: local hours whose import price goes below zero
NEGATIVE_PRICE = -0.15            # site currency per kWh


class _Capture:
    """Stands in for the can.Bus WireBms sends on: the frames go to the slcan process instead."""

    def __init__(self):
        self.frames: list = []

    def send(self, msg) -> None:
        self.frames.append([int(msg.arbitration_id), bytes(msg.data).hex()])

    def shutdown(self) -> None:
        pass


class FrameSource(WireBms):
    """WireBms with its frames captured for the lab's slcan adapter process."""

    def __init__(self, site: SimSite):
        super().__init__(site, channel=f"edge-ems-lab-{uuid.uuid4().hex[:12]}")
        self.bus.shutdown()
        self.bus = _Capture()

    def take(self) -> list:
        self.broadcast()
        out, self.bus.frames = self.bus.frames, []
        return out


class LabUnit:
    def __init__(self, dev: dict, site: SimSite):
        self.name, self.role, self.unit = dev["name"], dev["role"], int(dev["unit"])
        self.profile_name = _pv_profile(dev) if self.role == "pv_inverter" else dev["profile"]
        prof = load_profile(self.profile_name)
        self.full_scale = _full_scale(self.role, site, prof)
        self.encoder = RegisterEncoder(prof, self.full_scale)
        self.sim = SIM_DEVICE_BY_ROLE[self.role](self.name, site)

    def config(self) -> dict:
        return {"name": self.name, "role": self.role, "unit": self.unit, "profile": self.profile_name,
                "full_scale": self.full_scale}


class Physics:
    """SimSite in real time plus the payload builders of the lab's device and network processes."""

    def __init__(self, scn, plan, *, seed: int, hours: float, start: datetime, market_file: dict | None = None,
                 market_negative: bool = False):
        scn.start = start
        scn.site = plan.site
        self.scn = scn
        self.start = start
        self.site = SimSite(scn, hours, seed, build_series(scn, hours, seed))
        self.hours = hours
        limit_to_profiles(self.site)
        self.units: dict[str, dict[int, LabUnit]] = {}
        for name, seg in plan.segments.items():
            self.units[name] = {}
            for dev in seg.devices:
                if dev["role"] == "genset" and self.site.genset is None:
                    continue
                u = LabUnit(dev, self.site)
                self.units[name][u.unit] = u
        self.bms = FrameSource(self.site)       # the slcan adapter's frames (the CAN BMS, or a spare port)
        s = plan.site["site"]
        self.topics = Topics(s["name"], s["gateway_id"])
        self.tz = s["timezone"]
        self.market_file = market_file
        self.market_negative = market_negative
        self.jobs = [dict(ev, id=f"job-{i + 1}") for i, ev in enumerate(scn["events"]) if ev["kind"] == "job_announce"]
        self._job_state: dict[str, str] = {}

    # --- physics -------------------------------------------------------------------------------------
    def advance_to(self, t_s: float) -> None:
        """One-second steps up to t_s (after a stall, at most a minute is integrated; the rest is skipped)."""
        site = self.site
        if t_s - site.t_s > 60.0:
            site.t_s = t_s - 60.0
        while site.t_s < t_s - 1e-9:
            site.advance_to(min(t_s, site.t_s + 1.0))

    def actuate(self, msg: dict) -> None:
        what = msg.get("what")
        if what == "pcs":
            self.site.actuate_pcs(float(msg["kw"]))
        elif what == "genset":
            self.site.actuate_genset(bool(msg["run"]))
        elif what == "pv_limit":
            self.site.actuate_pv_limit(float(msg["kw"]))

    # --- device processes -------------------------------------------------------------------------------
    def registers(self, segment: str) -> dict:
        """The 'put' message of one segment: every unit's register words, and the scenario's silences."""
        site = self.site
        units = {str(u.unit): [[fc, reg, words] for fc, reg, words in u.encoder.encode(_sim_values(u.role, u.sim, site))]
                 for u in self.units[segment].values()}
        silent = [u.unit for u in self.units[segment].values()
                  if (u.role == "grid_meter" and site.series.flag("meter_silent", site.t_s))
                  or (u.role == "bms" and site.series.flag("bms_silent", site.t_s))]
        return {"op": "put", "units": units, "scenario_silent": silent}

    def frames(self) -> list:
        return self.bms.take() if self.bms is not None else []

    # --- network publishers -------------------------------------------------------------------------------
    def compute_power(self, now: float) -> dict:
        s, t = self.site.series, self.site.t_s
        msg = {"v": 1, "t": utc_iso(now), "source": "edge-ems-lab", "total_kw": round(s.at("it_kw", t), 3),
               "cooling_kw": round(s.at("cooling_kw", t), 3), "aux_kw": round(s.at("aux_kw", t), 3)}
        running = {j["id"]: j["kw"] for j in self.jobs if self._job_state.get(j["id"]) == "running"}
        if running:
            msg["jobs"] = running
        return msg

    def job_messages(self, now: float) -> list[dict]:
        """compute/job messages due now: announced at the event's at_h, running at start_h, done at the end."""
        t_h = self.site.t_s / 3600.0
        out = []
        for j in self.jobs:
            end_h = j["start_h"] + j["duration_min"] / 60.0
            state = "done" if t_h >= end_h else "running" if t_h >= j["start_h"] else \
                "announced" if t_h >= j["at_h"] else None
            if state is None or self._job_state.get(j["id"]) == state:
                continue
            self._job_state[j["id"]] = state
            start = self.start + timedelta(hours=j["start_h"])
            out.append({"v": 1, "id": j["id"], "kw": float(j["kw"]), "start": utc_iso(start.timestamp()),
                        "duration_min": float(j["duration_min"]), "deferrable": False,
                        "label": j.get("note") or "scenario job", "state": state})
        return out

    def market(self, now: float) -> dict:
        """The cloud's market message: 15-minute import/export prices and grid intensity from now on."""
        step_s = MARKET_STEP_MIN * 60
        if self.market_file is not None:
            step_s = int(self.market_file.get("step_min", MARKET_STEP_MIN)) * 60
        valid_from = math.floor(now / step_s) * step_s
        if self.market_file is not None:
            f = self.market_file
            imp = [float(x) for x in f["import_price_per_kwh"]]
            n = len(imp)
            exp = [float(x) for x in f.get("export_price_per_kwh", [0.0] * n)]
            co2 = [float(x) for x in f.get("co2_kg_per_kwh", [self.scn.site["emissions"]["grid_kg_per_kwh"]] * n)]
            cfe = [float(x) for x in f["cfe_pct"]] if f.get("cfe_pct") is not None else None
        else:
            s = self.site.series
            t0 = self.start.timestamp()
            n = MARKET_SLOTS
            imp = [round(float(x), 4) for x in slot_means(s.price_per_kwh, t0, valid_from, n, step_s)]
            co2 = [round(float(x), 4) for x in slot_means(s.co2_kg_per_kwh, t0, valid_from, n, step_s)]
            cfe = ([round(float(x), 3) for x in slot_means(s.cfe_pct, t0, valid_from, n, step_s)]
                   if s.cfe_pct is not None else None)
            exp = [float(self.scn.site["tariff"]["export_price_per_kwh"])] * n
        if self.market_negative:
            from zoneinfo import ZoneInfo
            tz = ZoneInfo(self.tz)
            for k in range(n):
                local = datetime.fromtimestamp(valid_from + k * step_s, tz)
                if NEGATIVE_HOURS[0] <= local.hour + local.minute / 60.0 < NEGATIVE_HOURS[1]:
                    imp[k] = NEGATIVE_PRICE
        msg = {"v": 1, "t": utc_iso(now), "valid_from": utc_iso(valid_from),
               "valid_until": utc_iso(valid_from + n * step_s), "step_min": step_s // 60,
               "import_price_per_kwh": imp, "export_price_per_kwh": exp, "co2_kg_per_kwh": co2}
        if cfe is not None:
            msg["cfe_pct"] = cfe           # the grid's carbon-free share (the ledger's 24/7 CFE)
        return msg

    def topic(self, kind: str) -> str:
        return self.topics(kind)

    # --- what a person (or a test) looks at ----------------------------------------------------------------
    def summary(self) -> dict:
        site, f = self.site, self.site.flows
        g = site.genset
        return {"t_s": round(site.t_s, 1), "soc_pct": round(site.battery.soc_pct, 3),
                "battery_kw": round(f.battery_kw, 3), "battery_sp_kw": round(site.battery_sp_kw, 3),
                "grid_kw": round(f.grid_kw, 3), "pv_kw": round(f.pv_kw, 3), "curtailed_kw": round(f.curtailed_kw, 3),
                "pv_limit_kw": round(site.pv_limit_kw, 3), "load_kw": round(f.load_kw, 3),
                "unserved_kw": round(f.unserved_kw, 3), "genset_kw": round(f.genset_kw, 3),
                "genset_running": bool(g and g.running), "genset_run_cmd": bool(site.gen_run),
                "grid_up": bool(site.grid_up())}


def load_market_file(path: str) -> dict:
    """--market FILE: a JSON object with step_min and import_price_per_kwh (export/co2/cfe_pct optional)."""
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--market {path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("import_price_per_kwh"), list) \
            or not doc["import_price_per_kwh"]:
        raise ValueError(f"--market {path}: key 'import_price_per_kwh': expected a non-empty list of prices")
    n = len(doc["import_price_per_kwh"])
    for key in ("import_price_per_kwh", "export_price_per_kwh", "co2_kg_per_kwh", "cfe_pct"):
        v = doc.get(key)
        if v is None and key != "import_price_per_kwh":
            continue
        if not isinstance(v, list) or len(v) != n or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
            raise ValueError(f"--market {path}: key {key!r}: expected {n} finite numbers")
    step = doc.get("step_min", MARKET_STEP_MIN)
    if not isinstance(step, int) or not 1 <= step <= 60:
        raise ValueError(f"--market {path}: key 'step_min': expected an integer of minutes in 1..60, got {step!r}")
    return doc


__all__ = ["Physics", "FrameSource", "load_market_file"]
