"""The small state file (DataDir.state_file): what the kernel must not forget across a restart.

    sf = StateFile(dd.state_file)
    saved = sf.load()                                   # None: first start, or a bad file (sf.problem says)
    state = L.new_state(t0)
    notes = restore_slots(state, saved, t_now_s, tz)     # what came back, what was dropped and why
    ...  every cycle: sf.save(persisted_slots(loop.state, t_s, tz, counters))   # at most every min_interval_s

Persisted (by slot NAME, so a layout that grows keeps old files readable; a block whose length changed
makes the file invalid): the month's billed peak (`peak_kw`, the open window `peak_win` / `peak_win_kwh`)
with the month it belongs to in the site's time zone (restore drops it when the month changed: a new
billing period); the genset's start count and the ring of its last start times (absolute times: the
starts-per-hour limit must hold across a restart); the trip counter; the forecasters' learned states
(PV derate, load / price / grid-CO2 profiles), restored with their "last sample" times cleared so the
first sample after the gap is not weighted as if the gap had been measured. Counters kept outside the
kernel (genset run hours...) ride along in `counters`.

Not persisted, on purpose: every timer and flag that describes the moment the process died and would be
wrong after a downtime of unknown length - gen_on and its run / cool-down timers, hold and force-charge
timers, stale counters, alarm timers, the plan in force, last_t_s, cycles.

Bounded and validated: a file over 1 MB, not JSON, of another format, with unknown names, wrong types or
block lengths is ignored (an alarm: `problem`), moved aside as state.json.bad, and the start goes on with
a fresh state. Saving is atomic (tmp + fsync + rename + directory fsync); a failing disk is counted
(`faults`, `degraded`), never raised, and leaves the previous file as it was.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from controller.core import layout as L

FORMAT = 1
MAX_BYTES = 1 << 20
MAX_COUNTERS = 64

# name -> (first slot, length), from the layout's names so a moved slot moves here too
SLOTS = {
    "peak_kw": (L.S_PEAK_KW, 1), "peak_win": (L.S_PEAK_WIN, 1), "peak_win_kwh": (L.S_PEAK_WIN_KWH, 1),
    "gen_starts": (L.S_GEN_STARTS, 1), "gen_start_times": (L.S_GEN_START_TIMES, L.GEN_START_RING),
    "trips": (L.S_TRIPS, 1),
    "derate": (L.S_DERATE, L.S_LOADF - L.S_DERATE), "load_profile": (L.S_LOADF, L.S_PRICEF - L.S_LOADF),
    "price_profile": (L.S_PRICEF, L.S_CO2F - L.S_PRICEF), "co2_profile": (L.S_CO2F, L.N_STATE - L.S_CO2F),
}
PEAK = ("peak_kw", "peak_win", "peak_win_kwh")
FORECASTERS = ("derate", "load_profile", "price_profile", "co2_profile")
_MONTH = re.compile(r"^\d{4}-\d{2}$")


def site_month(t_s: float, tz: str | None) -> str:
    """The billing month of t_s in the site's time zone ('2026-02'); UTC without a zone."""
    when = datetime.fromtimestamp(t_s, timezone.utc)
    if tz:
        from zoneinfo import ZoneInfo
        when = when.astimezone(ZoneInfo(tz))
    return when.strftime("%Y-%m")


def persisted_slots(state: np.ndarray, t_s: float, tz: str | None = None, counters: dict | None = None) -> dict:
    """The state file's content for the kernel state `state` at time t_s (see the module doc)."""
    slots = {name: [float(x) for x in state[i:i + n]] for name, (i, n) in SLOTS.items()
             if name not in FORECASTERS or state[L.S_MPC_READY] >= 0.5}     # unlearned forecasters: nothing to keep
    return {"format": FORMAT, "saved_t_s": float(t_s), "month": site_month(t_s, tz), "tz": tz or "UTC",
            "slots": slots, "counters": {k: float(v) for k, v in (counters or {}).items()}}


def restore_slots(state: np.ndarray, saved: dict | None, t_s: float, tz: str | None = None) -> list[str]:
    """Put the persisted slots of `saved` (a validated StateFile.load()) into `state` in place.
    Returns notes for the log: what was restored, what was dropped and why."""
    if not saved:
        return ["no saved state: fresh start"]
    slots = saved["slots"]
    notes = []
    month_now = site_month(t_s, tz)
    for name, values in slots.items():
        i, n = SLOTS[name]
        if name in PEAK and saved["month"] != month_now:
            continue
        if name in FORECASTERS and not all(f in slots for f in FORECASTERS):
            continue
        state[i:i + n] = values
    if all(p in slots for p in PEAK):
        if saved["month"] == month_now:
            notes.append(f"billed peak {slots['peak_kw'][0]:.1f} kW of {month_now} restored")
        else:
            notes.append(f"billed peak of {saved['month']} dropped: the month is {month_now} (new billing period)")
    if all(f in slots for f in FORECASTERS):
        _forget_last_sample(state)
        state[L.S_MPC_READY] = 1.0            # else the strategy's first cycle would re-initialise them
        if saved["month"] != month_now or not all(p in slots for p in PEAK):
            state[L.S_PEAK_KW], state[L.S_PEAK_WIN], state[L.S_PEAK_WIN_KWH] = 0.0, -1.0, 0.0
        notes.append("forecaster states restored")
    if "gen_starts" in slots:
        notes.append(f"genset starts {int(slots['gen_starts'][0])}, trips {int(slots.get('trips', [0])[0])} restored")
    return notes


