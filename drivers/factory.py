"""The field provider's devices: from a validated site profile, one driver per field device.

``build_field_devices(cfg)`` opens the `[buses]` its non-simulated devices use (Modbus RTU through
pyserial, Modbus TCP through pymodbus, CAN through python-can) and builds each `[[devices]]` entry as a
drivers.base.Device. Network-bus devices (compute, grid, weather, market) are not field I/O and are left
to controller/netinputs.py.

A gateway must start with a USB adapter missing or a PCS switched off: a port or connection that does not
open is not an exception here. The device is built anyway, reports its points ERROR then STALE, its bus
retries opening with a growing wait, and ``FieldDevices.problems`` says which port and which devices. Only
a profile that does not exist or does not fit the role raises (ProfileError): that is a wrong site file,
which `edge-ems check` rejects too, and no amount of waiting fixes it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from drivers.can_bms import CanBms
from drivers.modbus.bus import ModbusBus, get_bus, release_bus
from drivers.modbus.device import ModbusDevice
from drivers.modbus.tcp import ModbusTcpBus, get_tcp_bus, release_tcp_bus
from drivers.profiles import DEFAULT_CAN_PROFILE, ROLE_KIND, ProfileLookupError, resolve_profile

log = logging.getLogger(__name__)
FIELD_KINDS = ("modbus_rtu", "modbus_tcp", "can")


@dataclass
class FieldDevices:
    devices: dict = field(default_factory=dict)          # name -> Device
    supported: dict = field(default_factory=dict)        # name -> set of canonical commands it can take
    problems: list = field(default_factory=list)         # one line each, naming the bus and its devices
    buses: dict = field(default_factory=dict)            # bus name -> ModbusBus / ModbusTcpBus (CAN: none)

    def close(self) -> None:
        """Devices first, then the ports they shared; safe to call twice."""
        for dev in list(self.devices.values()):
            try:
                dev.close()
            except Exception as exc:                     # closing must not stop closing the others
                log.warning("%s: close failed: %s", getattr(dev, "name", "?"), exc)
        for bus in self.buses.values():
            if isinstance(bus, ModbusTcpBus):
                release_tcp_bus(bus.host, bus.port)
            else:
                release_bus(bus.url)
        self.buses = {}


def _pack_voltage_range(cfg) -> tuple[float, float]:
    bat = cfg["battery"]
    n = bat["cells_series"]
    return 0.75 * n * bat["cell_v_min"], 1.1 * n * bat["cell_v_max"]


def _open_modbus_bus(name: str, spec: dict):
    if spec["kind"] == "modbus_rtu":
        return get_bus(spec["port"], spec["baud"], parity=spec["parity"], lazy=True)
    # a LAN connect takes milliseconds; an unreachable host must not stall the cycle for long per attempt
    bus = get_tcp_bus(spec["host"], spec["port"] if isinstance(spec["port"], int) else 502,
                      connect_timeout_s=0.5)
    bus.connect()
    return bus


def build_field_devices(cfg) -> FieldDevices:
    """Every device with ``simulated = false`` on a modbus_rtu / modbus_tcp / can bus, built and attached."""
    out = FieldDevices()
    limits = cfg["limits"]
    users: dict[str, list[str]] = {}
    for i, dev in enumerate(cfg["devices"]):
        spec = cfg["buses"].get(dev["bus"])
        if dev["simulated"] or spec is None or spec["kind"] not in FIELD_KINDS:
            continue
        name, role, kind = dev["name"], dev["role"], spec["kind"]
        if role not in ROLE_KIND:
            raise ProfileLookupError(f"devices[{i}] {name}: role {role} is not field I/O (put it on a network bus)")
        try:
            prof = resolve_profile(dev["profile"] or (DEFAULT_CAN_PROFILE if kind == "can" else ""), role,
                                   can=kind == "can")
        except ProfileLookupError as exc:
            raise ProfileLookupError(f"devices[{i}].profile ({name}): {exc}") from None
        if prof.kind != ROLE_KIND[role]:
            raise ProfileLookupError(f"devices[{i}].profile ({name}): {prof.name} is a {prof.kind} profile; "
                                     f"role {role} needs a {ROLE_KIND[role]} profile")
        users.setdefault(dev["bus"], []).append(name)
        is_bms = role == "bms"
        lo, hi = _pack_voltage_range(cfg)
        if is_bms and prof.max_voltage_v is not None and hi / 1.1 > prof.max_voltage_v:
            out.problems.append(f"{name}: profile {prof.name} carries at most {prof.max_voltage_v:g} V, the pack "
                                f"reaches {hi / 1.1:.0f} V: its voltage is shown as unknown")
        if kind == "can":
            extra = {}
            if spec["interface"] == "slcan" and spec["tty_baudrate"]:
                extra["tty_baudrate"] = spec["tty_baudrate"]
            bms = CanBms(name, interface=spec["interface"], channel=spec["channel"], bitrate=spec["bitrate"],
                         dbc_path=prof.path, max_age_s=limits["bms_max_age_s"], voltage_range=(lo, hi),
                         bus_kwargs=extra, lazy=True)
            if bms.open_error:
                out.problems.append(f"bus {dev['bus']}: {bms.open_error} ({name}); retrying")
            out.devices[name] = bms
            out.supported[name] = set()
            continue
        bus = out.buses.get(dev["bus"])
        if bus is None:
            bus = out.buses[dev["bus"]] = _open_modbus_bus(dev["bus"], spec)
        kw = {"fast_max_age_s": limits["bms_max_age_s"] if is_bms else limits["meter_max_age_s"],
              "slow_max_age_s": limits["slow_max_age_s"]}
        if spec.get("timeout_s"):
            kw["timeout_s"] = spec["timeout_s"]
        device = ModbusDevice(name, prof.modbus, bus, dev["unit"], **kw)
        out.devices[name] = device
        out.supported[name] = set(device.supported_commands)
    for bus_name, bus in out.buses.items():
        if bus.open_error:
            out.problems.append(f"bus {bus_name}: {bus.open_error} ({', '.join(users[bus_name])}); retrying")
    return out


__all__ = ["FieldDevices", "build_field_devices", "ModbusBus", "ModbusTcpBus"]
