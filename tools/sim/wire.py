"""`edge-ems sim --wire`: the simulated site's field devices behind real ports, read by the real drivers.

What goes on a wire (as at a real cabinet):

* every Modbus device of the site (roles grid_meter, pv_meter, pcs, genset, pv_inverter) is a unit id
  on **one shared RS-485 segment**: one pymodbus RTU server on one pseudo-terminal pair
  (tools/sim/modbus_server.SimBus), polled by one drivers.modbus.ModbusBus. One segment per gateway
  port, daisy-chained meters / PCS / genset controller with distinct unit ids, is the field reality, and
  it is what exercises the bus scheduler: write-before-read order, one lock, and a dead device backed
  off without stalling its neighbours. One pty per device would hide exactly that contention.
* the BMS is a CAN node on a python-can virtual bus (a fresh channel name per run), broadcasting the
  Pylontech/SMA frames encoded by cantools from profiles/can/pylon_sma_bms.dbc; the controller side is
  drivers.can_bms.CanBms.
* compute, grid (price / intensity / availability) and weather stay in-process: in the field they come
  over MQTT and the cloud, not over a field bus.

Each scan cycle, before any device is read, :class:`WireSync` (the first entry of the devices dict)
encodes SimSite's truth into every unit's registers (the inverse of the driver's decoding, with each
SunSpec scale factor pinned at start-up as a real device's is) and broadcasts one set of BMS frames.
Registers the controller writes (PCS StorCtl_Mod/OutWRte/InWRte, GenComm control keys, PV WMaxLimPct)
are turned back into SimSite actuation the moment the server accepts the write, i.e. before the site
advances: the same timing as the in-process devices. The scenario's meter_silent / bms_silent windows
become a silent unit on the bus / a BMS that stops sending.

Without ``baud`` the pty pair carries bytes as fast as the kernel moves them (a pty has no baud rate);
with ``baud`` the byte pump holds every frame on the shared wire for 11 bits per byte at that rate plus
the 3.5-character RTU silence, so a cycle costs what it would on the real segment.
"""
from __future__ import annotations

import logging
import math
import threading
import uuid
from dataclasses import dataclass, field

import can
import cantools

from drivers.can_bms import DEFAULT_DBC, CanBms
from drivers.modbus import sunspec
from drivers.modbus.bus import ModbusBus
from drivers.modbus.decode import decode_raw, encode_raw, unscaled
from drivers.modbus.device import ModbusDevice
from drivers.modbus.profile import DeviceProfile, load_profile
from tools.sim.devices import SIM_DEVICE_BY_ROLE, limit_to_profiles
from tools.sim.modbus_server import _INT_LIMITS, SimBus, _models_at, _source_values, register_image
from tools.sim.site import SimSite

log = logging.getLogger(__name__)

MODBUS_ROLES = ("grid_meter", "pv_meter", "pcs", "genset", "pv_inverter", "wind_meter")
ROLE_KIND = {"grid_meter": "meter", "pv_meter": "meter", "pcs": "pcs", "genset": "genset",
             "pv_inverter": "pv_inverter", "wind_meter": "meter"}
PV_INVERTER_PROFILE = "sunspec_pv_inverter"
NOMINAL_CLIENT_BAUD = 115200   # pty without emulation: only sets minimalmodbus' inter-frame silence (1.75 ms floor)
DSE_KEYS = {35700: "stop", 35701: "auto", 35702: "manual", 35705: "start", 35734: "reset"}
DSE_MODE = {"stop": 0, "auto": 1, "manual": 2}


