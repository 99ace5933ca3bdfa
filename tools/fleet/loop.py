"""Many simulated gateways' MQTT connections on one selector loop (one process, no thread per client).

Why not one MqttUplink per gateway: each runs its own thread polling paho every 20 ms; a thousand of them
are 50,000 wake-ups a second before anything is published, on a 2-core machine. Here every gateway still
has its own MQTT v5 connection (client id = gateway id, clean start, keepalive 30 s, retained status with
an `offline` last will, subscriptions to its cmd, ack and inbound topics, as client.py `_session`), and
paho's external-loop calls (`loop_read` / `loop_write` / `loop_misc`) are driven from one epoll.

Time: virtual time v = v0 + (wall - wall0) x speed. A gateway is woken (a heap on its next record's
virtual time) when a record is due; holds, resends and keepalives are checked once a wall second.
Receipts (`confirm=cloud`) give the end-to-end lag: first publish of a message -> its receipt arriving.
"""
from __future__ import annotations

import heapq
import json
import random
import selectors
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from controller.uplink.topics import INBOUND, INBOUND_QOS
from tools.fleet.gateway import SimGateway, status_offline, status_online

TICK_S = 0.05
RC_NO_MATCHING_SUBSCRIBERS = 0x10
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 60.0


class _Conn:
    __slots__ = ("gw", "client", "sock", "connected", "attempt", "retry_at", "connects", "mids")

    def __init__(self, gw: SimGateway, client: mqtt.Client):
        self.gw, self.client = gw, client
        self.sock = None
        self.connected = False
        self.attempt = 0
        self.retry_at = 0.0
        self.connects = 0
        self.mids: dict[int, tuple] = {}       # PUBACK pending: mid -> message key


