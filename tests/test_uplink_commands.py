"""Signed cloud commands: each refusal with its reason, nothing applied, a fuzzed parser, and the whole
path over a real broker (cmd in, cmd/result and event out)."""
import base64
import json
import time

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st, HealthCheck
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from controller.config import load_site
from controller.uplink.commands import CommandVerifier, Limits, sign_command
from controller.uplink.topics import CMD_RESULT, EVENT

CFG = load_site("inner-mongolia-mine")
GW = CFG["site"]["gateway_id"]
NOW = 1_750_000_000.0
KEY = Ed25519PrivateKey.generate()


class Counter:
    def __init__(self):
        self.value = "0"

    def get(self):
        return self.value

    def set(self, v):
        self.value = v


def verifier(counter=None):
    c = counter or Counter()
    return CommandVerifier(KEY.public_key(), GW, Limits.from_site(CFG), c.get, c.set), c


def cmd(counter=1, type="reserve_soc", args=None, issued=NOW - 10, expires=NOW + 600, gateway=GW, **extra):
    c = {"v": 1, "id": f"c-{counter}", "gateway": gateway, "counter": counter, "issued_s": issued,
         "expires_s": expires, "type": type, "args": {"reserve_pct": 40} if args is None else args}
    c.update(extra)
    return c


def test_accepts_a_good_command_of_each_type():
    v, _ = verifier()
    good = [("reserve_soc", {"reserve_pct": 40}), ("mode", {"mode": "manual"}),
            ("setpoint_schedule", {"start_s": NOW, "step_s": 900, "battery_kw": [-100, 0, 120.5]}),
            ("alarm_ack", {"alarm": "grid_lost"}),
            ("weather_warning", {"kind": "sandstorm", "from_s": NOW + 3600, "to_s": NOW + 7200, "severity": 4}),
            ("grid_update", {"co2_kg_per_kwh": 0.61, "price_per_kwh": 0.5, "valid_from_s": NOW, "valid_to_s": NOW + 900})]
    for i, (kind, args) in enumerate(good, 1):
        verdict = v.verify(sign_command(KEY, cmd(i, kind, args)), NOW)
        assert verdict.accepted, (kind, verdict.reason)
    assert v.last_counter == len(good)


@pytest.mark.parametrize("make, reason", [
    (lambda: b'{"payload": "x", "sig"', "malformed: not JSON"),
    (lambda: b"\xff\xfe", "malformed: not JSON"),
    (lambda: b"[]", "malformed: envelope"),
    (lambda: json.dumps({"payload": "!!", "sig": "AA=="}).encode(), "malformed: payload/sig not base64"),
    (lambda: sign_command(Ed25519PrivateKey.generate(), cmd()), "bad signature"),
    (lambda: _tamper(sign_command(KEY, cmd())), "bad signature"),
    (lambda: sign_command(KEY, cmd(expires=NOW - 1, issued=NOW - 100)), "expired"),
    (lambda: sign_command(KEY, cmd(issued=NOW + 3600, expires=NOW + 4000)), "not yet valid"),
    (lambda: sign_command(KEY, cmd(expires=NOW + 3 * 86400)), "ttl too long"),
    (lambda: sign_command(KEY, cmd(gateway="other-gw")), "wrong gateway"),
    (lambda: sign_command(KEY, cmd(args={"reserve_pct": 5})), "out of limits"),
    (lambda: sign_command(KEY, cmd(args={"reserve_pct": 99})), "out of limits"),
    (lambda: sign_command(KEY, cmd(type="setpoint_schedule", args={"start_s": NOW, "step_s": 900,
                                                                   "battery_kw": [0, 900]})), "out of limits"),
    (lambda: sign_command(KEY, cmd(type="mode", args={"mode": "turbo"})), "out of limits"),
    (lambda: sign_command(KEY, cmd(type="reboot", args={})), "malformed: unknown type"),
    (lambda: sign_command(KEY, cmd(args={"reserve_pct": 40, "extra": 1})), "malformed: unknown args"),
    (lambda: sign_command(KEY, cmd(args={"reserve_pct": "40"})), "malformed"),
    (lambda: sign_command(KEY, cmd(counter=-3)), "malformed: counter"),
])
def test_refusals_carry_their_reason(make, reason):
    v, c = verifier()
    verdict = v.verify(make(), NOW)
    assert not verdict.accepted and verdict.command is None
    assert verdict.reason.startswith(reason), verdict.reason


def _tamper(raw: bytes) -> bytes:
    env = json.loads(raw)
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["args"]["reserve_pct"] = 11
    env["payload"] = base64.b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()
    return json.dumps(env).encode()


def test_replayed_and_stale_counters_are_refused_also_after_refusal_for_limits():
    v, c = verifier()
    first = sign_command(KEY, cmd(5))
    assert v.verify(first, NOW).accepted
    again = v.verify(first, NOW)
    assert not again.accepted and again.reason.startswith("replayed")
    older = v.verify(sign_command(KEY, cmd(4)), NOW)
    assert older.reason.startswith("replayed")
    # an authentic command refused for its limits still burns its counter: it cannot come back later
    bad = sign_command(KEY, cmd(6, args={"reserve_pct": 1}))
    assert v.verify(bad, NOW).reason.startswith("out of limits")
    assert v.verify(bad, NOW).reason.startswith("replayed")
    assert c.value == "6"


