"""What a technician runs at commissioning: read one device through its profile, find who is on a bus.

Backs ``edge-ems read`` and ``edge-ems scan``. Each call opens its own port and closes it, so it can run
next to nothing else; it must not run while the controller holds the same port.
"""
from __future__ import annotations

import math

import minimalmodbus

from drivers.base import QUALITY_OK
from drivers.modbus.bus import LINE_FAULTS, ModbusBus
from drivers.modbus.device import ModbusDevice
from drivers.modbus.profile import load_profile


def read_device(port_url: str, profile_name: str, unit: int, baud: int | None = None,
                timeout_s: float | None = None) -> dict:
    """Every point of the profile (canonical and vendor extras) decoded once, as {name: value|None}.

    None marks a point the device does not implement or that failed to read. Raises ConnectionError
    when the unit does not answer at all.
    """
    profile = load_profile(profile_name)
    bus = ModbusBus(port_url, baud=baud or profile.baud)
    try:
        dev = ModbusDevice(profile.name, profile, bus, unit, emit_extras=True, timeout_s=timeout_s)
        dev.poll(0.0)
        if not dev.placed or dev.backoff.active:
            raise ConnectionError(f"unit {unit} on {port_url} did not answer ({profile.name})")
        _fast, slow = dev.blocks()
        for i in range(1, len(slow)):  # one slow block per cycle: visit them all
            dev.poll(float(i))
        out: dict[str, float | None] = {}
        names = [p.name for p in profile.points] + [d.name for d in profile.derived]
        readings = dev.readings(float(len(slow)), extras=True)
        for name in names:
            value, _t, quality = readings.get(name, (math.nan, 0.0, QUALITY_OK))
            out[name] = None if quality != QUALITY_OK or math.isnan(value) else value
        return out
    finally:
        bus.close()


def scan_bus(port_url: str, baud: int = 9600, units=range(1, 248), timeout_s: float = 0.1) -> list[int]:
    """Unit ids that answer a one-register read (an exception response counts: someone is there)."""
    bus = ModbusBus(port_url, baud=baud, late_reply_guard_s=min(0.05, timeout_s))
    found = []
    try:
        for unit in units:
            try:
                bus.read(unit, 3, 0, 1, timeout_s=timeout_s, retries=0)
            except minimalmodbus.SlaveReportedException:
                pass
            except LINE_FAULTS:
                continue
            found.append(unit)
        return found
    finally:
        bus.close()
