"""Draining a backlog over a weak link: batches, compression, a rate limit, priorities.

- A kind with more than one committed record waiting is sent as one **batch** message on
  ``{kind}/batch``: the payload is ``zlib`` (RFC 1950, stdlib; zstd is not in the 3.11 stdlib) of the
  JSON ``{"v":1,"codec":"zlib","kind":K,"count":N,"first_seq":A,"last_seq":B,"records":[...]}``; the
  records inside are byte-for-byte the live records. A lone record goes out uncompressed on ``{kind}``.
- Priority: each round offers alarm, cmd/result, event, interval, then telemetry; every kind has its
  own in-flight window (default 1 message), so a live alarm never queues behind a telemetry batch
  waiting for its PUBACK, and per-topic order holds even across broker restarts and NACKs.
- Batches (never lone live records) spend tokens of a byte-rate bucket (``rate_bytes_s``, compressed
  bytes), so the backlog cannot fill the socket buffer ahead of a live alarm on a slow link.
- ``telemetry_batch_min`` > 1 (``make_uplink_hook`` uses 5): in normal operation the 1-min summaries are
  held until that many wait and go out as one zlib batch (each alone is ~1.3 kB of uncompressed JSON);
  a summary waits at most ``telemetry_hold_max_s``, and a stop with a drain timeout sends them at once.
  Alarms, events, intervals and command results are never held.
"""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass

CODEC = "zlib"


@dataclass
class DrainPolicy:
    batch_max_records: int = 500
    batch_max_bytes: int = 256 * 1024        # raw JSON before compression
    rate_bytes_s: float = 32 * 1024          # backlog budget on the wire (compressed bytes / s)
    burst_bytes: float = 128 * 1024
    inflight_per_kind: int = 1
    zlib_level: int = 6
    telemetry_batch_min: int = 1             # > 1: hold 1-min summaries until this many wait, send one batch
    telemetry_hold_max_s: float = 360.0      # ... but never hold one longer than this (wall time)


def encode_batch(kind: str, records: list[tuple[int, bytes]], level: int = 6) -> bytes:
    head = json.dumps({"v": 1, "codec": CODEC, "kind": kind, "count": len(records),
                       "first_seq": records[0][0], "last_seq": records[-1][0]}, separators=(",", ":"))
    raw = head[:-1].encode() + b',"records":[' + b",".join(p for _, p in records) + b"]}"
    return zlib.compress(raw, level)


def decode_batch(payload: bytes) -> dict:
    return json.loads(zlib.decompress(payload))


def decode_message(topic: str, payload: bytes) -> list[dict]:
    """Records carried by one uplink message (live or batch): what a cloud consumer does first."""
    if topic.endswith("/batch"):
        return decode_batch(payload)["records"]
    return [json.loads(payload)]


class TokenBucket:
    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = float(rate), float(burst)
        self.tokens = float(burst)
        self.t = time.monotonic()

    def ready(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        return self.tokens > 0 or self.rate <= 0

    def spend(self, n: int) -> None:
        if self.rate > 0:
            self.tokens -= n                    # may go negative: the next batch waits it off


def publish_wire_bytes(topic: str, payload_len: int, v5: bool) -> int:
    """Bytes of one QoS 1 PUBLISH + its PUBACK on the wire (MQTT framing; TCP/TLS not included)."""
    body = 2 + len(topic.encode()) + 2 + (1 if v5 else 0) + payload_len
    varint = 1 if body < 128 else 2 if body < 16384 else 3 if body < 2097152 else 4
    return 1 + varint + body + 4
