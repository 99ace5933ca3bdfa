"""The alarm catalogue (profiles/alarms.toml): texts, severities, what to check, which latch.

The kernel knows only bit positions (controller/core/layout.ALARM_NAMES); people see this catalogue.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from controller.config import PROFILES_DIR, parse_toml
from controller.core.layout import ALARM_NAMES
from controller.schema import Field, MapOf, ProfileError, Problem, Table, Validator

ALARMS_FILE = PROFILES_DIR / "alarms.toml"
SEVERITIES = ("critical", "warning", "info")
_SCHEMA = MapOf(Table({
    "bit": Field("integer", required=True, min=0, max=31),
    "severity": Field("string", required=True, choices=SEVERITIES),
    "latching": Field("boolean", required=True),
    "text": Field("string", required=True),
    "check": Field("string", required=True),
}))


@dataclass(frozen=True)
class Alarm:
    name: str
    bit: int
    severity: str
    latching: bool
    text: str
    check: str


@lru_cache(maxsize=1)
def catalogue() -> dict[int, Alarm]:
    """bit -> Alarm, validated against the kernel's bit layout."""
    doc, text = parse_toml(ALARMS_FILE)
    v = Validator(str(ALARMS_FILE), text)
    data = v.walk(_SCHEMA, doc, "")
    for name, entry in (data or {}).items():
        if name not in ALARM_NAMES:
            v.problem(name, f"not an alarm the controller raises (known: {', '.join(ALARM_NAMES)})")
        elif entry and entry["bit"] != ALARM_NAMES.index(name):
            v.problem(f"{name}.bit", f"expected {ALARM_NAMES.index(name)} (controller/core/layout.py)")
    for name in ALARM_NAMES:
        if name not in (data or {}):
            v.problem(name, "missing from the catalogue")
    if v.problems:
        raise ProfileError(v.problems)
    return {e["bit"]: Alarm(name, **e) for name, e in data.items()}


def latch_mask() -> int:
    return sum(1 << bit for bit, a in catalogue().items() if a.latching)


def active(mask: float) -> list[Alarm]:
    """Alarms whose bits are set in a C_ALARMS_ACTIVE / C_ALARMS_UNACKED word."""
    bits = int(mask)
    return [a for bit, a in sorted(catalogue().items()) if bits >> bit & 1]


__all__ = ["Alarm", "catalogue", "latch_mask", "active", "Problem"]
