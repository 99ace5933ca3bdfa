"""Network inputs over a real Mosquitto (issue 14): the uplink's worker process subscribes compute/power,
compute/job and market and hands each payload to NetworkInputs; verified weather_warning and grid_update
commands feed it too; the points reach the image with their age. A flooding publisher and an oversized
payload are bounded by the inbound gate; the verdict and applied lists are bounded."""
from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from controller.loop import ImageBuilder
from controller.netinputs import NetworkInputs
from controller.points import INDEX, IT_KW, JOB_KW, MKT_IMPORT, MKT_T1_S, Q_OK, new_image
from controller.uplink.client import InboundGate
from controller.uplink.commands import sign_command
from controller.uplink.hook import BoundedList
from tests.test_netinputs import iso, network_site

KEY = Ed25519PrivateKey.generate()


def _market(now):
    t0 = now - now % 900
    n = 96
    return json.dumps({"v": 1, "t": iso(now), "valid_from": iso(t0), "valid_until": iso(t0 + n * 900),
                       "step_min": 15, "import_price_per_kwh": [-0.05 if 8 <= k < 16 else 0.2 for k in range(n)],
                       "co2_kg_per_kwh": [0.04] * n}).encode()


def _hook_args(t):
    import numpy as np
    from controller.core import layout as L
    img = new_image()
    img["t_s"] = t
    return img, np.zeros(L.N_COMMANDS), np.zeros((L.MAX_EVENTS, 2)), 0


def test_inputs_arrive_over_mosquitto_into_the_image(tmp_path):
    from controller.uplink import make_uplink_hook
    from uplink_broker import Broker, wait_for
    cfg = network_site("compute", "market", "weather", "grid", expected=True)
    gw = cfg["site"]["gateway_id"]
    inputs = NetworkInputs(cfg)
    broker = Broker(tmp_path / "broker").start()
    hook, up = make_uplink_hook(cfg, broker.url, tmp_path / "data", public_key=KEY.public_key(), inputs=inputs)
    cloud = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cloud-in", protocol=MQTTProtocolVersion.MQTTv5)
    try:
        cloud.connect("127.0.0.1", broker.port)
        cloud.loop_start()
        wait_for(up.mqtt.connected.is_set, 15, "gateway connected")
        # the SUBACK of the inbound topics follows the connect; a retained market message covers the race
        now = time.time()
        cloud.publish(up.topics("market"), _market(now), qos=1, retain=True).wait_for_publish(5)
        wait_for(lambda: inputs.stats()["market"]["accepted"] == 1, 15, "the market message at NetworkInputs")
        cloud.publish(up.topics("compute/power"), json.dumps(
            {"v": 1, "t": iso(now), "total_kw": 64.5, "cooling_kw": 4.0, "aux_kw": 1.0}), qos=1).wait_for_publish(5)
        cloud.publish(up.topics("compute/job"), json.dumps(
            {"v": 1, "id": "job-9", "kw": 22.0, "start": iso(now + 3600), "duration_min": 60}),
            qos=1).wait_for_publish(5)
        cloud.publish(up.topics("compute/power"), b'{"v":1,"total_kw":"lots"}', qos=1).wait_for_publish(5)
        wait_for(lambda: inputs.stats()["compute/power"]["received"] == 2
                 and inputs.stats()["compute/job"]["accepted"] == 1, 15, "the compute messages")
        assert inputs.stats()["compute/power"]["errors"] == 1
        # verified commands: the weather warning and an announced outage, applied by the next cycle's hook
        for i, (kind, args) in enumerate([
                ("weather_warning", {"kind": "sandstorm", "from_s": now + 1800, "to_s": now + 9000, "severity": 3}),
                ("grid_update", {"valid_from_s": now, "valid_to_s": now + 86400, "outage_start_s": now + 7200,
                                 "outage_end_s": now + 10800})], 1):
            c = {"v": 1, "id": f"c-{i}", "gateway": gw, "counter": i, "issued_s": now - 5, "expires_s": now + 600,
                 "type": kind, "args": args}
            cloud.publish(up.topics.cmd, sign_command(KEY, c), qos=1).wait_for_publish(5)
        wait_for(lambda: len(up.accepted) == 2, 15, "both commands verified")
        hook(None, *_hook_args(now))
        assert [c["type"] for c in up.applied] == ["weather_warning", "grid_update"]
        # the scan loop's acquire and freeze
        roles = {d["role"]: d["name"] for d in cfg["devices"] if d["bus"] == "net"}
        b = ImageBuilder(roles, cfg["limits"])
        for dev in inputs.devices().values():
            dev.acquire(time.monotonic(), b.sink)
        img = b.freeze(new_image(), 0, time.time(), time.monotonic())
        v, q = img["value"], img["quality"]
        assert q[IT_KW] == Q_OK and v[IT_KW] == 64.5 and v[INDEX["aux_kw"]] == 1.0
        assert q[JOB_KW] == Q_OK and v[JOB_KW] == 22.0
        assert q[MKT_T1_S] == Q_OK and v[MKT_IMPORT + 8] == -0.05 and v[MKT_IMPORT] == 0.2
        assert q[INDEX["wx_pv_cut"]] == Q_OK and v[INDEX["wx_pv_cut"]] == 0.6
        assert v[INDEX["outage_start_s"]] == now + 7200
        assert v[INDEX["grid_co2_kg_per_kwh"]] == 0.04
    finally:
        cloud.loop_stop()
        cloud.disconnect()
        up.close()
        broker.kill()


