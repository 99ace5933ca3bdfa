"""The `[dcim]` table of a site profile: the Modbus TCP server a DCIM or SCADA system reads.

Kept apart from the server (no pymodbus import) so that `edge-ems check` validates it without starting
anything. Off by default; when enabled it must name the address it listens on: a gateway sits on the
field bus, the uplink's network and the DCIM network at once, and Modbus TCP has no authentication, so
"every interface" (0.0.0.0, ::) is refused unless the profile says so in as many words (`allow_any`).
"""
from __future__ import annotations

import ipaddress
import re

from controller.schema import Field as F, Table

ANY_ADDRESSES = ("0.0.0.0", "::", "")
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")     # a Linux interface name (IFNAMSIZ - 1)

DCIM_SCHEMA = Table({
    "enabled": F("boolean", default=False),
    # an IPv4/IPv6 address of this gateway, or an interface name ("eth1") whose IPv4 address is used
    "bind": F("string", default=""),
    "allow_any": F("boolean", default=False),        # let bind = "0.0.0.0" / "::" listen on every interface
    "port": F("integer", default=502, min=1, max=65535),
    "unit_id": F("integer", default=1, min=1, max=247),
    "writes": F("boolean", default=False),
    "max_clients": F("integer", default=4, min=1, max=32),
    # a written battery setpoint holds this long, then falls back to 0 kW (OpenEMS's apiTimeout, 60 s);
    # the cloud's setpoint_schedule accepts slots of 60..3600 s, the same path checks this one
    "setpoint_hold_s": F("number", default=60.0, min=60.0, max=3600.0),
    # a register block older than this (the scan loop stopped publishing) reads as not available
    "max_age_s": F("number", default=5.0, min=0.5, max=600.0),
})


def bind_kind(bind: str) -> str:
    """'address' (an IP literal), 'interface' (an interface name) or 'bad'."""
    try:
        ipaddress.ip_address(bind)
        return "address"
    except ValueError:
        pass
    return "interface" if _IFNAME.match(bind) else "bad"


def check_dcim(cfg: dict, v) -> None:
    """Cross checks of [dcim] (controller/config.py calls this with its Validator)."""
    d = cfg.get("dcim")
    if not d or not d["enabled"]:
        return
    bind = d["bind"].strip()
    if not bind:
        v.problem("dcim.bind", "required when dcim.enabled = true: the gateway's address on the DCIM network "
                  "(\"10.20.0.5\") or that interface's name (\"eth1\")")
        return
    kind = bind_kind(bind)
    if kind == "bad":
        v.problem("dcim.bind", f"expected an IP address (\"10.20.0.5\", \"fd00::5\") or an interface name "
                  f"(\"eth1\"), got {bind!r}")
    elif kind == "address" and ipaddress.ip_address(bind).is_unspecified and not d["allow_any"]:
        v.problem("dcim.bind", f"{bind} listens on every interface (field bus, uplink and DCIM networks "
                  "alike) and Modbus TCP has no authentication: give the DCIM network's address, or set "
                  "dcim.allow_any = true to mean it")
