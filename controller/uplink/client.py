"""The MQTT side of the uplink: one thread owns the connection, offers spooled records, takes acks.

- paho-mqtt 2.x, ``CallbackAPIVersion.VERSION2``; MQTT v5 first, falling back to 3.1.1 when the
  broker refuses v5 (``protocol="auto"``).
- TLS (``mqtts://``) with a CA file, optionally a client certificate and key (mutual TLS); username
  and password as options (or in the URL). Keepalive (default 30 s).
- Reconnect: exponential back-off with full jitter, ``uniform(0, min(cap, base * 2**n))``, reset on a
  successful CONNACK. A fresh paho client per connection, so paho's in-memory queue never holds
  anything the spool does not: the spool is the only queue.
- ``status`` is retained: ``online`` published on every connect, last will ``offline`` (retained) set
  before connecting, ``offline`` published on a clean stop.
- Delivery: QoS 1; a record is deleted from the spool only on a PUBACK. Under MQTT v5 a PUBACK with
  reason 0x10 *No matching subscribers* (Mosquitto says so when nobody listens, e.g. right after a
  broker restart without persistence, before the cloud consumer re-subscribed) is treated as *not
  delivered*: the kind is re-offered from that record after a short back-off (``require_subscriber``).
- ``confirm``: a PUBACK is hop-by-hop. A broker without persistence that dies after its PUBACK but
  before it wrote the message to the cloud consumer (queued behind the consumer's in-flight window)
  loses it. With ``confirm="cloud"`` (``?confirm=cloud`` in the URL) the PUBACK only moves the cursor;
  a row is deleted when the cloud consumer confirms the message on ``.../ack`` with
  ``{"acks": [[kind, first_seq, last_seq], ...]}``. Anything not confirmed is offered again after every
  reconnect and after ``cloud_ack_timeout_s``: nothing committed is lost even across a non-persistent
  broker's restart, duplicates are dropped by ``(gateway, seq)``. ``confirm="broker"`` (default) is
  for a cloud consumer that does not send receipts (then rely on a persistent broker).
  The ack topic must be writable by the cloud only (broker ACL): a forged ack deletes spooled rows.
- The connection thread never dies silently: a fault in a connection attempt or a session (a bug, a
  library error, SQLite refusing the worker's deletes) is caught, counted (``crashes``, ``last_crash``)
  and retried after a back-off; ``supervise()`` (the uplink hook every cycle, the worker process in its
  stats loop) starts the thread again if it ends anyway (``restarts``).
"""
from __future__ import annotations

import json
import math
import random
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from controller.uplink.priority import lower_this_thread, protect_scan_cycle
from controller.uplink.drain import DrainPolicy, TokenBucket, encode_batch, publish_wire_bytes
from controller.uplink.spool import Spool, iso_utc
from controller.uplink.topics import INBOUND, INBOUND_QOS, LIVE, LIVE_MAX_BYTES, RECORD_KINDS, TELEMETRY, Topics

RC_NO_MATCHING_SUBSCRIBERS = 0x10
INBOUND_MAX_BYTES = 64 * 1024      # drivers/market.py MAX_BYTES: a bigger inbound message is dropped here
INBOUND_RATE_PER_S = 2.0           # per kind: compute/power comes every 10-60 s, a market message hourly
INBOUND_BURST = 32                 # a reconnect's retained messages and a platform's batch of announcements
LIVE_QUEUE = 16                    # live signals waiting for the connection thread (one headroom a minute)
MAX_ACK_BYTES = 64 * 1024          # a cloud receipt: a few ranges per batch, never this much
MAX_ACK_RANGES = 1024


