"""Issue 15, the uplink's part: a hostile record or cloud command gets a refusal or a marker, never a dead
writer thread or an exception out of the verifier."""
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.config import load_site
from controller.uplink.commands import CommandVerifier, Limits, sign_command
from controller.uplink.spool import Spool
from controller.uplink.topics import EVENT
from test_uplink_commands import Counter

SITE, GW_SPOOL = "inner-mongolia-mine", "imm-gw-01"
CFG = load_site(SITE)
GW = CFG["site"]["gateway_id"]
NOW = 1_750_000_000.0
KEY = Ed25519PrivateKey.generate()
HUGE = 10 ** 400


def _deep(n: int):
    body: dict = {}
    cur = body
    for _ in range(n):
        cur["a"] = {}
        cur = cur["a"]
    return body


# --- the spool's writer -------------------------------------------------------------------------------
def test_deeply_nested_record_is_a_marker_and_the_writer_goes_on(tmp_path):
    s = Spool(tmp_path, SITE, GW_SPOOL)
    try:
        s.put(EVENT, 1.7e9, {"action": _deep(5000)})
        s.put(EVENT, 1.7e9 + 1, {"e": "after"})
        assert s.flush(timeout=3.0), "the writer thread died on a deeply nested record"
        bodies = [json.loads(p)["body"] for _, p in s.pending(EVENT, 0, 10)]
        assert len(bodies) == 2
        assert "RecursionError" in bodies[0]["unencodable"] and len(json.dumps(bodies[0])) < 300
        assert bodies[1] == {"e": "after"}
        assert s.stats()["writer_errors"] == 0
    finally:
        s.close(timeout=3.0)


def test_unexpected_error_in_a_batch_is_counted_and_the_loop_goes_on(tmp_path):
    s = Spool(tmp_path, SITE, GW_SPOOL)
    real, calls = s._check_disk, []

    def failing_once():          # a fault the writer has no handler for, injected once
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        real()
    s._check_disk = failing_once
    try:
        s.put(EVENT, 1.7e9, {"e": "first"})
        s.flush(timeout=3.0)
        s.put(EVENT, 1.7e9 + 1, {"e": "second"})
        assert s.flush(timeout=3.0), "the writer loop died on an unexpected exception"
        st = s.stats()
        assert st["writer_errors"] >= 1 and "injected" in st["writer_error"]
        assert s._writer.is_alive()
        bodies = [json.loads(p)["body"] for _, p in s.pending(EVENT, 0, 10)]
        assert {"e": "second"} in bodies
    finally:
        s.close(timeout=3.0)


# --- the command verifier -----------------------------------------------------------------------------
def verifier():
    c = Counter()
    return CommandVerifier(KEY.public_key(), GW, Limits.from_site(CFG), c.get, c.set)


def cmd(counter=1, type="reserve_soc", args=None, issued=NOW - 10, expires=NOW + 600, **extra):
    c = {"v": 1, "id": f"c-{counter}", "gateway": GW, "counter": counter, "issued_s": issued,
         "expires_s": expires, "type": type, "args": {"reserve_pct": 40} if args is None else args}
    c.update(extra)
    return c


@pytest.mark.parametrize("kind, args, field", [
    ("reserve_soc", {"reserve_pct": HUGE}, "reserve_pct"),
    ("reserve_soc", {"reserve_pct": -HUGE}, "reserve_pct"),
    ("setpoint_schedule", {"start_s": NOW, "step_s": 900, "battery_kw": [0, HUGE]}, "battery_kw[1]"),
    ("setpoint_schedule", {"start_s": HUGE, "step_s": 900, "battery_kw": [0]}, "start_s"),
    ("weather_warning", {"kind": "snow", "from_s": NOW, "to_s": NOW + 60, "severity": HUGE}, "severity"),
    ("grid_update", {"price_per_kwh": HUGE, "valid_from_s": NOW, "valid_to_s": NOW + 60}, "price_per_kwh"),
    ("grid_update", {"price_per_kwh": 1, "valid_from_s": NOW, "valid_to_s": HUGE}, "valid_to_s"),
])
def test_huge_integer_argument_is_a_refusal_naming_the_field(kind, args, field):
    verdict = verifier().verify(sign_command(KEY, cmd(1, kind, args)), NOW)
    assert not verdict.accepted and field in verdict.reason, verdict.reason


@pytest.mark.parametrize("key", ["issued_s", "expires_s"])
def test_huge_integer_validity_field_is_a_refusal_naming_it(key):
    verdict = verifier().verify(sign_command(KEY, cmd(1, **{key: HUGE})), NOW)
    assert not verdict.accepted and key in verdict.reason, verdict.reason


def test_huge_counter_and_version_are_refusals():
    v = verifier()
    for c in (cmd(HUGE), cmd(1, v=HUGE)):
        verdict = v.verify(sign_command(KEY, c), NOW)
        assert not verdict.accepted and verdict.reason.startswith("malformed"), verdict.reason


@pytest.mark.parametrize("issued, expires", [(NOW + 200, NOW + 100), (NOW + 100, NOW + 100)])
def test_expiry_not_after_issue_is_refused(issued, expires):
    verdict = verifier().verify(sign_command(KEY, cmd(1, issued=issued, expires=expires)), NOW)
    assert not verdict.accepted, "a command expiring before it was issued was accepted"
    assert "expires_s" in verdict.reason and "issued_s" in verdict.reason, verdict.reason


@pytest.mark.parametrize("version", [True, 1.0])
def test_version_is_typed_exactly(version):
    verdict = verifier().verify(sign_command(KEY, cmd(1, v=version)), NOW)
    assert not verdict.accepted and "version" in verdict.reason, verdict.reason


@pytest.mark.parametrize("result", [False, OSError("disk full")])
def test_counter_that_cannot_be_written_is_a_refusal(result):
    """The spool's set_meta returns False when its commit did not happen in time."""
    def setter(_value):
        if isinstance(result, Exception):
            raise result
        return result
    v = CommandVerifier(KEY.public_key(), GW, Limits.from_site(CFG), lambda: "0", setter)
    verdict = v.verify(sign_command(KEY, cmd(1)), NOW)
    assert not verdict.accepted and "replay counter" in verdict.reason, verdict.reason
