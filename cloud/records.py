"""Decoding what the gateways publish, bounded: topic -> (site, gateway, kind, batch), message -> records.

The gateway's formats (controller/uplink/): a lone record on ``edge-ems/v1/{site}/{gateway}/{kind}`` is its
JSON envelope ``{"v":1,"site","gateway","boot_id","seq","kind","t","t_s","clock","body"}``; a backlog goes
on ``.../{kind}/batch`` as zlib of ``{"v":1,"codec":"zlib","kind","count","first_seq","last_seq",
"records":[...]}`` (controller/uplink/drain.py). The receipt the gateway's ``confirm=cloud`` waits for names
the message's kind and its first and last record seq (controller/uplink/client.py ``_on_cloud_ack``).

Everything here is pure (no I/O) and bounded: message and decompressed sizes, records per batch, nesting
depth, string lengths, number ranges. A problem is a MessageError (the whole message) or a RecordError (one
record of an otherwise good batch), each with a message naming what was expected.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass

from controller.uplink.topics import PREFIX, RECORD_KINDS, STATUS, BATCH_SUFFIX

MAX_MESSAGE_BYTES = 1 << 20          # compressed or not; the gateway's batches are <= 256 KiB raw
MAX_RAW_BYTES = 4 << 20              # a batch decompressed (zlib bomb guard)
MAX_RECORDS = 1000                   # per batch (the gateway sends at most 500)
MAX_DEPTH = 12                       # nesting of a record (the deepest real one, telemetry, has 4)
MAX_STR = 64                         # site, gateway, boot id, kind, clock
MAX_SEQ = 2 ** 63 - 1
MAX_T_S = 1e11                       # year 5138: beyond it a timestamp is garbage


class MessageError(ValueError):
    """The message as a whole cannot be used (topic, size, compression, JSON, batch header)."""


class RecordError(ValueError):
    """One record of a message is malformed; `key` is its (gateway, boot_id, seq) when those parsed."""

    def __init__(self, message: str, key: tuple | None = None, record: dict | None = None):
        super().__init__(message)
        self.key, self.record = key, record


@dataclass(frozen=True)
class Topic:
    site: str
    gateway: str
    kind: str
    batch: bool

    @property
    def base(self) -> str:
        return f"{PREFIX}/{self.site}/{self.gateway}"

    @property
    def ack(self) -> str:
        return f"{self.base}/ack"


def _level(name: str, value: str) -> str:
    if not value or len(value) > MAX_STR or any(c in value for c in "/+#\0"):
        raise MessageError(f"topic: {name} {value[:80]!r} is not a gateway topic level (1..{MAX_STR} chars, no / + # NUL)")
    return value


def parse_topic(topic: str) -> Topic:
    """``edge-ems/v1/{site}/{gateway}/{kind}[/batch]`` with kind one of the record kinds or status."""
    if len(topic) > 256 or not topic.startswith(PREFIX + "/"):
        raise MessageError(f"topic {topic[:120]!r}: expected {PREFIX}/{{site}}/{{gateway}}/{{kind}}")
    parts = topic[len(PREFIX) + 1:].split("/", 2)
    if len(parts) != 3:
        raise MessageError(f"topic {topic[:120]!r}: expected {PREFIX}/{{site}}/{{gateway}}/{{kind}}")
    site, gateway, rest = _level("site", parts[0]), _level("gateway", parts[1]), parts[2]
    batch = rest.endswith(BATCH_SUFFIX) and rest[:-len(BATCH_SUFFIX)] in RECORD_KINDS
    kind = rest[:-len(BATCH_SUFFIX)] if batch else rest
    if kind not in RECORD_KINDS and kind != STATUS:
        raise MessageError(f"topic {topic[:120]!r}: kind {kind[:40]!r} is not one of {(*RECORD_KINDS, STATUS)}")
    if kind == STATUS and batch:
        raise MessageError(f"topic {topic[:120]!r}: status has no batches")
    return Topic(site, gateway, kind, batch)


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _depth(obj, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping (ValueError) past `limit`; iterative."""
    stack, deepest = [(obj, 1)], 0
    while stack:
        node, d = stack.pop()
        if d > limit:
            raise ValueError(f"nested deeper than {limit} levels")
        deepest = max(deepest, d)
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def loads(raw: bytes, what: str, depth: int):
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        _depth(obj, depth)
        return obj
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError(f"{what}: not JSON within bounds ({type(exc).__name__}: {str(exc)[:100]})") from None


def _inflate(payload: bytes) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, MAX_RAW_BYTES)
    except zlib.error as exc:
        raise MessageError(f"batch: not zlib data ({exc})") from None
    if d.unconsumed_tail or not d.eof:
        raise MessageError(f"batch: larger than {MAX_RAW_BYTES} bytes decompressed, or truncated")
    return out