class InboundGate:
    """Bounds what inbound topics can cost the controller: per kind a token bucket (a flooding bridge
    costs at most INBOUND_RATE_PER_S decodes a second in the controller's interpreter) and a size cap.
    What is dropped is counted per kind, never queued."""

    def __init__(self, rate_per_s: float = INBOUND_RATE_PER_S, burst: int = INBOUND_BURST,
                 max_bytes: int = INBOUND_MAX_BYTES, clock=time.monotonic):
        self.rate, self.burst, self.max_bytes, self.clock = rate_per_s, float(burst), max_bytes, clock
        self._tokens = {k: float(burst) for k in INBOUND}
        self._t = {k: clock() for k in INBOUND}
        self.passed = {k: 0 for k in INBOUND}
        self.dropped = {k: 0 for k in INBOUND}

    def admit(self, kind: str, size: int) -> bool:
        now = self.clock()
        tokens = min(self.burst, self._tokens[kind] + (now - self._t[kind]) * self.rate)
        self._t[kind] = now
        if size > self.max_bytes or tokens < 1.0:
            self._tokens[kind] = tokens
            self.dropped[kind] += 1
            return False
        self._tokens[kind] = tokens - 1.0
        self.passed[kind] += 1
        return True


def _int_option(q: dict, key: str, default: int) -> int:
    try:
        value = int(q.get(key, default))
    except ValueError:
        raise ValueError(f"broker URL: {key} must be a whole number of seconds, not {q[key]!r}") from None
    if value <= 0:
        raise ValueError(f"broker URL: {key} must be > 0, not {value}")
    return value


@dataclass
class BrokerConfig:
    host: str
    port: int
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    protocol: str = "auto"           # auto | 5 | 3.1.1
    confirm: str = "broker"          # broker (PUBACK deletes) | cloud (the cloud's .../ack deletes)

    def __post_init__(self):
        if self.protocol not in ("auto", "5", "3.1.1"):
            raise ValueError(f"broker URL: protocol must be auto, 5 or 3.1.1, not {self.protocol!r}")
        if self.confirm not in ("broker", "cloud"):
            raise ValueError(f"broker URL: confirm must be broker or cloud, not {self.confirm!r}")

    @classmethod
    def from_url(cls, url: str, **overrides) -> "BrokerConfig":
        """``mqtt[s]://[user:pass@]host[:port][?ca=FILE&cert=FILE&key=FILE&keepalive=S&protocol=5&confirm=cloud]``"""
        u = urlparse(url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError(f"broker URL must be mqtt://HOST:PORT or mqtts://HOST:PORT, not {url!r}")
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        tls = u.scheme == "mqtts"
        kw = dict(host=u.hostname, port=u.port or (8883 if tls else 1883), tls=tls,
                  ca_certs=q.get("ca"), certfile=q.get("cert"), keyfile=q.get("key"),
                  username=unquote(u.username) if u.username else None,
                  password=unquote(u.password) if u.password else None,
                  keepalive=_int_option(q, "keepalive", 30), protocol=q.get("protocol", "auto"),
                  confirm=q.get("confirm", "broker"))
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)


@dataclass
class UplinkStats:
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    messages: int = 0
    batches: int = 0
    records_sent: int = 0
    records_acked: int = 0
    nacks: int = 0
    cloud_acks: int = 0               # confirm=cloud: messages the cloud confirmed
    resends: int = 0                  # confirm=cloud: rewinds after cloud_ack_timeout_s without a receipt
    wire_bytes: int = 0               # MQTT PUBLISH + PUBACK framing + payload, records only
    payload_bytes: int = 0
    raw_bytes: int = 0                # records' JSON before compression
    protocol: str = ""
    live_sent: int = 0                # publish_live: handed to paho while connected
    live_dropped: int = 0             # publish_live: offline, queue full, unknown kind or too big (never stored)
    latency_s: deque = field(default_factory=lambda: deque(maxlen=1000))   # commit->PUBACK, live records


