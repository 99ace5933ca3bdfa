"""Fuzz: signed cloud commands (controller/uplink/commands.py CommandVerifier), with a key generated
here as tests/test_uplink_commands.py does, so most examples carry a VALID signature over fuzzed
content and reach the checks behind the signature.

Contract (docs/fuzzing.md):
- `verify(raw, now)` never raises and always returns a Verdict with a non-empty reason.
- The reason is never the verifier's catch-all "malformed: unchecked input (...)": that net exists so a
  missed check cannot raise into the MQTT thread, and a fuzz example reaching it is a missing check.
- An unsigned or wrongly signed envelope is never accepted and never moves the replay counter (a
  mutated envelope is accepted only when it still carries the original signed payload).
- An accepted command is one the rest of the gateway can apply without raising: its numbers are finite,
  the operator inputs take its mode / reserve / alarm ack, and a weather_warning or grid_update is
  accepted by NetworkInputs.feed_command (else the counter is burnt for a command that is dropped).
"""
from __future__ import annotations

import base64
import json
import math

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import example, given, strategies as st

import fuzz_harness as H
from controller.uplink import commands as CMD
from test_uplink_commands import Counter  # the replay counter stand-in, one copy

NOW = 1_750_000_000.0
KEY = Ed25519PrivateKey.generate()
LIMITS = CMD.Limits(soc_min_pct=10.0, soc_max_pct=95.0, charge_max_kw=250.0, discharge_max_kw=250.0)
GW = "fuzz-gw"

GOOD_ARGS = {
    "reserve_soc": {"reserve_pct": 40},
    "mode": {"mode": "manual"},
    "setpoint_schedule": {"start_s": NOW, "step_s": 900, "battery_kw": [-100, 0, 120.5]},
    "alarm_ack": {"alarm": "grid_lost"},
    "weather_warning": {"kind": "sandstorm", "from_s": NOW + 3600, "to_s": NOW + 7200, "severity": 4,
                        "pv_cut_frac": 0.5, "ramp_s": 60},
    "grid_update": {"co2_kg_per_kwh": 0.61, "price_per_kwh": 0.5, "valid_from_s": NOW, "valid_to_s": NOW + 900,
                    "outage_start_s": NOW + 60, "outage_end_s": NOW + 120},
}


def verifier():
    c = Counter()
    return CMD.CommandVerifier(KEY.public_key(), GW, LIMITS, c.get, c.set), c


def base_command(kind, counter=7):
    return {"v": 1, "id": f"c-{counter}", "gateway": GW, "counter": counter, "issued_s": NOW - 10,
            "expires_s": NOW + 600, "type": kind, "args": json.loads(json.dumps(GOOD_ARGS[kind]))}


def envelope(payload: bytes, key=KEY) -> bytes:
    return json.dumps({"payload": base64.b64encode(payload).decode(),
                       "sig": base64.b64encode(key.sign(payload)).decode()}).encode()


@st.composite
def signed_commands(draw):
    """A validly signed envelope whose payload is a good command with fuzzed fields or args, the bytes
    of one mutated (then signed), or junk (then signed)."""
    kind = draw(st.sampled_from(sorted(GOOD_ARGS)))
    cmd = base_command(kind)
    how = draw(st.sampled_from(("args", "args", "fields", "bytes", "junk")))
    if how == "junk":
        payload = draw(st.one_of(st.binary(max_size=300), st.builds(H.dumps_loose, H.json_values),
                                 st.builds(H.deep, st.integers(10, 3000), st.sampled_from("[{"))))
        return envelope(payload)
    if how == "bytes":
        return envelope(draw(H.mutated(json.dumps(cmd).encode())))
    target = cmd["args"] if how == "args" else cmd
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.one_of(st.sampled_from(sorted(target) or ["x"]), st.text(max_size=8)))
        if draw(st.integers(0, 6)) == 0:
            target.pop(key, None)
        elif key == "battery_kw" and draw(st.booleans()):
            arr = target[key] if isinstance(target.get(key), list) and target[key] else [0]
            arr[draw(st.integers(0, len(arr) - 1))] = draw(H.json_values)
            target[key] = arr * draw(st.sampled_from([1, 1, 64, 100]))
        elif draw(st.booleans()):
            target[key] = draw(H.numbers)
        else:
            target[key] = draw(H.json_values)
    return envelope(H.dumps_loose(cmd))