def test_no_public_key_refuses_everything():
    v = CommandVerifier(None, GW, Limits.from_site(CFG), lambda: "0", lambda x: None)
    assert v.verify(sign_command(KEY, cmd()), NOW).reason.startswith("bad signature: no cloud public key")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_raw_bytes_never_crash_never_accept(raw):
    v, c = verifier()
    verdict = v.verify(raw, NOW)
    assert not verdict.accepted and c.value == "0"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["v", "id", "gateway", "counter", "issued_s", "expires_s", "type", "args"]),
                       json_values, max_size=8), st.booleans())
def test_fuzz_signed_junk_commands_are_refused_cleanly(fields, merge):
    """Even correctly signed, a structurally wrong command is refused with a reason, never a crash."""
    body = {**cmd(7), **fields} if merge else fields
    try:
        raw = sign_command(KEY, body)
    except ValueError:                                  # NaN in the body: the cloud cannot even sign it
        return
    v, _ = verifier()
    verdict = v.verify(raw, NOW)
    assert isinstance(verdict.reason, str) and verdict.reason
    if verdict.accepted:
        assert verdict.command["gateway"] == GW and verdict.command["counter"] == 7


def test_commands_over_the_broker_get_a_verdict_each(tmp_path):
    from controller.uplink import make_uplink_hook
    from uplink_broker import Broker, Subscriber, wait_for
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port)
    wait_for(sub.subscribed.is_set, 10, "subscriber")
    hook, up = make_uplink_hook(CFG, broker.url, tmp_path / "data", public_key=KEY.public_key())
    cloud = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cloud-cmd", protocol=MQTTProtocolVersion.MQTTv5)
    try:
        cloud.connect("127.0.0.1", broker.port)
        cloud.loop_start()
        wait_for(up.mqtt.connected.is_set, 10, "gateway connected")
        now = time.time()
        sent = [
            sign_command(KEY, cmd(1, issued=now - 5, expires=now + 60)),                       # ok
            sign_command(KEY, cmd(1, issued=now - 5, expires=now + 60)),                       # replayed
            sign_command(Ed25519PrivateKey.generate(), cmd(2, issued=now - 5, expires=now + 60)),  # bad sig
            sign_command(KEY, cmd(3, issued=now - 600, expires=now - 60)),                     # expired
            sign_command(KEY, cmd(4, args={"reserve_pct": 3}, issued=now - 5, expires=now + 60)),  # limits
            b"{not json",                                                                       # malformed
        ]
        topic = up.topics.cmd
        for raw in sent:
            cloud.publish(topic, raw, qos=1).wait_for_publish(5)
        results = wait_for(lambda: len(sub.records(CMD_RESULT)) >= len(sent) and sub.records(CMD_RESULT), 15,
                           "a cmd/result per command")
        reasons = [r["body"]["reason"].split(":")[0] for r in sorted(results, key=lambda r: r["seq"])]
        assert reasons == ["ok", "replayed", "bad signature", "expired", "out of limits", "malformed"]
        events = wait_for(lambda: [r for r in sub.records(EVENT) if r["body"].get("event") == "command"]
                          if len([r for r in sub.records(EVENT) if r["body"].get("event") == "command"]) >= len(sent)
                          else None, 15, "an event-log record per command")
        assert [e["body"]["reason"].split(":")[0] for e in sorted(events, key=lambda r: r["seq"])] == reasons
        assert len(up.accepted) == 1 and up.applied == []       # applied only by the next cycle's hook
        hook(None, _image(now), _cmd(), _events(), 0)
        assert [c["id"] for c in up.applied] == ["c-1"] and not up.accepted
    finally:
        cloud.loop_stop()
        cloud.disconnect()
        up.close()
        sub.close()
        broker.kill()


def _image(t):
    from controller.points import new_image
    img = new_image()
    img["t_s"] = t
    return img


def _cmd():
    import numpy as np
    from controller.core import layout as L
    return np.zeros(L.N_COMMANDS)


def _events():
    import numpy as np
    from controller.core import layout as L
    return np.zeros((L.MAX_EVENTS, 2))


def test_accepted_commands_reach_the_operator_inputs_of_a_running_loop_refused_ones_do_not(tmp_path):
    from controller.uplink import make_uplink_hook
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    scn = load_scenario("inner-mongolia-mine")
    hook, up = make_uplink_hook(scn.site, None, tmp_path, public_key=KEY.public_key(), clock_status="sim")
    t = scn.start.timestamp()
    up.now_s = t
    up.handle_command(sign_command(KEY, cmd(1, issued=t - 5, expires=t + 600)))                 # reserve 40
    up.handle_command(sign_command(KEY, cmd(2, "mode", {"mode": "manual"}, issued=t - 5, expires=t + 600)))
    up.handle_command(sign_command(KEY, cmd(3, args={"reserve_pct": 2}, issued=t - 5, expires=t + 600)))
    up.handle_command(sign_command(Ed25519PrivateKey.generate(), cmd(4, "mode", {"mode": "standby"},
                                                                    issued=t - 5, expires=t + 600)))
    result = run_sim(scn, hours=0.01, seed=1, hooks=[hook])
    op = result.loop.operator
    from controller.operator import MODES
    assert op.reserve_pct == 40.0 and op.mode == MODES["manual"]
    assert [c["id"] for c in up.applied] == ["c-1", "c-2"]
    assert [v["reason"].split(":")[0] for v in up.verdicts] == ["ok", "ok", "out of limits", "bad signature"]
    up.close()
