"""1-minute telemetry summaries, accumulated from the process images.

Cheap per cycle (a handful of numpy element-wise ops on ~16 values); a record body is built only when
a minute closes (on the image's UTC time, so the same in simulation and in the field).
The uplink's provisional 15-minute interval is not integrated here: it is the controller's energy account's
(controller/carbon/account.py, the ledger's integration and gap rule), so the signed interval that
replaces it carries the same kWh.
"""
from __future__ import annotations

import math

import numpy as np

from controller.core import layout as L
from controller.points import CATALOGUE, INDEX, Q_OK

KEY_POINTS = ("grid_kw", "pv_kw", "battery_kw", "genset_kw", "soc_pct", "it_kw", "cooling_kw", "aux_kw",
              "battery_temp_c", "cell_v_max", "cell_v_min", "cell_temp_max_c", "fuel_pct", "grid_price",
              "grid_co2_kg_per_kwh", "ambient_c")
UNITS = {p.name: p.unit for p in CATALOGUE}


def _r(x: float, nd: int = 3):
    return None if not math.isfinite(x) else round(float(x), nd)


class MinuteSummary:
    def __init__(self, points=KEY_POINTS, window_s: int = 60):
        self.points = tuple(points)
        self.idx = np.array([INDEX[p] for p in self.points])
        self.window_s = window_s
        self._reset(None)

    def _reset(self, window):
        n = len(self.idx)
        self.window = window
        self.sum = np.zeros(n)
        self.min = np.full(n, np.inf)
        self.max = np.full(n, -np.inf)
        self.n_ok = np.zeros(n, dtype=np.int64)
        self.cycles = 0
        self.mode_max = 0
        self.battery_cmd_sum = 0.0

    def add(self, t_s: float, value: np.ndarray, quality: np.ndarray, cmd: np.ndarray) -> dict | None:
        """Accumulate one image; return the closed minute's body when this image starts a new one."""
        window = int(t_s // self.window_s)
        out = None
        if self.window is not None and window != self.window:
            out = self.body()
        if window != self.window:
            self._reset(window)
        v = value[self.idx]
        ok = quality[self.idx] == Q_OK
        self.sum += np.where(ok, v, 0.0)
        self.min = np.where(ok, np.minimum(self.min, v), self.min)
        self.max = np.where(ok, np.maximum(self.max, v), self.max)
        self.n_ok += ok
        self.cycles += 1
        self.mode_max = max(self.mode_max, int(cmd[L.C_MODE]))
        self.battery_cmd_sum += float(cmd[L.C_BATTERY_KW])
        return out

    def body(self) -> dict:
        pts = {}
        for i, name in enumerate(self.points):
            n = int(self.n_ok[i])
            pts[name] = {"mean": _r(self.sum[i] / n) if n else None, "min": _r(self.min[i]) if n else None,
                         "max": _r(self.max[i]) if n else None, "n": n}
        start = self.window * self.window_s
        return {"start_s": start, "end_s": start + self.window_s, "cycles": self.cycles, "points": pts,
                "battery_cmd_kw_mean": _r(self.battery_cmd_sum / max(1, self.cycles)),
                "mode_worst": L.MODE_NAMES[min(self.mode_max, len(L.MODE_NAMES) - 1)]}
