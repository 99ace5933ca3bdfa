"""Device profiles: TOML register maps in profiles/devices/, validated into frozen dataclasses.

A new meter model is a new TOML file, not new code, so a profile is checked as strictly as code would be:
an unknown key, a wrong type or a name that is not a canonical point is an error that names the file and
the key, at load time, never a surprise on the wire.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from drivers.base import CANONICAL_COMMANDS, CANONICAL_POINTS
from drivers.modbus.decode import ORDERS, TYPES, register_count

PROFILE_DIR = Path(__file__).resolve().parents[2] / "profiles" / "devices"
READ_FUNCTIONS = (3, 4)
DERIVED_OPS = ("mean", "sum", "nonzero", "bit_set", "bit_clear", "pct_of")
COMMAND_HANDLERS = ("register", "deepsea_key", "sunspec_storage", "sunspec_wmaxlim")
MAX_INT = 2 ** 63 - 1
# Command parameters by handler: (type, lo, hi) of each; what the handler reads at write time (a string
# register raised TypeError out of actuate, past the field-fault handling).
_WORD = (int, 0, 0xFFFF)
_COMMAND_PARAMS = {
    "register": {"register": _WORD, "type": (str, None, None), "scale": ((int, float), -1e12, 1e12)},
    "deepsea_key": {"key_register": _WORD, "on_keys": (list, None, None), "off_keys": (list, None, None)},
    "sunspec_storage": {"model": _WORD, "mode_value": _WORD, "mode_offset": (int, 0, 1000),
                        "out_offset": (int, 0, 1000), "rate_sf_offset": (int, 0, 1000), "max_point": (str, None, None)},
    "sunspec_wmaxlim": {"model": _WORD, "pct_offset": (int, 0, 1000), "pct_sf_offset": (int, 0, 1000),
                        "max_point": (str, None, None)},
}


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the offending key."""


@dataclass(frozen=True)
class PointSpec:
    """One register-backed value. ``register`` is None for SunSpec points until discovery places them."""

    name: str
    function: int
    type: str
    scale: float = 1.0
    fast: bool = True
    register: int | None = None
    model: int | None = None        # SunSpec model id
    offset: int | None = None       # SunSpec: register offset inside the model's data (after its header)
    sf_offset: int | None = None    # SunSpec: offset of the scale-factor register in the same model
    multiply_by: tuple[str, ...] = ()
    extra: bool = False             # vendor-specific, not a canonical point (shown by `edge-ems read`)
    source: str = ""

    @property
    def count(self) -> int:
        return register_count(self.type)


@dataclass(frozen=True)
class DerivedSpec:
    """A canonical point computed from read points (mean of phase voltages, sum of phase powers...)."""

    name: str
    op: str
    of: tuple[str, ...]
    bit: int = 0
    extra: bool = False


@dataclass(frozen=True)
class CommandSpec:
    name: str
    handler: str
    params: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    path: str
    kind: str
    vendor: str
    model: str
    source: str
    byte_order: str = "big"
    word_order: str = "big"
    max_registers_per_read: int = 100
    max_gap_registers: int = 8
    timeout_s: float = 0.2
    retries: int = 1
    baud: int = 9600
    sentinels: str = "none"         # "sunspec": honour not-implemented markers
    discovery: str = "none"         # "sunspec": find 'SunS' and walk the model chain
    sunspec_models: tuple[int, ...] = ()
    fast_max_age_s: float = 5.0
    slow_max_age_s: float = 60.0
    points: tuple[PointSpec, ...] = ()
    derived: tuple[DerivedSpec, ...] = ()
    commands: tuple[CommandSpec, ...] = ()

    def point(self, name: str) -> PointSpec:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)


