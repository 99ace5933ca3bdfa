"""Cloud commands: signed (Ed25519), expiring, counted, checked against the site profile's limits.

Wire format on ``.../cmd`` (JSON, at most MAX_BYTES)::

    {"payload": "<base64 of the command JSON bytes>", "sig": "<base64 Ed25519 signature of those bytes>"}

The signature covers the exact payload bytes (no canonicalisation to get wrong). The command::

    {"v": 1, "id": "c-42", "gateway": "imm-gw-01", "counter": 42, "issued_s": 1.7e9, "expires_s": 1.7e9+600,
     "type": "reserve_soc", "args": {"reserve_pct": 40}}

Checks, in order, first failure wins (its reason goes to ``cmd/result`` and the event log):
malformed (size, UTF-8, JSON, envelope, base64) -> bad signature -> malformed payload / unknown type /
bad args -> wrong gateway -> not yet valid (issued in the future beyond the clock skew) -> expired ->
ttl too long -> replayed (counter not above the last authentic one) -> out of limits. The counter is
advanced (durably, before the verdict) for every authentic, fresh, unexpired command, accepted or not,
so a captured command can never be replayed. Accepted commands go to the controller between cycles;
interlocks still have the last word on every setpoint.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives import serialization

MAX_BYTES = 16 * 1024
MAX_TTL_S = 24 * 3600.0
CLOCK_SKEW_S = 300.0
MAX_MAGNITUDE = 10 ** 15      # no command number is larger; an int beyond it is refused before float()
COUNTER_KEY = "cmd_counter"
TYPES = ("setpoint_schedule", "mode", "reserve_soc", "alarm_ack", "weather_warning", "grid_update")
MODES = ("auto", "manual", "standby")      # controller/operator.py
WARNINGS = ("sandstorm", "snow", "heat", "cold", "wind", "storm")


class Refused(Exception):
    pass


@dataclass
class Verdict:
    accepted: bool
    reason: str
    command: dict | None = None
    id: str | None = None
    counter: int | None = None
    type: str | None = None

    def body(self) -> dict:
        return {"id": self.id, "counter": self.counter, "type": self.type,
                "verdict": "accepted" if self.accepted else "refused", "reason": self.reason}


@dataclass
class Limits:
    soc_min_pct: float
    soc_max_pct: float
    charge_max_kw: float
    discharge_max_kw: float

    @classmethod
    def from_site(cls, cfg) -> "Limits":
        b = cfg["battery"]
        rated = float(cfg["pcs"]["rated_kw"])
        return cls(float(b["soc_min_pct"]), float(b["soc_max_pct"]),
                   min(float(b["charge_max_kw"]), rated), min(float(b["discharge_max_kw"]), rated))


def _finite(v, key: str) -> None:
    """An int or float, not a bool: JSON gives arbitrary-precision ints, and a 400-digit one makes
    ``math.isfinite``/``float`` raise OverflowError, so ints are bounded exactly before any conversion."""
    if isinstance(v, bool) or type(v) not in (int, float):
        raise Refused(f"malformed: {key} must be a finite number")
    if type(v) is int:
        if not -MAX_MAGNITUDE <= v <= MAX_MAGNITUDE:
            raise Refused(f"malformed: {key} magnitude beyond {MAX_MAGNITUDE:.0e}")
    elif not math.isfinite(v):
        raise Refused(f"malformed: {key} must be a finite number")


def _num(args: dict, key: str, lo: float, hi: float, what: str = "out of limits") -> float:
    v = args.get(key)
    _finite(v, key)
    if not lo <= v <= hi:
        raise Refused(f"{what}: {key} {str(v)[:32]} not in [{lo}, {hi}]")
    return float(v)


def _only(args: dict, allowed: set[str], required: set[str]) -> None:
    extra = set(args) - allowed
    if extra:
        raise Refused(f"malformed: unknown args {sorted(extra)}")
    missing = required - set(args)
    if missing:
        raise Refused(f"malformed: missing args {sorted(missing)}")


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _loads(raw: bytes):
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


class CommandVerifier:
    def __init__(self, public_key: Ed25519PublicKey | None, gateway: str, limits: Limits,
                 counter_get, counter_set, max_ttl_s: float = MAX_TTL_S, clock_skew_s: float = CLOCK_SKEW_S):
        self.key = public_key
        self.gateway = gateway
        self.limits = limits
        self._get, self._set = counter_get, counter_set
        self.max_ttl_s, self.skew_s = max_ttl_s, clock_skew_s

    @property
    def last_counter(self) -> int:
        return int(self._get() or 0)

    def verify(self, raw: bytes, now_s: float) -> Verdict:
        v = Verdict(False, "")
        try:
            v.command = self._check(raw, now_s, v)
            v.accepted, v.reason = True, "ok"
        except Refused as exc:
            v.reason = str(exc)
            v.command = None
        except Exception as exc:        # a check this verifier lacks: still a verdict, never a raise
            v.accepted, v.command = False, None
            v.reason = f"malformed: unchecked input ({type(exc).__name__}: {str(exc)[:80]})"
        return v

    def _check(self, raw: bytes, now_s: float, v: Verdict) -> dict:
        if not isinstance(raw, (bytes, bytearray)) or len(raw) > MAX_BYTES:
            raise Refused(f"malformed: empty or larger than {MAX_BYTES} bytes")
        try:
            env = _loads(bytes(raw))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise Refused(f"malformed: not JSON ({type(exc).__name__})")
        if not isinstance(env, dict) or not isinstance(env.get("payload"), str) or not isinstance(env.get("sig"), str):
            raise Refused("malformed: envelope needs string fields payload and sig")
        try:
            payload = base64.b64decode(env["payload"], validate=True)
            sig = base64.b64decode(env["sig"], validate=True)
        except (binascii.Error, ValueError):
            raise Refused("malformed: payload/sig not base64")
        if self.key is None:
            raise Refused("bad signature: no cloud public key configured on this gateway")
        try:
            self.key.verify(sig, payload)
        except InvalidSignature:
            raise Refused("bad signature")
        try:
            cmd = _loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise Refused("malformed: payload not JSON")
        if not isinstance(cmd, dict):
            raise Refused("malformed: payload not an object")
        v.id = cmd.get("id") if isinstance(cmd.get("id"), str) and len(cmd["id"]) <= 64 else None
        v.type = cmd.get("type") if cmd.get("type") in TYPES else None
        counter = cmd.get("counter")
        if isinstance(counter, bool) or not isinstance(counter, int) or not 0 < counter < 2 ** 63:
            raise Refused("malformed: counter must be a positive integer")
        v.counter = counter
        if v.id is None:
            raise Refused("malformed: id must be a string of at most 64 characters")
        if type(cmd.get("v")) is not int or cmd["v"] != 1:        # true and 1.0 are not version 1
            raise Refused("malformed: unsupported version")
        issued = _num(cmd, "issued_s", 0, 1e11, "malformed")
        expires = _num(cmd, "expires_s", 0, 1e11, "malformed")
        if expires <= issued:                           # else one in the skew window would pass every check
            raise Refused(f"malformed: expires_s {expires:.0f} is not after issued_s {issued:.0f}")
        if v.type is None:
            raise Refused(f"malformed: unknown type {str(cmd.get('type'))[:40]!r}")
        if not isinstance(cmd.get("args"), dict):
            raise Refused("malformed: args must be an object")
        if cmd.get("gateway") != self.gateway:
            raise Refused(f"wrong gateway: {str(cmd.get('gateway'))[:64]!r} is not {self.gateway!r}")
        if issued > now_s + self.skew_s:
            raise Refused(f"not yet valid: issued {issued - now_s:.0f} s in the future")
        if now_s > expires:
            raise Refused(f"expired: {now_s - expires:.0f} s ago")
        if expires - issued > self.max_ttl_s:
            raise Refused(f"ttl too long: {expires - issued:.0f} s > {self.max_ttl_s:.0f} s")
        last = self.last_counter
        if counter <= last:
            raise Refused(f"replayed: counter {counter} <= last {last}")
        try:                                            # authentic and fresh: burn the counter first
            written = self._set(str(counter))
        except Exception as exc:
            written = exc
        if written is False or isinstance(written, Exception):  # unburnt, it could be replayed: refuse
            raise Refused(f"not applied: the replay counter could not be written ({str(written)[:80]})")
        self._check_args(v.type, cmd["args"], now_s)
        return cmd

    def _check_args(self, kind: str, a: dict, now_s: float) -> None:
        lim = self.limits
        if kind == "reserve_soc":
            _only(a, {"reserve_pct"}, {"reserve_pct"})
            _num(a, "reserve_pct", lim.soc_min_pct, lim.soc_max_pct)
        elif kind == "mode":
            _only(a, {"mode"}, {"mode"})
            if a["mode"] not in MODES:
                raise Refused(f"out of limits: mode {str(a['mode'])[:32]!r} not one of {MODES}")
        elif kind == "setpoint_schedule":
            _only(a, {"start_s", "step_s", "battery_kw"}, {"start_s", "step_s", "battery_kw"})
            start = _num(a, "start_s", now_s - 3600, now_s + 48 * 3600)
            step = _num(a, "step_s", 60, 3600)
            kw = a["battery_kw"]
            if not isinstance(kw, list) or not 1 <= len(kw) <= 192:
                raise Refused("malformed: battery_kw must be a list of 1..192 numbers")
            for i, x in enumerate(kw):
                _finite(x, f"battery_kw[{i}]")
                if not -lim.charge_max_kw <= x <= lim.discharge_max_kw:
                    raise Refused(f"out of limits: battery_kw[{i}] {x} not in "
                                  f"[{-lim.charge_max_kw}, {lim.discharge_max_kw}]")
            if start + step * len(kw) > now_s + 48 * 3600:
                raise Refused("out of limits: schedule reaches beyond 48 h")
        elif kind == "alarm_ack":
            _only(a, {"alarm"}, {"alarm"})
            if not isinstance(a["alarm"], str) or not 0 < len(a["alarm"]) <= 64:
                raise Refused("malformed: alarm must be a name")
        elif kind == "weather_warning":      # -> controller/netinputs.py, the weather device's points
            _only(a, {"kind", "from_s", "to_s", "severity", "pv_cut_frac", "ramp_s", "grid_risk"},
                  {"kind", "from_s", "to_s"})
            if a["kind"] not in WARNINGS:
                raise Refused(f"out of limits: warning kind not one of {WARNINGS}")
            f = _num(a, "from_s", now_s - 86400, now_s + 7 * 86400)
            _num(a, "to_s", f, f + 7 * 86400)
            if a["to_s"] <= f:
                raise Refused("out of limits: to_s must be after from_s")
            if "severity" in a:
                _num(a, "severity", 1, 5)
            if "pv_cut_frac" in a:
                _num(a, "pv_cut_frac", 0.0, 1.0)
            if "ramp_s" in a:
                _num(a, "ramp_s", 0.0, 86400.0)
            if "grid_risk" in a:             # the feeder's trip probability during the event (docs/risk.md)
                _num(a, "grid_risk", 0.0, 1.0)
        elif kind == "grid_update":          # -> the grid device's price / intensity / CFE, announced outage
            _only(a, {"co2_kg_per_kwh", "cfe_pct", "price_per_kwh", "valid_from_s", "valid_to_s", "outage_start_s",
                      "outage_end_s", "grid_risk"}, {"valid_from_s", "valid_to_s"})
            if not {"co2_kg_per_kwh", "cfe_pct", "price_per_kwh", "outage_start_s"} & set(a):
                raise Refused("malformed: grid_update needs co2_kg_per_kwh, cfe_pct, price_per_kwh or an outage")
            if "co2_kg_per_kwh" in a:
                _num(a, "co2_kg_per_kwh", 0.0, 2.0)
            if "cfe_pct" in a:               # the grid's carbon-free share now (the ledger's 24/7 CFE)
                _num(a, "cfe_pct", 0.0, 100.0)
            if "price_per_kwh" in a:
                _num(a, "price_per_kwh", -10.0, 100.0)
            f = _num(a, "valid_from_s", now_s - 86400, now_s + 7 * 86400)
            _num(a, "valid_to_s", f, f + 7 * 86400)
            if "outage_start_s" in a or "outage_end_s" in a:
                o = _num(a, "outage_start_s", now_s - 86400, now_s + 7 * 86400)
                _num(a, "outage_end_s", o, o + 7 * 86400)
                if a["outage_end_s"] <= o:
                    raise Refused("out of limits: outage_end_s must be after outage_start_s")
            if "grid_risk" in a:             # the probability the announced outage happens
                if "outage_start_s" not in a:
                    raise Refused("malformed: grid_risk only with an outage (outage_start_s)")
                _num(a, "grid_risk", 0.0, 1.0)


# --- the cloud's side (tests, tools) ----------------------------------------------------------------
def sign_command(private_key: Ed25519PrivateKey, command: dict) -> bytes:
    payload = json.dumps(command, separators=(",", ":")).encode()
    return json.dumps({"payload": base64.b64encode(payload).decode(),
                       "sig": base64.b64encode(private_key.sign(payload)).decode()}).encode()


def load_public_key(source) -> Ed25519PublicKey | None:
    """PEM bytes/str, a path to a PEM file, raw 32 bytes, or an Ed25519PublicKey."""
    if source is None or isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, (bytes, bytearray)) and len(source) == 32:
        return Ed25519PublicKey.from_public_bytes(bytes(source))
    if isinstance(source, str) and not source.lstrip().startswith("-----"):
        with open(source, "rb") as f:
            source = f.read()
    if isinstance(source, str):
        source = source.encode()
    key = serialization.load_pem_public_key(source)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the cloud command key must be Ed25519")
    return key
