"""Requests from the technician (TUI) and verified cloud commands, as a device the loop polls.

They enter the process image like any reading, so the step stays pure and a recording replays manual
actions too. Nothing here can exceed a limit: the interlocks clamp whatever is asked.
"""
from __future__ import annotations

import threading

from controller.core.layout import ALARM_NAMES, OP_AUTO, OP_MANUAL, OP_STANDBY
from drivers.base import QUALITY_OK, Sink

MODES = {"auto": OP_AUTO, "manual": OP_MANUAL, "standby": OP_STANDBY}


class OperatorInputs:
    """Thread-safe holder: set_* from any thread, acquire() from the scan cycle."""

    name = "operator"
    kind = "operator"

    def __init__(self):
        self._lock = threading.Lock()
        self.mode = OP_AUTO
        self.battery_kw = 0.0
        self.genset = -1.0          # -1 no request, 0 stop, 1 run
        self.reserve_pct = 0.0      # 0: the profile's reserve
        self._ack_bits = 0

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        with self._lock:
            self.mode = MODES[mode]

    def set_battery_kw(self, kw: float) -> None:
        with self._lock:
            self.battery_kw = float(kw)

    def set_genset(self, run: bool | None) -> None:
        with self._lock:
            self.genset = -1.0 if run is None else (1.0 if run else 0.0)

    def set_reserve_pct(self, pct: float) -> None:
        with self._lock:
            self.reserve_pct = float(pct)

    def acknowledge(self, bits: int) -> None:
        """Acknowledge alarms (a bit mask); delivered to the step in the next cycle only. Checked here,
        not in the cycle: a mask beyond the alarm bits would overflow the float the step reads."""
        if type(bits) is not int or not 0 <= bits < 1 << len(ALARM_NAMES):
            raise ValueError(f"bits must be an integer in 0..{(1 << len(ALARM_NAMES)) - 1} "
                             f"(one bit per alarm), got " + (f"an integer of {bits.bit_length()} bits" if type(bits) is int
                                                 else f"a {type(bits).__name__}"))
        with self._lock:
            self._ack_bits |= int(bits)

    def acquire(self, now_mono_s: float, sink: Sink) -> None:
        with self._lock:
            values = (("mode", float(self.mode)), ("battery_kw", self.battery_kw), ("genset", self.genset),
                      ("reserve_pct", self.reserve_pct), ("ack_bits", float(self._ack_bits)))
            self._ack_bits = 0
        for point, value in values:
            sink(self.name, point, value, now_mono_s, QUALITY_OK)

    def actuate(self, commands, now_mono_s: float) -> None:
        pass

    def close(self) -> None:
        pass
