"""One site runtime for the field and the lab: a provider's devices and clock, the scan loop, the hooks.

`edge-ems run` (a gateway's real ports) and `edge-ems sim` (the simulator) assemble the same thing:

    provided = provider.provide(cfg)                  # devices + clock (field: drivers; sim: tools/sim)
    rt = SiteRuntime(cfg, provided, strategy=..., recorder=...)
    rt.add("ledger", "carbon", hook, close)           # parts in any order; they run in SLOTS order
    rt.start(); rt.run(cycles); rt.close()            # closing runs in reverse order

Why a fixed order: the recording must hold exactly what step saw before anything else can fail; the
ledger integrates the same image before the uplink publishes it; the compute signal and the IPC
snapshot read what the ledger and uplink already accounted; the watchdog pings systemd last, so a
hook that hangs stops the pings. Each part is isolated by the loop (controller/loop.py `_guard`): one
that raises or blocks is counted, timed and alarmed (controller/runtime/health.py), and the cycle goes on.
"""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from controller.core import layout as L
from controller.loop import Clock, ScanLoop
from controller.params import build_params
from controller.runtime.health import HostAlarms

log = logging.getLogger("edge_ems.runtime")
SLOTS = ("record", "ledger", "uplink", "compute", "ipc", "watchdog")


@dataclass
class Provided:
    """What a device provider hands the runtime."""

    devices: dict                               # name -> drivers.base.Device
    clock: Clock
    t_start_utc_s: float                        # when the run starts (UTC): the TOU table's time zone rules
    close: Callable[[], None] = lambda: None
    problems: list[str] = field(default_factory=list)   # start-up findings (a port missing...), alarmed
    kind: str = "field"                         # "field" | "sim" (clock status in the ledger, kpis)
    clock_status: Callable[[], str] = lambda: "unknown"
    extra: dict = field(default_factory=dict)   # provider-specific handles (the sim's site, the wire)


@dataclass
class Part:
    slot: str
    name: str
    hook: Callable | None
    close: Callable[[], None] | None


class SiteRuntime:
    """The assembled site. Build with a Provided, add parts, start(), run(), close()."""

    def __init__(self, cfg, provided: Provided, *, strategy: str | None = None, params: np.ndarray | None = None,
                 state0: np.ndarray | None = None, recorder=None):
        self.cfg = cfg
        self.provided = provided
        self.params = params if params is not None else build_params(cfg, strategy,
                                                                     t_ref_s=provided.t_start_utc_s)
        self.state0 = state0 if state0 is not None else L.new_state(provided.clock.utc_s()
                                                                    - float(self.params[L.P_PERIOD_S]))
        self.recorder = recorder
        self.alarms = HostAlarms()
        self.parts: list[Part] = []
        self.loop: ScanLoop | None = None
        self._closed = False
        for problem in provided.problems:
            self.alarms.raise_("device_unavailable", problem)

    def add(self, slot: str, name: str, hook: Callable | None = None, close: Callable[[], None] | None = None) -> None:
        if slot not in SLOTS:
            raise ValueError(f"unknown slot {slot!r}; expected one of {', '.join(SLOTS)}")
        if self.loop is not None:
            raise RuntimeError("parts are added before start()")
        self.parts.append(Part(slot, name, hook, close))

    def _ordered(self) -> list[Part]:
        return sorted(self.parts, key=lambda p: SLOTS.index(p.slot))   # stable: insertion order in a slot

    def start(self) -> ScanLoop:
        devices = self.provided.devices
        roles = {d["role"]: d["name"] for d in self.cfg["devices"] if d["name"] in devices}
        self.loop = ScanLoop(self.params, devices, roles, self.cfg["limits"], self.provided.clock, self.recorder,
                             [], self.state0)
        for part in self._ordered():
            if part.hook is not None:
                self.loop.add_hook(part.hook, f"{part.slot}:{part.name}")
        self.loop.on_fault = self._on_fault
        return self.loop

    def _on_fault(self, health, err) -> None:
        name = f"part_failed:{health.name}"
        if err is not None:
            self.alarms.raise_(name, health.last_error)
        elif health.consecutive == 0 and health.failures:
            self.alarms.clear(name)
        if health.slow and err is None:
            self.alarms.raise_(f"part_slow:{health.name}", f"{health.max_s * 1000:.0f} ms")

    def install_signals(self) -> None:
        """SIGTERM (systemd stop) and SIGINT end the run after the cycle in progress."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop()

    def run(self, cycles: int | None = None, progress: Callable[[int], None] | None = None,
            chunk: int | None = None) -> int:
        """Run `cycles` cycles (None: until stopped); returns the cycles done. `progress(done)` is called
        every `chunk` cycles."""
        loop = self.loop if self.loop is not None else self.start()
        if progress is None or chunk is None:
            before = loop.cycle_no
            loop.run(cycles)
            return loop.cycle_no - before
        done = 0
        while (cycles is None or done < cycles) and not loop.stop_requested:
            n = chunk if cycles is None else min(chunk, cycles - done)
            before = loop.cycle_no
            loop.run(n)
            done += loop.cycle_no - before
            progress(done)
        return done

    def close(self) -> None:
        """Close the parts in reverse order, then the loop (devices, recorder), then the provider."""
        if self._closed:
            return
        self._closed = True
        for part in reversed(self._ordered()):
            if part.close is not None:
                try:
                    part.close()
                except Exception:          # noqa: BLE001 - one part that fails to close must not keep others open
                    log.exception("closing %s:%s", part.slot, part.name)
        if self.loop is not None:
            self.loop.close()
        try:
            self.provided.close()
        except Exception:                  # noqa: BLE001
            log.exception("closing the device provider")

    def stats(self) -> dict:
        out = self.loop.stats.as_dict() if self.loop is not None else {}
        if self.loop is not None and self.loop.health:
            out["parts"] = {k: h.as_dict() for k, h in self.loop.health.items()}
        if self.alarms.active:
            out["host_alarms"] = self.alarms.snapshot()
        return out
