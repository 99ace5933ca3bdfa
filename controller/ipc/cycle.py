"""The cycle side of the IPC server: what :meth:`IpcServer.hook` does in the scan cycle. Only in-memory
updates (counters, the history and export rings, today's energy) and, while a client is attached, one
reference swap of copied arrays and a non-blocking wake byte: nothing here can block the cycle."""
from __future__ import annotations

import math
import os
import time

import numpy as np

from controller.core import layout as L
from controller.ipc.common import (EXPORT_RING_N, EXPORT_RING_STEP_S, EXPORT_TAIL_N, HISTORY_N, HISTORY_STEP_S,
                                   PLAN_SLOTS, _stats_copy)
from controller.points import CATALOGUE, INDEX, Q_ERROR, Q_OK


class CycleSide:
    """Mixed into :class:`controller.ipc.server.IpcServer`."""

    def hook(self, loop, image, cmd, events, n) -> None:
        t0 = time.perf_counter()
        self.loop = loop
        t_s = float(image["t_s"])
        value = image["value"]
        quality = image["quality"]
        if self._err_cycles is None:
            self._err_cycles = np.zeros(len(CATALOGUE), dtype=np.int64)
            self._stale_cycles = np.zeros(len(CATALOGUE), dtype=np.int64)
        self._err_cycles += quality == Q_ERROR
        self._stale_cycles += quality != Q_OK
        for i in range(n):
            self._event_seq += 1
            self._events.append((self._event_seq, t_s, int(events[i, 0]), float(events[i, 1])))
        self._integrate(image, loop)
        if t_s >= self._hist_next_t:
            self._hist_next_t = t_s + HISTORY_STEP_S if self._hist_next_t == -math.inf else self._hist_next_t + HISTORY_STEP_S
            if self._hist_next_t < t_s:
                self._hist_next_t = t_s + HISTORY_STEP_S
            row = self._hist[self._hist_n % HISTORY_N]
            row[0] = t_s
            row[1:] = [value[INDEX["soc_pct"]], value[INDEX["pv_kw"]], value[INDEX["battery_kw"]],
                       value[INDEX["grid_kw"]], value[INDEX["genset_kw"]], self._load_kw(value)]
            self._hist_n += 1
        if t_s >= self._ring_next_t:
            size = EXPORT_RING_N if self.recording_path is None else EXPORT_TAIL_N
            if self._ring is None:
                self._ring = np.full((size, 1 + 2 * len(CATALOGUE) + L.N_COMMANDS), np.nan)
            if self.recording_path is None:
                self._ring_next_t = t_s + EXPORT_RING_STEP_S
            r = self._ring[self._ring_n % size]
            r[0] = math.nan                      # an export reading this row meanwhile skips it
            r[1:1 + len(CATALOGUE)] = value
            r[1 + len(CATALOGUE):1 + 2 * len(CATALOGUE)] = quality
            r[1 + 2 * len(CATALOGUE):] = cmd
            r[0] = t_s
            self._ring_n += 1
        wall = time.monotonic()
        # nobody attached: no copies at all (the next cycle after a connect publishes)
        if self._conns and wall - self._last_pub_wall >= 1.0 / self.publish_hz:
            self._last_pub_wall = wall
            b = loop.builder
            self._pub_seq += 1
            self._pub = (self._pub_seq, int(image["cycle"]), t_s, value.copy(), quality.copy(), np.array(cmd),
                         b.stamp.copy(), loop.clock.monotonic(), self._err_cycles.copy(), self._stale_cycles.copy(),
                         list(self._events), dict(self.today), _stats_copy(loop.stats), float(loop.state[L.S_TRIPS]),
                         loop.state[PLAN_SLOTS].copy() if PLAN_SLOTS else None)
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"p")
                except OSError:
                    pass                        # pipe full: the thread is already awake
        us = (time.perf_counter() - t0) * 1e6
        if us > self.stats["hook_max_us"]:
            self.stats["hook_max_us"] = us

    @staticmethod
    def _load_kw(value) -> float:
        return float(value[INDEX["grid_kw"]] + value[INDEX["pv_kw"]] + value[INDEX["battery_kw"]]
                     + value[INDEX["genset_kw"]])

    def _integrate(self, image, loop) -> None:
        """Today's (site-local day) energy: a view of the controller's energy account (controller/carbon/
        account.py), the same integration and gap rule as the ledger's interval and the uplink's provisional
        one; with the runtime's shared account this is a look-up, the image was integrated once already."""
        self.account.update(image, loop.period_s)
        self.today = self.account.today()
