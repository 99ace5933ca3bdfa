"""CAN BMS decoding on python-can's virtual bus, frames built by hand from the published byte layout.

The frames are packed with struct (not cantools), so the DBC is checked against the layout, not
against itself.
"""
import itertools
import math
import struct

import can
import pytest

from drivers.base import QUALITY_OK, QUALITY_STALE
from drivers.can_bms import CanBms, active_2bit_flags

_channels = itertools.count()


@pytest.fixture
def pair():
    channel = f"bms-test-{next(_channels)}"
    tx = can.Bus(interface="virtual", channel=channel)
    rx = can.Bus(interface="virtual", channel=channel)
    bms = CanBms("bms", rx, max_age_s=5.0)
    yield tx, bms
    bms.close()
    tx.shutdown()
    rx.shutdown()


def send(bus, frame_id, data):
    bus.send(can.Message(arbitration_id=frame_id, data=data, is_extended_id=False))


def collect(bms, now):
    out = {}
    bms.acquire(now, lambda dev, point, value, t, q: out.__setitem__(point, (value, t, q)))
    return out


def test_decodes_published_layout_with_negative_current_and_temperature(pair):
    tx, bms = pair
    send(tx, 0x351, struct.pack("<HhhH", 568, 1500, 2000, 480))       # 56.8 V, 150 A, 200 A, 48.0 V
    send(tx, 0x355, struct.pack("<HH", 87, 99))
    send(tx, 0x356, struct.pack("<hhh", 5234, -1234, -52))            # 52.34 V, -123.4 A, -5.2 degC
    send(tx, 0x359, bytes([0x02, 0x00, 0x08, 0x00, 4, ord("P"), ord("N")]))
    send(tx, 0x35C, bytes([0xC0 | 0x20, 0x00]))                         # charge+discharge enable, force I
    send(tx, 0x35E, b"PYLON   ")
    send(tx, 0x373, struct.pack("<HHHH", 3280, 3350, 273 + 12, 273 + 31))
    out = collect(bms, 10.0)
    assert out["cvl_v"][0] == pytest.approx(56.8)
    assert out["ccl_a"][0] == pytest.approx(150.0)
    assert out["dcl_a"][0] == pytest.approx(200.0)
    assert out["dvl_v"][0] == pytest.approx(48.0)
    assert out["soc_pct"][0] == 87 and out["soh_pct"][0] == 99
    assert out["voltage_v"][0] == pytest.approx(52.34)
    assert out["current_a"][0] == pytest.approx(123.4)       # -123.4 A on the wire (+ charge) = discharging
    assert out["temp_c"][0] == pytest.approx(-5.2)
    assert out["alarm_bits"][0] == 0x0002 and out["warning_bits"][0] == 0x0008
    assert out["charge_enable"][0] == 1 and out["discharge_enable"][0] == 1 and out["force_charge"][0] == 1
    assert out["cell_v_min"][0] == pytest.approx(3.280) and out["cell_v_max"][0] == pytest.approx(3.350)
    assert out["cell_temp_min_c"][0] == pytest.approx(11.85)
    assert bms.manufacturer == "PYLON"
    assert all(q == QUALITY_OK for v, t, q in out.values())
    assert all(t == 10.0 for v, t, q in out.values())


def test_negative_current_limit_and_cold_extremes(pair):
    tx, bms = pair
    send(tx, 0x351, struct.pack("<HhhH", 560, -100, 0, 470))
    send(tx, 0x356, struct.pack("<hhh", 4800, -32768, -400))
    out = collect(bms, 1.0)
    assert out["ccl_a"][0] == pytest.approx(-10.0)
    assert out["current_a"][0] == pytest.approx(3276.8)      # canonical + discharge
    assert out["temp_c"][0] == pytest.approx(-40.0)


def test_only_newest_frame_counts_and_silence_goes_stale(pair):
    tx, bms = pair
    send(tx, 0x355, struct.pack("<HH", 50, 100))
    send(tx, 0x355, struct.pack("<HH", 51, 100))
    out = collect(bms, 100.0)
    assert out["soc_pct"] == (51.0, 100.0, QUALITY_OK)
    assert math.isnan(out["cvl_v"][0]) and out["cvl_v"][2] == QUALITY_STALE  # never received
    assert collect(bms, 104.9)["soc_pct"][2] == QUALITY_OK
    assert collect(bms, 105.1)["soc_pct"] == (51.0, 100.0, QUALITY_STALE)
    send(tx, 0x355, struct.pack("<HH", 52, 100))
    assert collect(bms, 106.0)["soc_pct"] == (52.0, 106.0, QUALITY_OK)


def test_sma_alarm_pairs_used_only_without_pylon_frame(pair):
    tx, bms = pair
    word = 0b10 | (0b01 << 2) | (0b10 << 6)   # alarms 0 and 3 active, 1 ok
    send(tx, 0x35A, struct.pack("<II", word, 0x5555_5555))
    out = collect(bms, 1.0)
    assert out["alarm_bits"][0] == 0b1001 and out["warning_bits"][0] == 0
    send(tx, 0x359, bytes([0x00, 0x00, 0x00, 0x00, 1, ord("P"), ord("N")]))
    send(tx, 0x35A, struct.pack("<II", word, 0))
    assert collect(bms, 2.0)["alarm_bits"][0] == 0


def test_short_and_unknown_frames_are_ignored(pair):
    tx, bms = pair
    send(tx, 0x356, b"\x01")          # truncated
    send(tx, 0x123, b"\x00" * 8)      # not ours
    out = collect(bms, 1.0)
    assert out["voltage_v"][2] == QUALITY_STALE
    assert bms.bad_frames == 1


def test_active_2bit_flags():
    assert active_2bit_flags(0) == 0
    assert active_2bit_flags(0xAAAAAAAA) == 0xFFFF
    assert active_2bit_flags(0x55555555) == 0