def _forget_last_sample(state: np.ndarray) -> None:
    from controller.core import forecast as F
    state[L.S_DERATE + F.DS_LAST_T] = -1.0
    for base in (L.S_LOADF, L.S_PRICEF, L.S_CO2F):
        state[base + F.LS_LAST_T] = -1.0


def validate(d, source: str) -> dict:
    """The state file's dict, checked field by field; ValueError naming the field otherwise."""
    def bad(what):
        raise ValueError(f"{source}: {what}")
    if not isinstance(d, dict):
        bad("not a JSON object")
    if d.get("format") != FORMAT:
        bad(f"format {d.get('format')!r}, expected {FORMAT}")
    t = d.get("saved_t_s")
    if not _finite(t):
        bad(f"saved_t_s: expected a number, got {t!r}")
    if not isinstance(d.get("month"), str) or not _MONTH.match(d["month"]):
        bad(f"month: expected 'YYYY-MM', got {d.get('month')!r}")
    slots = d.get("slots")
    if not isinstance(slots, dict):
        bad("slots: expected an object")
    for name, values in slots.items():
        if name not in SLOTS:
            bad(f"slots.{name}: not a persisted slot (known: {', '.join(SLOTS)})")
        n = SLOTS[name][1]
        if not isinstance(values, list) or len(values) != n or not all(_finite(x) for x in values):
            bad(f"slots.{name}: expected a list of {n} finite numbers")
    counters = d.get("counters", {})
    if not isinstance(counters, dict) or len(counters) > MAX_COUNTERS:
        bad(f"counters: expected an object of at most {MAX_COUNTERS} entries")
    for k, v in counters.items():
        if len(k) > 64 or not _finite(v):
            bad(f"counters.{k[:64]}: expected a finite number")
    return d


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class StateFile:
    def __init__(self, path: str | Path, min_interval_s: float = 60.0, clock=time.monotonic):
        self.path = Path(path)
        self.min_interval_s = float(min_interval_s)
        self.clock = clock
        self.problem = ""            # why the file found at start was ignored (an alarm for the runtime)
        self.faults = 0              # failed saves
        self.saves = 0
        self.last_error = ""
        self.degraded = False        # the last save failed
        self._last = -math.inf

    def load(self) -> dict | None:
        """The validated content, or None (no file; or a bad one: `problem` says why, the file is moved
        to state.json.bad). Never raises."""
        try:
            size = self.path.stat().st_size
            if size > MAX_BYTES:
                raise ValueError(f"{self.path}: {size} bytes, more than the {MAX_BYTES} a state file may hold")
            with open(self.path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
            try:
                d = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"{self.path}: not JSON ({exc})") from None
            return validate(d, str(self.path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.problem = f"{exc}; ignored, starting with a fresh state"
            try:
                os.replace(self.path, self.path.with_name(self.path.name + ".bad"))
                self.problem += f" (kept as {self.path.name}.bad)"
            except OSError:
                pass
            return None

    def save(self, content: dict, force: bool = False) -> bool:
        """Write atomically, at most every min_interval_s (unless force). True when written."""
        now = self.clock()
        if not force and now - self._last < self.min_interval_s:
            return False
        self._last = now
        blob = json.dumps(content, separators=(",", ":"), allow_nan=False).encode()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            if len(blob) > MAX_BYTES:
                raise ValueError(f"{len(blob)} bytes, more than {MAX_BYTES}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except (OSError, ValueError) as exc:
            self.faults += 1
            self.degraded = True
            self.last_error = f"{self.path}: {getattr(exc, 'strerror', None) or exc}"
            try:
                tmp.unlink()
            except OSError:
                pass
            return False
        self.saves += 1
        self.degraded = False
        return True


class RunCounters:
    """Counters the kernel does not keep, persisted in the state file's `counters`: the genset's run hours
    as this controller saw them (its running point, fresh, integrated per cycle; the set's own hour meter,
    when its profile has one, is a point of the image and needs no keeping). Gaps longer than a minute
    (downtime, clock steps) are not integrated."""

    NAMES = ("genset_run_h",)

    def __init__(self, saved: dict | None = None):
        self.values = dict.fromkeys(self.NAMES, 0.0)
        for k, v in ((saved or {}).get("counters") or {}).items():
            if k in self.values:
                self.values[k] = float(v)
        self._last_t: float | None = None

    def update(self, image) -> None:
        from controller.points import INDEX, Q_OK
        t = float(image["t_s"])
        last, self._last_t = self._last_t, t
        if last is None or not 0.0 < t - last <= 60.0:
            return
        i = INDEX["genset_running"]
        if image["quality"][i] == Q_OK and image["value"][i] > 0.5:
            self.values["genset_run_h"] += (t - last) / 3600.0