@st.composite
def envelopes(draw):
    """Envelopes that are not validly signed: junk, a signed one mutated, another key's signature."""
    how = draw(st.sampled_from(("junk", "mutate", "other_key", "fields")))
    good = envelope(json.dumps(base_command("reserve_soc")).encode())
    if how == "junk":
        return draw(st.one_of(st.binary(max_size=400), st.builds(H.dumps_loose, H.json_values)))
    if how == "mutate":
        return draw(H.mutated(good))
    if how == "other_key":
        return envelope(json.dumps(base_command(draw(st.sampled_from(sorted(GOOD_ARGS))))).encode(),
                        Ed25519PrivateKey.generate())
    env = json.loads(good)
    env[draw(st.sampled_from(["payload", "sig", "x"]))] = draw(H.json_values)
    return H.dumps_loose(env)


def _applies(cmd: dict) -> None:
    """What controller/uplink/hook.py apply() does with an accepted command, minus the spool."""
    from controller.operator import OperatorInputs
    from controller.core import layout as L
    a, kind = cmd["args"], cmd["type"]
    op = OperatorInputs()
    if kind == "mode":
        op.set_mode(a["mode"])
    elif kind == "reserve_soc":
        op.set_reserve_pct(a["reserve_pct"])
        assert math.isfinite(float(a["reserve_pct"]))
    elif kind == "alarm_ack" and a["alarm"] in L.ALARM_NAMES:
        op.acknowledge(1 << L.ALARM_NAMES.index(a["alarm"]))
    elif kind == "setpoint_schedule":
        assert all(math.isfinite(float(x)) for x in a["battery_kw"])
        float(a["start_s"]), float(a["step_s"])
    elif kind in ("weather_warning", "grid_update"):
        assert _net_inputs().feed_command(cmd, NOW), \
            f"accepted {kind} refused by netinputs: {_net_inputs().stats()[kind]['last_error']}"


_NET = []


def _net_inputs():
    if not _NET:
        from controller.netinputs import NetworkInputs
        _NET.append(NetworkInputs({"limits": {}, "buses": {}, "devices": []}, utc=lambda: NOW))
    return _NET[0]


@H.budget(ci=200, long=15000)
@given(signed_commands())
@example(envelope(json.dumps({**base_command("reserve_soc"), "counter": 10 ** 400}).encode()))
@example(envelope(json.dumps({**base_command("reserve_soc"), "issued_s": 10 ** 400}).encode()))
@example(envelope(json.dumps({**base_command("grid_update"), "args": {
    "valid_from_s": NOW, "valid_to_s": NOW, "price_per_kwh": 1}}).encode()))
@example(envelope(json.dumps({**base_command("mode"), "args": {"mode": ["auto"]}}).encode()))
@example(envelope(json.dumps({**base_command("weather_warning"), "args": {
    "kind": {}, "from_s": NOW, "to_s": NOW + 60}}).encode()))
@example(envelope(H.deep(5000, "{")))
def test_signed_commands_get_a_checked_verdict(raw):
    H.hit("commands.signed")
    v, c = verifier()
    verdict = v.verify(raw, NOW)
    assert isinstance(verdict.reason, str) and verdict.reason
    assert not verdict.reason.startswith("malformed: unchecked input"), verdict.reason
    if verdict.accepted:
        cmd = verdict.command
        assert cmd["type"] in CMD.TYPES and c.value == str(cmd["counter"])
        _applies(cmd)
    else:
        assert verdict.command is None


@H.budget(ci=200, long=10000)
@given(envelopes())
def test_unsigned_envelopes_are_refused_and_burn_nothing(raw):
    H.hit("commands.unsigned")
    v, c = verifier()
    verdict = v.verify(raw, NOW)
    if verdict.accepted:                   # a mutation the JSON envelope does not see (spacing, key order)
        assert verdict.command == base_command("reserve_soc"), verdict
        return
    assert verdict.command is None and c.value == "0", verdict
    assert verdict.reason and not verdict.reason.startswith("malformed: unchecked input"), verdict.reason
