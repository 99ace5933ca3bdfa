"""What a technician runs at commissioning: read one device through its profile, find who is on a bus.

Backs ``edge-ems read`` and ``edge-ems scan``. Each call opens its own port (or TCP connection) and closes
it, so it can run next to nothing else; it must not run while the controller holds the same port.
``port`` is a serial path or pyserial URL, or ``tcp://HOST[:PORT]`` for Modbus TCP.

Failures are split the way the CLI reports them: :class:`BadInput` (a profile, unit or port that cannot
be right: exit 2) and :class:`NotAnswering` (the port opened but the unit gave no data: exit 1).
"""
from __future__ import annotations

import math
from urllib.parse import urlsplit

import serial

from drivers.base import QUALITY_OK
from drivers.modbus.bus import ModbusBus
from drivers.modbus.device import ModbusDevice
from drivers.modbus.errors import DEVICE_ANSWERED, LINE_FAULTS
from drivers.modbus.profile import ProfileError, load_profile
from drivers.modbus.tcp import ModbusTcpBus

# Where a unit that exists has data: FC3 and FC4 at 0 (most meters and BMSs), SunSpec's 'SunS' at 40000.
PROBES = ((3, 0, 1), (4, 0, 1), (3, 40000, 2))


class BadInput(ValueError):
    """The command's arguments cannot be right (exit 2)."""


class NotAnswering(ConnectionError):
    """Nothing, or only exception replies, came back (exit 1)."""


def open_bus(port: str, baud: int = 9600, late_reply_guard_s: float = 0.05):
    """A bus for ``port``: Modbus TCP for tcp://host[:port], else a serial port through pyserial."""
    if port.startswith("tcp://"):
        parts = urlsplit(port)
        try:
            tcp_port = parts.port or 502
        except ValueError:
            raise BadInput(f"{port}: the TCP port must be an integer 1..65535") from None
        if not parts.hostname:
            raise BadInput(f"{port}: no host (expected tcp://HOST[:PORT])")
        bus = ModbusTcpBus(parts.hostname, tcp_port, connect_timeout_s=2.0)
        if not bus.connect():
            raise NotAnswering(f"{bus.open_error} (is the device on and the address right?)")
        return bus
    try:
        return ModbusBus(port, baud=baud, late_reply_guard_s=late_reply_guard_s)
    except ValueError as exc:                          # pyserial: unknown URL scheme or bad parameter
        raise BadInput(f"{port}: {exc}") from None
    except (serial.SerialException, OSError) as exc:
        raise NotAnswering(f"{port}: cannot open the port: {exc}") from None


def read_device(port_url: str, profile_name: str, unit: int, baud: int | None = None,
                timeout_s: float | None = None) -> dict:
    """Every point of the profile (canonical and vendor extras) decoded once, as {name: value|None}.

    None marks a point the device does not implement or that failed to read. Raises NotAnswering when
    the unit does not answer at all, BadInput for a profile or unit that cannot be.
    """
    try:
        profile = load_profile(profile_name)
    except ProfileError as exc:
        raise BadInput(str(exc)) from None
    if not 1 <= unit <= 247:
        raise BadInput(f"unit {unit}: expected a Modbus unit id 1..247")
    bus = open_bus(port_url, baud or profile.baud)
    try:
        dev = ModbusDevice(profile.name, profile, bus, unit, emit_extras=True, timeout_s=timeout_s)
        dev.poll(0.0)
        if not dev.placed or dev.backoff.active:
            raise NotAnswering(f"unit {unit} on {port_url} did not answer ({profile.name})")
        _fast, slow = dev.blocks()
        for i in range(1, len(slow)):  # one slow block per cycle: visit them all
            dev.poll(float(i))
        out: dict[str, float | None] = {}
        names = [p.name for p in profile.points] + [d.name for d in profile.derived]
        readings = dev.readings(float(len(slow)), extras=True)
        for name in names:
            value, _t, quality = readings.get(name, (math.nan, 0.0, QUALITY_OK))
            out[name] = None if quality != QUALITY_OK or math.isnan(value) else value
        if all(v is None for v in out.values()):
            raise NotAnswering(f"unit {unit} on {port_url} answered but refused every block of {profile.name} "
                               "(wrong profile or unit?)")
        return out
    finally:
        bus.close()


def scan_bus(port_url: str, baud: int = 9600, units=range(1, 248), timeout_s: float = 0.1) -> list[int]:
    """Unit ids that answer a probe with data (PROBES). An exception reply alone is not a device: a TCP
    gateway or a server answers for absent units that way."""
    bad = [u for u in units if not 1 <= u <= 247]
    if bad:
        raise BadInput(f"unit {bad[0]}: expected Modbus unit ids 1..247")
    bus = open_bus(port_url, baud, late_reply_guard_s=min(0.05, timeout_s))
    found = []
    try:
        for unit in units:
            for function, start, count in PROBES:
                try:
                    bus.read(unit, function, start, count, timeout_s=timeout_s, retries=0)
                except DEVICE_ANSWERED:
                    continue                   # alive or not, no data here: try the next probe
                except LINE_FAULTS:
                    break                      # nobody: do not spend two more timeouts on it
                found.append(unit)
                break
        return found
    finally:
        bus.close()
