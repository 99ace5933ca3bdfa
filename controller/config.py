"""Load and validate site profiles (profiles/sites/*.toml).

A corrupt or implausible profile must stop start-up with one message per problem, naming the file,
the key and its line, so a technician fixes it in one pass instead of one restart per typo.
"""
from __future__ import annotations

import sys
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 gateways
    import tomli as tomllib

from controller.carbon.contracts import CARBON_SCHEMA, validate_carbon
from controller.dcim.config import DCIM_SCHEMA, check_dcim
from controller.schema import ArrayOf, Field, MapOf, Problem, ProfileError, Table, Validator

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
SITES_DIR = PROFILES_DIR / "sites"

ROLES = ("grid_meter", "pv_meter", "pcs", "bms", "genset", "compute", "pv_inverter", "weather", "grid", "market",
         "wind_meter")
STRATEGIES = ("rule", "none", "mpc")
OBJECTIVES = ("cost", "carbon")     # [control] objective (controller/core/mpc/objective.py)
BUS_KINDS = ("modbus_rtu", "modbus_tcp", "can", "network", "sim")
FIELD_BUS_KINDS = ("modbus_rtu", "modbus_tcp", "can")
CAN_INTERFACES = ("socketcan", "slcan", "virtual")
# Roles whose inputs come over the network (MQTT from the compute platform or the cloud), not a field bus.
NETWORK_ROLES = ("compute", "grid", "weather", "market")


class _PortField(Field):
    """`port`: a pyserial URL or path (a string) for modbus_rtu, a TCP port (an integer) for modbus_tcp.

    Which one is checked against the bus kind in the cross checks; here only "a string or an integer"."""

    def expected(self) -> str:
        return "a string (modbus_rtu: serial path or pyserial URL) or an integer (modbus_tcp: 1..65535)"

    def check(self, value):
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return value, None
        return None, f"expected {self.expected()}, got {type(value).__name__} {value!r}"

