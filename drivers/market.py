"""The market feed: import/export prices and grid carbon intensity from the cloud (pure decode).

EU day-ahead markets clear in 15-minute products since 2025 (SDAC's MTU change), and intraday prices
can go negative when wind and PV flood the grid, so the feed carries 15-minute slots (60 also allowed),
negative prices allowed, each message with the window it is valid for. The cloud publishes it on
``edge-ems/v1/{site}/{gateway}/market`` (QoS 1, retained, so a gateway that reconnects gets the last
one at once); the uplink hands the payload to controller/netinputs.py, which puts the horizon into the
process image (mkt_* points) for the MPC. Payload::

    {"v": 1, "t": "2026-03-28T12:45:00Z",               # when the cloud made it (UTC, offset required)
     "valid_from": "2026-03-28T23:00:00Z", "valid_until": "2026-03-29T23:00:00Z",
     "step_min": 15,                                     # 15 or 60
     "import_price_per_kwh": [0.081, 0.079, ...],        # required: one per slot, site currency per kWh
     "export_price_per_kwh": [0.012, -0.004, ...],       # optional: what an exported kWh earns
     "co2_kg_per_kwh": [0.021, 0.019, ...],              # optional: grid intensity, kgCO2e/kWh
     "cfe_pct": [96.5, 97.1, ...]}                       # optional: the grid's carbon-free share, %

Slot k covers [valid_from + k * step, valid_from + (k + 1) * step); every array has exactly
(valid_until - valid_from) / step entries, at most MAX_SLOTS (48 h of 15-minute slots). A bad message
raises MarketPayloadError naming the key and what was expected; nothing else is ever raised.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from drivers.isotime import NoOffsetError, utc_epoch

KIND = "market"
V = 1
MAX_BYTES = 64 * 1024           # 4 x 192 numbers at ~20 characters and the keys: well under this
MAX_SLOTS = 96 * 2
STEP_MIN = (15, 60)
PRICE_ABS_MAX = 1000.0          # per kWh, any currency (EU's harmonised day-ahead limits: -0.5..4 EUR/kWh)
CO2_MAX = 2.0                   # kgCO2e/kWh (lignite is ~1.1)
SERIES = {"import_price_per_kwh": (-PRICE_ABS_MAX, PRICE_ABS_MAX), "export_price_per_kwh":
          (-PRICE_ABS_MAX, PRICE_ABS_MAX), "co2_kg_per_kwh": (0.0, CO2_MAX),
          "cfe_pct": (0.0, 100.0)}
KEYS = {"v", "t", "valid_from", "valid_until", "step_min", *SERIES}


class MarketPayloadError(ValueError):
    pass


@dataclass(frozen=True)
class MarketFeed:
    t_s: float
    valid_from_s: float
    valid_until_s: float
    step_s: float
    import_price: tuple
    export_price: tuple | None = None
    co2: tuple | None = None
    cfe_pct: tuple | None = None     # the grid's carbon-free share per slot (the ledger's 24/7 CFE)

    @property
    def n(self) -> int:
        return len(self.import_price)

    def slot(self, t_s: float) -> int | None:
        """Index of the slot covering t_s, None outside the validity window."""
        if not self.valid_from_s <= t_s < self.valid_until_s:
            return None
        return min(self.n - 1, int((t_s - self.valid_from_s) // self.step_s))


def _err(key: str, msg: str) -> MarketPayloadError:
    return MarketPayloadError(f"{KIND}: key {key!r}: {msg}")


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _time(d: dict, key: str) -> float:
    text = d.get(key)
    if not isinstance(text, str) or len(text) > 40:
        raise _err(key, f"expected an ISO 8601 UTC time string like 2026-03-29T00:00:00Z, got {text!r:.60}")
    try:
        return utc_epoch(text, naive_is_utc=False)
    except NoOffsetError:
        raise _err(key, f"time {text!r} has no UTC offset (add Z)") from None
    except ValueError:
        raise _err(key, f"expected an ISO 8601 UTC time like 2026-03-29T00:00:00Z, got {text!r}") from None


def _series(d: dict, key: str, n: int) -> tuple:
    arr = d[key]
    if not isinstance(arr, list):
        raise _err(key, f"expected a list of {n} numbers, got {type(arr).__name__}")
    if len(arr) != n:
        raise _err(key, f"expected {n} values (one per slot of valid_from..valid_until), got {len(arr)}")
    lo, hi = SERIES[key]
    for i, x in enumerate(arr):
        # an int is compared exactly: math.isfinite of a 400-digit JSON integer raises OverflowError
        if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and not math.isfinite(x)) \
                or not lo <= x <= hi:
            raise _err(f"{key}[{i}]", f"expected a finite number in {lo:g}..{hi:g}, got {str(x)[:40]}")
    return tuple(float(x) for x in arr)


def decode(payload) -> MarketFeed:
    """Bytes (or str) of one market message -> a checked MarketFeed."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if not isinstance(payload, (bytes, bytearray)):
        raise MarketPayloadError(f"{KIND}: payload must be bytes, got {type(payload).__name__}")
    if len(payload) > MAX_BYTES:
        raise MarketPayloadError(f"{KIND}: payload of {len(payload)} bytes is over the {MAX_BYTES} byte limit")
    try:
        d = json.loads(bytes(payload).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MarketPayloadError(f"{KIND}: payload is not JSON ({type(exc).__name__}: {str(exc)[:80]})") from None
    if not isinstance(d, dict):
        raise MarketPayloadError(f"{KIND}: payload must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - KEYS)
    if unknown:
        raise _err(str(unknown[0])[:40], f"unknown key (expected only {', '.join(sorted(KEYS))})")
    for key in ("v", "t", "valid_from", "valid_until", "step_min", "import_price_per_kwh"):
        if d.get(key) is None:              # null is not a value: a feed without import prices is no feed
            raise _err(key, "is required")
    if isinstance(d["v"], bool) or d["v"] != V:
        raise _err("v", f"expected {V}, got {d['v']!r:.20}")
    step = d["step_min"]
    if isinstance(step, bool) or not isinstance(step, int) or step not in STEP_MIN:
        raise _err("step_min", f"expected one of {', '.join(map(str, STEP_MIN))} (minutes), got {step!r:.20}")
    t, t0, t1 = _time(d, "t"), _time(d, "valid_from"), _time(d, "valid_until")
    if not t0 < t1:
        raise _err("valid_until", f"must be after valid_from ({d['valid_until']} <= {d['valid_from']})")
    step_s = step * 60.0
    span = (t1 - t0) / step_s
    n = int(round(span))
    if abs(span - n) > 1e-9 or not 1 <= n <= MAX_SLOTS:
        raise _err("valid_until", f"valid_until - valid_from must be a whole number of {step}-minute slots, "
                   f"1..{MAX_SLOTS}, got {span:g}")
    out = {key: _series(d, key, n) if d.get(key) is not None else None for key in SERIES}
    return MarketFeed(t, t0, t1, step_s, out["import_price_per_kwh"], out["export_price_per_kwh"],
                      out["co2_kg_per_kwh"], out["cfe_pct"])


def encode(feed: MarketFeed) -> bytes:
    """The cloud's side (tests, the lab): a MarketFeed as its wire payload."""
    from drivers.isotime import utc_iso
    d = {"v": V, "t": utc_iso(feed.t_s), "valid_from": utc_iso(feed.valid_from_s),
         "valid_until": utc_iso(feed.valid_until_s), "step_min": int(feed.step_s // 60),
         "import_price_per_kwh": list(feed.import_price)}
    if feed.export_price is not None:
        d["export_price_per_kwh"] = list(feed.export_price)
    if feed.co2 is not None:
        d["co2_kg_per_kwh"] = list(feed.co2)
    if feed.cfe_pct is not None:
        d["cfe_pct"] = list(feed.cfe_pct)
    return json.dumps(d, separators=(",", ":"), allow_nan=False).encode()
