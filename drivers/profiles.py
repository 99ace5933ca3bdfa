"""Which device profile a site's `[[devices]]` entry names, and whether it fits its role and its bus.

One lookup shared by `edge-ems check` (controller/config.py cross checks) and the field factory, so a
profile that `check` accepted is the one the gateway opens. A name resolves to a Modbus register map
(profiles/devices/NAME.toml) or a CAN database (profiles/can/NAME.dbc); a path to either works too.

``max_voltage_v`` is the highest pack voltage the profile's ``voltage_v`` can carry on the wire (the
Pylontech/SMA 0x356 frame's s16 x 0.01 V stops at 327.67 V): a 240-cell pack does not fit, and a check
that says so beats a TUI showing "Pack 0.0 V".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from drivers.modbus.profile import PROFILE_DIR, DeviceProfile, ProfileError, load_profile

CAN_DIR = PROFILE_DIR.parent / "can"
DEFAULT_CAN_PROFILE = "pylon_sma_bms"
ROLE_KIND = {"grid_meter": "meter", "pv_meter": "meter", "pcs": "pcs", "bms": "bms", "genset": "genset",
             "pv_inverter": "pv_inverter", "wind_meter": "meter"}
_TYPE_MAX = {"uint16": 0xFFFF, "int16": 0x7FFF, "uint32": 0xFFFFFFFF, "int32": 0x7FFFFFFF, "float32": 3.4e38}


class ProfileLookupError(ProfileError):
    """A profile name or file that does not exist or cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ProfileInfo:
    name: str
    path: Path
    kind: str
    can: bool
    max_voltage_v: float | None = None
    modbus: DeviceProfile | None = None


def _known() -> str:
    names = sorted(f.stem for f in PROFILE_DIR.glob("*.toml")) + sorted(f.stem for f in CAN_DIR.glob("*.dbc"))
    return ", ".join(names)


def _modbus_max_v(prof: DeviceProfile) -> float | None:
    try:
        p = prof.point("voltage_v")
    except KeyError:
        return None
    top = _TYPE_MAX.get(p.type)
    return None if top is None or p.sf_offset is not None else top * abs(p.scale)


def _can_max_v(path: Path) -> float | None:
    import cantools

    from drivers.can_bms import SIGNAL_POINTS
    db = cantools.database.load_file(str(path))
    for (message, signal), point in SIGNAL_POINTS.items():
        if point != "voltage_v":
            continue
        try:
            sig = db.get_message_by_name(message).get_signal_by_name(signal)
        except KeyError:
            continue
        raw_max = (1 << (sig.length - 1)) - 1 if sig.is_signed else (1 << sig.length) - 1
        return raw_max * sig.scale + sig.offset
    return None


def _is_file(path: Path) -> bool:
    """Path.is_file, False for a name no file can have (too long: OSError ENAMETOOLONG; a NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def resolve_profile(name: str, role: str, *, can: bool | None = None, required: bool = True) -> ProfileInfo | None:
    """The profile ``name`` for a device of ``role``; ``can``: True a CAN database, False a Modbus map, None
    either. An empty name is None when not ``required`` (a CAN BMS then uses the Pylontech/SMA database)."""
    if not name:
        if required:
            raise ProfileLookupError(f"missing: a device of role {role} on this bus needs a profile "
                                     f"(known: {_known()})")
        return None
    given = Path(name)
    toml = given if given.suffix == ".toml" else PROFILE_DIR / f"{name}.toml"
    dbc = given if given.suffix == ".dbc" else CAN_DIR / f"{name}.dbc"
    if can is not True and _is_file(toml):
        try:
            prof = load_profile(toml)
        except ProfileError as exc:
            raise ProfileLookupError(str(exc)) from None
        except OSError as exc:                         # unreadable (permissions, an I/O error)
            raise ProfileLookupError(f"{toml}: cannot read: {exc.strerror or exc}") from None
        return ProfileInfo(prof.name, toml, prof.kind, False, _modbus_max_v(prof), prof)
    if can is not False and _is_file(dbc):
        try:
            max_v = _can_max_v(dbc)
        except Exception as exc:                       # cantools raises several parse error types
            raise ProfileLookupError(f"{dbc}: not a usable CAN database: {exc}") from None
        return ProfileInfo(dbc.stem, dbc, "bms", True, max_v)
    if can is True and _is_file(toml):
        raise ProfileLookupError(f"{name} is a Modbus register map; a device on a CAN bus needs a CAN "
                                 f"database (profiles/can/*.dbc)")
    if can is False and _is_file(dbc):
        raise ProfileLookupError(f"{name} is a CAN database; a device on a Modbus bus needs a register map "
                                 f"(profiles/devices/*.toml)")
    where = str(given) if given.suffix in (".toml", ".dbc") else f"{toml} or {dbc}"
    raise ProfileLookupError(f"{name[:80]!r}: no such profile file ({where[:200]}; known: {_known()})")
