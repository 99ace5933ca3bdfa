"""Host-side alarms: what the scan cycle's kernels cannot see (a hook that fails, a full disk, a device
port missing at start-up) made as visible as a kernel alarm.

Kernel alarms live in the image and the step (controller/core/alarms.py) so that replay reproduces them;
these concern the process around it. Each raise and clear is logged once (the journal on a gateway),
kept in a bounded table (the TUI snapshot and `run`'s final stats), and handed to listeners: the uplink
registers one so the cloud receives them as alarm records like any other.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("edge_ems.alarms")
MAX_ACTIVE = 64          # distinct host alarms kept; more are counted, not stored
MAX_DETAIL = 200


class HostAlarms:
    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.active: dict[str, dict] = {}
        self.raised = 0
        self.cleared = 0
        self.overflow = 0
        self.listeners: list[Callable[[str, str, str], None]] = []   # (state, name, detail)

    def raise_(self, name: str, detail: str = "") -> None:
        if name in self.active:
            self.active[name]["count"] += 1
            return
        if len(self.active) >= MAX_ACTIVE:
            self.overflow += 1
            return
        detail = str(detail)[:MAX_DETAIL]
        self.active[name] = {"since": self.clock(), "detail": detail, "count": 1}
        self.raised += 1
        log.warning("alarm raised: %s %s", name, detail)
        self._tell("raised", name, detail)

    def clear(self, name: str) -> None:
        if self.active.pop(name, None) is None:
            return
        self.cleared += 1
        log.warning("alarm cleared: %s", name)
        self._tell("cleared", name, "")

    def set(self, name: str, on: bool, detail: str = "") -> None:
        if on:
            self.raise_(name, detail)
        else:
            self.clear(name)

    def _tell(self, state: str, name: str, detail: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(state, name, detail)
            except Exception:          # noqa: BLE001 - an alarm listener never stops the alarm
                log.exception("alarm listener")

    def snapshot(self) -> dict:
        return {name: dict(a) for name, a in self.active.items()}
