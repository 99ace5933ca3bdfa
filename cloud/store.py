"""Writing decoded uplink messages to PostgreSQL: one transaction per group of messages, idempotent.

``store(conn, messages) -> receipts``: every record goes to exactly one table under its key
(gateway_id, boot_id, seq) with ``ON CONFLICT DO NOTHING`` (a re-sent copy is dropped by the database, not
by a cache that a restart forgets); intervals whose ledger line fails verification (cloud/verify.py), records
of an unregistered gateway or of another site, and malformed records go to ``rejected`` with the reason and
raise a cloud alarm row (once: only when the rejected row is new). The caller commits, then sends the
receipts (`{ack topic: [[kind, first, last], ...]}`) - never before.
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

from psycopg.types.json import Jsonb

from cloud.records import Decoded, MessageError, RecordError, Topic, decode, decode_status, parse_topic
from cloud.verify import Key, LineRejected, verify_interval
from drivers.isotime import utc_epoch

RAW_KEEP = 4096                    # bytes of an undecodable message kept in rejected.raw


@dataclass
class Message:
    topic: str
    payload: bytes


@dataclass
class Outcome:
    receipts: dict = field(default_factory=lambda: defaultdict(list))   # ack topic -> [[kind, first, last]]
    stored: int = 0                # records offered to the database (duplicates included)
    rejected: int = 0              # records / messages quarantined (new or not)
    alarms: list = field(default_factory=list)   # (gateway, alarm, reason) raised by this call (new rows)


def _utc(t_s: float) -> datetime:
    return datetime.fromtimestamp(t_s, timezone.utc)


def log(msg: str) -> None:
    print(f"edge-ems-cloud: {msg}", file=sys.stderr, flush=True)


def load_registry(conn, gateways) -> tuple[dict, dict]:
    """({gateway: site}, {gateway: [Key]}) of the registered gateways among `gateways` - read in the
    storing transaction, so a key rotated a moment ago is what the next line is checked against."""
    ids = sorted(gateways)
    sites = dict(conn.execute("SELECT id, site FROM gateways WHERE id = ANY(%s)", (ids,)).fetchall())
    keys: dict = defaultdict(list)
    for gw, fp, pub, vf, vt in conn.execute(
            "SELECT gateway_id, fingerprint, pubkey, extract(epoch FROM valid_from)::float8, "
            "coalesce(extract(epoch FROM valid_to)::float8, 'infinity') FROM gateway_keys "
            "WHERE gateway_id = ANY(%s) ORDER BY valid_from", (ids,)).fetchall():
        keys[gw].append(Key(fp, bytes(pub), vf, vt))
    return sites, keys


def _common(r: dict) -> tuple:
    return (r["gateway"], r["boot_id"], r["seq"], r["site"], _utc(r["t_s"]), r.get("clock"))


def _str(body: dict, key: str, required: bool = True, limit: int = 200):
    v = body.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not 0 < len(v) <= limit:
        raise ValueError(f"body.{key}: expected a string of 1..{limit} characters, got {str(v)[:40]!r}")
    return v


def _interval_row(r: dict, v) -> tuple:
    p, b = v.payload, r["body"]
    try:
        src, snk, co2 = p["energy_kwh"]["sources"], p["energy_kwh"]["sinks"], p["co2_kg"]
        vals = (src["grid"], snk["export"], src["pv"], src["diesel"], src["battery_discharge"],
                snk["battery_charge"], snk["it"], b["load_kwh"], co2["scope1_diesel"], co2["scope2_location"],
                co2["scope2_market"], b["co2_kg"])
    except (KeyError, TypeError) as exc:
        raise LineRejected(f"ledger_line: signed payload lacks {exc}") from None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
        raise LineRejected("ledger_line: a summed field is not a number")
    return (*_common(r), _utc(v.t_start_s), _utc(utc_epoch(p["t_end"])), float(p["covered_s"]),
            bool(p.get("partial")), *map(float, vals), b.get("renewable_share"), p["n"], p["prev"],
            v.line_sha256, v.key.fingerprint, str(p.get("clock"))[:64], v.line, Jsonb(p))


SQL = {
    "telemetry": "INSERT INTO telemetry (gateway_id, boot_id, seq, site, t, clock, start_s, end_s, body) "
                 "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
    "event": "INSERT INTO events (gateway_id, boot_id, seq, site, t, clock, event, body) "
             "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
    "alarm": "INSERT INTO alarms (gateway_id, boot_id, seq, site, t, clock, alarm, state, severity, value) "
             "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (gateway_id, boot_id, seq) DO NOTHING",
    "cmd/result": "INSERT INTO command_results (gateway_id, boot_id, seq, site, t, clock, command_id, counter, "
                  "type, verdict, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
    "provisional": "INSERT INTO provisional_intervals (gateway_id, boot_id, seq, site, t, clock, start_s, body) "
                   "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
    "interval": "INSERT INTO intervals (gateway_id, boot_id, seq, site, t, clock, t_start, t_end, covered_s, partial, "
                "grid_import_kwh, grid_export_kwh, pv_kwh, genset_kwh, battery_discharge_kwh, battery_charge_kwh, "
                "it_kwh, load_kwh, scope1_kg, scope2_location_kg, scope2_market_kg, co2_kg, renewable_share, "
                "ledger_n, ledger_prev, line_sha256, key_fingerprint, ledger_clock, line, payload) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
}


def _num(body: dict, key: str):
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) < 1e15:
        raise ValueError(f"body.{key}: expected a number, got {str(v)[:40]}")
    return float(v)


def _row(r: dict, keys: list[Key]) -> tuple[str, tuple]:
    """(table key in SQL, row) of a good record of a registered gateway; ValueError / LineRejected -> rejected."""
    kind, b = r["kind"], r["body"]
    c = _common(r)
    if kind == "telemetry":
        return kind, (*c, _num(b, "start_s"), _num(b, "end_s"), Jsonb(b))
    if kind == "event":
        return kind, (*c, _str(b, "event", limit=64), Jsonb(b))
    if kind == "alarm":
        value = b.get("value")
        return kind, (*c, _str(b, "alarm", limit=64), _str(b, "state", limit=32), _str(b, "severity", False, 32),
                      None if value is None else Jsonb(value))
    if kind == "cmd/result":
        counter = b.get("counter")
        return kind, (*c, _str(b, "id", False, 64), counter if type(counter) is int and 0 < counter < 2 ** 63 else None,
                      _str(b, "type", False, 64), _str(b, "verdict", limit=16), _str(b, "reason", False, 500))
    if kind == "interval":
        if b.get("provisional") is True:
            start = _num(b, "start_s")
            if start is None:
                raise ValueError("body.start_s: expected a number")
            return "provisional", (*c, start, Jsonb(b))
        if b.get("provisional") is not False:
            raise ValueError("body.provisional: expected true or false")
        return "interval", _interval_row(r, verify_interval(r["gateway"], b, keys))
    raise ValueError(f"kind {kind!r} not stored")


class _Tx:
    """The rows of one transaction, and the quarantine writes (row by row: an alarm only for a new one)."""

    def __init__(self, conn, out: Outcome):
        self.conn, self.out = conn, out
        self.rows: dict = defaultdict(list)
        self.cmd_verdicts: list = []

    def reject(self, topic: str, reason: str, rec: dict | None = None, key: tuple | None = None,
               raw: bytes | None = None, kind: str | None = None, alarm: str = "record_rejected",
               gateway: str | None = None, site: str | None = None) -> None:
        self.out.rejected += 1
        gw, boot, seq = key if key else (gateway, None, None)
        if rec is not None:
            site = rec.get("site") if isinstance(rec.get("site"), str) else site
        line = rec.get("body", {}).get("ledger_line") if isinstance(rec, dict) and isinstance(rec.get("body"), dict) else None
        digest = hashlib.sha256(raw if raw is not None else json.dumps(rec, sort_keys=True).encode()).hexdigest()
        if key:
            sql = ("INSERT INTO rejected (gateway_id, boot_id, seq, site, kind, topic, reason, record, raw, line, digest) "
                   "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (gateway_id, boot_id, seq) "
                   "DO NOTHING RETURNING id")
        else:
            sql = ("INSERT INTO rejected (gateway_id, boot_id, seq, site, kind, topic, reason, record, raw, line, digest) "
                   "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (topic, digest) "
                   "WHERE seq IS NULL DO NOTHING RETURNING id")
        new = self.conn.execute(sql, (gw, boot, seq, str(site)[:64] if site else None, kind, topic[:256], reason[:1000],
                                      Jsonb(rec) if rec is not None else None,
                                      raw[:RAW_KEEP] if raw is not None else None,
                                      line if isinstance(line, str) else None, digest)).fetchone()
        if new is None:
            return                                   # quarantined before (a re-sent copy): alarmed then
        log(f"rejected {topic[:120]} {('seq %s ' % seq) if seq else ''}: {reason[:300]}")
        if gw is not None:
            self.conn.execute(
                "INSERT INTO alarms (source, gateway_id, site, t, alarm, state, severity, value) "
                "VALUES ('cloud', %s, %s, now(), %s, 'raised', 'critical', %s)",
                (gw, site, alarm, Jsonb({"reason": reason[:1000], "boot_id": boot, "seq": seq, "kind": kind,
                                         "topic": topic[:256], "rejected_id": new[0]})))
            self.out.alarms.append((gw, alarm, reason))


def store(conn, messages: list[Message]) -> Outcome:
    """Decode and write `messages` in the caller's transaction (see module doc); returns the receipts."""
    out = Outcome()
    tx = _Tx(conn, out)
    parsed = []
    for m in messages:
        try:
            topic = parse_topic(m.topic)
        except MessageError as exc:
            tx.reject(m.topic, str(exc), raw=m.payload, alarm="message_rejected")
            continue
        if topic.kind == "status":
            _status(conn, topic, m, tx)
            continue
        try:
            parsed.append((m, topic, decode(topic, m.payload)))
        except MessageError as exc:
            tx.reject(m.topic, str(exc), raw=m.payload, kind=topic.kind, alarm="message_rejected",
                      gateway=topic.gateway, site=topic.site)
    sites, keys = load_registry(conn, {t.gateway for _, t, _ in parsed})
    for m, topic, dec in parsed:
        _records(tx, m, topic, dec, sites, keys)
        if dec.receipt is not None:
            out.receipts[topic.ack].append(list(dec.receipt))
    for table, rows in tx.rows.items():
        conn.cursor().executemany(SQL[table], rows)
        out.stored += len(rows)
    for gw, cmd_id, counter, verdict, reason in tx.cmd_verdicts:
        conn.execute("UPDATE commands SET status = %s, reason = %s, verdict_at = now() WHERE gateway_id = %s "
                     "AND id = %s AND counter IS NOT DISTINCT FROM %s AND status IN ('published', 'no_verdict')",
                     (verdict, reason, gw, cmd_id, counter))
    return out


