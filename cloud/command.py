"""Signed commands to one gateway: counter, expiry, limits, publish, verdict, audit.

``issue(...)``, in order:
1. the next counter of the gateway, taken under a row lock (``gateways.cmd_counter``; the gateway refuses a
   counter not above the last authentic one, controller/uplink/commands.py);
2. the command JSON ``{"v":1,"id","gateway","counter","issued_s","expires_s","type","args"}`` signed with the
   cloud's Ed25519 key exactly as the gateway verifies it (``sign_command``: the signature covers the exact
   payload bytes);
3. a dry run of the gateway's own ``CommandVerifier`` on that envelope with the cloud's public key, the
   gateway's registered limits (its site profile's SOC window and kW) and the counter before this one: a
   command the gateway would refuse (limits, ttl, malformed args) is refused here, audited as
   ``refused_by_cloud``, and never published;
4. the audit row (``commands``, status ``published``) committed before the publish, then QoS 1 on
   ``edge-ems/v1/{site}/{gateway}/cmd``, having subscribed ``.../cmd/result/#`` first, and the verdict
   awaited: it updates the audit row (``accepted`` / ``refused`` + reason), or after ``wait_s`` the row says
   ``no_verdict`` (the ingest updates it when the verdict arrives later).

Clock: ``issued_s`` is the system's UTC, or (``clock="gateway"``) the gateway's own clock estimated from its
latest stored record (its t_s plus the time since it was received): a simulated gateway's clock is not the
system's, and the gateway checks expiry against its own.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from psycopg.types.json import Jsonb

from cloud.records import MessageError, decode, parse_topic
from controller.carbon.keys import fingerprint
from controller.uplink.commands import MAX_TTL_S, TYPES, CommandVerifier, Limits, sign_command
from controller.uplink.topics import PREFIX


class CommandError(ValueError):
    pass


@dataclass
class Issued:
    id: str
    gateway: str
    counter: int
    status: str
    reason: str
    command: dict
    envelope: bytes | None


def gateway_clock(conn, gateway: str) -> float:
    """The gateway's clock now, estimated from its latest stored record (t + time since received)."""
    row = conn.execute(   # records stamped with the controller's clock (uplink_boot carries the host's time)
        "SELECT extract(epoch FROM t)::float8 + extract(epoch FROM now() - received_at)::float8 FROM ("
        " SELECT t, received_at FROM telemetry WHERE gateway_id = %(g)s"
        " UNION ALL SELECT t, received_at FROM events WHERE gateway_id = %(g)s AND event <> 'uplink_boot'"
        " UNION ALL SELECT t, received_at FROM command_results WHERE gateway_id = %(g)s"
        " UNION ALL SELECT t, received_at FROM provisional_intervals WHERE gateway_id = %(g)s"
        " ORDER BY received_at DESC, t DESC LIMIT 1) x", {"g": gateway}).fetchone()
    if row is None or row[0] is None:
        raise CommandError(f"gateway {gateway!r} has no stored record to take its clock from (use --clock system)")
    return float(row[0])


