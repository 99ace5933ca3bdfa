"""Checking a signed ledger line on arrival, against the gateway's registered keys.

An ``interval`` record with ``provisional: false`` carries the ledger's signed line (controller/carbon/hook.py
``uplink_body``). It is stored with the signed figures only when, first failure wins:
- the line parses as a ledger record (controller/carbon/ledger.py ``parse_line``: payload JSON, canonical
  base64 Ed25519 signature) of kind ``interval`` written by this gateway (``gw``), at most MAX_LINE bytes;
- its numbers are within the ledger's own bounds (``interval_type_problem``) and its ``t_start`` is on the
  15-minute grid;
- a key registered for the gateway is valid at the line's ``t_start`` (rotate-key keeps old lines
  verifiable: each key has a validity window) and the signature verifies with that key - never with
  another one (a line dated after a rotation and signed by the old key is a forgery with a retired key);
- the record's summary (what dashboards read) is exactly what ``uplink_body`` derives from the signed line:
  an unsigned field changed on the way is caught too.
A failure gives the reason; the caller quarantines the record and raises an alarm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from controller.carbon.hook import uplink_body
from controller.carbon.ledger import LineError, interval_type_problem, line_hash, parse_line
from drivers.isotime import utc_epoch

MAX_LINE = 64 * 1024
INTERVAL_S = 900


@dataclass(frozen=True)
class Key:
    fingerprint: str
    pubkey: bytes                 # raw 32 bytes
    valid_from_s: float           # -inf: from the start
    valid_to_s: float             # +inf: open

    def covers(self, t_s: float) -> bool:
        return self.valid_from_s <= t_s < self.valid_to_s


@dataclass
class Verified:
    payload: dict
    line: str
    line_sha256: str
    key: Key
    t_start_s: float


class LineRejected(Exception):
    pass


def verify_interval(gateway: str, body: dict, keys: list[Key]) -> Verified:
    """The checks above; raises LineRejected(reason)."""
    line = body.get("ledger_line")
    if not isinstance(line, str) or not line:
        raise LineRejected("signed interval (provisional false) without a ledger_line")
    raw = line.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_LINE:
        raise LineRejected(f"ledger_line of {len(raw)} bytes, at most {MAX_LINE}")
    try:
        payload, head, sig = parse_line(raw)
    except LineError as exc:
        raise LineRejected(f"ledger_line: {exc}") from None
    if payload.get("kind") != "interval":
        raise LineRejected(f"ledger_line: kind {str(payload.get('kind'))[:20]!r}, expected 'interval'")
    if payload.get("gw") != gateway:
        raise LineRejected(f"ledger_line: written by gateway {str(payload.get('gw'))[:64]!r}, not {gateway!r}")
    bad = interval_type_problem(payload)
    if bad:
        raise LineRejected(f"ledger_line: {bad}")
    try:
        t_start = utc_epoch(payload["t_start"])
        utc_epoch(payload["t_end"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise LineRejected("ledger_line: t_start/t_end are not ISO 8601 UTC times") from None
    if not math.isfinite(t_start) or t_start % INTERVAL_S:
        raise LineRejected(f"ledger_line: t_start {payload['t_start']} is not on the 15-minute grid")
    if type(payload.get("n")) is not int or not isinstance(payload.get("prev"), str) or len(payload["prev"]) != 64:
        raise LineRejected("ledger_line: n / prev missing or malformed")
    valid = [k for k in keys if k.covers(t_start)]
    if not valid:
        raise LineRejected(f"no key of gateway {gateway!r} is registered as valid at {payload['t_start']} "
                           f"({len(keys)} key(s) registered)")
    key = valid[0]                 # validity windows do not overlap (registry.py)
    try:
        Ed25519PublicKey.from_public_bytes(key.pubkey).verify(sig, head)
    except InvalidSignature:
        raise LineRejected(f"signature does not verify with the registered key {key.fingerprint} valid at "
                           f"{payload['t_start']} (content changed or signed by another key)") from None
    try:
        expect = uplink_body(payload, raw)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise LineRejected(f"ledger_line: fields missing for the summary ({type(exc).__name__}: {str(exc)[:60]})") from None
    if body != expect:
        diff = sorted(k for k in set(body) | set(expect) if body.get(k, "<absent>") != expect.get(k, "<absent>"))
        raise LineRejected(f"summary differs from the signed ledger line in {', '.join(diff[:6])}")
    return Verified(payload, line, line_hash(raw), key, t_start)