class MqttUplink:
    """Owns the broker connection in one thread; the spool is its only queue."""

    def __init__(self, spool: Spool, topics: Topics, broker: BrokerConfig, *, drain: DrainPolicy | None = None,
                 client_id: str | None = None, on_command=None, require_subscriber: bool = True,
                 backoff_base_s: float = 0.5, backoff_cap_s: float = 60.0, nack_retry_s: float = 0.5,
                 cloud_ack_timeout_s: float = 30.0, on_input=None):
        self.spool, self.topics, self.broker = spool, topics, broker
        self.drain = drain or DrainPolicy()
        self.client_id = client_id or f"edge-ems-{topics.gateway}"
        self.on_command = on_command
        self.on_input = on_input         # on_input(kind, payload, recv_t_utc_s): controller/netinputs.py feed
        self.inbound = InboundGate()
        self._inbound_topics = {topics(k): k for k in INBOUND}
        self.require_subscriber = require_subscriber
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.nack_retry_s = nack_retry_s
        self.cloud_confirms = broker.confirm == "cloud"
        self.cloud_ack_timeout_s = cloud_ack_timeout_s
        self.stats = UplinkStats()
        self.connected = threading.Event()
        self.paused = False              # True: offer nothing new (acks still taken); tools/bench/uplink.py
        self.flushing = False            # True: stop holding telemetry (a stop with a drain timeout)
        self._stop = threading.Event()
        self._v5 = broker.protocol in ("auto", "5")
        self._bucket = TokenBucket(self.drain.rate_bytes_s, self.drain.burst_bytes)
        self._thread: threading.Thread | None = None
        self._live: deque = deque()      # (topic, payload, qos, retain) for the connection thread, bounded
        self._live_lock = threading.Lock()
        self.crashes = 0                 # unexpected exceptions in the connection thread (it went on after a back-off)
        self.restarts = 0                # connection threads that died anyway and were started again (supervise)
        self.last_crash: str | None = None
        self._restart_at = 0.0
        self._restart_attempt = 0
        self._reset_session()

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "MqttUplink":
        protect_scan_cycle()
        self._thread = threading.Thread(target=self._run, name="uplink-mqtt", daemon=True)
        self._thread.start()
        return self

    @property
    def faults(self) -> int:
        """Crashes + restarts of the connection thread: grows on every fault (``uplink_worker_fault``)."""
        return self.crashes + self.restarts

    def supervise(self) -> bool:
        """Start the connection thread again if it died (an exception the thread's own guard does not
        catch); back-off 0.5 s doubling to 30 s between restarts. One ``is_alive`` while it lives: the
        uplink hook calls this every cycle (the worker process in its stats loop). True if restarted."""
        t = self._thread
        if t is None or t.is_alive() or self._stop.is_set():
            return False
        now = time.monotonic()
        if now < self._restart_at:
            return False
        self._restart_at = now + min(30.0, 0.5 * 2 ** min(self._restart_attempt, 16))
        self._restart_attempt += 1
        self.restarts += 1
        self.connected.clear()
        print(f"uplink: the MQTT thread died ({self.last_crash}); restart #{self.restarts}", flush=True)
        self.start()
        return True

    def stop(self, drain_timeout_s: float = 0.0) -> bool:
        """Stop; first wait up to drain_timeout_s for the spool to empty. True if it was empty."""
        deadline = time.monotonic() + drain_timeout_s
        if drain_timeout_s > 0:
            self.request_flush()
        self.spool.flush(max(1.0, drain_timeout_s))
        while self.spool.pending_rows > 0 and time.monotonic() < deadline:
            self.spool.wait_new(0.1)
        empty = self.spool.pending_rows == 0
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15.0)
        return empty

    def publish_live(self, kind: str, payload: bytes, retain: bool | None = None) -> bool:
        """Publish a live signal (topics.LIVE: compute/headroom retained, compute/defer) with its documented
        QoS and retain flag (``retain`` is the caller's view of it; the table wins). Never blocks: while
        connected it is queued (at most LIVE_QUEUE; the oldest goes when full) for the connection thread;
        offline it is dropped and counted, not spooled (a stale headroom is wrong, not late). True if queued."""
        spec = LIVE.get(kind)
        if spec is None or not self.connected.is_set() or len(payload) > LIVE_MAX_BYTES:
            self.stats.live_dropped += 1
            return False
        with self._live_lock:
            if len(self._live) >= LIVE_QUEUE:
                self._live.popleft()
                self.stats.live_dropped += 1
            self._live.append((self.topics(kind), bytes(payload), spec[0], spec[1]))
        return True

    def _send_live(self, client: mqtt.Client) -> None:
        while True:
            with self._live_lock:
                if not self._live:
                    return
                topic, payload, qos, retain = self._live.popleft()
            if client.publish(topic, payload, qos=qos, retain=retain).rc == mqtt.MQTT_ERR_SUCCESS:
                self.stats.live_sent += 1
            else:
                self.stats.live_dropped += 1

    def _drop_live(self) -> None:
        with self._live_lock:
            self.stats.live_dropped += len(self._live)
            self._live.clear()

    def request_flush(self) -> None:
        """Send held telemetry now (and from now on hold none)."""
        self.flushing = True
        self._idle = {}

    def _reset_session(self) -> None:
        self._cursor = {k: 0 for k in RECORD_KINDS}      # highest seq offered this connection
        self._idle: dict[str, int] = {}                   # kind -> cursor at which a read found nothing
        self._recheck_at: dict[str, float] = {}           # kind -> when held telemetry must be read again
        self._tele_since: tuple[int, float] | None = None # (cursor, since) telemetry has been held
        self._inflight: dict[int, tuple[str, list[int], float]] = {}   # mid -> (kind, seqs, t)
        self._inflight_n = {k: 0 for k in RECORD_KINDS}
        self._hold_until = {k: 0.0 for k in RECORD_KINDS}
        self._awaiting: dict[tuple[str, int, int], float] = {}   # confirm=cloud: PUBACKed, no receipt yet
        self._early: set[tuple[str, int, int]] = set()           # receipts that came before the PUBACK

    # --- the connection thread ------------------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        proto = MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311
        kw = {} if self._v5 else {"clean_session": True}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto,
                        reconnect_on_failure=False, **kw)
        b = self.broker
        if b.tls:
            c.tls_set(ca_certs=b.ca_certs, certfile=b.certfile, keyfile=b.keyfile,
                      cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if b.username is not None:
            c.username_pw_set(b.username, b.password)
        c.max_inflight_messages_set(max(20, len(RECORD_KINDS) * self.drain.inflight_per_kind + 4))
        c.max_queued_messages_set(0)
        offline = json.dumps({"state": "offline", "gateway": self.topics.gateway, "site": self.topics.site})
        c.will_set(self.topics.status, offline, qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(attempt, 20)))

    def _run(self) -> None:
        lower_this_thread()
        attempt = 0
        try:
            while not self._stop.is_set():
                try:
                    attempt = self._connect_once(attempt)
                except Exception as exc:        # noqa: BLE001 - a bug or a library fault: counted, said, retried
                    self.crashes += 1
                    self.last_crash = f"{type(exc).__name__}: {exc}"[:200]
                    self.connected.clear()
                    print(f"uplink: the MQTT connection thread failed ({self.last_crash}); retrying", flush=True)
                    self._stop.wait(min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(attempt, 20)))
                    attempt += 1
        except BaseException as exc:            # noqa: BLE001 - the thread ends; supervise() starts another
            self.last_crash = f"{type(exc).__name__}: {exc}"[:200]
            self.connected.clear()

    def _connect_once(self, attempt: int) -> int:
        """One connection: connect, run the session until it ends. Returns the next back-off attempt."""
        self._connack = None
        client = self._new_client()
        try:
            try:
                props = None
                if self._v5:
                    props = Properties(PacketTypes.CONNECT)
                    props.SessionExpiryInterval = 0
                if self._v5:
                    client.connect(self.broker.host, self.broker.port, self.broker.keepalive,
                                   clean_start=True, properties=props)
                else:
                    client.connect(self.broker.host, self.broker.port, self.broker.keepalive)
                deadline = time.monotonic() + 10.0
                while self._connack is None and time.monotonic() < deadline and not self._stop.is_set():
                    if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                        break
            except (OSError, ssl.SSLError, ValueError):
                pass
            if self._connack is not True:
                if self._connack == "unsupported":
                    self._v5 = False                    # broker speaks 3.1.1 only
                self.stats.connect_failures += 1
                self._close(client)
                self._stop.wait(self._backoff(attempt))
                return attempt + 1
            self._session(client)
            return 0
        finally:
            self._close(client)

    def _close(self, client: mqtt.Client) -> None:
        try:
            client.disconnect()
            client.loop(timeout=0.01)
        except Exception:
            pass
        try:
            sock = client.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass

    def _session(self, client: mqtt.Client) -> None:
        self._reset_session()
        self.stats.connects += 1
        self.stats.protocol = "5" if self._v5 else "3.1.1"
        online = {"state": "online", "gateway": self.topics.gateway, "site": self.topics.site,
                  "boot_id": self.spool.boot_id, "t": iso_utc(time.time()), "protocol": self.stats.protocol}
        client.publish(self.topics.status, json.dumps(online), qos=1, retain=True)
        client.subscribe(self.topics.cmd, qos=1)
        client.subscribe([(self.topics(k), INBOUND_QOS[k]) for k in INBOUND])
        if self.cloud_confirms:
            client.subscribe(self.topics.ack, qos=1)
        self._drop_live()                                # one that raced the last disconnect is stale
        self.connected.set()
        apply_acks = getattr(self.spool, "apply_acks", None)     # the worker's spool reader deletes in batches
        try:
            while not self._stop.is_set() and self.connected.is_set():
                if self._live:
                    self._send_live(client)
                if not self.paused:
                    self._offer(client)
                rc = client.loop(timeout=0.02)
                if apply_acks is not None:
                    apply_acks()
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
            if self._stop.is_set() and self.connected.is_set():
                off = {"state": "offline", "gateway": self.topics.gateway, "site": self.topics.site,
                       "t": iso_utc(time.time())}
                info = client.publish(self.topics.status, json.dumps(off), qos=1, retain=True)
                deadline = time.monotonic() + 2.0
                while not info.is_published() and time.monotonic() < deadline:
                    if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                        break
        finally:
            self.connected.clear()
            self._drop_live()                            # what the lost connection did not take is stale
            self.stats.disconnects += 1

    def _rewind_unconfirmed(self, now: float) -> None:
        """confirm=cloud: a message without a receipt after the timeout is offered again (with all later
        ones of its kind, so per-topic order holds)."""
        late = [key for key, t in self._awaiting.items() if now - t > self.cloud_ack_timeout_s]
        for key in late:
            if key not in self._awaiting:               # already rewound with an earlier one of its kind
                continue
            kind, first, _ = key
            self._cursor[kind] = min(self._cursor[kind], first - 1)
            for key in [k for k in self._awaiting if k[0] == kind and k[1] >= first]:
                del self._awaiting[key]
            self.stats.resends += 1

    def _offer(self, client: mqtt.Client) -> None:
        now = time.monotonic()
        if self._awaiting:
            self._rewind_unconfirmed(now)
        changed = getattr(self.spool, "changed", None)
        if changed is None or changed():                 # new commits: every kind may have rows again
            self._idle = {}
        for kind in RECORD_KINDS:
            if self._inflight_n[kind] >= self.drain.inflight_per_kind or now < self._hold_until[kind]:
                continue
            if self._idle.get(kind) == self._cursor[kind] and now < self._recheck_at.get(kind, math.inf):
                continue                                  # nothing new since the last read at this cursor
            rows = self.spool.pending(kind, self._cursor[kind], self.drain.batch_max_records,
                                      self.drain.batch_max_bytes)
            if not rows:
                self._idle[kind] = self._cursor[kind]
                self._recheck_at.pop(kind, None)
                continue
            if kind == TELEMETRY and len(rows) < self.drain.telemetry_batch_min and not self.flushing:
                if self._tele_since is None or self._tele_since[0] != self._cursor[kind]:
                    self._tele_since = (self._cursor[kind], now)
                until = self._tele_since[1] + self.drain.telemetry_hold_max_s
                if now < until:                           # hold: read again on a commit or when due
                    self._idle[kind] = self._cursor[kind]
                    self._recheck_at[kind] = until
                    continue
            if len(rows) == 1:
                topic, payload = self.topics(kind), rows[0][1]
            else:
                if not self._bucket.ready():
                    continue
                topic = self.topics.batch(kind)
                payload = encode_batch(kind, rows, self.drain.zlib_level)
            info = client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return
            wire = publish_wire_bytes(topic, len(payload), self._v5)
            if len(rows) > 1:
                self._bucket.spend(wire)
                self.stats.batches += 1
            seqs = [s for s, _ in rows]
            self._cursor[kind] = seqs[-1]
            self._inflight[info.mid] = (kind, seqs, time.monotonic())
            self._inflight_n[kind] += 1
            self.stats.messages += 1
            self.stats.records_sent += len(rows)
            self.stats.wire_bytes += wire
            self.stats.payload_bytes += len(payload)
            self.stats.raw_bytes += sum(len(p) for _, p in rows)

    # --- paho callbacks (run in this thread, inside client.loop) ---------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._connack = "unsupported" if reason_code.value in (0x01, 0x84) else False
        else:
            self._connack = True

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        kind, seqs, t0 = entry
        self._inflight_n[kind] -= 1
        rc = getattr(reason_code, "value", 0)
        if reason_code.is_failure or (self.require_subscriber and rc == RC_NO_MATCHING_SUBSCRIBERS):
            self.stats.nacks += 1
            # go back: offer this kind again from the first record of the refused message
            self._cursor[kind] = min(self._cursor[kind], seqs[0] - 1)
            self._hold_until[kind] = time.monotonic() + self.nack_retry_s
            return
        if self.cloud_confirms:
            key = (kind, seqs[0], seqs[-1])
            if key in self._early:                   # the receipt overtook the PUBACK
                self._early.discard(key)
            else:
                self._awaiting[key] = time.monotonic()
        else:
            self.spool.ack(seqs)
        self.stats.records_acked += len(seqs)
        if len(seqs) == 1:
            self.stats.latency_s.append(time.monotonic() - t0)

    def _on_message(self, client, userdata, msg):
        if msg.topic == self.topics.ack and self.cloud_confirms:
            self._on_cloud_ack(bytes(msg.payload))
        elif msg.topic == self.topics.cmd and self.on_command is not None:
            try:
                self.on_command(bytes(msg.payload))
            except Exception as exc:             # a command must never take the uplink down
                print(f"uplink: command handler failed: {exc!r}")
        elif msg.topic in self._inbound_topics:
            kind = self._inbound_topics[msg.topic]
            if self.on_input is None or not self.inbound.admit(kind, len(msg.payload)):
                return
            try:
                self.on_input(kind, bytes(msg.payload), time.time())
            except Exception as exc:             # nor a network input
                print(f"uplink: input handler for {kind} failed: {exc!r}")

    def _on_cloud_ack(self, raw: bytes) -> None:
        """``{"acks": [[kind, first_seq, last_seq], ...]}``; anything else is ignored (and said so)."""
        try:
            if len(raw) > MAX_ACK_BYTES:
                raise ValueError(f"{len(raw)} bytes, at most {MAX_ACK_BYTES}")
            acks = json.loads(raw)["acks"]
            if not isinstance(acks, list) or len(acks) > MAX_ACK_RANGES:
                raise ValueError(f"acks: expected a list of at most {MAX_ACK_RANGES} [kind, first, last]")
            ranges = []
            for r in acks:                   # seqs typed exactly: a float, a bool or a 30-digit int is refused
                if not (isinstance(r, list) and len(r) == 3 and isinstance(r[0], str)
                        and all(type(x) is int and 0 < x < 2 ** 63 for x in r[1:])):
                    raise ValueError(f"acks: {str(r)[:60]} is not [kind, first_seq, last_seq] with 0 < seq < 2**63")
                ranges.append((r[0], r[1], r[2]))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:   # paho's thread must not end here
            print(f"uplink: ignoring a malformed ack on {self.topics.ack}: {str(exc)[:200]}")
            return
        for kind, first, last in ranges:
            if kind in RECORD_KINDS and 0 < first <= last:
                self.spool.ack_range(kind, first, last)
                if self._awaiting.pop((kind, first, last), None) is None and len(self._early) < 10_000:
                    self._early.add((kind, first, last))
                self.stats.cloud_acks += 1
