"""The cabinet's two messages to the bridge, decoded and checked (drivers/compute.py has the format):
``compute/defer`` (a defer or resume request for one job) and ``compute/headroom`` (retained).

A bad message raises `MessageError` naming the key; the bridge logs it and goes on.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from drivers.compute import ComputePayloadError, parse_time

DEFER, HEADROOM = "compute/defer", "compute/headroom"
MAX_BYTES = 64 * 1024


class MessageError(ValueError):
    pass


@dataclass
class DeferRequest:
    t_s: float
    job: str
    action: str                     # defer | resume
    reason: str
    resume_by_s: float | None = None


@dataclass
class Headroom:
    t_s: float
    valid_until_s: float
    now_kw: float
    short_kw: float
    hourly_kw: list = field(default_factory=list)

    def green_kw_over(self, hours: float) -> float:
        """kW addable for `hours` from now: the smallest hourly figure over them (conservative), else now_kw."""
        n = max(1, math.ceil(hours - 1e-9))
        if len(self.hourly_kw) >= n:
            return min(self.hourly_kw[:n])
        return self.now_kw if n <= 1 else 0.0


def _obj(kind: str, payload: bytes) -> dict:
    if not isinstance(payload, (bytes, bytearray)) or len(payload) > MAX_BYTES:
        raise MessageError(f"{kind}: payload must be at most {MAX_BYTES} bytes")
    try:
        d = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MessageError(f"{kind}: payload is not JSON ({type(exc).__name__})") from None
    if not isinstance(d, dict):
        raise MessageError(f"{kind}: payload must be a JSON object")
    if d.get("v") != 1:
        raise MessageError(f"{kind}: key 'v': expected 1, got {d.get('v')!r:.20}")
    return d


def _time(d: dict, kind: str, key: str) -> float:
    try:
        return parse_time(d.get(key), kind, key)
    except ComputePayloadError as exc:
        raise MessageError(str(exc)) from None


def _kw(d: dict, kind: str, key: str) -> float:
    x = d.get(key)
    # an int is compared exactly: math.isfinite of a 400-digit JSON integer raises OverflowError
    if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and not math.isfinite(x)) \
            or not 0 <= x <= 1e5:
        raise MessageError(f"{kind}: key {key!r}: expected kW in 0..100000, got {str(x)[:30]}")
    return float(x)


def parse_defer(payload: bytes) -> DeferRequest:
    d = _obj(DEFER, payload)
    job = d.get("job")
    if not isinstance(job, str) or not 0 < len(job) <= 128:
        raise MessageError(f"{DEFER}: key 'job': expected a job id of 1..128 characters, got {job!r:.40}")
    action = d.get("action")
    if action not in ("defer", "resume"):
        raise MessageError(f"{DEFER}: key 'action': expected 'defer' or 'resume', got {action!r:.20}")
    reason = d.get("reason", "")
    if not isinstance(reason, str):
        raise MessageError(f"{DEFER}: key 'reason': expected a string")
    by = _time(d, DEFER, "resume_by") if d.get("resume_by") is not None else None
    return DeferRequest(_time(d, DEFER, "t"), job, action, reason[:200], by)


def parse_headroom(payload: bytes) -> Headroom:
    d = _obj(HEADROOM, payload)
    hourly = d.get("hourly_kw", [])
    if not isinstance(hourly, list) or len(hourly) > 168:
        raise MessageError(f"{HEADROOM}: key 'hourly_kw': expected an array of at most 168 kW figures")
    hourly = [_kw({f"hourly_kw[{i}]": x}, HEADROOM, f"hourly_kw[{i}]") for i, x in enumerate(hourly)]
    t = _time(d, HEADROOM, "t")
    return Headroom(t, _time(d, HEADROOM, "valid_until"), _kw(d, HEADROOM, "now_kw"),
                    _kw(d, HEADROOM, "short_kw"), hourly)