F = Field
SITE_SCHEMA = Table({
    "site": Table({
        "name": F("string", required=True),
        "gateway_id": F("string", required=True),
        "timezone": F("string", required=True),
        "latitude": F("number", required=True, min=-90, max=90),
        "longitude": F("number", required=True, min=-180, max=180),
        "altitude_m": F("number", default=0.0, min=-500, max=9000),
        "currency": F("string", default="CNY"),
        "description": F("string", default=""),
    }, required=True),
    "control": Table({
        "period_s": F("number", default=1.0, min=0.1, max=5.0),
        "strategy": F("string", default="rule", choices=STRATEGIES),
        "bms_stale_cycles": F("integer", default=3, min=1, max=100),
        "meter_stale_cycles": F("integer", default=3, min=1, max=100),
        # mpc: on a weather warning, enter the event with at least this SOC (0: off; "storm watch")
        "storm_reserve_pct": F("number", default=0.0, min=0, max=100),
        # mpc, cost objective, a tariff with a demand charge: the plan's soft floor, the energy kept to shave
        # load nobody announced (docs/mpc.md "Peak reserve"); without a demand charge it is not used
        "peak_reserve_pct": F("number", default=80.0, min=0, max=100),
        # mpc + oracle: what the plan minimises, reliability first in both: "cost" (money, carbon at
        # [emissions] carbon_price_per_kg) or "carbon" (kg CO2e first, money the tie-breaker; docs/objectives.md)
        "objective": F("string", default="cost", choices=OBJECTIVES),
        # mpc + oracle: the value of lost load, per kWh not served (site currency): far above any energy price
        # (in the carbon objective converted to kg, controller/params.objective_kappa)
        "voll_per_kwh": F("number", default=50.0, min=0, min_exclusive=True),
    }),
    "buses": MapOf(Table({
        "kind": F("string", required=True, choices=BUS_KINDS),
        "port": _PortField("string", default=None),     # modbus_rtu: "" if absent; modbus_tcp: 502
        "host": F("string", default=""),
        "baud": F("integer", default=9600, choices=(1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)),
        "parity": F("string", default="N", choices=("N", "E", "O")),
        "interface": F("string", default="socketcan", choices=CAN_INTERFACES),
        "channel": F("string", default=""),
        "bitrate": F("integer", default=500000, min=10000, max=1000000),
        "tty_baudrate": F("integer", default=0, min=0, max=4000000),   # slcan: the adapter's serial speed
        "timeout_s": F("number", default=0.0, min=0, max=5.0),        # 0: each device profile's own
    })),
    "devices": ArrayOf(Table({
        "name": F("string", required=True),
        "role": F("string", required=True, choices=ROLES),
        "profile": F("string", default=""),
        "bus": F("string", required=True),
        "unit": F("integer", default=1, min=0, max=247),
        "simulated": F("boolean", default=False),
    }), required=True, min_items=1),
    "battery": Table({
        "capacity_kwh": F("number", required=True, min=0, min_exclusive=True),
        "soc_min_pct": F("number", default=10.0, min=0, max=100),
        "soc_max_pct": F("number", default=95.0, min=0, max=100),
        "reserve_pct": F("number", default=30.0, min=0, max=100),
        "charge_max_kw": F("number", required=True, min=0),
        "discharge_max_kw": F("number", required=True, min=0),
        "eta_charge": F("number", default=0.96, min=0, max=1, min_exclusive=True),
        "eta_discharge": F("number", default=0.96, min=0, max=1, min_exclusive=True),
        "cells_series": F("integer", default=16, min=1, max=1000),
        "nominal_v": F("number", default=51.2, min=0, min_exclusive=True),
        "cell_v_max": F("number", default=3.55, min=2.0, max=4.5),
        "cell_v_min": F("number", default=2.85, min=1.5, max=4.0),
        "wear_cost_per_kwh": F("number", default=0.0, min=0),
        "ramp_kw_per_s": F("number", default=1000.0, min=0, min_exclusive=True),
    }, required=True),
    "pcs": Table({
        "rated_kw": F("number", required=True, min=0, min_exclusive=True),
    }, required=True),
    "pv": Table({
        "rated_kw": F("number", default=0.0, min=0),
        "tilt_deg": F("number", default=30.0, min=0, max=90),          # for the clear-sky forecast
        "azimuth_deg": F("number", default=180.0, min=0, max=360),
    }),
    "genset": Table({
        "rated_kw": F("number", required=True, min=0, min_exclusive=True),
        "p_min_kw": F("number", default=0.0, min=0),
        "fuel_l_per_kwh": F("number", default=0.244, min=0),
        "fuel_l_per_h_on": F("number", default=3.7, min=0),
        "fuel_price_per_l": F("number", default=7.5, min=0),
        "start_delay_s": F("number", default=15.0, min=0),
        "min_run_s": F("number", default=1800.0, min=0),
        "cooldown_s": F("number", default=120.0, min=0),
        "start_soc_pct": F("number", default=25.0, min=0, max=100),
        "stop_soc_pct": F("number", default=60.0, min=0, max=100),
        "start_cost": F("number", default=0.0, min=0),
    }),
    "grid": Table({
        "import_max_kw": F("number", required=True, min=0),
        "export_max_kw": F("number", default=0.0, min=0),
        "import_margin_kw": F("number", default=2.0, min=0),
    }, required=True),
    "tariff": Table({
        "kind": F("string", default="flat", choices=("flat", "tou", "spot")),
        "import_price_per_kwh": F("number_or_numbers", default=0.6, min=-10, max=100, length=(24,)),
        "export_price_per_kwh": F("number", default=0.0, min=-10, max=100),
        "peak_price_per_kw": F("number", default=0.0, min=0),
        "source": F("string", default=""),
    }),
    "emissions": Table({
        "grid_kg_per_kwh": F("number", required=True, min=0, max=2),
        "grid_factor_source": F("string", default=""),
        "grid_factor_year": F("integer", default=0, min=0, max=2100),
        "diesel_kg_per_l": F("number", default=2.66, min=0, max=5),
        "diesel_source": F("string", default="UK DEFRA 2024, mineral diesel"),
        "carbon_price_per_kg": F("number", default=0.0, min=0),
    }, required=True),
    # Battery protection (OpenEMS battery protection and dbus-serialbattery defaults, REFERENCE.md).
    # Curves give the fraction of the configured maximum power vs a measurement.
    "interlocks": Table({
        "charge_vs_cell_v_max": F("curve", default=[[3.40, 1.0], [3.45, 0.25], [3.50, 0.05], [3.55, 0.0]],
                                  min=0, max=1),
        "discharge_vs_cell_v_min": F("curve", default=[[2.90, 0.0], [3.00, 0.1], [3.10, 1.0]], min=0, max=1),
        "charge_vs_temp_c": F("curve", default=[[0.0, 0.0], [5.0, 0.2], [10.0, 1.0], [45.0, 1.0], [50.0, 0.5],
                                                [55.0, 0.0]], min=0, max=1),
        "discharge_vs_temp_c": F("curve", default=[[-20.0, 0.0], [-10.0, 0.5], [0.0, 1.0], [50.0, 1.0],
                                                   [55.0, 0.5], [60.0, 0.0]], min=0, max=1),
        "charge_vs_soc_pct": F("curve", default=None, min=0, max=1),      # default: taper to soc_max
        "discharge_vs_soc_pct": F("curve", default=None, min=0, max=1),   # default: taper to soc_min
        "force_charge_below_cell_v": F("number", default=2.95, min=1.5, max=4.5),
        "force_charge_release_cell_v": F("number", default=3.15, min=1.5, max=4.5),
        "force_charge_kw": F("number", default=20.0, min=0),
        "force_charge_from_grid": F("boolean", default=True),
        "force_charge_min_s": F("number", default=300.0, min=0),
        "hold_hysteresis_pct": F("number", default=2.0, min=0, max=20),
        "hold_min_s": F("number", default=60.0, min=0),
        "recovery_delay_s": F("number", default=30.0, min=0),
        "temp_max_c": F("number", default=55.0, min=0, max=100),
        "temp_min_c": F("number", default=0.0, min=-40, max=30),
        "loop_safe_cycles": F("integer", default=5, min=1, max=1000),
        "genset_max_starts_per_h": F("integer", default=4, min=1, max=60),
        "genset_start_timeout_s": F("number", default=60.0, min=1),
        "alarm_clear_s": F("number", default=10.0, min=0),
    }),
    # The technician TUI (controller/ipc.py): PIN as "scrypt$n$r$p$salt_hex$hash_hex" or
    # "pbkdf2_sha256$iterations$salt_hex$hash_hex" (`edge-ems tui --hash-pin`); empty = actions disabled.
    "tui": Table({
        "pin_hash": F("string", default=""),
        "lockout_after": F("integer", default=3, min=1, max=20),
        "lockout_s": F("number", default=300.0, min=1, max=86400),
        "session_s": F("number", default=600.0, min=10, max=86400),
    }),
    "carbon": CARBON_SCHEMA,            # market-based contracts, residual mix, CFE (controller/carbon/contracts.py)
    "limits": Table({
        "bms_max_age_s": F("number", default=5.0, min=0, min_exclusive=True),
        "meter_max_age_s": F("number", default=5.0, min=0, min_exclusive=True),
        "slow_max_age_s": F("number", default=120.0, min=0, min_exclusive=True),
        # network inputs (controller/netinputs.py): the compute bridge publishes every 10-60 s; a market
        # message is stale at its valid_until or when older than this
        "compute_max_age_s": F("number", default=180.0, min=0, min_exclusive=True),
        "market_max_age_s": F("number", default=86400.0, min=0, min_exclusive=True),
    }),
    # the cloud's market feed (drivers/market.py); expected: a missing or stale one raises market_stale
    # (also expected when a device has role "market")
    "market": Table({
        "expected": F("boolean", default=False),
    }),
    # the Modbus TCP server a DCIM / SCADA system reads (controller/dcim, docs/dcim.md); off by default
    "dcim": DCIM_SCHEMA,
})


