"""Fuzz: CAN frames into the BMS decoder (drivers/can_bms.py, cantools with profiles/can/pylon_sma_bms.dbc):
arbitrary ids (standard, extended, the DBC's own), lengths 0..64 (classic and FD), payloads, remote and
error frames, in bursts, through a python-can bus stand-in so a burst costs no wall time.

Contract (docs/fuzzing.md): `CanBms.acquire` never raises (a frame is decoded, counted in bad_frames, or
ignored as not ours); every point it sinks is a float with a quality; a decoded value is finite and
within its DBC signal's range times its sign (a value the wire cannot carry is NaN with QUALITY_ERROR);
the manufacturer string is text. The per-cycle bound (MAX_FRAMES_PER_CYCLE) holds for a babbling node.
"""
from __future__ import annotations

import copy
import math

import can
from hypothesis import example, given, strategies as st

import fuzz_harness as H
from drivers.base import QUALITY_ERROR, QUALITY_OK, QUALITY_STALE
from drivers.can_bms import MAX_FRAMES_PER_CYCLE, CanBms

DBC_IDS = [0x351, 0x355, 0x356, 0x359, 0x35A, 0x35C, 0x35E, 0x373, 0x305]


class FakeCanBus:
    """The receive queue of a python-can bus; recv(timeout=0) never waits."""

    def __init__(self, frames):
        self.frames = list(frames)
        self.sent = []

    def recv(self, timeout=None):
        return self.frames.pop(0) if self.frames else None

    def send(self, msg, timeout=None):
        self.sent.append(msg)

    def shutdown(self):
        pass


@st.composite
def frames(draw):
    fd = draw(st.integers(0, 5)) == 0
    data = draw(st.binary(max_size=64 if fd else 8))
    ext = draw(st.integers(0, 6)) == 0
    ident = draw(st.one_of(st.sampled_from(DBC_IDS), st.integers(0, 0x7FF),
                           st.integers(0, 0x1FFFFFFF) if ext else st.integers(0, 0x7FF)))
    kind = draw(st.sampled_from(("data", "data", "data", "remote", "error")))
    return can.Message(arbitration_id=ident, data=b"" if kind == "remote" else data, is_extended_id=ext,
                       is_fd=fd, is_remote_frame=kind == "remote", is_error_frame=kind == "error",
                       dlc=len(data) if kind != "remote" else draw(st.integers(0, 8)), check=False)


_TEMPLATE = []


def _bms(bus):
    """A fresh CanBms on `bus`; the DBC is parsed once (cantools takes ~10 ms a load), not per example."""
    if not _TEMPLATE:
        _TEMPLATE.append(CanBms("bms", bus=FakeCanBus([]), max_age_s=5.0, voltage_range=(40.0, 60.0),
                                keepalive=True))
    bms = copy.copy(_TEMPLATE[0])
    bms.bus, bms._values, bms.frames, bms.bad_frames, bms.implausible = bus, {}, 0, 0, 0
    bms._pylon_alarms_seen, bms.manufacturer = False, ""
    return bms


@H.budget(ci=200, long=10000)
@given(st.lists(frames(), max_size=40), st.integers(0, 2))
@example([can.Message(arbitration_id=0x35E, data=b"\xff\xfe\x00\x80PYLON", check=False)], 0)
@example([can.Message(arbitration_id=0x351, data=b"\x01", check=False)], 0)
@example([can.Message(arbitration_id=0x35C, data=b"", check=False)], 0)
@example([can.Message(arbitration_id=0x356, data=bytes(64), is_fd=True, check=False)], 0)
def test_can_frames(burst, extra_cycles):
    H.hit("can.frames")
    bus = FakeCanBus(burst)
    bms = _bms(bus)
    got = []
    sink = lambda name, point, value, t, q: got.append((point, value, q))    # noqa: E731
    for cycle in range(1 + extra_cycles):
        bms.acquire(float(cycle), sink)
    assert bms.frames + bms.bad_frames <= len(burst)
    assert isinstance(bms.manufacturer, str)
    for point, value, q in got:
        assert type(value) is float and q in (QUALITY_OK, QUALITY_STALE, QUALITY_ERROR), (point, value, q)
        if q == QUALITY_OK:
            assert math.isfinite(value), (point, value)


def test_a_babbling_node_is_bounded_per_cycle():
    bus = FakeCanBus([can.Message(arbitration_id=0x356, data=bytes(6))] * (3 * MAX_FRAMES_PER_CYCLE))
    bms = _bms(bus)
    bms.acquire(0.0, lambda *a: None)
    assert len(bus.frames) == 2 * MAX_FRAMES_PER_CYCLE