def _int(v, key: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{key}: expected an integer in [{lo}, {hi}], got {str(v)[:40]}")
    return v


def _str(v, key: str) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= MAX_STR:
        raise ValueError(f"{key}: expected a string of 1..{MAX_STR} characters, got {str(v)[:40]!r}")
    return v


def check_record(rec, topic: Topic) -> dict:
    """One record's envelope against the topic it came on. Raises RecordError (with the key when known)."""
    if not isinstance(rec, dict):
        raise RecordError(f"record: expected an object, got {type(rec).__name__}")
    key = None
    try:
        gw, boot, seq = rec.get("gateway"), rec.get("boot_id"), rec.get("seq")
        if gw == topic.gateway and isinstance(boot, str) and type(seq) is int and 0 < len(boot) <= MAX_STR \
                and 0 < seq <= MAX_SEQ:          # another gateway's key is never used for this one's record
            key = (gw, boot, seq)
        _int(rec.get("v"), "v", 1, 1)
        _str(rec.get("site"), "site")
        _str(gw, "gateway")
        _str(boot, "boot_id")
        _int(seq, "seq", 1, MAX_SEQ)
        _str(rec.get("kind"), "kind")
        t = rec.get("t_s")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and 0 <= t <= MAX_T_S):
            raise ValueError(f"t_s: expected a UTC epoch in [0, {MAX_T_S:g}], got {str(t)[:40]}")
        clock = rec.get("clock")
        if clock is not None:
            _str(clock, "clock")
        if not isinstance(rec.get("body"), dict):
            raise ValueError("body: expected an object")
        if rec["gateway"] != topic.gateway or rec["site"] != topic.site:
            raise ValueError(f"site/gateway {rec['site']}/{rec['gateway']} differ from the topic's "
                             f"{topic.site}/{topic.gateway}")
        if rec["kind"] != topic.kind:
            raise ValueError(f"kind {rec['kind']!r} differs from the topic's {topic.kind!r}")
    except ValueError as exc:
        raise RecordError(f"record: {exc}", key, rec) from None
    return rec


@dataclass
class Decoded:
    good: list            # records whose envelope checked
    bad: list             # RecordError per malformed record (kept apart, under its key when it has one)
    receipt: tuple | None  # (kind, first seq, last seq) the gateway awaits for this message


def decode(topic: Topic, payload: bytes) -> Decoded:
    """The records of one record message (not status). MessageError when the message itself is unusable:
    then nothing in it can be stored under a key, and no receipt is possible."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(payload)} bytes, at most {MAX_MESSAGE_BYTES}")
    if topic.batch:
        obj = loads(_inflate(payload), "batch", MAX_DEPTH + 2)
        if not isinstance(obj, dict) or not isinstance(obj.get("records"), list):
            raise MessageError("batch: expected an object with a records list")
        recs = obj["records"]
        if not 0 < len(recs) <= MAX_RECORDS:
            raise MessageError(f"batch: {len(recs)} records, expected 1..{MAX_RECORDS}")
        if obj.get("kind") != topic.kind or obj.get("count") != len(recs):
            raise MessageError(f"batch: header kind/count {str(obj.get('kind'))[:20]}/{str(obj.get('count'))[:20]} "
                               f"differ from the topic's {topic.kind} and its {len(recs)} records")
    else:
        recs = [loads(payload, "record", MAX_DEPTH)]
    good, bad = [], []
    for rec in recs:
        try:
            good.append(check_record(rec, topic))
        except RecordError as exc:
            bad.append(exc)
    if topic.batch and good and (obj.get("first_seq") != recs[0].get("seq") or obj.get("last_seq") != recs[-1].get("seq")):
        raise MessageError("batch: first_seq/last_seq differ from its first and last record")
    return Decoded(good, bad, receipt_range(topic, recs))


def receipt_range(topic: Topic, records: list) -> tuple[str, int, int] | None:
    """The range the gateway awaits a receipt for: (kind, seq of the first record, seq of the last)."""
    first, last = records[0].get("seq") if records else None, records[-1].get("seq") if records else None
    if type(first) is int and type(last) is int and 0 < first <= last <= MAX_SEQ:
        return topic.kind, first, last
    return None


def decode_status(topic: Topic, payload: bytes) -> dict | None:
    """A retained status (``{"state","gateway","site","boot_id","t",...}``; empty payload: cleared)."""
    if not payload:
        return None
    if len(payload) > 4096:
        raise MessageError(f"status of {len(payload)} bytes, at most 4096")
    obj = loads(payload, "status", 3)
    if not isinstance(obj, dict) or obj.get("state") not in ("online", "offline"):
        raise MessageError("status: expected an object with state online|offline")
    return obj