# --- canonical values -> registers ---------------------------------------------------------------------
class RegisterEncoder:
    """Canonical values -> register words for one profile, the inverse of drivers.modbus.device's decoding.

    SunSpec scale factors are chosen once, from full-scale values, and never change afterwards (a real
    device's SFs are fixed by its firmware), so a refresh is a handful of struct packs.
    """

    def __init__(self, profile: DeviceProfile, full_scale: dict, base: int = 40000):
        self.profile = profile
        self.image = register_image(profile, full_scale, base)
        if profile.discovery == "sunspec":
            self.models = _models_at(profile, base)
            placed, _missing = sunspec.place(profile.points, self.models)
        else:
            self.models = {}
            placed = list(profile.points)
        self.points = {p.name: p for p in placed if p.type != "sunssf"}
        self.sf: dict[str, int] = {}
        for p in placed:
            if p.type == "sunssf":
                self.sf[p.name] = int(decode_raw([self.image[p.function][p.register]], "sunssf"))
        self.static = dict(full_scale)

    def sf_of(self, name: str) -> int | None:
        p = self.points[name]
        return self.sf.get(sunspec.sf_point_name(p.model, p.sf_offset)) if p.sf_offset is not None else None

    def encode(self, values: dict) -> list[tuple[int, int, list[int]]]:
        """[(function, register, words)] for every register point ``values`` determines."""
        vals = _source_values(self.profile, values)
        bo, wo = self.profile.byte_order, self.profile.word_order
        out = []
        for name, v in vals.items():
            p = self.points.get(name)
            if p is None or v is None:
                continue
            v = float(v)
            for ref in p.multiply_by:
                v /= float(vals.get(ref, self.static.get(ref, 1.0)) or 1.0)
            raw = unscaled(v, p.type, p.scale, self.sf_of(name))
            if p.type != "float32":
                lo, hi = _INT_LIMITS.get(p.type, (-(2 ** 31), 2 ** 32 - 1))
                raw = min(hi, max(lo, raw))
            out.append((p.function, p.register, encode_raw(raw, p.type, bo, wo)))
        return out

    def register_of(self, name: str) -> int:
        return self.points[name].register

    def decode(self, name: str, words: list[int]) -> float:
        p = self.points[name]
        raw = decode_raw(words, p.type, self.profile.byte_order, self.profile.word_order)
        sf = self.sf_of(name)
        return float(raw) * p.scale * (10.0 ** sf if sf else 1.0)


# --- the Modbus side ----------------------------------------------------------------------------------
class WireModbusServer(SimBus):
    """SimBus that also reports every accepted write (to turn it into actuation) and counts requests."""

    def __init__(self, baud: int | None, seed: int = 0):
        super().__init__(baud=baud, seed=seed)
        self.on_write = None           # (unit, address, words) -> None, runs in the server thread
        self.requests: dict[int, int] = {}

    def _make_action(self, unit_id: int):
        inner = super()._make_action(unit_id)

        async def action(function_code, start_address, address, count, registers, set_values):
            result = await inner(function_code, start_address, address, count, registers, set_values)
            self.requests[unit_id] = self.requests.get(unit_id, 0) + 1
            if set_values is not None and self.on_write is not None:
                try:
                    self.on_write(unit_id, address, [int(v) & 0xFFFF for v in set_values])
                except Exception:  # a bad write must not kill the server; it is logged and counted
                    log.exception("wire: unit %d: write at %d not applied", unit_id, address)
            return result
        return action

    def put(self, unit: int, updates: list[tuple[int, int, list[int]]]) -> None:
        u = self.units[unit]
        with self._lock:
            for fc, reg, words in updates:
                bank = u.banks[fc]
                for i, w in enumerate(words):
                    bank[reg + i] = w


@dataclass
class WireUnit:
    """One simulated Modbus device: how to read SimSite into its registers and its writes back."""

    name: str
    role: str
    unit: int
    profile: DeviceProfile
    encoder: RegisterEncoder
    writes: int = 0
    applied: list = field(default_factory=list)   # (what, value) actuations, newest last (bounded)


