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


def test_real_clock_keeps_period_counts_overruns_and_never_bursts():
    cfg = load_site("inner-mongolia-mine")
    params = build_params(cfg)
    period = 0.02
    params[0] = period
    dev = SlowDevice(period)
    loop = ScanLoop(params, {"slow": dev}, {"grid_meter": "slow"}, cfg["limits"], RealClock())
    loop.run(cycles=20)
    starts = np.array(dev.t)
    phase = ((starts - starts[0]) / period) % 1.0
    assert np.all((phase < 0.5) | (phase > 0.95)), "cycles start on period boundaries"
    gaps = np.diff(starts)
    assert gaps.min() > period * 0.5, "no catch-up burst after an overrun"
    assert loop.stats.overruns >= 2