def _records(tx: _Tx, m: Message, topic: Topic, dec: Decoded, sites: dict, keys: dict) -> None:
    for bad in dec.bad:
        tx.reject(m.topic, str(bad), rec=bad.record if isinstance(bad.record, dict) else None, key=bad.key,
                  kind=topic.kind, gateway=topic.gateway, site=topic.site)
    registered = sites.get(topic.gateway)
    for r in dec.good:
        key = (r["gateway"], r["boot_id"], r["seq"])
        if registered is None:
            tx.reject(m.topic, f"gateway {topic.gateway!r} is not registered (edge-ems-cloud gateway add)", rec=r,
                      key=key, kind=topic.kind, alarm="unknown_gateway")
            continue
        if registered != topic.site:
            tx.reject(m.topic, f"gateway {topic.gateway!r} is registered at site {registered!r}, not {topic.site!r}",
                      rec=r, key=key, kind=topic.kind, alarm="site_mismatch")
            continue
        try:
            table, row = _row(r, keys.get(topic.gateway, []))
        except LineRejected as exc:
            tx.reject(m.topic, str(exc), rec=r, key=key, kind=topic.kind, alarm="ledger_line_rejected")
            continue
        except ValueError as exc:
            tx.reject(m.topic, str(exc), rec=r, key=key, kind=topic.kind)
            continue
        tx.rows[table].append(row)
        if table == "cmd/result" and row[6] is not None and row[9] in ("accepted", "refused"):
            tx.cmd_verdicts.append((topic.gateway, row[6], row[7], row[9], row[10]))


def _status(conn, topic: Topic, m: Message, tx: _Tx) -> None:
    try:
        st = decode_status(topic, m.payload)
    except MessageError as exc:
        tx.reject(m.topic, str(exc), raw=m.payload, kind="status", gateway=topic.gateway, site=topic.site)
        return
    if st is None:
        return
    t = st.get("t")
    try:
        t_at = datetime.fromtimestamp(utc_epoch(t), timezone.utc) if isinstance(t, str) else None
    except (ValueError, OverflowError):
        t_at = None
    boot = st.get("boot_id") if isinstance(st.get("boot_id"), str) else None
    conn.execute("INSERT INTO gateway_status (gateway_id, site, state, boot_id, t) VALUES (%s, %s, %s, %s, %s) "
                 "ON CONFLICT (gateway_id) DO UPDATE SET site = excluded.site, state = excluded.state, "
                 "boot_id = excluded.boot_id, t = excluded.t, received_at = now()",
                 (topic.gateway, topic.site, st["state"], boot[:64] if boot else None, t_at))
