"""Long simulated runs (a year): study settings, a bounded minute log and the billed peak per month.

Why a study setting at all: a year at the field's 1 s period is 31.5 million scan cycles and 525 600
MPC plans; with the real loop (devices, step, recorder, ledger) that takes one to two hours here.
`edge-ems sim --study` (or `--period-s` / `--replan-s`) runs the same loop, the same step and the same
devices with a coarser control period and a slower re-plan, both plain PARAMS values (the recording
carries them, so `edge-ems replay --verify` still holds). What that costs in KPIs is measured against
1 s on the three reference scenarios (tools/bench/year.py, docs/year.md). `edge-ems run` never
reads anything here: a gateway runs its profile's period and the built-in 60 s re-plan.

What a year needs that a 48 h run does not: the per-minute log is preallocated (a list of tuples grew
~200 MB over a year), and the demand charge bills the highest 15-min import of each calendar month in
the site's zone (the controller resets its billed peak on the same instants, controller/params.py
month_starts), not one peak for the whole run.
"""
from __future__ import annotations

import math

import numpy as np

from controller.core import layout as L

STUDY_PERIOD_S = 10.0          # `--study`: the control period of a year run
STUDY_REPLAN_S = 900.0         # `--study`: the MPC re-plans once per 15-min plan step (the field: every 60 s) or on a change
PERIOD_RANGE_S = (0.1, 60.0)   # beyond 60 s the minute log and the 15-min intervals lose samples


def study_problem(period_s: float | None, replan_s: float | None) -> str | None:
    """A clear message for a study setting the loop cannot run, else None."""
    lo, hi = PERIOD_RANGE_S
    if period_s is not None and not (math.isfinite(period_s) and lo <= period_s <= hi and 900.0 / period_s
                                     == round(900.0 / period_s)):
        return (f"--period-s: expected a period from {lo:g} to {hi:g} s that divides 900 s (a 15-min ledger "
                f"interval) evenly, e.g. 1, 5, 10, 30; got {period_s!r}")
    if replan_s is not None and not (math.isfinite(replan_s) and 1.0 <= replan_s <= 3600.0):
        return f"--replan-s: expected 1 to 3600 s between MPC plans, got {replan_s!r}"
    return None


def apply_study(params: np.ndarray, period_s: float | None, replan_s: float | None) -> dict:
    """Set the study period and re-plan interval in PARAMS (in place); returns what was set, for kpis.json.

    The stale-cycle counts (BMS, meters) are kept in seconds: a profile's 3 cycles at 1 s are 3 s, so at
    10 s they become 1 cycle (10 s), not 30 s; the MPC re-plan is never shorter than one period."""
    bad = study_problem(period_s, replan_s)
    if bad:
        raise ValueError(bad)
    base = float(params[L.P_PERIOD_S])
    out = {}
    if period_s is not None and period_s != base:
        params[L.P_PERIOD_S] = period_s
        for slot in (L.P_BMS_STALE_CYCLES, L.P_METER_STALE_CYCLES):
            params[slot] = max(1.0, float(round(params[slot] * base / period_s)))
        out["period_s"] = period_s
    if replan_s is not None:
        params[L.P_MPC_REPLAN_S] = max(replan_s, float(params[L.P_PERIOD_S]))
        out["replan_s"] = float(params[L.P_MPC_REPLAN_S])
    return out


class MinuteLog:
    """The simulator's per-minute log, preallocated for the run: appending never allocates, and
    `np.asarray(log)` is the (rows, columns) array of the rows written (what the list of tuples gave)."""

    def __init__(self, rows: int, columns: int):
        self.data = np.zeros((max(1, rows), columns))
        self.n = 0

    def append(self, row) -> None:
        if self.n == len(self.data):          # a run longer than its series: grow by doubling (rare)
            self.data = np.concatenate([self.data, np.zeros_like(self.data)])
        self.data[self.n] = row
        self.n += 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self.data[:self.n][i]

    def __iter__(self):
        return iter(self.data[:self.n])

    def __array__(self, dtype=None, copy=None):
        a = self.data[:self.n]
        return a.astype(dtype) if dtype is not None else a


class MonthPeaks:
    """The highest 15-min average import of each calendar month in the site's zone (the demand charge's
    billing period). A window is billed to the month it starts in, as the controller counts it (the window
    that closed before the 1st counts for the old month)."""

    def __init__(self, tz: str, t0_utc_s: float, hours: float):
        from controller.params import month_starts
        n = int(hours // (24 * 28)) + 2
        self.t0 = t0_utc_s
        self.starts = [s - t0_utc_s for s in month_starts(tz, t0_utc_s, n)]   # sim seconds of each 1st
        self.labels = [_month_label(tz, t0_utc_s)] + [_month_label(tz, t0_utc_s + s + 1.0) for s in self.starts]
        self.peaks = [0.0] * len(self.labels)

    def month_index(self, t_s: float) -> int:
        i = 0
        while i < len(self.starts) and t_s >= self.starts[i]:
            i += 1
        return i

    def add(self, window_start_s: float, kw: float) -> None:
        i = self.month_index(window_start_s)
        if kw > self.peaks[i]:
            self.peaks[i] = kw

    def billed(self, end_s: float) -> dict[str, float]:
        """{YYYY-MM: peak kW} of the months the run touched (up to end_s)."""
        last = self.month_index(max(0.0, end_s - 1e-6))
        return {self.labels[i]: self.peaks[i] for i in range(last + 1)}


def _month_label(tz: str, t_utc_s: float) -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo
    return datetime.fromtimestamp(t_utc_s, ZoneInfo(tz)).strftime("%Y-%m")


def write_ledger_report(out) -> tuple[dict | None, str | None]:
    """OUT/ledger-report.json and .csv (`edge-ems ledger report` of OUT/ledger, verified against
    OUT/ledger.pub): monthly and annual EED-style figures. Returns (report, error message or None)."""
    import json
    import os
    from pathlib import Path

    from controller.carbon.keys import load_public_key
    from controller.carbon.ledger import verify
    from controller.carbon.report import build_report, iter_payloads, to_csv

    out = Path(out)
    try:
        res = verify(out / "ledger", load_public_key(out / "ledger.pub"))
        rep = build_report(iter_payloads(out / "ledger"), verified={"verified": res.ok, "verify": res.message,
                                                                    "key_source": res.key_source})
    except (OSError, ValueError) as exc:
        return None, f"{out / 'ledger-report.json'}: not written ({exc})"
    for name, text in (("ledger-report.json", json.dumps(rep, indent=2) + "\n"), ("ledger-report.csv", to_csv(rep))):
        tmp = out / (name + ".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, out / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            return rep, f"{out / name}: not written ({exc.strerror or exc})"
    if not res.ok:
        return rep, f"{out / 'ledger'}: does not verify ({res.message})"
    return rep, None
