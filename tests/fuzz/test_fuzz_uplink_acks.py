"""Fuzz: the cloud's delivery receipts on `.../ack` (controller/uplink/client.py MqttUplink._on_cloud_ack,
`confirm=cloud`), the one inbound decoder of the uplink client itself. It found an inf seq (OverflowError),
a deeply nested receipt (RecursionError) - both raised in paho's network thread - and seqs beyond SQLite's
INTEGER handed to the spool; the examples below keep them.

Contract (docs/fuzzing.md): `_on_cloud_ack(raw)` never raises (it runs in paho's network thread: an
exception there ends the MQTT loop, and the uplink with it); it hands the spool only ranges of a record
kind with 0 < first <= last < 2**63 (what an SQLite INTEGER holds); anything else is ignored.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import example, given, strategies as st

import fuzz_harness as H
from controller.uplink.client import MqttUplink
from controller.uplink.topics import RECORD_KINDS


class _Spool:
    def __init__(self):
        self.ranges = []

    def ack_range(self, kind, first, last):
        self.ranges.append((kind, first, last))


def _client():
    return SimpleNamespace(topics=SimpleNamespace(ack="edge-ems/v1/s/g/ack"), spool=_Spool(), _awaiting={},
                           _early=set(), stats=SimpleNamespace(cloud_acks=0))


def feed_ack(raw: bytes):
    c = _client()
    MqttUplink._on_cloud_ack(c, raw)
    for kind, first, last in c.spool.ranges:
        assert kind in RECORD_KINDS and type(first) is int and type(last) is int, (kind, first, last)
        assert 0 < first <= last < 2 ** 63, (kind, first, last)


@st.composite
def acks(draw):
    how = draw(st.sampled_from(("ranges", "ranges", "json", "deep", "bytes")))
    if how == "deep":
        return H.deep(draw(st.integers(100, 20000)), draw(st.sampled_from("[{")))
    if how == "bytes":
        return draw(st.binary(max_size=100))
    if how == "json":
        return H.dumps_loose(draw(H.json_values))
    rows = draw(st.lists(st.lists(st.one_of(st.sampled_from(RECORD_KINDS), H.numbers, H.json_values),
                                  min_size=0, max_size=4), max_size=4))
    return H.dumps_loose({"acks": rows})


@H.budget(ci=200, long=10000)
@given(acks())
@example(b'{"acks": [["telemetry", 1, Infinity]]}')
@example(H.deep(50000))
@example(b'{"acks": [["telemetry", 1, 100000000000000000000000000000]]}')
def test_cloud_ack_receipts(raw):
    H.hit("uplink.cloud_acks")
    feed_ack(raw)


@pytest.mark.parametrize("raw", [b'{"acks": [["telemetry", 1, 5], ["event", 3, 3]]}', b"{}", b"[]", b"x",
                                 b'{"acks": [["nope", 1, 2], ["telemetry", 5, 1], ["alarm", 0, 0]]}'])
def test_cloud_ack_receipts_that_hold_today(raw):
    """Good ranges go to the spool, malformed ones are ignored."""
    feed_ack(raw)


def test_good_ranges_still_reach_the_spool():
    c = _client()
    MqttUplink._on_cloud_ack(c, b'{"acks": [["telemetry", 1, 5], ["event", 3, 3], ["telemetry", 1.0, 2]]}')
    assert c.spool.ranges == []                      # one bad range refuses the receipt: the cloud resends
    MqttUplink._on_cloud_ack(c, b'{"acks": [["telemetry", 1, 5], ["event", 3, 3]]}')
    assert c.spool.ranges == [("telemetry", 1, 5), ("event", 3, 3)]
