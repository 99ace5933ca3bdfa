"""One simulated gateway of the fleet: a trace replayed at its own phase, under its own identity.

What is the gateway's own (so the cloud sees N distinct gateways, not N copies): the id and site, the
Ed25519 key, the ledger (the real `LedgerWriter`: its own genesis, chain and counter), the boot id and the
seq. What is the trace's: the content of every record. Each record is shifted in time by a multiple of
15 minutes, so the 1-min and 15-min grids hold; a signed interval is re-signed into this gateway's chain.

Encoders are the gateway's, not copies: the record envelope is `Spool._encode`, batches are
`drain.encode_batch`, an interval's uplink body is `carbon.hook.uplink_body`, topics are `Topics`.
`tele_first`: summaries in the first telemetry batch (1..5), as a gateway that booted at another minute
sends them; a fleet started at one instant would otherwise send every batch in the same minute.
The drain policy mirrored here (controller/uplink/client.py `_offer`, defaults of `make_uplink_hook`):
kinds offered in RECORD_KINDS order; telemetry held until TELEMETRY_BATCH summaries wait (at most
`hold_max_s` of wall time); more than one waiting record goes as one zlib batch on `{kind}/batch` (at most
500 records / 256 KiB raw); `confirm=cloud`: a message stays until the cloud's receipt on `.../ack` and is
offered again after `resend_s` without one (and after every reconnect).
Pure bookkeeping, no socket: loop.py owns the MQTT connection and calls `advance`, `messages`, `on_ack`.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from types import SimpleNamespace

from controller.carbon.hook import uplink_body
from controller.carbon.keys import fingerprint, public_b64
from controller.carbon.ledger import LedgerWriter
from controller.uplink.drain import DrainPolicy, encode_batch
from controller.uplink.hook import TELEMETRY_BATCH
from controller.uplink.spool import Spool
from controller.uplink.topics import RECORD_KINDS, TELEMETRY, Topics
from drivers.isotime import utc_epoch, utc_iso

INTERVAL_S = 900
RESEND_S = 30.0          # client.py cloud_ack_timeout_s default


def phase_of(i: int, length_s: float) -> float:
    """A spread of phases over the trace (whole 15-minute steps), deterministic per gateway index."""
    slots = max(1, int(length_s // INTERVAL_S))
    return float((i * 7919) % slots * INTERVAL_S)


class SimGateway:
    def __init__(self, trace, gateway: str, site: str, key, data_dir, *, phase_s: float = 0.0,
                 start_s: float | None = None, boot_id: str | None = None, drain: DrainPolicy | None = None,
                 confirm_cloud: bool = True, resend_s: float = RESEND_S, tele_first: int | None = None):
        if phase_s % INTERVAL_S or not 0 <= phase_s < trace.length_s:
            raise ValueError(f"phase_s {phase_s}: expected a multiple of 900 s in [0, {trace.length_s:g})")
        self.trace, self.gateway, self.site = trace, gateway, site
        self.topics = Topics(site, gateway)
        self.boot_id = boot_id or uuid.uuid4().hex[:16]
        self.enc = SimpleNamespace(site=site, gateway=gateway, boot_id=self.boot_id, clock_status="sim")
        self.drain = drain or DrainPolicy(telemetry_batch_min=TELEMETRY_BATCH)
        self.confirm_cloud = confirm_cloud
        self.resend_s = resend_s
        self.key = key
        self.pubkey_b64 = public_b64(key.public_key())
        self.fingerprint = fingerprint(key.public_key())
        d = Path(data_dir)
        d.mkdir(parents=True, exist_ok=True)
        genesis = {**trace.genesis, "gateway_id": gateway, "site": site}
        self.ledger = LedgerWriter(d / "ledger", key, genesis, clock_status=lambda: "simulated")
        v0 = trace.start_s if start_s is None else float(start_s)
        if (v0 - trace.start_s) % 60:
            raise ValueError(f"start {utc_iso(v0)}: expected a time on the 1-minute grid of the trace")
        # The trace position q shown at v0: the phase, plus how far v0 is into its 15-minute interval, so that
        # the shift (gateway time - trace time) stays a multiple of 900 s and every interval on the grid.
        self.phase_s = phase_s
        q = (phase_s + (v0 - trace.start_s) % INTERVAL_S) % trace.length_s
        self.shift = v0 - trace.start_s - q                 # gateway time = trace time + shift (+ L per lap)
        recs = trace.records
        self.idx = 0 if q == 0 else next((i for i, r in enumerate(recs) if r[0] > q), len(recs))
        self.tele_first = TELEMETRY_BATCH if tele_first is None else max(1, int(tele_first))
        self.seq = 0
        self.pending: dict[str, list[tuple[int, bytes]]] = {k: [] for k in RECORD_KINDS}
        self.held_since: float | None = None               # wall time the oldest held telemetry arrived
        self.awaiting: dict[tuple[str, int, int], list] = {}   # (kind, first, last) -> [topic, payload, t0, t_last, n]
        self.flushing = False
        # counters
        self.records = 0
        self.ledger_lines = 0
        self.messages = 0
        self.batches = 0
        self.resends = 0
        self.nacks = 0
        self.sent = 0                                      # records in messages published (not held)
        self.payload_bytes = 0
        self.confirmed = 0
        self.lags: list[float] = []                        # first publish -> receipt, seconds (wall)
        self._put("event", v0, {"event": "uplink_boot", "boot_id": self.boot_id})

    # --- records -----------------------------------------------------------------------------------
    def next_due(self) -> float:
        """Gateway (virtual) time of the next trace record."""
        recs = self.trace.records
        if self.idx >= len(recs):
            self.idx = 0
            self.shift += self.trace.length_s
        return self.trace.start_s + recs[self.idx][0] + self.shift

    def _put(self, kind: str, t_s: float, body: dict) -> None:
        self.seq += 1
        self.pending[kind].append((self.seq, Spool._encode(self.enc, self.seq, kind, t_s, body)))
        self.records += 1

    def advance(self, v_now: float, wall: float) -> int:
        """Spool every trace record due at or before virtual time `v_now`; returns how many."""
        n = 0
        recs = self.trace.records
        while self.next_due() <= v_now:
            dt, kind, body, led = recs[self.idx]
            t = self.trace.start_s + dt + self.shift
            if led is not None:
                t0 = utc_epoch(led["t_start"]) + self.shift
                payload = self.ledger.append("interval", {**led, "t_start": utc_iso(t0),
                                                          "t_end": utc_iso(t0 + INTERVAL_S)})
                body = uplink_body(payload, self.ledger.last_line)
                self.ledger_lines += 1
            elif "start_s" in body:
                body = {**body, "start_s": body["start_s"] + self.shift, "end_s": body["end_s"] + self.shift}
            if kind == TELEMETRY and not self.pending[TELEMETRY]:
                self.held_since = wall
            self._put(kind, t, body)
            self.idx += 1
            n += 1
        return n

    # --- messages ----------------------------------------------------------------------------------
    def messages_due(self, wall: float) -> list[tuple[str, bytes, tuple]]:
        """(topic, payload, key) of every message to publish now: new ones, then resends."""
        out = []
        for kind in RECORD_KINDS:
            rows = self.pending[kind]
            if not rows:
                continue
            if (kind == TELEMETRY and len(rows) < min(self.tele_first, self.drain.telemetry_batch_min) and not self.flushing
                    and wall - (self.held_since or wall) < self.drain.telemetry_hold_max_s):
                continue
            while rows:
                take, size = [], 0
                for seq, p in rows:
                    if take and (len(take) >= self.drain.batch_max_records or size + len(p) > self.drain.batch_max_bytes):
                        break
                    take.append((seq, p))
                    size += len(p)
                del rows[:len(take)]
                if len(take) == 1:
                    topic, payload = self.topics(kind), take[0][1]
                else:
                    topic, payload = self.topics.batch(kind), encode_batch(kind, take, self.drain.zlib_level)
                    self.batches += 1
                key = (kind, take[0][0], take[-1][0])
                if self.confirm_cloud:        # publish time set by `published` when it is on the wire
                    self.awaiting[key] = [topic, payload, None, wall, len(take)]
                self.messages += 1
                self.sent += len(take)
                self.payload_bytes += len(payload)
                out.append((topic, payload, key))
            if kind == TELEMETRY:
                self.held_since = None
                self.tele_first = self.drain.telemetry_batch_min
        if self.awaiting:
            for key, a in self.awaiting.items():
                if a[2] is not None and wall - a[3] > self.resend_s and a[3] != wall:
                    a[3] = wall
                    self.resends += 1
                    out.append((a[0], a[1], key))
        return out

    def published(self, key: tuple, t: float) -> None:
        """The first time a message went out: the start of its end-to-end lag (taken per message, not per loop
        round: a round serving a thousand gateways' quarter-hour burst takes a while)."""
        a = self.awaiting.get(key)
        if a is not None and a[2] is None:
            a[2] = a[3] = t

    def nacked(self, key: tuple, wall: float, retry_s: float = 0.5) -> None:
        """PUBACK 0x10 (no matching subscribers: the cloud's ingest not subscribed yet): offer it again after
        `retry_s` (client.py nack_retry_s), not after the receipt timeout."""
        a = self.awaiting.get(key)
        if a is not None:
            a[3] = min(a[3], wall + retry_s - self.resend_s)
            self.nacks += 1

    def unconfirmed(self) -> list[tuple[str, bytes, tuple]]:
        """Everything without a receipt, offered again after a reconnect (client.py does the same)."""
        return [(a[0], a[1], key) for key, a in self.awaiting.items()]

    def on_ack(self, ranges, wall: float) -> int:
        n = 0
        for r in ranges:
            a = self.awaiting.pop(tuple(r), None)
            if a is not None:
                self.lags.append(wall - (a[2] if a[2] is not None else wall))
                self.confirmed += a[4]
                n += a[4]
        return n

    def waiting(self) -> int:
        return sum(len(v) for v in self.pending.values()) + len(self.awaiting)

    def close(self) -> None:
        self.ledger.close()


def status_online(gw: SimGateway) -> dict:
    """The retained status a gateway publishes on every connect (client.py _session)."""
    from controller.uplink.spool import iso_utc
    return {"state": "online", "gateway": gw.gateway, "site": gw.site, "boot_id": gw.boot_id,
            "t": iso_utc(time.time()), "protocol": "5"}


def status_offline(gw: SimGateway) -> dict:
    return {"state": "offline", "gateway": gw.gateway, "site": gw.site}
