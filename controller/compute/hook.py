"""The scan loop's compute hook: learns PV and load forecasts from the images, and every `period_s` computes
the green headroom and the defer/resume requests and hands them to `publish` (the uplink's MQTT side).

    book = JobBook(); inputs = controller.netinputs.NetworkInputs(cfg, listeners=[book])   # fed by the uplink
    hook = ComputeHook(cfg, book, publish=lambda kind, payload, retain: ...)
    ScanLoop(..., hooks=[hook])

The forecasters are the controller's own kernels (controller/core/forecast.py: clear sky x learned derate
x pushed weather warning for PV; the 96-slot load profile + announced jobs from the book for the
loads), kept here in the hook's own state so the signal exists whatever the control strategy. The first
forecast step is replaced by the measurement (PV available, loads), as the MPC does. `history` keeps
the last `history_max` (t_s, headroom dict, requests) for the simulator and tests (a week of minutes).
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np

from controller.compute.headroom import Outlook, defer_decisions, green_headroom
from controller.compute.jobs import JobBook
from controller.compute.planned import planned_requests, planning
from controller.core.forecast import (N_DERATE_STATE, N_LOAD_STATE, clear_pv_kw, derate_new_state, derate_update,
                                      event_factor, load_forecast, load_new_state, load_update, pv_forecast,
                                      pv_params)
from controller.points import INDEX, Q_OK
from drivers import compute as C

_PV, _PVAV, _IT, _COOL, _AUX, _SOC = (INDEX[n] for n in ("pv_kw", "pv_available_kw", "it_kw", "cooling_kw",
                                                         "aux_kw", "soc_pct"))
_WX = tuple(INDEX.get(n) for n in ("wx_pv_cut", "wx_start_s", "wx_end_s", "wx_ramp_s"))
_HAS_WX = None not in _WX


class ComputeHook:
    def __init__(self, cfg: dict, book: JobBook, publish: Callable[[str, bytes, bool], None] | None = None,
                 period_s: float = 60.0, horizon_h: float = 24.0, dt_h: float = 0.25,
                 clock_status: Callable[[], str] = lambda: "unknown", keep_history: bool = True,
                 history_max: int = 10_000):
        site, pv = cfg["site"], cfg.get("pv") or {}
        self.cfg, self.book, self.publish = cfg, book, publish
        self.period_s, self.dt_h = period_s, dt_h
        self.H = int(round(horizon_h / dt_h))
        self.clock_status = clock_status
        self.pv = pv_params(site["latitude"], site["longitude"], site["altitude_m"], pv.get("rated_kw", 0.0),
                            tilt_deg=pv.get("tilt_deg", 30.0), azimuth_deg=pv.get("azimuth_deg", 180.0))
        self.derate = np.zeros(N_DERATE_STATE)
        derate_new_state(self.pv, self.derate)
        self.load: np.ndarray | None = None     # made on the first fresh load reading (its prior level)
        self.jobs = book.forecast_arrays(0.0)
        self.next_t: float | None = None
        self.history: deque | None = deque(maxlen=history_max) if keep_history else None   # bounded
        self.it_share = 1.0
        self.has_pv = pv.get("rated_kw", 0.0) > 0.0
        z = np.zeros(1)
        self._calm = (z, z, z, z, 0)            # no pushed weather warning (the kernels only read it)
        self._ev = (np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1), 1)   # one warning, filled per cycle
        self._warm_up()

    def _warm_up(self) -> None:
        """Compile (or load from numba's cache) every kernel the hook calls, before the first cycle."""
        green_headroom(Outlook.from_site(self.cfg, [10.0, 0.0], [5.0, 5.0], 50.0, self.dt_h))
        scratch, out = np.zeros(N_LOAD_STATE), np.zeros(2)
        load_new_state(scratch, 0.2, 3600.0, 1.0)
        kw, start, dur, nj = self.book.forecast_arrays(0.0)
        load_update(scratch, 0.0, 1.0, kw, start, dur, nj)
        load_forecast(0.0, 2, self.dt_h, scratch, kw, start, dur, nj, out)
        derate = self.derate.copy()
        z = np.zeros(1)
        derate_update(derate, self.pv, 0.0, 0.0, clear_pv_kw(0.0, self.pv), event_factor(0.0, z, z, z, z, 0), False)
        pv_forecast(0.0, 2, self.dt_h, self.pv, derate, z, z, z, z, 0, 4, out)

    def _warning(self, v, q):
        if not _HAS_WX or any(q[i] != Q_OK for i in _WX) or v[_WX[0]] <= 0.0:
            return self._calm
        start, end, cut, ramp, _ = self._ev
        start[0], end[0], cut[0], ramp[0] = v[_WX[1]], v[_WX[2]], v[_WX[0]], v[_WX[3]]
        return self._ev

    def __call__(self, loop, image, cmd, events, n) -> None:
        t = float(image["t_s"])
        v, q = image["value"], image["quality"]
        loads_ok = q[_IT] == Q_OK and q[_COOL] == Q_OK and q[_AUX] == Q_OK
        load_kw = float(v[_IT] + v[_COOL] + v[_AUX])
        if loads_ok:
            kw, start, dur, nj = self.jobs
            if self.load is None:
                self.load = np.zeros(N_LOAD_STATE)
                load_new_state(self.load, 0.2, 3600.0, load_kw)
            load_update(self.load, t, load_kw, kw, start, dur, nj)
            if load_kw > 1e-6:
                self.it_share = 0.99 * self.it_share + 0.01 * min(1.0, float(v[_IT]) / load_kw)
        ev = self._warning(v, q)
        if self.has_pv and (q[_PVAV] == Q_OK or q[_PV] == Q_OK):
            # the resource: PV available when the inverters report it (not lowered by curtailment)
            measured = float(v[_PVAV]) if q[_PVAV] == Q_OK else float(v[_PV])
            derate_update(self.derate, self.pv, t, measured, clear_pv_kw(t, self.pv), event_factor(t, *ev), False)
        if self.next_t is not None and t < self.next_t:
            return
        self.next_t = t + self.period_s
        self.jobs = self.book.forecast_arrays(t)
        if q[_SOC] != Q_OK or self.load is None:
            return                               # no battery or load yet: no signal (the retained one expires)
        pv_f, load_f = np.zeros(self.H), np.zeros(self.H)
        if self.has_pv:
            pv_forecast(t, self.H, self.dt_h, self.pv, self.derate, *ev, 4, pv_f)
            if q[_PVAV] == Q_OK:
                pv_f[0] = float(v[_PVAV])
            elif q[_PV] == Q_OK:
                pv_f[0] = float(v[_PV])
        kw, start, dur, nj = self.jobs
        load_forecast(t, self.H, self.dt_h, self.load, kw, start, dur, nj, load_f)
        if loads_ok:
            load_f[0] = load_kw
        o = Outlook.from_site(self.cfg, pv_f, load_f, float(v[_SOC]), self.dt_h, it_share=max(0.05, self.it_share))
        h = green_headroom(o)
        state = getattr(loop, "state", None)
        if planning(state):     # the MPC places the deferrable jobs: its plan decides (controller/compute/planned.py)
            reqs = planned_requests(self.book, v, q, state, t, margin_s=self.period_s)
        else:                   # no plan (rule strategy): hold when short now, resume on green headroom
            reqs = defer_decisions(self.book, o, t)
        for r in reqs:
            (self.book.mark_deferred if r["action"] == "defer" else self.book.mark_resumed)(r["job"], t)
        if self.publish is not None:
            self.publish(C.HEADROOM, C.encode_headroom(h, t, self.clock_status(), self.period_s), True)
            for r in reqs:
                self.publish(C.DEFER, C.encode_defer(r, t), False)
        if self.history is not None:
            self.history.append((t, h, reqs))
