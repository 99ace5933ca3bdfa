"""Green headroom: how many kW the compute platform can add, now and over the next hours, from PV and the
battery, without grid or diesel; and defer/resume requests for deferrable jobs when the site is short.

Pure functions over forecast arrays (no I/O, no clock): the caller passes the PV and load forecasts
(controller/core/forecast.py `pv_forecast` / `load_forecast`, announced jobs included) and the battery
state. The site simulation inside the bisection is a numba kernel (`_shortfall_rows`): a 24 h horizon in
15-min steps with ~31 windows x 40 bisection steps is ~120 000 battery steps, about 1 ms compiled, so the
once-a-minute computation stays far inside a scan period even on a Cortex-A53.

Definition. Adding x kW during a window W is *green* when, simulating the site over the whole forecast
horizon (battery covers deficits down to the outage reserve `reserve_pct`, surplus charges it up to
`soc_max_pct` within its power limits, the rest of a deficit comes from grid/diesel, the rest of a
surplus is curtailed or exported), the grid/diesel energy does not grow. So headroom is energy that
would otherwise be curtailed or exported, or battery energy that is not needed later in the horizon:
drawing the battery now and buying it back from diesel tonight is not green. The largest such x is
found by bisection (the added grid/diesel energy is non-decreasing in x).
Beyond the horizon nothing is known: battery energy above the reserve at the horizon's end counts as
available, so pass a horizon that reaches past the next night (24-48 h) for day-time figures.

- `now_kw`: over the next 15 minutes (the first steps covering 0.25 h).
- `windows_kw`: constant over [now, now + W) for W in `windows_h`.
- `hourly_kw[k]`: added in hour k alone.
- `short_kw`: the grid/diesel kW the baseline (no added load) needs in the first step: > 0 means the
  site is short now and deferrable jobs should pause.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

EPS_KWH = 1e-6


@dataclass
class Outlook:
    """The forecast and battery state headroom is computed from (kW per step of dt_h hours)."""

    dt_h: float
    pv_kw: np.ndarray            # PV available (before curtailment), forecast per step
    load_kw: np.ndarray          # loads (IT + cooling + aux), forecast per step, announced jobs included
    soc_pct: float
    capacity_kwh: float
    reserve_pct: float           # floor: the outage reserve is not green headroom
    soc_max_pct: float
    charge_max_kw: float
    discharge_max_kw: float
    eta_charge: float
    eta_discharge: float
    it_share: float = 1.0        # added IT kW draws it / it_share at the site (cooling); 1 / PUE_electric

    @classmethod
    def from_site(cls, cfg: dict, pv_kw, load_kw, soc_pct: float, dt_h: float, it_share: float = 1.0) -> "Outlook":
        b = cfg["battery"]
        pv, load = np.asarray(pv_kw, dtype=float), np.asarray(load_kw, dtype=float)
        if pv.shape != load.shape or pv.ndim != 1 or len(pv) == 0:
            raise ValueError(f"pv_kw and load_kw must be 1-D of the same length, got {pv.shape} and {load.shape}")
        if not 0.0 < it_share <= 1.0:
            raise ValueError(f"it_share: expected a fraction in (0, 1] (IT / loads), got {it_share}")
        return cls(dt_h, pv, load, float(soc_pct), b["capacity_kwh"], b["reserve_pct"], b["soc_max_pct"],
                   b["charge_max_kw"], b["discharge_max_kw"], b["eta_charge"], b["eta_discharge"], it_share)


@njit(cache=True)
def _shortfall_rows(pv, load, extra, e0, floor, top, dt, eta_c, eta_d, p_ch, p_dis, out):
    """out[r]: grid/diesel kWh over the horizon with extra[r, k] site kW added in step k (numba kernel)."""
    m, n = extra.shape
    for r in range(m):
        e = e0
        short = 0.0
        for k in range(n):
            net = pv[k] - load[k] - extra[r, k]
            if net >= 0.0:
                room = max(top - e, 0.0) / (eta_c * dt)
                e += min(net, p_ch, room) * eta_c * dt
            else:
                deficit = -net
                dis = min(deficit, p_dis, max(e - floor, 0.0) * eta_d / dt)
                e -= dis / eta_d * dt
                short += (deficit - dis) * dt
        out[r] = short


def shortfall_kwh(o: Outlook, extra_kw: np.ndarray) -> np.ndarray:
    """Grid/diesel kWh over the horizon for each row of `extra_kw` (shape (m, H): added site kW per step)."""
    extra = np.ascontiguousarray(np.atleast_2d(np.asarray(extra_kw, dtype=np.float64)))
    cap = o.capacity_kwh
    out = np.zeros(extra.shape[0])
    _shortfall_rows(np.ascontiguousarray(o.pv_kw, dtype=np.float64), np.ascontiguousarray(o.load_kw, dtype=np.float64),
                    extra, o.soc_pct / 100.0 * cap, o.reserve_pct / 100.0 * cap, o.soc_max_pct / 100.0 * cap, o.dt_h,
                    o.eta_charge, o.eta_discharge, o.charge_max_kw, o.discharge_max_kw, out)
    return out


def _max_green(o: Outlook, masks: np.ndarray, iters: int = 40) -> np.ndarray:
    """Largest x >= 0 per mask row (1 where x is added) with no added grid/diesel energy, site kW."""
    masks = np.atleast_2d(masks).astype(float)
    base = shortfall_kwh(o, np.zeros((1, masks.shape[1])))[0]
    lo = np.zeros(len(masks))
    hi = np.full(len(masks), float(np.max(o.pv_kw, initial=0.0)) + o.discharge_max_kw + 1.0)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        ok = shortfall_kwh(o, masks * mid[:, None]) <= base + EPS_KWH
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    return lo


def green_headroom(o: Outlook, windows_h=(1, 2, 4, 8, 12, 24)) -> dict:
    """The retained compute/headroom payload's figures (IT kW: site kW x it_share). See module doc."""
    n = len(o.pv_kw)
    t_end = (np.arange(n) + 1) * o.dt_h            # end of each step, h from now
    t_beg = np.arange(n) * o.dt_h
    rows, names = [], []
    rows.append(t_beg < 0.25 - 1e-9)
    names.append("now")
    wins = [w for w in windows_h if w <= n * o.dt_h + 1e-9]
    for w in wins:
        rows.append(t_beg < w - 1e-9)
    n_hours = int(np.ceil(n * o.dt_h - 1e-9))
    for h in range(n_hours):
        rows.append((t_beg >= h - 1e-9) & (t_beg < h + 1 - 1e-9))
    x = _max_green(o, np.array(rows)) * o.it_share
    base = shortfall_kwh(o, np.zeros((1, n)))
    first = _first_step_short_kw(o)
    return {
        "now_kw": round(float(x[0]), 2),
        "windows_kw": {f"{w:g}h": round(float(v), 2) for w, v in zip(wins, x[1:1 + len(wins)])},
        "hourly_kw": [round(float(v), 2) for v in x[1 + len(wins):]],
        "short_kw": round(first, 2),
        "short_kwh_horizon": round(float(base[0]), 3),
        "soc_pct": round(o.soc_pct, 1), "reserve_pct": o.reserve_pct,
        "horizon_h": round(float(t_end[-1]), 2),
        "basis": "PV forecast + battery above reserve; no grid, no diesel, no added shortfall later",
    }