def prepare(conn, key, gateway: str, kind: str, args: dict, ttl_s: float = 600.0, clock: str = "system",
            operator: str = "cli", issued_s: float | None = None) -> Issued:
    """Steps 1-3 and the audit row (committed). `key`: the cloud's Ed25519PrivateKey; `issued_s` (the
    gateway's clock given by the operator) overrides `clock`."""
    if kind not in TYPES:
        raise CommandError(f"command type {kind!r}: expected one of {', '.join(TYPES)}")
    if not isinstance(args, dict):
        raise CommandError("command args: expected a JSON object")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise CommandError(f"--ttl {ttl_s}: expected 0 < ttl <= {MAX_TTL_S:.0f} s (the gateway refuses longer)")
    with conn.transaction():
        row = conn.execute("SELECT site, limits, cmd_counter FROM gateways WHERE id = %s FOR UPDATE",
                           (gateway,)).fetchone()
        if row is None:
            raise CommandError(f"gateway {gateway!r} is not registered")
        site, limits, last = row
        now = issued_s if issued_s is not None else gateway_clock(conn, gateway) if clock == "gateway" else time.time()
        counter = int(last) + 1
        cmd = {"v": 1, "id": f"c{counter}-{uuid.uuid4().hex[:8]}", "gateway": gateway, "counter": counter,
               "issued_s": round(now, 3), "expires_s": round(now + ttl_s, 3), "type": kind, "args": args}
        env = sign_command(key, cmd)
        check = CommandVerifier(key.public_key(), gateway, Limits(**limits), lambda: str(counter - 1),
                                lambda value: True).verify(env, now)
        status, reason = ("published", "") if check.accepted else ("refused_by_cloud", check.reason)
        conn.execute("UPDATE gateways SET cmd_counter = %s WHERE id = %s", (counter, gateway))
        conn.execute("INSERT INTO commands (id, gateway_id, counter, type, args, issued_s, expires_s, envelope, "
                     "signer, operator, status, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                     (cmd["id"], gateway, counter, kind, Jsonb(args), cmd["issued_s"], cmd["expires_s"],
                      env.decode() if check.accepted else None, fingerprint(key.public_key()), operator, status,
                      reason or None))
    return Issued(cmd["id"], gateway, counter, status, reason, cmd, env if check.accepted else None)


class _Results:
    def __init__(self, want_id: str):
        self.want = want_id
        self.verdict: dict | None = None
        self.done = threading.Event()
        self.subscribed = threading.Event()

    def on_message(self, client, userdata, msg):
        try:
            dec = decode(parse_topic(msg.topic), bytes(msg.payload))
        except MessageError:
            return
        for r in dec.good:
            b = r.get("body", {})
            if b.get("id") == self.want:
                self.verdict = b
                self.done.set()


def publish_and_wait(conn, issued: Issued, site: str, broker, wait_s: float = 30.0) -> Issued:
    """Step 4: publish the signed envelope, wait for its verdict on cmd/result, update the audit row."""
    base = f"{PREFIX}/{site}/{issued.gateway}"
    res = _Results(issued.id)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-ems-cloud-cmd-{uuid.uuid4().hex[:8]}",
                    protocol=MQTTProtocolVersion.MQTTv5)
    if broker.tls:
        import ssl
        c.tls_set(ca_certs=broker.ca_certs, certfile=broker.certfile, keyfile=broker.keyfile,
                  cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if broker.username is not None:
        c.username_pw_set(broker.username, broker.password)
    c.on_message = res.on_message
    c.on_subscribe = lambda *a: res.subscribed.set()
    c.on_connect = lambda client, *a: client.subscribe(f"{base}/cmd/result/#", qos=1)
    c.connect(broker.host, broker.port, keepalive=30)
    c.loop_start()
    try:
        if not res.subscribed.wait(10):
            raise CommandError(f"broker {broker.host}:{broker.port}: no subscription within 10 s")
        info = c.publish(f"{base}/cmd", issued.envelope, qos=1)
        info.wait_for_publish(10)
        got = res.done.wait(wait_s)
    finally:
        c.loop_stop()
        c.disconnect()
    if got:
        v = res.verdict
        issued.status = "accepted" if v.get("verdict") == "accepted" else "refused"
        issued.reason = str(v.get("reason"))[:500]
        conn.execute("UPDATE commands SET status = %s, reason = %s, verdict_at = now() WHERE id = %s "
                     "AND status IN ('published', 'no_verdict')", (issued.status, issued.reason, issued.id))
    else:
        issued.status, issued.reason = "no_verdict", f"no verdict within {wait_s:g} s (expires at {issued.command['expires_s']})"
        conn.execute("UPDATE commands SET status = 'no_verdict', reason = %s WHERE id = %s AND status = 'published'",
                     (issued.reason, issued.id))
    conn.commit()
    return issued


def describe(i: Issued) -> str:
    return json.dumps({"id": i.id, "gateway": i.gateway, "counter": i.counter, "type": i.command["type"],
                       "status": i.status, "reason": i.reason, "issued_s": i.command["issued_s"],
                       "expires_s": i.command["expires_s"]})