def _sim_values(role: str, sim_dev, site: SimSite) -> dict:
    """The canonical values the in-process device would report, plus what the register map carries."""
    vals = dict(sim_dev.read())
    up = site.grid_up()
    if role in ("grid_meter", "pv_meter", "wind_meter"):
        p = vals.get("power_kw", 0.0)
        v = vals.get("voltage_v", 230.0 if up or role != "grid_meter" else 0.0)
        vals.setdefault("voltage_v", v)
        vals.setdefault("frequency_hz", 50.0 if v > 0 else 0.0)
        vals["current_a"] = abs(p) * 1000.0 / v if v > 0 else 0.0   # sum of the three line currents
        vals["pf"] = 1.0 if v > 0 else 0.0
        vals.setdefault("export_kwh", 0.0)
    elif role == "pcs":
        b = site.battery
        vals.pop("setpoint_kw", None)                  # OutWRte/InWRte hold what the controller wrote
        vals.update(soc_pct=b.soc_pct, soh_pct=b.soh_pct, energy_avail_kwh=b.soc_pct * b.capacity_kwh / 100.0,
                    state=4.0, voltage_an_v=230.0, frequency_hz=50.0,
                    ac_current_a=abs(site.flows.battery_kw) * 1000.0 / (3 * 230.0),
                    energy_kwh=site.meters.battery_discharge_kwh)
    elif role == "genset":
        g = site.genset
        if g is not None:
            vals["frequency_hz"] = 50.0 if g.running else 0.0
            vals["energy_kwh"] = g.energy_kwh
            vals["coolant_c"] = 80.0 if g.running else 25.0
            vals["oil_pressure_kpa"] = 400.0 if g.running else 0.0
            vals["battery_v"] = 27.6
    elif role == "pv_inverter":
        vals.pop("limit_kw", None)                     # WMaxLimPct holds what the controller wrote
        vals.pop("available_kw", None)                 # not in SunSpec 103/121/123 (see the profile)
        vals["state"] = 5.0 if site.flows.curtailed_kw > 0.1 else (4.0 if vals.get("power_kw", 0) > 0 else 2.0)
    return vals


def _full_scale(role: str, site: SimSite, profile: DeviceProfile) -> dict:
    """Values that pin each scale factor so the whole operating range fits (and initial write targets)."""
    cfg = site.scn.site
    if role == "pcs":
        rated = float((cfg.get("pcs") or {}).get("rated_kw", site.battery.charge_max_kw))
        return {"power_kw": -1.2 * rated, "soc_pct": 100.0, "soh_pct": 100.0,
                "energy_avail_kwh": site.battery.capacity_kwh, "ac_current_a": 1.2 * rated * 1000 / 690,
                "voltage_an_v": 300.0, "frequency_hz": 65.0, "energy_kwh": 4e6, "wchamax_kw": rated,
                "out_rate_pct": -100.0, "in_rate_pct": 100.0, "storctl_mod": 0, "state": 2}
    if role == "pv_inverter":
        rated = float(site.pv_rated_kw)
        return {"power_kw": 1.2 * rated, "wmax_kw": rated, "wmaxlim_pct": 100.0, "wmaxlim_ena": 0, "state": 2}
    return {}


def _pv_profile(dev: dict) -> str:
    name = dev.get("profile", PV_INVERTER_PROFILE)
    if load_profile(name).kind != "pv_inverter":
        log.warning("site device %s (role pv_inverter) names profile %s of kind %s; using %s on the wire "
                    "(change the site file)", dev["name"], name, load_profile(name).kind, PV_INVERTER_PROFILE)
        return PV_INVERTER_PROFILE
    return name