class SiteConfig(dict):
    """A validated site profile: the parsed tables with defaults filled in, and where it came from."""

    path: Path

    @property
    def name(self) -> str:
        return self["site"]["name"]

    @property
    def all_simulated(self) -> bool:
        return all(d["simulated"] for d in self["devices"])

    def device(self, role: str) -> dict | None:
        return next((d for d in self["devices"] if d["role"] == role), None)


def resolve_site(name_or_path: str | Path) -> Path:
    """A site given by name (profiles/sites/NAME.toml) or by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    return SITES_DIR / f"{name_or_path}.toml"


def parse_toml(path: Path) -> tuple[dict, str]:
    """Read a TOML file, turning I/O and syntax errors into a ProfileError with the parser's line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError([Problem(str(path), "(file)", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError([Problem(str(path), "(file)", f"cannot read: {exc}")]) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line L, column C)".
        raise ProfileError([Problem(str(path), "(syntax)", f"not valid TOML: {exc}")]) from None
    except ValueError as exc:       # tomllib's int() of a literal of more than 4300 digits (no line from it)
        raise ProfileError([Problem(str(path), "(syntax)", f"not valid TOML: {str(exc)[:120]}")]) from None


def load_checked(path: Path, schema, cross_checks) -> dict:
    """A TOML file walked through `schema`, then `cross_checks(data, validator)` when the keys are sound;
    ProfileError listing every problem found (the site profile, the bridge's configuration)."""
    doc, text = parse_toml(path)
    validator = Validator(str(path), text)
    data = validator.walk(schema, doc, "")
    if not validator.problems:
        cross_checks(data, validator)
    if validator.problems:
        raise ProfileError(validator.problems)
    return data


