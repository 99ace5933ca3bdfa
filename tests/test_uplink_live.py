"""The live compute signals through the uplink (issue 14): the gateway's ComputeHook publishes the green
headroom (retained) and defer requests through ``Uplink.publish_live`` -> the worker process -> a real
Mosquitto; a scheduler connecting later still gets the headroom. Offline a signal is dropped and counted,
never spooled (a stale headroom is wrong, not late); a flood is bounded."""
from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.compute.hook import ComputeHook
from controller.compute.jobs import JobBook
from controller.config import load_site
from controller.uplink import make_uplink_hook
from controller.uplink.client import LIVE_QUEUE, BrokerConfig, MqttUplink
from controller.uplink.proc import UplinkProcess
from controller.uplink.spool import Spool
from controller.uplink.topics import Topics
from drivers import compute as C
from images import image
from uplink_broker import Broker, wait_for

CFG = load_site("inner-mongolia-mine")
T0 = 1775808000.0     # 2026-04-10T08:00:00Z


def late_subscriber(port, topic, seen, lock):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scheduler")

    def on_message(cl, userdata, msg):
        with lock:
            seen.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    c.on_message = on_message
    c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def test_compute_hook_publishes_retained_headroom_through_the_uplink_worker(tmp_path):
    broker = Broker(tmp_path / "broker")                    # not started yet: the uplink cannot connect
    hook, up = make_uplink_hook(CFG, broker.url, tmp_path / "data", clock_status="test")
    sched = None
    try:
        assert isinstance(up.mqtt, UplinkProcess)
        topics = Topics(CFG["site"]["name"], CFG["site"]["gateway_id"])
        compute = ComputeHook(CFG, JobBook(), publish=up.publish_live, keep_history=False)
        value, quality = image(soc_pct=55.0, aux_kw=2.0)
        frame = {"t_s": T0, "value": value, "quality": quality}
        compute(None, frame, None, None, 0)                 # no broker: dropped, counted
        assert up.live_dropped == 1 and up.mqtt.live_dropped_local == 1
        up.spool.flush()                                    # what the start-up put (boot event...) committed
        rows = up.spool.pending_rows
        broker.start()
        wait_for(up.mqtt.connected.is_set, 15, "worker connected")
        frame["t_s"] = T0 + compute.period_s                 # the hook's next period
        compute(None, frame, None, None, 0)
        wait_for(lambda: up.mqtt.stats.live_sent >= 1, 10, "the worker published the headroom")
        up.spool.flush()
        assert up.spool.pending_rows == rows, "live signals never enter the spool"
        seen, lock = [], threading.Lock()
        sched = late_subscriber(broker.port, topics(C.HEADROOM), seen, lock)   # connects after the publish
        wait_for(lambda: seen, 10, "the retained headroom at a late subscriber")
        topic, payload, retained = seen[0]
        assert topic == f"edge-ems/v1/{CFG['site']['name']}/{CFG['site']['gateway_id']}/compute/headroom"
        assert retained and payload["t"] == "2026-04-10T08:01:00Z" and payload["clock"] == "unknown"
        assert payload["valid_until"] == "2026-04-10T08:03:00Z" and "now_kw" in payload
        assert up.stats()["mqtt"]["live_sent"] >= 1
    finally:
        if sched is not None:
            sched.loop_stop()
            sched.disconnect()
        up.close()
        broker.kill()


def test_defer_is_not_retained_offline_is_dropped_and_a_flood_is_bounded(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    site, gw = CFG["site"]["name"], CFG["site"]["gateway_id"]
    spool = Spool(tmp_path / "spool", site, gw, clock_status="test")
    topics = Topics(site, gw)
    up = MqttUplink(spool, topics, BrokerConfig.from_url(broker.url), backoff_base_s=0.05, backoff_cap_s=0.5)
    seen, lock = [], threading.Lock()
    sub = None
    try:
        assert not up.publish_live(C.DEFER, b'{"v":1}', False)          # not started: offline
        assert up.stats.live_dropped == 1
        up.connected.set()                      # as if connected, with no connection thread to drain it
        for i in range(LIVE_QUEUE + 8):
            assert up.publish_live(C.DEFER, json.dumps({"i": i}).encode(), False)    # never blocks
        assert len(up._live) == LIVE_QUEUE and up.stats.live_dropped == 1 + 8       # the oldest went
        assert not up.publish_live("telemetry", b"{}", False)           # not a live kind
        assert not up.publish_live(C.HEADROOM, b"x" * (64 * 1024 + 1), True)   # too big
        up.connected.clear()
        dropped = up.stats.live_dropped
        up.start()
        wait_for(up.connected.is_set, 10, "connected")
        assert up.stats.live_dropped == dropped + LIVE_QUEUE               # queued before the session: stale
        sub = late_subscriber(broker.port, topics("compute/#"), seen, lock)
        wait_for(lambda: sub.is_connected(), 10, "subscriber connected")
        wait_for(lambda: up.publish_live(C.DEFER, json.dumps({"job": "job-17"}).encode(), True) and any(
            p.get("job") == "job-17" for _, p, _ in seen), 10, "defer delivered", poll=0.5)
        with lock:
            assert all(not r for _, _, r in seen), "compute/defer is not retained (the table wins)"
            assert not any("i" in p for _, p, _ in seen), "nothing of the flood was published late"
        assert spool.pending_rows == 0
    finally:
        if sub is not None:
            sub.loop_stop()
            sub.disconnect()
        up.stop()
        spool.close()
        broker.kill()