_DEVICE_KEYS = {
    "kind": str, "vendor": str, "model": str, "source": str, "byte_order": str, "word_order": str,
    "max_registers_per_read": int, "max_gap_registers": int, "timeout_s": (int, float), "retries": int,
    "baud": int, "sentinels": str, "discovery": str, "sunspec_models": list,
    "fast_max_age_s": (int, float), "slow_max_age_s": (int, float),
}
_POINT_KEYS = {
    "name": str, "register": int, "function": int, "type": str, "scale": (int, float), "fast": bool,
    "model": int, "offset": int, "sf_offset": int, "multiply_by": list, "extra": bool, "source": str,
}
_DERIVED_KEYS = {"name": str, "op": str, "of": list, "bit": int, "extra": bool}


def profile_path(name_or_path: str | Path) -> Path:
    """A profile given by name ('eastron_sdm630') or by path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    candidate = PROFILE_DIR / f"{name_or_path}.toml"
    if candidate.exists():
        return candidate
    known = sorted(f.stem for f in PROFILE_DIR.glob("*.toml"))
    raise ProfileError(f"{name_or_path}: no such profile (known: {', '.join(known)})")


def _short(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        return f"an integer of {value.bit_length()} bits"        # str() of a huge int may refuse
    try:
        text = repr(value)
    except ValueError:
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _check_keys(where: str, table: dict, spec: dict, required: tuple[str, ...]) -> None:
    for key, value in table.items():
        if key not in spec:
            raise ProfileError(f"{where}.{key}: unknown key (allowed: {', '.join(sorted(spec))})")
        want = spec[key]
        if isinstance(value, bool) and want is not bool:
            raise ProfileError(f"{where}.{key}: expected {want}, got a boolean")
        if not isinstance(value, want):
            raise ProfileError(f"{where}.{key}: expected {getattr(want, '__name__', want)}, got {_short(value)}")
        # a number is a finite one that a float holds (float() of a 400-digit TOML integer overflows)
        if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT <= value <= MAX_INT:
            raise ProfileError(f"{where}.{key}: expected a 64-bit integer, got {_short(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ProfileError(f"{where}.{key}: expected a finite number, got {value!r}")
    for key in required:
        if key not in table:
            raise ProfileError(f"{where}.{key}: missing")


def _in_range(where: str, table: dict, key: str, lo, hi, default=None) -> None:
    value = table.get(key, default)
    if value is not None and not lo <= value <= hi:
        raise ProfileError(f"{where}.{key}: expected {lo}..{hi}, got {_short(value)}")


def _point(where: str, raw: dict, kind: str, device: dict) -> PointSpec:
    _check_keys(where, raw, _POINT_KEYS, ("name", "function", "type"))
    name = raw["name"]
    extra = raw.get("extra", False)
    if not extra and name not in CANONICAL_POINTS[kind]:
        raise ProfileError(f"{where}.name: '{name}' is not a canonical {kind} point "
                           f"({', '.join(CANONICAL_POINTS[kind])}); set extra = true for a vendor-specific one")
    if raw["type"] not in TYPES:
        raise ProfileError(f"{where}.type: unknown type '{raw['type']}' (expected one of {', '.join(TYPES)})")
    if raw["function"] not in READ_FUNCTIONS:
        raise ProfileError(f"{where}.function: {raw['function']} is not a read function code {READ_FUNCTIONS}")
    sunspec = device.get("discovery") == "sunspec"
    if sunspec:
        for key in ("model", "offset"):
            if key not in raw:
                raise ProfileError(f"{where}.{key}: missing (SunSpec points are placed by model and offset)")
    elif "register" not in raw:
        raise ProfileError(f"{where}.register: missing")
    reg = raw.get("register")
    if reg is not None and not 0 <= reg <= 0xFFFF - register_count(raw["type"]) + 1:
        raise ProfileError(f"{where}.register: {_short(reg)} outside 0..65535")
    if raw.get("scale", 1.0) == 0:
        raise ProfileError(f"{where}.scale: must not be 0")
    for key in ("model", "offset", "sf_offset"):
        _in_range(where, raw, key, 0, 0xFFFF)
    if register_count(raw["type"]) > device.get("max_registers_per_read", 100):
        raise ProfileError(f"{where}.type: {raw['type']} needs {register_count(raw['type'])} registers, more than "
                           f"device.max_registers_per_read")
    return PointSpec(
        name=name, function=raw["function"], type=raw["type"], scale=float(raw.get("scale", 1.0)),
        fast=raw.get("fast", True), register=reg, model=raw.get("model"), offset=raw.get("offset"),
        sf_offset=raw.get("sf_offset"), multiply_by=tuple(raw.get("multiply_by", ())), extra=extra,
        source=raw.get("source", ""),
    )


def _command(where: str, name: str, raw: dict, kind: str) -> CommandSpec:
    allowed = CANONICAL_COMMANDS.get(kind, ()) + CANONICAL_COMMANDS.get(f"{kind}_kw", ())
    if name not in allowed:
        raise ProfileError(f"{where}: '{name}' is not a canonical {kind} command ({', '.join(allowed) or 'none'})")
    handler = raw.get("handler")
    if handler not in COMMAND_HANDLERS:
        raise ProfileError(f"{where}.handler: {handler!r} (expected one of {', '.join(COMMAND_HANDLERS)})")
    if handler == "register":
        for key in ("register", "type"):
            if key not in raw:
                raise ProfileError(f"{where}.{key}: missing")
        if raw["type"] not in TYPES:
            raise ProfileError(f"{where}.type: unknown type '{raw['type']}'")
    if handler == "deepsea_key":
        for key in ("key_register", "on_keys", "off_keys"):
            if key not in raw:
                raise ProfileError(f"{where}.{key}: missing")
    params = {k: v for k, v in raw.items() if k != "handler"}
    spec = _COMMAND_PARAMS[handler]
    for key, value in params.items():
        if key not in spec:
            raise ProfileError(f"{where}.{key}: unknown key for handler {handler} (allowed: {', '.join(sorted(spec))})")
        want, lo, hi = spec[key]
        if isinstance(value, bool) or not isinstance(value, want) or (
                lo is not None and not (isinstance(value, float) and not math.isfinite(value)) and not lo <= value <= hi) \
                or (isinstance(value, float) and not math.isfinite(value)):
            shown = getattr(want, "__name__", "a number")
            raise ProfileError(f"{where}.{key}: expected {shown}" + (f" in {lo:g}..{hi:g}" if lo is not None else "")
                               + f", got {_short(value)}")
        if key in ("on_keys", "off_keys") and not (value and all(
                isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 0xFFFF for k in value)):
            raise ProfileError(f"{where}.{key}: expected a non-empty list of 16-bit key codes, got {_short(value)}")
    if handler == "register" and params.get("scale", 1.0) == 0:
        raise ProfileError(f"{where}.scale: must not be 0")
    return CommandSpec(name=name, handler=handler, params=params)


def parse_profile(data: dict, path: str, name: str) -> DeviceProfile:
    """Validate a parsed TOML document; every error names ``path`` and the key."""
    for key in data:
        if key not in ("device", "points", "derived", "commands"):
            raise ProfileError(f"{path}: {key}: unknown table (allowed: device, points, derived, commands)")
    device = data.get("device")
    if not isinstance(device, dict):
        raise ProfileError(f"{path}: device: missing [device] table")
    _check_keys(f"{path}: device", device, _DEVICE_KEYS, ("kind", "vendor", "model", "source"))
    kind = device["kind"]
    if kind not in CANONICAL_POINTS:
        raise ProfileError(f"{path}: device.kind: unknown kind '{kind}' (expected one of {', '.join(CANONICAL_POINTS)})")
    for key in ("byte_order", "word_order"):
        if device.get(key, "big") not in ORDERS:
            raise ProfileError(f"{path}: device.{key}: expected 'big' or 'little'")
    if not 1 <= device.get("max_registers_per_read", 100) <= 125:
        raise ProfileError(f"{path}: device.max_registers_per_read: must be 1..125 (Modbus limit)")
    for key, lo, hi in (("max_gap_registers", 0, 125), ("timeout_s", 0.001, 30.0), ("retries", 0, 10),
                        ("baud", 300, 4_000_000), ("fast_max_age_s", 0.001, 86400.0),
                        ("slow_max_age_s", 0.001, 86400.0)):
        _in_range(f"{path}: device", device, key, lo, hi)
    models = device.get("sunspec_models", [])
    if not all(isinstance(m, int) and not isinstance(m, bool) and 0 <= m <= 0xFFFF for m in models):
        raise ProfileError(f"{path}: device.sunspec_models: expected a list of model ids 0..65535, got {_short(models)}")
    if device.get("sentinels", "none") not in ("none", "sunspec"):
        raise ProfileError(f"{path}: device.sentinels: expected 'none' or 'sunspec'")
    if device.get("discovery", "none") not in ("none", "sunspec"):
        raise ProfileError(f"{path}: device.discovery: expected 'none' or 'sunspec'")

    raw_points = data.get("points", [])
    if not isinstance(raw_points, list) or not raw_points:
        raise ProfileError(f"{path}: points: need at least one [[points]] entry")
    points = tuple(_point(f"{path}: points[{i}]", p, kind, device) for i, p in enumerate(raw_points))
    names = [p.name for p in points]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ProfileError(f"{path}: points: duplicate name(s) {', '.join(sorted(dupes))}")
    for i, p in enumerate(points):
        for ref in p.multiply_by:
            if ref not in names:
                raise ProfileError(f"{path}: points[{i}].multiply_by: '{ref}' is not a point of this profile")

    derived = []
    for i, d in enumerate(data.get("derived", [])):
        where = f"{path}: derived[{i}]"
        _check_keys(where, d, _DERIVED_KEYS, ("name", "op", "of"))
        if d["op"] not in DERIVED_OPS:
            raise ProfileError(f"{where}.op: {_short(d['op'])} (expected one of {', '.join(DERIVED_OPS)})")
        need = 2 if d["op"] == "pct_of" else 1           # a mean of none divides by zero, pct_of reads of[1]
        if len(d["of"]) < need:
            raise ProfileError(f"{where}.of: op {d['op']} needs at least {need} point(s), got {len(d['of'])}")
        _in_range(where, d, "bit", 0, 31)
        if not d.get("extra", False) and d["name"] not in CANONICAL_POINTS[kind]:
            raise ProfileError(f"{where}.name: '{d['name']}' is not a canonical {kind} point")
        if d["name"] in names:
            raise ProfileError(f"{where}.name: '{d['name']}' is also a register point")
        for ref in d["of"]:
            if ref not in names:
                raise ProfileError(f"{where}.of: '{ref}' is not a point of this profile")
        derived.append(DerivedSpec(name=d["name"], op=d["op"], of=tuple(d["of"]), bit=d.get("bit", 0),
                                   extra=d.get("extra", False)))

    commands = tuple(_command(f"{path}: commands.{n}", n, c, kind)
                     for n, c in data.get("commands", {}).items())
    return DeviceProfile(
        name=name, path=path, kind=kind, vendor=device["vendor"], model=device["model"], source=device["source"],
        byte_order=device.get("byte_order", "big"), word_order=device.get("word_order", "big"),
        max_registers_per_read=device.get("max_registers_per_read", 100),
        max_gap_registers=device.get("max_gap_registers", 8),
        timeout_s=float(device.get("timeout_s", 0.2)), retries=device.get("retries", 1),
        baud=device.get("baud", 9600), sentinels=device.get("sentinels", "none"),
        discovery=device.get("discovery", "none"), sunspec_models=tuple(device.get("sunspec_models", ())),
        fast_max_age_s=float(device.get("fast_max_age_s", 5.0)),
        slow_max_age_s=float(device.get("slow_max_age_s", 60.0)),
        points=points, derived=tuple(derived), commands=commands,
    )


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load and validate one profile by name (profiles/devices/NAME.toml) or by path."""
    path = profile_path(name_or_path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc
    except ValueError as exc:            # tomllib's int() of a literal of more than 4300 digits
        raise ProfileError(f"{path}: not valid TOML: {str(exc)[:120]}") from None
    return parse_profile(data, str(path), path.stem)