# --- the BMS on CAN -------------------------------------------------------------------------------------
class WireBms:
    """The BMS node: one set of Pylontech/SMA frames per scan cycle, encoded by cantools from the DBC."""

    def __init__(self, site: SimSite, channel: str, dbc_path=DEFAULT_DBC):
        self.site = site
        self.bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        self.db = cantools.database.load_file(str(dbc_path))
        self.sim = SIM_DEVICE_BY_ROLE["bms"]("bms", site)
        self.frames = 0
        self.unrepresentable: dict[str, int] = {}
        self._msgs = {m.name: m for m in self.db.messages}
        self._silent = False

    def _fit(self, message: str, values: dict) -> dict:
        """Round to each signal's resolution; a value outside the signal's range is sent as 0 ("unknown")."""
        m = self._msgs[message]
        out = {}
        for sig in m.signals:
            v = float(values.get(sig.name, 0.0))
            raw = round((v - sig.offset) / sig.scale)
            v = raw * sig.scale + sig.offset
            lo = sig.minimum if sig.minimum is not None else -math.inf
            hi = sig.maximum if sig.maximum is not None else math.inf
            if not lo - 1e-9 <= v <= hi + 1e-9:
                self.unrepresentable[sig.name] = self.unrepresentable.get(sig.name, 0) + 1
                v = 0.0 if lo <= 0.0 <= hi else lo
            out[sig.name] = v
        return out

    def broadcast(self) -> None:
        if self.site.series.flag("bms_silent", self.site.t_s):
            self._silent = True
            return
        self._silent = False
        r = dict(self.sim.read())
        frames = {
            "BMS_Limits": {"ChargeVoltageLimit": r["cvl_v"], "ChargeCurrentLimit": r["ccl_a"],
                           "DischargeCurrentLimit": r["dcl_a"], "DischargeVoltageLimit": r["dvl_v"]},
            "BMS_SocSoh": {"StateOfCharge": r["soc_pct"], "StateOfHealth": r["soh_pct"]},
            # 0x356 current is + charge on the wire; the simulator's is + discharge
            "BMS_Measurements": {"BatteryVoltage": r["voltage_v"], "BatteryCurrent": -r["current_a"],
                                 "BatteryTemperature": r["temp_c"]},
            "BMS_PylonAlarms": {"Protection": r["alarm_bits"], "Warning": r.get("warning_bits", 0.0),
                                "ModuleCount": max(1, self.site.battery.cells // 16), "MarkerP": 0x50,
                                "MarkerN": 0x4E},
            "BMS_Requests": {"ChargeEnable": r["charge_enable"], "DischargeEnable": r["discharge_enable"],
                             "ForceChargeI": r["force_charge"], "ForceChargeII": 0, "RequestFullCharge": 0},
            "BMS_CellExtremes": {"MinCellVoltage": r["cell_v_min"], "MaxCellVoltage": r["cell_v_max"],
                                 "MinCellTemperature": r["cell_temp_min_c"],
                                 "MaxCellTemperature": r["cell_temp_max_c"]},
        }
        for name, values in frames.items():
            m = self._msgs[name]
            data = m.encode(self._fit(name, values))
            self.bus.send(can.Message(arbitration_id=m.frame_id, data=data, is_extended_id=False))
            self.frames += 1
        if self.frames <= len(frames) or int(self.site.t_s) % 10 == 0:
            self.bus.send(can.Message(arbitration_id=self._msgs["BMS_Manufacturer"].frame_id, data=b"SIMPYLON",
                                      is_extended_id=False))
            self.frames += 1

    def close(self) -> None:
        self.bus.shutdown()


# --- the whole wire site --------------------------------------------------------------------------------
class WireSite:
    """Owns the servers and ports of one wire run; ``wire()`` closes them (it is the closer)."""

    def __init__(self, site: SimSite, baud: int | None = None, *, timeout_s: float | None = None,
                 channel: str | None = None, seed: int = 0):
        self.site = site
        self.baud = baud
        self.units: dict[int, WireUnit] = {}
        self._sim_devs = {}
        self.server = WireModbusServer(baud=baud, seed=seed)
        self.server.on_write = self._on_write
        self.channel = channel or f"edge-ems-wire-{uuid.uuid4().hex[:12]}"
        self.bms: WireBms | None = None
        self.bus: ModbusBus | None = None
        self.devices: dict = {}
        self._scenario_silent: set[int] = set()
        self._closed = False
        self._lock = threading.Lock()
        cfg = site.scn.site
        meter_units = []
        for dev in cfg["devices"]:
            role = dev["role"]
            if role in MODBUS_ROLES:
                if role == "genset" and site.genset is None:
                    continue
                prof = load_profile(_pv_profile(dev) if role == "pv_inverter" else dev["profile"])
                if prof.kind != ROLE_KIND[role]:
                    raise ValueError(f"device {dev['name']}: profile {prof.name} is a {prof.kind}, role {role} "
                                     f"needs a {ROLE_KIND[role]}")
                unit = int(dev["unit"])
                if unit in self.units:
                    raise ValueError(f"device {dev['name']}: unit {unit} already used on the shared bus")
                enc = RegisterEncoder(prof, _full_scale(role, site, prof))
                self.units[unit] = WireUnit(dev["name"], role, unit, prof, enc)
                self._sim_devs[unit] = SIM_DEVICE_BY_ROLE[role](dev["name"], site)
                self.server.add_device(unit, prof, _full_scale(role, site, prof))
                if role == "grid_meter":
                    meter_units.append(unit)
            elif role == "bms":
                self.bms = WireBms(site, self.channel)
        self.grid_meter_units = meter_units
        limit_to_profiles(site)   # the simulated set follows the load when its profile has no kW command
        self._init_writable()
        self.refresh()
        self.server.start()
        client_baud = baud or NOMINAL_CLIENT_BAUD
        guard = 0.05 if timeout_s is None else min(0.05, timeout_s)
        self.bus = ModbusBus(self.server.client_path, baud=client_baud, late_reply_guard_s=guard)
        self._build_devices(timeout_s)

    # --- server side ----------------------------------------------------------------------------------
    def _init_writable(self) -> None:
        for u in self.units.values():
            if u.role == "pcs":
                self.server.put(u.unit, u.encoder.encode({"out_rate_pct": 0.0, "in_rate_pct": 0.0, "storctl_mod": 0}))
            elif u.role == "pv_inverter":
                self.server.put(u.unit, u.encoder.encode({"wmaxlim_pct": 100.0, "wmaxlim_ena": 0}))
            elif u.role == "genset":
                self.server.put(u.unit, u.encoder.encode({"control_mode": DSE_MODE["auto"]}))

    def refresh(self) -> None:
        """SimSite -> every unit's registers; scenario silences -> wire faults; one set of BMS frames."""
        site = self.site
        for unit, u in self.units.items():
            self.server.put(unit, u.encoder.encode(_sim_values(u.role, self._sim_devs[unit], site)))
        silent = site.series.flag("meter_silent", site.t_s)
        for unit in self.grid_meter_units:
            if silent and unit not in self._scenario_silent:
                self._scenario_silent.add(unit)
                self.server.fault(unit, "silent")
            elif not silent and unit in self._scenario_silent:
                self._scenario_silent.discard(unit)
                self.server.fault(unit, None)
        if self.bms is not None:
            self.bms.broadcast()

    def _on_write(self, unit: int, address: int, words: list[int]) -> None:
        """A write the server accepted -> SimSite actuation (server thread; the loop waits on the reply)."""
        u = self.units.get(unit)
        if u is None:
            return
        u.writes += 1
        regs = lambda start, n: self.server.registers(unit, 3, start, n)  # noqa: E731
        touched = range(address, address + len(words))
        if u.role == "pcs":
            start = u.encoder.models.get(124)
            if start is None or not any(start + o in touched for o in (3, 10, 11)):
                return
            mode = regs(start + 3, 1)[0]
            wchamax = u.encoder.decode("wchamax_kw", regs(u.encoder.register_of("wchamax_kw"), 1))
            pct = u.encoder.decode("out_rate_pct", regs(start + 10, 1))
            kw = pct / 100.0 * wchamax if mode & 3 == 3 else 0.0
            self.site.actuate_pcs(kw)
            self._applied(u, "setpoint_kw", kw)
        elif u.role == "genset":
            cmd = next(c for c in u.profile.commands if c.handler == "deepsea_key")
            key_reg = cmd.params["key_register"]
            if key_reg not in touched or key_reg + 1 not in touched:
                return                                     # GenComm acts only on key + complement together
            key, comp = words[key_reg - address], words[key_reg + 1 - address]
            if comp != (~key & 0xFFFF):
                self._applied(u, "rejected_key", key)
                return
            what = DSE_KEYS.get(key)
            if what in DSE_MODE:
                self.server.put(unit, u.encoder.encode({"control_mode": DSE_MODE[what]}))
            if what == "start":
                self.site.actuate_genset(True)
            elif what == "stop":
                self.site.actuate_genset(False)
            self._applied(u, what or "unknown_key", key)
        elif u.role == "pv_inverter":
            start = u.encoder.models.get(123)
            if start is None or not any(start + o in touched for o in (3, 7)):
                return
            pct = u.encoder.decode("wmaxlim_pct", regs(start + 3, 1))
            ena = regs(start + 7, 1)[0]
            wmax = u.encoder.decode("wmax_kw", regs(u.encoder.register_of("wmax_kw"), 1))
            kw = pct / 100.0 * wmax if ena == 1 else self.site.pv_rated_kw
            self.site.actuate_pv_limit(kw)
            self._applied(u, "limit_kw", kw)

    @staticmethod
    def _applied(u: WireUnit, what: str, value: float) -> None:
        u.applied.append((what, value))
        if len(u.applied) > 64:
            del u.applied[:32]

    # --- controller side ------------------------------------------------------------------------------
    def _build_devices(self, timeout_s: float | None) -> None:
        cfg = self.site.scn.site
        limits = cfg["limits"]
        by_name = {u.name: u for u in self.units.values()}
        in_process = {}
        self.devices = {"_wire": WireSync(self)}
        for dev in cfg["devices"]:
            name, role = dev["name"], dev["role"]
            if name in by_name:
                u = by_name[name]
                kw = {"fast_max_age_s": limits["meter_max_age_s"]}
                if timeout_s is not None:
                    kw["timeout_s"] = timeout_s
                # the stock driver: commands its profile cannot express are dropped, known at build
                self.devices[name] = ModbusDevice(name, u.profile, self.bus, u.unit, **kw)
            elif role == "bms" and self.bms is not None:
                self.devices[name] = CanBms(name, interface="virtual", channel=self.channel,
                                            max_age_s=limits["bms_max_age_s"])
            else:   # compute, grid, weather (MQTT / cloud in the field), or a genset the site lacks
                self.devices[name] = in_process[name] = SIM_DEVICE_BY_ROLE[role](name, self.site)
        self.in_process = sorted(in_process)

    # --- faults, figures, closing -------------------------------------------------------------------------
    def unit_of(self, name: str) -> int:
        return next(u.unit for u in self.units.values() if u.name == name)

    def fault(self, name: str, kind: str | None, delay_s: float = 0.0) -> None:
        """Inject a wire fault on device ``name`` (None clears it), as modbus_server.FAULTS."""
        self.server.fault(self.unit_of(name), kind, delay_s)

    def stats(self) -> dict:
        s = self.bus.stats
        can_rx = next((d.frames for d in self.devices.values() if isinstance(d, CanBms)), 0)
        return {
            "modbus_transactions": s.transactions, "modbus_failures": s.failures, "modbus_retries": s.retries,
            "modbus_request_bytes": s.request_bytes, "modbus_response_bytes": s.response_bytes,
            "modbus_busy_s": round(s.busy_s, 3),
            "server_requests": {self.units[k].name: v for k, v in sorted(self.server.requests.items())},
            "server_writes": {u.name: u.writes for u in self.units.values()},
            "can_frames_sent": self.bms.frames if self.bms else 0, "can_frames_decoded": can_rx,
            "can_unrepresentable": dict(self.bms.unrepresentable) if self.bms else {},
            "writes_deferred": sum(getattr(d, "writes_deferred", 0) for d in self.devices.values()),
            "baud_emulated": self.baud, "in_process": self.in_process,
        }

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.bus is not None:
            self.bus.close()
        self.server.close()
        if self.bms is not None:
            self.bms.close()

    __call__ = close


class WireSync:
    """First in the devices dict: refreshes the wire from SimSite before any real driver reads it."""

    name = "_wire"
    kind = "wire"

    def __init__(self, wire: WireSite):
        self.wire = wire

    def acquire(self, now_mono_s, sink) -> None:
        self.wire.refresh()

    def actuate(self, commands, now_mono_s) -> None:
        pass

    def close(self) -> None:
        self.wire.close()


def build_wire_devices(site: SimSite, baud: int | None = None, **kwargs) -> tuple[dict, WireSite]:
    """(devices name -> Device for the ScanLoop, closer). ``baud``: emulate that baud rate on the wire.

    The Modbus roles are real drivers on a pty, the BMS a real CanBms on a virtual CAN bus, compute /
    grid / weather the in-process simulator devices. Keyword extras go to :class:`WireSite`
    (``timeout_s`` overrides every Modbus device's timeout, ``channel`` names the CAN channel).
    """
    wire = WireSite(site, baud, **kwargs)
    return wire.devices, wire


__all__ = ["build_wire_devices", "WireSite", "RegisterEncoder", "MODBUS_ROLES"]
