"""What the lab emulates, read from a FIELD site profile (profiles/sites/lab.toml): one device process per
RS-485 segment, one per Modbus TCP host, one slcan adapter per CAN bus, publishers for the network bus.

The lab serves the profile the controller will read, so the two cannot disagree: a pty link is made at
each RTU bus's ``port`` (its file name, inside the lab's ``--dir``), the TCP server listens at the bus's
``host``/``port``, the slcan adapter at the CAN bus's ``channel``. When ``--dir`` or ``--tcp-port`` move
them, DIR/site.toml is the profile with the paths and port really used (a text copy, comments kept).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from controller.config import load_site, parse_toml, resolve_site
from controller.schema import ProfileError

log = logging.getLogger("lab")
MODBUS_ROLES = ("grid_meter", "pv_meter", "pcs", "genset", "pv_inverter")
NETWORK_ROLES = ("compute", "grid", "weather", "market")
LOOPBACK = ("127.0.0.1", "localhost")
DEFAULT_CAN_LINK = "can0"


class LabError(ValueError):
    """A lab profile or option the lab cannot serve; the message names the file and key."""


@dataclass
class Segment:
    bus: str
    transport: str                 # "rtu" | "tcp"
    link: str = ""                 # rtu: the controller's end of the socat pair
    srv: str = ""                  # rtu: the server's end
    host: str = "127.0.0.1"
    port: int = 0                  # tcp
    baud: int = 9600
    devices: list = field(default_factory=list)     # [[devices]] entries


@dataclass
class LabPlan:
    site_path: Path
    site: dict                     # the site config the physics uses (devices and buses are the profile's)
    validated: bool                # False: the profile did not pass controller/config.py (yet); see problems
    problems: list
    segments: dict                 # bus name -> Segment
    can: dict                      # {"bus", "link", "srv", "bitrate", "device"}; bus/device None: no CAN BMS
    network: list                  # [[devices]] entries on a "network" bus
    replaced: dict                 # text in the profile -> what the lab used instead


def _raw_devices(path: Path, raw: dict) -> list[dict]:
    devices = raw.get("devices")
    if not isinstance(devices, list) or not devices:
        raise LabError(f"{path}: [[devices]]: expected at least one device")
    out = []
    for i, d in enumerate(devices):
        for key in ("name", "role", "bus"):
            if not isinstance(d.get(key), str) or not d.get(key):
                raise LabError(f"{path}: devices[{i}].{key}: expected a non-empty string")
        out.append({"unit": 1, "profile": "", "simulated": False, **d})
    return out


def load_plan(site_file: str | Path, lab_dir: Path, tcp_port: int | None = None,
              fallback_site: dict | None = None) -> LabPlan:
    """Read the profile; ``tcp_port`` (0 = a free one, chosen by the caller) overrides every TCP bus's port.

    ``fallback_site``: the physics sections to use when the profile does not validate against
    controller/config.py (a schema that does not know ``modbus_tcp`` / ``network`` yet)."""
    path = resolve_site(str(site_file)) if not Path(site_file).exists() else Path(site_file)
    if not path.exists():
        raise LabError(f"{site_file}: no such site profile")
    raw, _text = parse_toml(path)
    problems: list[str] = []
    try:
        site = dict(load_site(path))
        validated = True
    except ProfileError as exc:
        if fallback_site is None:
            raise LabError(str(exc)) from None
        problems = [str(p) for p in getattr(exc, "problems", [exc])]
        site = dict(fallback_site)
        validated = False
    buses = raw.get("buses") or {}
    devices = _raw_devices(path, raw)
    site["devices"] = devices
    site["buses"] = buses
    segments: dict[str, Segment] = {}
    replaced: dict[str, str] = {}
    can = None
    network = []
    for i, dev in enumerate(devices):
        where = f"{path}: devices[{i}] ({dev['name']})"
        if dev.get("simulated"):
            raise LabError(f"{where}: simulated = true; the lab serves field profiles (simulated = false)")
        bus = buses.get(dev["bus"])
        if not isinstance(bus, dict):
            raise LabError(f"{where}.bus: {dev['bus']!r} is not defined under [buses]")
        kind = bus.get("kind")
        if dev["role"] in MODBUS_ROLES or (dev["role"] == "bms" and kind in ("modbus_rtu", "modbus_tcp")):
            if kind not in ("modbus_rtu", "modbus_tcp"):
                raise LabError(f"{where}: role {dev['role']} needs a modbus_rtu or modbus_tcp bus, "
                               f"[buses.{dev['bus']}] is {kind!r}")
            if not dev.get("profile"):
                raise LabError(f"{where}.profile: a Modbus device needs a device profile")
            seg = segments.get(dev["bus"])
            if seg is None:
                seg = segments[dev["bus"]] = _segment(path, dev["bus"], bus, lab_dir, tcp_port, replaced)
            if any(int(d["unit"]) == int(dev["unit"]) for d in seg.devices):
                raise LabError(f"{where}.unit: unit {dev['unit']} is already used on bus {dev['bus']}")
            seg.devices.append(dev)
        elif dev["role"] == "bms":
            if kind != "can":
                raise LabError(f"{where}: the lab emulates the BMS on a CAN bus, [buses.{dev['bus']}] is {kind!r}")
            if bus.get("interface") != "slcan":
                raise LabError(f"{path}: buses.{dev['bus']}.interface: the lab's CAN adapter is slcan on a pty, "
                               f"got {bus.get('interface')!r} (a vcan interface needs root and a kernel module)")
            channel = str(bus.get("channel") or "")
            if not channel:
                raise LabError(f"{path}: buses.{dev['bus']}.channel: expected the adapter's path")
            link = str(lab_dir / Path(channel).name)
            if link != channel:
                replaced[f'"{channel}"'] = f'"{link}"'
            can = {"bus": dev["bus"], "link": link, "srv": link + ".srv", "bitrate": int(bus.get("bitrate", 500000)),
                   "device": dev}
        elif dev["role"] in NETWORK_ROLES:
            network.append(dev)
        else:
            raise LabError(f"{where}.role: the lab has no emulation for role {dev['role']!r}")
    if can is None:     # the cabinet's CAN port is there even when the profile's BMS is on Modbus
        link = str(lab_dir / DEFAULT_CAN_LINK)
        can = {"bus": None, "link": link, "srv": link + ".srv", "bitrate": 500000, "device": None}
    return LabPlan(path, site, validated, problems, segments, can, network, replaced)


def _segment(path: Path, name: str, bus: dict, lab_dir: Path, tcp_port: int | None, replaced: dict) -> Segment:
    if bus["kind"] == "modbus_rtu":
        port = str(bus.get("port") or "")
        if not port or "://" in port:
            raise LabError(f"{path}: buses.{name}.port: expected a device path the lab can link its pty to, "
                           f"got {port!r}")
        link = str(lab_dir / Path(port).name)
        if link != port:
            replaced[f'"{port}"'] = f'"{link}"'
        return Segment(name, "rtu", link=link, srv=link + ".srv", baud=int(bus.get("baud", 9600)))
    host = str(bus.get("host") or "")
    if host not in LOOPBACK:
        raise LabError(f"{path}: buses.{name}.host: the lab listens on 127.0.0.1 only, got {host!r}")
    port = bus.get("port")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise LabError(f"{path}: buses.{name}.port: expected a TCP port number (integer), got {port!r}")
    if tcp_port is not None and tcp_port != port:
        replaced[f"port = {port}"] = f"port = {tcp_port}"
        port = tcp_port
    return Segment(name, "tcp", host="127.0.0.1", port=port)


def write_site_copy(plan: LabPlan, out: Path) -> Path:
    """The profile's text with the lab's real paths and ports (only the values the lab moved change)."""
    text = plan.site_path.read_text()
    for old, new in plan.replaced.items():
        if old.startswith("port = "):
            text = re.sub(rf"^(\s*){re.escape(old)}\b", rf"\g<1>{new}", text, flags=re.M)
        else:
            text = text.replace(old, new)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out