def load_site(name_or_path: str | Path) -> SiteConfig:
    """Load a site profile, raising ProfileError listing every problem found."""
    path = resolve_site(name_or_path)
    cfg = SiteConfig(load_checked(path, SITE_SCHEMA, _cross_checks))
    cfg.path = path
    return cfg


def _cross_checks(cfg: dict, v: Validator) -> None:
    """Rules that span keys: each becomes one problem naming the key a person should change."""
    bat = cfg["battery"]
    if bat["soc_min_pct"] >= bat["soc_max_pct"]:
        v.problem("battery.soc_min_pct", f"must be below battery.soc_max_pct "
                  f"({bat['soc_min_pct']} >= {bat['soc_max_pct']})")
    if not bat["soc_min_pct"] <= bat["reserve_pct"] <= bat["soc_max_pct"]:
        v.problem("battery.reserve_pct", "expected between battery.soc_min_pct and battery.soc_max_pct, "
                  f"got {bat['reserve_pct']}")
    il = cfg["interlocks"]
    if il["force_charge_below_cell_v"] >= il["force_charge_release_cell_v"]:
        v.problem("interlocks.force_charge_below_cell_v", "must be below interlocks.force_charge_release_cell_v "
                  "(hysteresis)")
    if bat["cell_v_min"] >= bat["cell_v_max"]:
        v.problem("battery.cell_v_min", "must be below battery.cell_v_max")
    try:
        ZoneInfo(cfg["site"]["timezone"])
    except (ZoneInfoNotFoundError, ValueError, OSError):   # OSError: "America" is a directory, a name too long
        v.problem("site.timezone", f"expected an IANA time zone like 'Asia/Shanghai', "
                  f"got {cfg['site']['timezone'][:60]!r}")
    gen = cfg.get("genset")
    if gen:
        if gen["p_min_kw"] > gen["rated_kw"]:
            v.problem("genset.p_min_kw", f"must not exceed genset.rated_kw ({gen['rated_kw']})")
        if gen["start_soc_pct"] >= gen["stop_soc_pct"]:
            v.problem("genset.start_soc_pct", "must be below genset.stop_soc_pct (hysteresis)")
    names = set()
    for i, dev in enumerate(cfg["devices"]):
        key = f"devices[{i}]"
        if dev["name"] in names:
            v.problem(f"{key}.name", f"duplicate device name {dev['name']!r}")
        names.add(dev["name"])
        if dev["bus"] not in cfg["buses"]:
            defined = ", ".join(sorted(cfg["buses"])) or "none"
            v.problem(f"{key}.bus", f"device {dev['name']!r} is on bus {dev['bus']!r}, "
                      f"which is not defined under [buses] (defined: {defined})")
        elif cfg["buses"][dev["bus"]]["kind"] == "sim" and not dev["simulated"]:
            v.problem(f"{key}.simulated", f"device {dev['name']!r} is on a 'sim' bus; set simulated = true")
    _bus_checks(cfg, v)
    _device_checks(cfg, v)
    check_dcim(cfg, v)
    try:                                # contracts' dates and volumes (controller/carbon/contracts.py)
        validate_carbon(cfg["carbon"], cfg["emissions"]["grid_kg_per_kwh"], v.file)
    except ProfileError as exc:
        for p in exc.problems:
            v.problem(p.key, p.message)
    for role in ("bms", "pcs"):
        if not any(d["role"] == role for d in cfg["devices"]):
            v.problem("devices", f"the site needs a device with role = {role!r}")


