"""The scan cycle, PLC style: acquire -> freeze -> step -> actuate -> record, on a fixed period.

This is the imperative shell around the pure `step`. It never catches up in bursts: an overrun is
counted and the next cycle starts on the next period boundary. The same loop runs the gateway (real
clock, real drivers) and the simulator (a clock that advances the simulated site instead of sleeping).
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from controller.core import layout as L
from controller.core.step import step
from controller.operator import OperatorInputs
from controller.warmup import warmup
from controller.points import BY_SOURCE, N_POINTS, Q_ERROR, Q_OK, Q_STALE, max_ages_s, new_image
from drivers.base import Device

# Which device role and canonical command each command slot drives.
ACTUATION = {
    "pcs": lambda cmd: {"setpoint_kw": float(cmd[L.C_BATTERY_KW])},
    "genset": lambda cmd: {"run": float(cmd[L.C_GENSET_RUN]), "setpoint_kw": float(cmd[L.C_GENSET_KW])},
    "pv_inverter": lambda cmd: {"limit_kw": float(cmd[L.C_PV_LIMIT_KW])},
}


LOOP_DEVICE = "__loop__"   # the loop's own health points (role "self")
log = logging.getLogger("edge_ems.loop")
SLOW_PART_S = 0.25         # a hook, device or recorder call longer than this is counted as slow


@dataclass
class PartHealth:
    """How one part of the cycle (a device, the recorder, a hook) behaves: it may raise or block, the
    cycle goes on (OpenEMS wraps each controller of its cycle the same way); these counters and the
    `on_fault` callback make it visible (runtime/health.py turns them into alarms)."""

    name: str
    calls: int = 0
    failures: int = 0
    consecutive: int = 0
    slow: int = 0
    max_s: float = 0.0
    last_error: str = ""

    def as_dict(self) -> dict:
        return {"calls": self.calls, "failures": self.failures, "consecutive_failures": self.consecutive,
                "slow": self.slow, "max_ms": round(self.max_s * 1000.0, 3), "last_error": self.last_error}


def _part_name(obj, default: str) -> str:
    name = getattr(obj, "hook_name", None) or getattr(obj, "__qualname__", None)
    if name is None:
        name = type(obj).__name__
    return str(name or default)


class Clock(Protocol):
    speed: float

    def monotonic(self) -> float: ...
    def utc_s(self) -> float: ...
    def sleep_until(self, t_mono: float) -> None: ...


class RealClock:
    """The gateway's clock: monotonic for the period, wall time (UTC) only as the image's timestamp."""

    speed = 1.0

    def monotonic(self) -> float:
        return time.monotonic()

    def utc_s(self) -> float:
        return time.time()

    def sleep_until(self, t_mono: float) -> None:
        delay = t_mono - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class ImageBuilder:
    """Collects readings as devices hand them over and freezes them into the process image."""

    def __init__(self, devices_by_role: dict[str, str], limits: dict):
        # (device name, canonical point) -> image slot
        self.slot = {}
        for role, device_name in devices_by_role.items():
            for (src_role, point), idx in BY_SOURCE.items():
                if src_role == role:
                    self.slot[(device_name, point)] = idx
        self.value = np.zeros(N_POINTS)
        self.stamp = np.full(N_POINTS, -math.inf)
        self.error = np.zeros(N_POINTS, dtype=np.uint8)
        self.max_age = max_ages_s(limits)
        self.unmapped = 0

    def sink(self, device: str, point: str, value: float, t_mono_s: float, quality: int) -> None:
        idx = self.slot.get((device, point))
        if idx is None:
            self.unmapped += 1
            return
        if quality == Q_OK:
            self.value[idx] = value
            self.stamp[idx] = t_mono_s
            self.error[idx] = Q_OK
        else:
            self.error[idx] = quality

    def freeze(self, image: np.ndarray, cycle: int, t_utc_s: float, now_mono_s: float) -> np.ndarray:
        image["cycle"] = cycle
        image["t_s"] = t_utc_s
        image["value"][:] = self.value
        stale = (now_mono_s - self.stamp) > self.max_age
        quality = np.where(stale, Q_STALE, Q_OK).astype(np.uint8)
        quality[stale & (self.error == Q_ERROR)] = Q_ERROR
        image["quality"][:] = quality
        return image


@dataclass
class CycleStats:
    """Cycle-time histogram (log buckets, 10 us .. 10 s), overruns and the worst cycle."""

    edges_s: np.ndarray = field(default_factory=lambda: np.logspace(-5, 1, 61))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(62, dtype=np.int64))
    cycles: int = 0
    overruns: int = 0
    max_s: float = 0.0
    total_s: float = 0.0

    def add(self, seconds: float) -> None:
        self.counts[int(np.searchsorted(self.edges_s, seconds))] += 1
        self.cycles += 1
        self.total_s += seconds
        if seconds > self.max_s:
            self.max_s = seconds

    def quantile_ms(self, q: float) -> float:
        """Upper edge of the bucket holding the q-quantile (conservative: never under-reports)."""
        if self.cycles == 0:
            return 0.0
        idx = int(np.searchsorted(np.cumsum(self.counts), q * self.cycles))
        edges = np.append(self.edges_s, np.inf)
        return float(min(edges[idx], self.max_s)) * 1000.0

    def as_dict(self) -> dict:
        return {"cycles": self.cycles, "overruns": self.overruns, "p50_ms": self.quantile_ms(0.5),
                "p99_ms": self.quantile_ms(0.99), "max_ms": self.max_s * 1000.0,
                "mean_ms": 1000.0 * self.total_s / max(1, self.cycles)}


Hook = Callable[["ScanLoop", np.ndarray, np.ndarray, np.ndarray, int], None]


class ScanLoop:
    """One process, one loop. `devices` maps device name -> Device; `roles` maps role -> device name."""

    def __init__(self, params: np.ndarray, devices: dict[str, Device], roles: dict[str, str], limits: dict,
                 clock: Clock, recorder=None, hooks: list[Hook] | None = None, state: np.ndarray | None = None):
        self.params = params
        self.operator = OperatorInputs()
        self.devices = {**devices, self.operator.name: self.operator}
        self.roles = {**roles, "operator": self.operator.name, "self": LOOP_DEVICE}
        self.clock = clock
        self.recorder = recorder
        # a segmented recorder (runtime) takes the state that went into step, to start a segment with it
        self._records_state = bool(getattr(recorder, "takes_state", False))
        self.hooks = list(hooks or [])
        self.period_s = float(params[L.P_PERIOD_S])
        self.builder = ImageBuilder(self.roles, limits)
        self.late_cycles = 0         # consecutive overruns, fed to the step as loop_late_cycles
        self.image = new_image()
        self.state = state if state is not None else L.new_state(clock.utc_s() - self.period_s)
        self.commands = np.zeros(L.N_COMMANDS)
        self.stats = CycleStats()
        self.cycle_no = 0
        self.events = deque(maxlen=1000)   # (t_s, code, value): the TUI and uplink read these
        self.stop_requested = False
        self.health: dict[str, PartHealth] = {}
        self.on_fault: Callable[[PartHealth, BaseException | None], None] | None = None
        self._hook_names = [f"hook:{_part_name(h, str(i))}" for i, h in enumerate(self.hooks)]
        warmup()                     # kernels compiled or loaded now, never inside a cycle

    def add_hook(self, hook: Hook, name: str | None = None) -> None:
        self.hooks.append(hook)
        self._hook_names.append(f"hook:{name or _part_name(hook, str(len(self.hooks)))}")

    def _part(self, name: str) -> PartHealth:
        h = self.health.get(name)
        if h is None:
            h = self.health[name] = PartHealth(name)
        return h

    def _guard(self, name: str, fn, *args) -> None:
        """Call one part; an exception or a slow call is counted and reported, never raised."""
        t0 = time.perf_counter()
        err: BaseException | None = None
        try:
            fn(*args)
        except Exception as exc:              # noqa: BLE001 - the cycle must go on whatever a part does
            err = exc
        spent = time.perf_counter() - t0
        h = self.health.get(name)
        if h is None:
            if err is None and spent < SLOW_PART_S:
                return                        # the common case costs one dict lookup
            h = self._part(name)
        h.calls += 1
        h.max_s = max(h.max_s, spent)
        if spent >= SLOW_PART_S:
            h.slow += 1
        if err is not None:
            h.failures += 1
            h.consecutive += 1
            h.last_error = f"{type(err).__name__}: {err}"[:300]
            if h.failures == 1 or h.failures % 1000 == 0:
                log.error("%s failed (%d times): %s", name, h.failures, h.last_error)
        recovered = err is None and h.consecutive > 0
        if recovered:
            h.consecutive = 0
        if self.on_fault is not None and (err is not None or spent >= SLOW_PART_S or recovered):
            try:
                self.on_fault(h, err)
            except Exception:                 # noqa: BLE001
                log.exception("on_fault for %s", name)

    def cycle(self) -> None:
        """One scan: acquire, freeze, step, actuate, record."""
        t0 = time.perf_counter()
        now = self.clock.monotonic()
        for name, device in self.devices.items():                     # 1. acquire
            self._guard(name, device.acquire, now, self.builder.sink)
        self.builder.sink(LOOP_DEVICE, "late_cycles", float(self.late_cycles), now, Q_OK)
        image = self.builder.freeze(self.image, self.cycle_no, self.clock.utc_s(), now)   # 2. freeze
        state_in = self.state
        state, cmd, events, n = step(self.params, state_in, float(image["t_s"]),        # 3. step
                                     image["value"], image["quality"])
        self.state, self.commands = state, cmd
        for role, make in ACTUATION.items():                          # 4. actuate
            name = self.roles.get(role)
            if name is not None:
                self._guard(name, self.devices[name].actuate, make(cmd), now)
        if self.recorder is not None:                                 # 5. record
            if self._records_state:
                self._guard("recorder", self.recorder.append, image, cmd, events, n, state_in)
            else:
                self._guard("recorder", self.recorder.append, image, cmd, events, n)
        for i in range(n):
            self.events.append((float(image["t_s"]), int(events[i, 0]), float(events[i, 1])))
        for name, hook in zip(self._hook_names, self.hooks):
            self._guard(name, hook, self, image, cmd, events, n)
        self.cycle_no += 1
        spent = time.perf_counter() - t0
        self.stats.add(spent)
        if spent > self.period_s / self.clock.speed:
            self.stats.overruns += 1
            self.late_cycles += 1
        else:
            self.late_cycles = 0

    def run(self, cycles: int | None = None) -> None:
        """Run on period boundaries of the monotonic clock until `cycles` are done or stop() is called."""
        start = self.clock.monotonic()
        k = done = 0                                 # k: the period slot, done: cycles run (k skips slots)
        while not self.stop_requested and (cycles is None or done < cycles):
            self.cycle()
            done += 1
            k += 1
            boundary = start + k * self.period_s
            now = self.clock.monotonic()
            if now > boundary:                       # late: skip to the next boundary, no burst
                k = int((now - start) / self.period_s) + 1
                boundary = start + k * self.period_s
            self.clock.sleep_until(boundary)

    def stop(self) -> None:
        self.stop_requested = True

    def close(self) -> None:
        for name, device in self.devices.items():
            self._guard(name, device.close)
        if self.recorder is not None:
            self._guard("recorder", self.recorder.close)
