"""Wire faults on a shared bus: the faulty device goes ERROR then STALE, the others keep updating every
cycle, each cycle's bus time stays bounded, and the faulty device comes back by itself.

The scan clock is simulated (1 s per cycle) so backoff and max-age play out in milliseconds of real
time; the bytes, timeouts and CRC failures are real.
"""
import time

import pytest

from drivers.base import QUALITY_ERROR, QUALITY_OK, QUALITY_STALE
from drivers.modbus import ModbusBus, ModbusDevice, load_profile
from drivers.modbus.backoff import Backoff
from tools.sim.modbus_server import SimBus

TIMEOUT_S = 0.05
FAULTY, OTHER_1, OTHER_2 = 1, 2, 6


@pytest.fixture
def site():
    with SimBus() as sim:
        sim.add_device(FAULTY, "eastron_sdm630", {"power_kw": 10.0})
        sim.add_device(OTHER_1, "eastron_sdm120", {"power_kw": 1.0})
        sim.add_device(OTHER_2, "generic_modbus_bms", {"soc_pct": 50, "voltage_v": 51.0})
        sim.start()
        bus = ModbusBus(sim.client_path, baud=9600, late_reply_guard_s=3 * TIMEOUT_S)
        devs = {
            FAULTY: ModbusDevice("site_meter", load_profile("eastron_sdm630"), bus, FAULTY, timeout_s=TIMEOUT_S,
                                 fast_max_age_s=3.0, backoff=Backoff(base_s=1.0, cap_s=4.0)),
            OTHER_1: ModbusDevice("pv_meter", load_profile("eastron_sdm120"), bus, OTHER_1, timeout_s=TIMEOUT_S),
            OTHER_2: ModbusDevice("bms", load_profile("generic_modbus_bms"), bus, OTHER_2, timeout_s=TIMEOUT_S),
        }
        yield sim, bus, devs
        bus.close()


def cycle(devs, now):
    """One scan cycle's acquire step; returns ({device: {point: (value, t, q)}}, wall seconds)."""
    out = {}
    t0 = time.monotonic()
    for dev in devs.values():
        got = out.setdefault(dev.name, {})
        dev.acquire(now, lambda d, p, v, t, q, got=got: got.__setitem__(p, (v, t, q)))
    return out, time.monotonic() - t0


@pytest.mark.parametrize("fault,delay_s", [("silent", 0), ("crc", 0), ("garbage", 0), ("slow", 0.08)])
def test_fault_isolated_stale_and_recovers(site, fault, delay_s):
    sim, bus, devs = site
    now = 0.0
    for _ in range(3):
        out, _ = cycle(devs, now)
        now += 1.0
    assert out["site_meter"]["power_kw"][2] == QUALITY_OK

    sim.fault(FAULTY, fault, delay_s)
    qualities, walls = [], []
    for i in range(10):
        pv = 2.0 + i
        sim.set_values(OTHER_1, {"power_kw": pv})
        out, wall = cycle(devs, now)
        walls.append(wall)
        # the neighbours update every single cycle
        assert out["pv_meter"]["power_kw"] == (pytest.approx(pv), now, QUALITY_OK), (fault, i)
        assert out["bms"]["soc_pct"][2] == QUALITY_OK
        qualities.append(out["site_meter"]["power_kw"][2])
        now += 1.0
    assert qualities[0] == QUALITY_ERROR
    assert QUALITY_STALE in qualities[:4]                   # stale within max age (3 s) of the last read
    assert qualities[-1] in (QUALITY_STALE, QUALITY_ERROR)
    assert devs[FAULTY].backoff.active
    # bounded: a probe of the faulty device costs at most (retries+1) timeouts and a drain, so the
    # bus cycle still fits the 1 s scan period (loaded CI machines included)
    assert max(walls) < 1.0, walls
    # backoff: most faulty cycles do not touch the faulty device at all
    assert sum(w > TIMEOUT_S for w in walls) <= 6, walls

    sim.fault(FAULTY, None)
    sim.set_values(FAULTY, {"power_kw": -7.0})
    recovered_after = None
    for i in range(8):  # backoff cap 4 s -> back within 5 cycles
        out, _ = cycle(devs, now)
        if out["site_meter"]["power_kw"][2] == QUALITY_OK:
            recovered_after = i
            break
        now += 1.0
    assert recovered_after is not None and recovered_after <= 5
    assert out["site_meter"]["power_kw"][0] == pytest.approx(-7.0)
    assert not devs[FAULTY].backoff.active


def test_slow_but_in_time_device_keeps_working(site):
    sim, bus, devs = site
    sim.fault(FAULTY, "slow", 0.02)  # below the 50 ms timeout
    for i in range(3):
        sim.set_values(FAULTY, {"power_kw": float(i)})
        out, _ = cycle(devs, float(i))
        assert out["site_meter"]["power_kw"] == (pytest.approx(float(i)), float(i), QUALITY_OK)


def test_disappear_and_return(site):
    sim, bus, devs = site
    now = 0.0
    cycle(devs, now)
    sim.fault(OTHER_2, "silent")   # the BMS drops off the bus...
    for _ in range(6):
        now += 1.0
        out, _ = cycle(devs, now)
        assert out["site_meter"]["power_kw"][2] == QUALITY_OK
    assert out["bms"]["soc_pct"][2] == QUALITY_STALE
    sim.fault(OTHER_2, None)       # ...and comes back
    sim.set_values(OTHER_2, {"soc_pct": 49})
    for _ in range(8):
        now += 1.0
        out, _ = cycle(devs, now)
        if out["bms"]["soc_pct"][2] == QUALITY_OK:
            break
    assert out["bms"]["soc_pct"][:1] == (49.0,) and out["bms"]["soc_pct"][2] == QUALITY_OK


def test_backoff_grows_and_caps():
    b = Backoff(base_s=1.0, cap_s=8.0, threshold=2)
    waits = []
    for _ in range(7):
        b.failed(0.0)
        waits.append(b.wait_s())
    assert waits == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    b.succeeded()
    assert b.ready(0.0) and not b.active