def _first_step_short_kw(o: Outlook) -> float:
    one = Outlook(o.dt_h, o.pv_kw[:1], o.load_kw[:1], o.soc_pct, o.capacity_kwh, o.reserve_pct, o.soc_max_pct,
                  o.charge_max_kw, o.discharge_max_kw, o.eta_charge, o.eta_discharge, o.it_share)
    return float(shortfall_kwh(one, np.zeros((1, 1)))[0]) / o.dt_h


def window_headroom_kw(o: Outlook, hours: float) -> float:
    """IT kW addable constantly over [now, now + hours) (clipped to the horizon)."""
    t_beg = np.arange(len(o.pv_kw)) * o.dt_h
    return float(_max_green(o, (t_beg < hours - 1e-9)[None, :])[0]) * o.it_share


def defer_decisions(book, o: Outlook, t_s: float, min_hold_s: float = 900.0, margin: float = 0.1) -> list[dict]:
    """Defer / resume requests for the deferrable jobs of a controller.compute.jobs.JobBook. Pure policy:
    the caller publishes the requests (drivers/compute.encode_defer) and marks them in the book.

    - Site short now (short_kw > 0): defer running deferrable jobs, largest first, until their kW cover
      the shortfall; only jobs that can still meet their deadline if paused for `min_hold_s`.
    - A deferred job resumes when the green headroom over its remaining run time is at least its kW
      x (1 + margin) and it has been paused `min_hold_s` (no flapping), or unconditionally when its
      latest start (deadline - remaining time) has come ("deadline").
    """
    out = []
    for job, rem in sorted(book.deferred.items()):
        j = book.jobs[job]
        resume_by = j.latest_end_s - rem
        if t_s >= resume_by:
            out.append({"job": job, "action": "resume", "reason": "deadline", "resume_by_s": resume_by})
            continue
        if t_s - book.deferred_at.get(job, t_s) < min_hold_s:
            continue
        green = window_headroom_kw(o, rem / 3600.0)
        if green >= j.kw * (1.0 + margin):
            out.append({"job": job, "action": "resume", "resume_by_s": resume_by,
                        "reason": f"green headroom {green:.1f} kW over {rem / 3600.0:.1f} h"})
    short = _first_step_short_kw(o) * o.it_share
    if short > 0.0:
        running = [j for j in book.jobs.values() if j.deferrable and book.active(j, t_s)]
        cover = 0.0
        for j in sorted(running, key=lambda j: (-j.kw, j.id)):
            if cover >= short:
                break
            rem = j.end_s - max(t_s, j.start_s)
            resume_by = j.latest_end_s - rem
            if resume_by < t_s + min_hold_s:
                continue                        # pausing it would miss its deadline
            out.append({"job": j.id, "action": "defer", "reason": f"site short {short:.1f} kW",
                        "resume_by_s": resume_by})
            cover += j.kw
    return out
