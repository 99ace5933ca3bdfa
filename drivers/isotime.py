"""ISO 8601 UTC times as epoch seconds: the one parser the compute payloads, the carbon profile and the
ledger report share (each caller words its own errors)."""
from __future__ import annotations

from datetime import datetime, timezone


class NoOffsetError(ValueError):
    """The time parsed but carries no UTC offset (and the caller does not take it as UTC)."""


def utc_epoch(text: str, naive_is_utc: bool = True) -> float:
    """'2026-04-10T09:00:00Z' (or any ISO 8601 form, 'Z' = +00:00) -> epoch seconds.

    A time without an offset is UTC, or raises NoOffsetError when `naive_is_utc` is false; text that is
    not ISO 8601 raises ValueError."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        if not naive_is_utc:
            raise NoOffsetError(text)
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def utc_iso(t_s: float) -> str:
    """Epoch seconds -> '2026-04-10T09:00:00Z' (whole seconds)."""
    return datetime.fromtimestamp(t_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
