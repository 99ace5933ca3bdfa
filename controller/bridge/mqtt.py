"""The bridge's MQTT connection (paho-mqtt 2.x): publishes compute/power (QoS 0) and compute/job (QoS 1),
subscribes compute/defer and the retained compute/headroom (QoS 1).

The broker URL is the uplink's syntax (controller/uplink/client.py `BrokerConfig.from_url`:
``mqtt[s]://[user:pass@]host[:port]?ca=&cert=&key=&keepalive=&protocol=``). The session is persistent
(a fixed client id, clean start off, 1 h session expiry under MQTT 5) so a defer or resume sent while the
bridge restarts waits in the broker instead of being lost. Inbound messages go into a bounded queue the
bridge's loop reads (over 256 waiting, or over 64 KiB each, they are dropped and counted): the MQTT
thread never calls the scheduler.
"""
from __future__ import annotations

import queue
import ssl
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.uplink.client import BrokerConfig
from controller.uplink.topics import Topics

from controller.bridge.messages import DEFER, HEADROOM, MAX_BYTES

QOS = {"compute/power": 0, "compute/job": 1}
INBOX = 256


class BridgeMqtt:
    def __init__(self, url: str, site: str, gateway: str, client_id: str = ""):
        self.broker = BrokerConfig.from_url(url)
        self.topics = Topics(site, gateway)
        self.inbox: queue.Queue = queue.Queue(maxsize=INBOX)
        self.dropped = 0
        self.connected = threading.Event()
        self.published = {k: 0 for k in QOS}
        b = self.broker
        self.v5 = b.protocol != "3.1.1"
        cid = client_id or f"edge-ems-bridge-{gateway}"
        if self.v5:
            self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=MQTTProtocolVersion.MQTTv5)
        else:
            self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=MQTTProtocolVersion.MQTTv311,
                                 clean_session=False)
        if b.tls:
            self.c.tls_set(ca_certs=b.ca_certs, certfile=b.certfile, keyfile=b.keyfile,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if b.username is not None:
            self.c.username_pw_set(b.username, b.password)
        self.c.reconnect_delay_set(0.5, 30)
        self.c.max_queued_messages_set(64)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *a: self.connected.clear()
        self.c.on_message = self._on_message
        self.kinds = {self.topics(DEFER): DEFER, self.topics(HEADROOM): HEADROOM}

    def start(self) -> "BridgeMqtt":
        kw = {}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            kw = {"clean_start": False, "properties": props}
        self.c.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive, **kw)
        self.c.loop_start()
        return self

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            return
        client.subscribe([(t, 1) for t in self.kinds])
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        kind = self.kinds.get(msg.topic)
        if kind is None or len(msg.payload) > MAX_BYTES:
            self.dropped += 1
            return
        try:
            self.inbox.put_nowait((kind, bytes(msg.payload)))
        except queue.Full:
            self.dropped += 1

    def publish(self, kind: str, payload: bytes) -> bool:
        """False when not connected (compute/power is then simply not sent: the gateway's point ages)."""
        if not self.connected.is_set():
            return False
        info = self.c.publish(self.topics(kind), payload, qos=QOS[kind], retain=False)
        ok = info.rc == mqtt.MQTT_ERR_SUCCESS
        if ok:
            self.published[kind] += 1
        return ok