def test_a_flooding_bridge_and_an_oversized_market_are_bounded(tmp_path):
    from controller.uplink import make_uplink_hook
    from uplink_broker import Broker, wait_for
    cfg = network_site("compute", "market")
    inputs = NetworkInputs(cfg)
    broker = Broker(tmp_path / "broker").start()
    hook, up = make_uplink_hook(cfg, broker.url, tmp_path / "data", inputs=inputs)
    bridge = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bridge-flood")
    try:
        bridge.connect("127.0.0.1", broker.port)
        bridge.loop_start()
        wait_for(up.mqtt.connected.is_set, 15, "gateway connected")
        wait_for(lambda: "inbound" in up.mqtt.worker_stats, 15, "worker stats")
        time.sleep(0.5)                         # the SUBACK: no event to await from outside the worker
        body = json.dumps({"v": 1, "t": iso(time.time()), "total_kw": 50.0}).encode()
        for _ in range(300):
            bridge.publish(up.topics("compute/power"), body, qos=1)
        bridge.publish(up.topics("market"), b'{"v":1,"pad":"' + b"x" * (70 * 1024) + b'"}', qos=1).wait_for_publish(5)
        stats = wait_for(lambda: (s := up.mqtt.worker_stats.get("inbound")) and
                         s["passed"]["compute/power"] + s["dropped"]["compute/power"] == 300
                         and s["dropped"]["market"] == 1 and s, 20, "300 compute messages admitted or dropped")
        passed = stats["passed"]["compute/power"]
        assert 32 <= passed <= 60 and stats["dropped"]["compute/power"] == 300 - passed
        wait_for(lambda: inputs.stats()["compute/power"]["received"] == passed, 10, "the admitted ones decoded")
        assert inputs.stats()["market"]["received"] == 0        # the oversized one never crossed
    finally:
        bridge.loop_stop()
        bridge.disconnect()
        up.close()
        broker.kill()


def test_inbound_gate_refills_at_its_rate():
    t = [0.0]
    gate = InboundGate(rate_per_s=2.0, burst=4, max_bytes=100, clock=lambda: t[0])
    assert [gate.admit("market", 10) for _ in range(6)] == [True] * 4 + [False] * 2
    t[0] = 1.0
    assert [gate.admit("market", 10) for _ in range(3)] == [True, True, False]
    assert not gate.admit("compute/job", 101) and gate.dropped == {"compute/power": 0, "compute/job": 1, "market": 3}


def test_verdict_and_applied_lists_are_bounded():
    lst = BoundedList(100)
    for i in range(10_000):
        lst.append(i)
    assert 100 <= len(lst) <= 125 and lst[-1] == 9999 and lst == list(range(10_000 - len(lst), 10_000))
