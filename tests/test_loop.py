"""The scan cycle: image freezing and staleness, fixed period without bursts, overrun counting."""
import time

import numpy as np

from controller.config import load_site
from controller.loop import CycleStats, ImageBuilder, RealClock, ScanLoop
from controller.params import build_params
from controller.points import INDEX, Q_OK, Q_STALE, new_image
from drivers.base import QUALITY_OK, QUALITY_ERROR, QUALITY_STALE


def test_quality_codes_agree_with_drivers():
    assert (Q_OK, Q_STALE) == (QUALITY_OK, QUALITY_STALE) and QUALITY_ERROR == 2


def test_point_goes_stale_after_max_age():
    limits = load_site("inner-mongolia-mine")["limits"]
    b = ImageBuilder({"bms": "bms1", "grid_meter": "m1"}, limits)
    b.sink("bms1", "soc_pct", 55.0, 100.0, QUALITY_OK)
    b.sink("m1", "power_kw", 12.0, 100.0, QUALITY_OK)
    b.sink("m1", "no_such_point", 1.0, 100.0, QUALITY_OK)
    img = b.freeze(new_image(), 0, 0.0, 100.0 + limits["bms_max_age_s"] - 0.1)
    assert img["quality"][INDEX["soc_pct"]] == Q_OK and img["value"][INDEX["soc_pct"]] == 55.0
    img = b.freeze(new_image(), 1, 0.0, 100.0 + limits["bms_max_age_s"] + 0.1)
    assert img["quality"][INDEX["soc_pct"]] == Q_STALE
    assert img["quality"][INDEX["pv_kw"]] == Q_STALE           # never read
    assert b.unmapped == 1


def test_histogram_quantiles():
    s = CycleStats()
    for _ in range(990):
        s.add(0.0002)
    for _ in range(10):
        s.add(0.05)
    assert s.quantile_ms(0.5) < 0.3 and 0.2 <= s.quantile_ms(0.5)
    assert s.quantile_ms(0.999) >= 50.0 - 1e-9


class SlowDevice:
    """A device whose read takes longer than the period every 5th cycle."""
    name, kind = "slow", "meter"

    def __init__(self, period_s):
        self.n, self.period_s, self.t = 0, period_s, []

    def acquire(self, now, sink):
        self.t.append(now)
        self.n += 1
        if self.n % 5 == 0:
            time.sleep(self.period_s * 2.5)
        sink(self.name, "power_kw", 1.0, now, QUALITY_OK)

    def actuate(self, commands, now):
        pass

    def close(self):
        pass


class VirtualClock:
    """Monotonic time that moves only when the loop sleeps or a device's read takes time: the schedule
    exactly, free of the machine's load."""
    speed = 1.0

    def __init__(self):
        self.t = 1000.0

    def monotonic(self):
        return self.t

    def utc_s(self):
        return 1.7e9 + self.t

    def sleep_until(self, t_mono):
        self.t = max(self.t, t_mono)


class VirtualSlowDevice(SlowDevice):
    """Every 5th read takes 2.5 periods of the virtual clock."""

    def __init__(self, period_s, clock):
        super().__init__(period_s)
        self.clock = clock

    def acquire(self, now, sink):
        self.t.append(now)
        self.n += 1
        if self.n % 5 == 0:
            self.clock.t += self.period_s * 2.5
        sink(self.name, "power_kw", 1.0, now, QUALITY_OK)


def test_an_overrun_skips_to_the_next_boundary_and_never_catches_up():
    cfg = load_site("inner-mongolia-mine")
    params = build_params(cfg)
    params[0] = period = 1.0
    clock = VirtualClock()
    dev = VirtualSlowDevice(period, clock)
    ScanLoop(params, {"slow": dev}, {"grid_meter": "slow"}, cfg["limits"], clock).run(cycles=12)
    slots = [round((t - 1000.0) / period, 9) for t in dev.t]
    # every 5th read runs 2.5 periods: from slot 4 to 6.5, from slot 11 to 13.5; the slots it overran are
    # skipped, not run back to back
    assert slots == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 14, 15], slots


def test_real_clock_keeps_period_counts_overruns_and_never_bursts():
    """The same on the real clock, tolerant of a shared machine: a cycle the OS starts late is not the
    loop's fault, but two cycles inside one period would be a catch-up burst."""
    cfg = load_site("inner-mongolia-mine")
    params = build_params(cfg)
    period = 0.02
    params[0] = period
    dev = SlowDevice(period)
    loop = ScanLoop(params, {"slow": dev}, {"grid_meter": "slow"}, cfg["limits"], RealClock())
    loop.run(cycles=20)
    starts = np.array(dev.t)
    phase = ((starts - starts[0]) / period) % 1.0
    on_boundary = (phase < 0.5) | (phase > 0.95)
    assert on_boundary.sum() >= len(starts) - 3, ("cycles start on period boundaries", phase)
    slots = np.floor((starts - starts[0]) / period + 0.05)
    assert np.all(np.diff(slots) >= 1), ("no two cycles in one period: no catch-up burst", slots)
    assert loop.stats.overruns >= 2
