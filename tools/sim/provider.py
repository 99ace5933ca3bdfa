"""The simulator as a device provider of the site runtime (controller/runtime/site.py).

The field provider (controller/runtime/field.py) builds drivers from `[buses]` and `[[devices]]`; this
one builds the simulated site (SimSite: physics + exogenous series) and its devices for a profile whose
devices are marked `simulated = true` - in-process, or behind real ports read by the real drivers
(`wire`, tools/sim/wire.py). Only the CLI's sim / demo / lab commands and `run` on a simulated profile
import it; nothing under controller/ does (tests/test_layering.py).
"""
from __future__ import annotations

import time

from controller.runtime.site import Provided
from tools.sim.devices import build_sim_devices, limit_to_profiles
from tools.sim.exogenous import Series
from tools.sim.scenario import Scenario
from tools.sim.site import SimSite


class SimClock:
    """Simulated time: sleeping advances the site's physics; `speed` paces it against the wall clock."""

    def __init__(self, site: SimSite, start_epoch_s: float, speed: float = 0.0):
        self.site = site
        self.start_epoch_s = start_epoch_s
        self.speed = speed if speed > 0 else 1.0       # the overrun budget is period / speed
        self._pace = speed > 0
        self._wall0 = time.monotonic()

    def monotonic(self) -> float:
        return self.site.t_s

    def utc_s(self) -> float:
        return self.start_epoch_s + self.site.t_s

    def sleep_until(self, t_mono: float) -> None:
        self.site.advance_to(t_mono)
        if self._pace:
            delay = self._wall0 + t_mono / self.speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)


class SimProvider:
    """Devices and clock of a simulated site for `hours` of scenario `scn` (seed `seed`)."""

    def __init__(self, scn: Scenario, hours: float, seed: int = 1, *, speed: float = 0.0, wire: bool = False,
                 wire_baud: int | None = None, as_profiles: bool = False, series: Series | None = None):
        self.scn, self.hours, self.seed = scn, float(hours), seed
        self.speed, self.wire, self.wire_baud, self.as_profiles = speed, wire, wire_baud, as_profiles
        self.series = series

    def provide(self, cfg) -> Provided:
        site = SimSite(self.scn, self.hours, self.seed, self.series)
        close = lambda: None  # noqa: E731
        extra = {"site": site}
        if self.wire:
            from tools.sim.wire import build_wire_devices
            devices, wire = build_wire_devices(site, self.wire_baud)
            close = wire
            extra["wire"] = wire
        else:
            devices = build_sim_devices(site)
            if self.as_profiles:
                limit_to_profiles(site)
        clock = SimClock(site, self.scn.start.timestamp(), self.speed)
        return Provided(devices, clock, self.scn.start.timestamp(), close=close, kind="sim",
                        clock_status=lambda: "simulated", extra=extra)