def _bus_checks(cfg: dict, v: Validator) -> None:
    """Each field bus names where it is; `port` is a string on RTU, an integer on TCP (defaults filled)."""
    for name, bus in cfg["buses"].items():
        key, kind, port = f"buses.{name}", bus["kind"], bus["port"]
        if kind == "modbus_rtu":
            if port is None:
                port = ""
            if not isinstance(port, str):
                v.problem(f"{key}.port", f"modbus_rtu: expected a serial path or pyserial URL as a string "
                          f"(\"/dev/ttyUSB0\", \"socket://host:4001\"), got the integer {port}")
            elif not port.strip():
                v.problem(f"{key}.port", "modbus_rtu: empty; expected a serial path or pyserial URL "
                          "(\"/dev/ttyUSB0\", \"rfc2217://host:4001\")")
        elif kind == "modbus_tcp":
            if port is None:
                port = 502
            if not isinstance(port, int):
                v.problem(f"{key}.port", f"modbus_tcp: expected an integer TCP port 1..65535 (502 is Modbus), "
                          f"got the string {port!r}")
            elif not 1 <= port <= 65535:
                v.problem(f"{key}.port", f"modbus_tcp: expected an integer TCP port 1..65535, got {port}")
            if not bus["host"].strip():
                v.problem(f"{key}.host", "modbus_tcp: empty; expected the device's or gateway's address "
                          "(\"192.168.1.20\", \"pcs.local\")")
        elif kind == "can" and not bus["channel"].strip():
            v.problem(f"{key}.channel", f"can ({bus['interface']}): empty; expected an interface name (\"can0\") "
                      "or, for slcan, the adapter's serial path or URL")
        bus["port"] = "" if port is None else port         # can / network / sim: "" as before


def _device_checks(cfg: dict, v: Validator) -> None:
    """Profiles that exist and fit the role and the bus; one unit id per device on a Modbus bus."""
    from drivers.profiles import ROLE_KIND, ProfileLookupError, resolve_profile

    bat = cfg["battery"]
    units: dict[tuple[str, int], str] = {}
    for i, dev in enumerate(cfg["devices"]):
        key, role = f"devices[{i}]", dev["role"]
        bus = cfg["buses"].get(dev["bus"])
        if bus is None:
            continue
        kind = bus["kind"]
        if kind == "network" and role not in NETWORK_ROLES:
            v.problem(f"{key}.bus", f"device {dev['name']!r} (role {role}) is on the network bus {dev['bus']!r}; "
                      f"only {', '.join(NETWORK_ROLES)} come over the network")
            continue
        if kind in FIELD_BUS_KINDS and role in NETWORK_ROLES:
            v.problem(f"{key}.bus", f"device {dev['name']!r} (role {role}) comes over the network, not a "
                      f"{kind} bus: put it on a bus of kind = \"network\"")
            continue
        if role in NETWORK_ROLES:
            continue
        want_can = kind == "can"
        try:
            prof = resolve_profile(dev["profile"], role, can=want_can if kind != "sim" else None,
                                   required=kind in FIELD_BUS_KINDS and not want_can)
        except ProfileLookupError as exc:
            v.problem(f"{key}.profile", str(exc))
            continue
        if prof is not None and prof.kind != ROLE_KIND[role]:
            v.problem(f"{key}.profile", f"{prof.name} is a {prof.kind} profile; role {role} needs a "
                      f"{ROLE_KIND[role]} profile")
            continue
        if prof is not None and prof.max_voltage_v is not None and not dev["simulated"]:
            pack_v = bat["cells_series"] * bat["cell_v_max"]
            if pack_v > prof.max_voltage_v:
                v.problem(f"{key}.profile", f"{prof.name} carries at most {prof.max_voltage_v:g} V but the pack "
                          f"reaches {pack_v:.0f} V (battery.cells_series x cell_v_max): use a high-voltage "
                          "BMS profile (byd_battery_box_c130 on Modbus)")
        if kind in ("modbus_rtu", "modbus_tcp") or (kind == "sim" and prof is not None and not prof.can):
            unit = dev["unit"]
            if kind != "sim" and not 1 <= unit <= 247:
                v.problem(f"{key}.unit", f"expected a Modbus unit id 1..247 (0 is broadcast), got {unit}")
            other = units.get((dev["bus"], unit))
            if other is not None:
                v.problem(f"{key}.unit", f"unit {unit} on bus {dev['bus']!r} is already device {other!r}: "
                          "two devices cannot share a unit id on one bus")
            units.setdefault((dev["bus"], unit), dev["name"])
