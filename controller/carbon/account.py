"""One energy account per controller: the ledger's interval, the uplink's provisional interval and the
TUI's "today" are views of the same integration, so the three figures cannot disagree.

Before this, three integrators (carbon hook, uplink IntervalTotals, IPC "today") each had their own gap
rule (not integrated above max(10 periods, 60 s) / clamped to 10 s / not integrated above 60 s) and their
own idea of a load and of a stale point; after a clock jump or a stall the cloud's provisional interval,
the signed one that replaces it and the operator's screen showed three different kWh.

The integration is the ledger's (controller/carbon/intervals.py `Interval.add`): each image is integrated
once per cycle however many parts read the account (`update` is idempotent per image), split at the
15-minute boundaries, with ONE gap rule: a span of 0 s or less, longer than `gap_limit_s` (the loop
stood still or the clock stepped), or starting inside an interval already closed (the clock stepped
back) is not integrated; the next interval counts the jump (`clock_jumps`) and its `covered_s` shows it.

Intervals are closed here; `on_close(iv, partial, t_now)` lets the ledger settle and sign one as it
closes; `closed` keeps the last few (bounded) for the uplink's provisional record. The site-local day
is the sum of its closed intervals plus the one in progress: every UTC offset in use is a multiple of
15 minutes, so a local midnight is always an interval boundary and no interval straddles two days.
"""
from __future__ import annotations

from collections import deque
from datetime import datetime, timezone
from typing import Callable

from controller.carbon.intervals import INTERVAL_S, Constants, Interval, interval_start

CLOSED_KEEP = 8          # closed intervals kept for readers that look once per cycle


def gap_limit_s(period_s: float) -> float:
    """The longest span integrated by sample-and-hold: beyond it nothing is known about the gap."""
    return max(10.0 * period_s, 60.0)


def _zero_day() -> dict:
    return {"e": dict.fromkeys(Interval(0.0).e, 0.0), "grid_kg_total": 0.0, "diesel_l": 0.0, "covered_s": 0.0,
            "estimated_s": 0.0, "clock_jumps": 0, "intervals": 0}


def _accumulate(d: dict, iv: Interval) -> None:
    for key, x in iv.e.items():
        d["e"][key] += x
    d["grid_kg_total"] += iv.grid_kg_total
    d["diesel_l"] += iv.diesel_l
    d["covered_s"] += iv.covered_s
    d["estimated_s"] += iv.estimated_s
    d["clock_jumps"] += iv.clock_jumps


def _r(x: float, nd: int = 6) -> float:
    return round(float(x), nd)