class FleetLoop:
    def __init__(self, gateways: list[SimGateway], host: str, port: int, *, speed: float = 1.0,
                 v0: float | None = None, keepalive: int = 30):
        self.gws = gateways
        self.host, self.port, self.keepalive = host, port, keepalive
        self.speed = float(speed)
        self.v0 = v0 if v0 is not None else min(g.next_due() for g in gateways)
        self.sel = selectors.DefaultSelector()
        self.conns = [self._make(g) for g in gateways]
        self.dirty: set[_Conn] = set()
        self.wall0 = None
        self.disconnects = 0
        self.connect_failures = 0
        self.publish_errors = 0
        self.acks_ignored = 0

    # --- connections -----------------------------------------------------------------------------
    def _make(self, gw: SimGateway) -> _Conn:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=gw.gateway, protocol=MQTTProtocolVersion.MQTTv5,
                        reconnect_on_failure=False)
        c.max_inflight_messages_set(0)          # no paho-side window: the gateway's own bookkeeping is the queue
        c.max_queued_messages_set(0)
        c.will_set(gw.topics.status, json.dumps(status_offline(gw)), qos=1, retain=True)
        conn = _Conn(gw, c)
        c.user_data_set(conn)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        return conn

    def _connect(self, conn: _Conn) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        try:
            if conn.connects == 0 and conn.sock is None and conn.attempt == 0:
                conn.client.connect(self.host, self.port, self.keepalive, clean_start=True, properties=props)
            else:
                conn.client.reconnect()
        except (OSError, ValueError):
            self.connect_failures += 1
            self._backoff(conn)
            return
        conn.sock = conn.client.socket()
        self.sel.register(conn.sock, selectors.EVENT_READ, conn)
        self.dirty.add(conn)

    def _backoff(self, conn: _Conn) -> None:
        conn.retry_at = time.monotonic() + random.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(conn.attempt, 20)))
        conn.attempt += 1

    def _drop(self, conn: _Conn) -> None:
        if conn.sock is not None:
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            conn.sock = None
        if conn.connected:
            self.disconnects += 1
        conn.connected = False
        self.dirty.discard(conn)
        self._backoff(conn)

    def _on_connect(self, client, conn: _Conn, flags, reason_code, properties):
        if reason_code.is_failure:
            self.connect_failures += 1
            return
        gw = conn.gw
        conn.connected, conn.attempt = True, 0
        conn.connects += 1
        client.publish(gw.topics.status, json.dumps(status_online(gw)), qos=1, retain=True)
        client.subscribe([(gw.topics.cmd, 1), (gw.topics.ack, 1)] + [(gw.topics(k), INBOUND_QOS[k]) for k in INBOUND])
        conn.mids.clear()
        for topic, payload, key in gw.unconfirmed():     # everything without a receipt, again
            conn.mids[client.publish(topic, payload, qos=1).mid] = key
            gw.published(key, time.time())
        self.dirty.add(conn)

    def _on_disconnect(self, client, conn: _Conn, flags, reason_code, properties):
        conn.connected = False

    def _on_publish(self, client, conn: _Conn, mid, reason_code, properties):
        key = conn.mids.pop(mid, None)
        if key is not None and getattr(reason_code, "value", 0) == RC_NO_MATCHING_SUBSCRIBERS:
            conn.gw.nacked(key, time.time())

    def _on_message(self, client, conn: _Conn, msg):
        if msg.topic != conn.gw.topics.ack:
            return                                        # a command or an input: the fleet does not act on them
        try:
            acks = json.loads(msg.payload)["acks"]
            conn.gw.on_ack(acks, time.time())
        except (ValueError, KeyError, TypeError):
            self.acks_ignored += 1

    # --- the loop --------------------------------------------------------------------------------
    def connect_all(self, timeout_s: float = 120.0) -> int:
        """Connect every gateway (in groups, serving the loop in between); returns how many are connected."""
        deadline = time.monotonic() + timeout_s
        for i, conn in enumerate(self.conns):
            self._connect(conn)
            if i % 50 == 49:
                self._io(0.0)
        while time.monotonic() < deadline and sum(c.connected for c in self.conns) < len(self.conns):
            self._io(0.05)
            self._retry(time.monotonic())
        return sum(c.connected for c in self.conns)

    def _io(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            conn = key.data
            rc = conn.client.loop_read()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._drop(conn)
                continue
            if conn.client.want_write():
                self.dirty.add(conn)
        if self.dirty:
            for conn in list(self.dirty):
                if conn.sock is None:
                    self.dirty.discard(conn)
                    continue
                if conn.client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
                    self._drop(conn)
                    continue
                if not conn.client.want_write():
                    self.dirty.discard(conn)

    def _retry(self, now: float) -> None:
        for conn in self.conns:
            if conn.sock is None and now >= conn.retry_at:
                self._connect(conn)

    def _publish(self, conn: _Conn, msgs) -> None:
        if not conn.connected:
            return                         # kept in awaiting (confirm=cloud) and re-sent on the next connect
        for topic, payload, key in msgs:
            info = conn.client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.publish_errors += 1
            elif key is not None:
                conn.mids[info.mid] = key
                conn.gw.published(key, time.time())
        self.dirty.add(conn)

    def vnow(self, wall: float) -> float:
        return self.v0 + (wall - self.wall0) * self.speed

    def run(self, wall_s: float | None = None, virtual_s: float | None = None, drain_s: float = 30.0) -> dict:
        """Publish for `wall_s` seconds of wall time or `virtual_s` of virtual time (whichever comes first), then
        flush held telemetry and wait up to `drain_s` for the receipts of what was sent."""
        self.wall0 = time.monotonic()
        t_wall0, cpu0 = time.time(), time.process_time()
        heap = [(g.next_due(), i) for i, g in enumerate(self.gws)]
        heapq.heapify(heap)
        end_v = self.v0 + virtual_s if virtual_s is not None else float("inf")
        end_w = self.wall0 + wall_s if wall_s is not None else float("inf")
        next_sweep = self.wall0 + 1.0
        busy_s = 0.0
        while True:
            now = time.monotonic()
            if now >= end_w or self.vnow(now) >= end_v:
                break
            t0 = time.perf_counter()
            v, wall = min(self.vnow(now), end_v), time.time()
            while heap and heap[0][0] <= v:
                _, i = heapq.heappop(heap)
                gw, conn = self.gws[i], self.conns[i]
                gw.advance(v, wall)
                self._publish(conn, gw.messages_due(wall))
                heapq.heappush(heap, (gw.next_due(), i))
            if now >= next_sweep:                            # holds, resends, keepalives, reconnects
                next_sweep = now + 1.0
                for gw, conn in zip(self.gws, self.conns):
                    if gw.awaiting or any(gw.pending.values()):
                        self._publish(conn, gw.messages_due(wall))
                    if conn.sock is not None:
                        if conn.client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                            self._drop(conn)
                self._retry(now)
            busy_s += time.perf_counter() - t0
            nxt = heap[0][0] if heap else end_v
            wait = min(TICK_S, max(0.0, (nxt - self.vnow(time.monotonic())) / self.speed), next_sweep - time.monotonic())
            self._io(max(0.0, wait))
        confirmed_at_stop = sum(g.confirmed for g in self.gws)   # what the cloud had committed while publishing
        sent_at_stop = sum(g.sent for g in self.gws)             # what had been published (telemetry is held)
        v_end = min(self.vnow(time.monotonic()), end_v)
        for gw, conn in zip(self.gws, self.conns):           # records due at the very end too
            gw.advance(v_end, time.time())
        virtual_done = v_end - self.v0
        wall_pub = time.monotonic() - self.wall0
        cpu_pub = time.process_time() - cpu0
        for gw, conn in zip(self.gws, self.conns):           # a stop with a drain timeout: held telemetry goes now
            gw.flushing = True
            self._publish(conn, gw.messages_due(time.time()))
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and any(g.awaiting for g in self.gws):
            self._io(0.05)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + 1.0
                for gw, conn in zip(self.gws, self.conns):
                    if gw.awaiting:
                        self._publish(conn, gw.messages_due(time.time()))
                self._retry(time.monotonic())
        st = self.stats(t_wall0, wall_pub, cpu_pub, virtual_done)
        st["confirmed_at_stop"] = confirmed_at_stop
        st["sent_at_stop"] = sent_at_stop
        st["drain_s"] = round(time.monotonic() - self.wall0 - wall_pub, 3)
        return st

    def close(self) -> None:
        """A clean stop: retained `offline`, DISCONNECT (no last will), sockets closed, ledgers closed."""
        for conn in self.conns:
            if conn.connected:
                conn.client.publish(conn.gw.topics.status, json.dumps(status_offline(conn.gw)), qos=1, retain=True)
                conn.client.loop_write()
                conn.client.disconnect()
                conn.client.loop_write()
            if conn.sock is not None:
                try:
                    self.sel.unregister(conn.sock)
                except (KeyError, ValueError, OSError):
                    pass
                conn.sock.close()
                conn.sock = None
            conn.gw.close()
        self.sel.close()

    def stats(self, t_wall0: float, wall_s: float, cpu_s: float, virtual_s: float) -> dict:
        lags = sorted(x for g in self.gws for x in g.lags)

        def q(p):
            return round(lags[min(len(lags) - 1, int(p * len(lags)))], 4) if lags else None
        tot = {k: sum(getattr(g, k) for g in self.gws) for k in
               ("records", "ledger_lines", "messages", "batches", "resends", "nacks", "payload_bytes", "confirmed")}
        return {"gateways": len(self.gws), "connected": sum(c.connected for c in self.conns),
                "started_utc": t_wall0, "wall_s": round(wall_s, 3), "virtual_s": round(virtual_s, 1),
                "speed": self.speed, "cpu_s": round(cpu_s, 3), **tot,
                "unconfirmed": sum(len(g.awaiting) for g in self.gws),
                "records_per_s": round(tot["records"] / wall_s, 2) if wall_s > 0 else None,
                "lag_s": {"n": len(lags), "p50": q(0.50), "p99": q(0.99), "max": round(lags[-1], 4) if lags else None},
                "disconnects": self.disconnects, "connect_failures": self.connect_failures,
                "publish_errors": self.publish_errors, "acks_ignored": self.acks_ignored}