class EnergyAccount:
    """Build once per controller, hand the same object to the carbon hook, the uplink hook and the IPC
    server (each calls `update(image, period_s)` first; only the first call of a cycle integrates)."""

    def __init__(self, cfg, carbon: dict | None = None, jobs=None, constants: Constants | None = None):
        self.k = constants if constants is not None else Constants.from_site(cfg, carbon)
        self.jobs = jobs                         # JobBook: IT kWh per job (the ledger's per-job figures)
        self.tz = _site_tz(cfg)
        self.iv: Interval | None = None          # the interval in progress
        self.resume: Interval | None = None      # a checkpointed interval to carry on (the ledger sets it)
        self.closed_start = -1e18                # intervals starting at or before this are closed for good
        self.prev_t: float | None = None
        self.now_t: float | None = None
        self.pending_jumps = 0
        self.gaps = 0                            # spans not integrated (jumps, stalls), all time
        self.on_close: Callable[[Interval, bool, float | None], None] | None = None
        self.closed: deque = deque(maxlen=CLOSED_KEEP)   # (seq, Interval), oldest first
        self.closed_seq = 0
        self._key = None
        self._days: dict[str, dict] = {}
        self._day_cache: tuple[float | None, str | None] = (None, None)

    def bind(self, constants: Constants, jobs) -> None:
        """The ledger's constants and jobs win (its carbon table may come from elsewhere than the profile)."""
        self.k, self.jobs = constants, jobs

    # -- per cycle ----------------------------------------------------------------------------------
    def update(self, image, period_s: float) -> None:
        t = float(image["t_s"])
        try:
            key = (int(image["cycle"]), t)
        except (KeyError, ValueError, IndexError):
            key = (None, t)
        if key == self._key:
            return                               # this image is already in the account
        self._key = key
        self.now_t = t
        if self.resume is not None:
            iv, self.resume = self.resume, None
            if iv.t_start == interval_start(t):
                self.iv = iv                      # a restart inside the interval: carry on integrating it
            elif iv.t_start < interval_start(t):
                self._close(iv, True, t)
        prev, self.prev_t = self.prev_t, t
        if prev is None:
            return
        dt = t - prev
        if not 0.0 < dt <= gap_limit_s(period_s) or interval_start(prev) <= self.closed_start:
            self.pending_jumps += 1
            self.gaps += 1
            return
        jump, self.pending_jumps = self.pending_jumps, 0
        v = image["value"].tolist()
        q = image["quality"].tolist()
        jobs_kw = self.jobs.power_at(t - dt / 2.0) if self.jobs is not None else None   # mid-span
        t0 = prev
        while dt > 1e-9:
            start = interval_start(t0)
            if self.iv is None or self.iv.t_start != start:
                if self.iv is not None:
                    self._close(self.iv, False, t)
                self.iv = Interval(start)
            span = min(dt, start + INTERVAL_S - t0)
            self.iv.add(v, q, t0, span, self.k, jobs_kw)
            self.iv.clock_jumps += jump
            jump = 0
            t0 += span
            dt -= span

    def close_current(self, t_now: float | None = None) -> None:
        """Stop without a checkpoint: the interval in progress is closed now (partial when not covered)."""
        if self.resume is not None and self.iv is None:
            self.iv, self.resume = self.resume, None
        if self.iv is not None and self.iv.covered_s > 0.0:
            self._close(self.iv, False, t_now)
        self.iv = None

    def _close(self, iv: Interval, partial: bool, t_now: float | None) -> None:
        if self.on_close is not None:
            self.on_close(iv, partial, t_now)
        self.closed_start = iv.t_start
        self.closed_seq += 1
        self.closed.append((self.closed_seq, iv))
        day = self.day_of(iv.t_start)
        d = self._days.get(day)
        if d is None:
            while len(self._days) >= 2:          # the day in progress and the one before
                self._days.pop(min(self._days))
            d = self._days[day] = _zero_day()
        _accumulate(d, iv)
        d["intervals"] += 1

    # -- views --------------------------------------------------------------------------------------
    def closed_since(self, seq: int) -> list[tuple[int, Interval]]:
        """The intervals closed after `seq` (a reader's last seen), oldest first."""
        if not self.closed or self.closed[-1][0] <= seq:
            return []
        return [(s, iv) for s, iv in self.closed if s > seq]

    def day_of(self, t_s: float) -> str:
        """The site-local date (YYYY-MM-DD) of the interval that holds t_s (cached per interval)."""
        start = interval_start(t_s)
        if self._day_cache[0] != start:
            self._day_cache = (start, datetime.fromtimestamp(start, self.tz).strftime("%Y-%m-%d"))
        return self._day_cache[1]

    def today(self) -> dict:
        """The site-local day of the latest image: kWh by source and sink, CO2, coverage (unrounded)."""
        if self.now_t is None:
            return _day_view(_zero_day(), None, self.k)
        day = self.day_of(self.now_t)
        d = _zero_day()
        if day in self._days:
            _accumulate(d, _Sum(self._days[day]))
            d["intervals"] = self._days[day]["intervals"]
        if self.iv is not None and self.day_of(self.iv.t_start) == day:
            _accumulate(d, self.iv)
        return _day_view(d, day, self.k)

    def provisional(self, iv: Interval) -> dict:
        """An interval as the uplink's `interval` body, `provisional: true` (the ledger's signed record for
        the same start_s replaces it); the same figures as the ledger's, before the settlement."""
        e = iv.e
        diesel_kg = iv.diesel_l * self.k.diesel_kg_per_l
        supplied = e["grid_import"] + e["pv"] + e["diesel"]
        return {"start_s": iv.t_start, "end_s": iv.t_start + INTERVAL_S, "covered_s": _r(iv.covered_s, 3),
                "grid_import_kwh": _r(e["grid_import"]), "grid_export_kwh": _r(e["export"]), "pv_kwh": _r(e["pv"]),
                "genset_kwh": _r(e["diesel"]), "battery_discharge_kwh": _r(e["battery_discharge"]),
                "battery_charge_kwh": _r(e["battery_charge"]), "it_kwh": _r(e["it"]),
                "load_kwh": _r(e["it"] + e["cooling"] + e["aux"]), "grid_co2_kg": _r(iv.grid_kg_total),
                "diesel_co2_kg": _r(diesel_kg), "co2_kg": _r(iv.grid_kg_total + diesel_kg),
                "renewable_share": _r(e["pv"] / supplied, 4) if supplied > 1e-9 else None,
                "clock_jumps": iv.clock_jumps, "provisional": True}


class _Sum:
    """A day's sums looked at like an Interval (for _accumulate)."""

    def __init__(self, d: dict):
        self.e, self.grid_kg_total, self.diesel_l = d["e"], d["grid_kg_total"], d["diesel_l"]
        self.covered_s, self.estimated_s, self.clock_jumps = d["covered_s"], d["estimated_s"], d["clock_jumps"]


def _day_view(d: dict, day: str | None, k: Constants) -> dict:
    """The TUI's keys (controller/ipc snapshot `carbon.today`)."""
    e = d["e"]
    return {"day": day, "pv_kwh": e["pv"], "grid_import_kwh": e["grid_import"], "grid_export_kwh": e["export"],
            "genset_kwh": e["diesel"], "battery_charge_kwh": e["battery_charge"],
            "battery_discharge_kwh": e["battery_discharge"], "load_kwh": e["it"] + e["cooling"] + e["aux"],
            "it_kwh": e["it"], "co2_grid_kg": d["grid_kg_total"], "diesel_l": d["diesel_l"],
            "co2_diesel_kg": d["diesel_l"] * k.diesel_kg_per_l, "covered_s": d["covered_s"],
            "estimated_s": d["estimated_s"], "clock_jumps": d["clock_jumps"], "intervals": d["intervals"]}


def _site_tz(cfg):
    """The site's zone (a validated profile has one); UTC when it cannot be loaded (tzdata missing)."""
    try:
        from zoneinfo import ZoneInfo
        return ZoneInfo(cfg["site"]["timezone"])
    except Exception:
        return timezone.utc
