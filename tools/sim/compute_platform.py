"""The simulated compute platform: jobs that start when released, pause while the cabinet defers them, and
meet their deadlines - the compute side of issue 17 inside `edge-ems sim`.

What it is. A scheduler (Slurm, in the field: controller/bridge/) with the scenario's jobs: its announced
jobs (`job_announce` events, ids job1, job2... as tools/sim/carbon.py names them) and its training batches
(tools/sim/exogenous.py `_training_jobs`, ids train1, train2...). A scenario marks jobs deferrable with
`[compute] deferrable_share` (that share of the training batches, spread evenly: batch k is deferrable when
floor(k x share) > floor((k - 1) x share)) and `deferrable = true` on a job_announce event. A deferrable
job's deadline (latest end) is its `deadline_h`, else its natural end + `deadline_slack_h`, and never later
than the run's end (or its natural end, if that is later): both runs of a comparison then do the same work
inside the window, and a job the flexible run pushed past the end cannot look like saved energy.

How it talks to the cabinet. Exactly over the payloads of drivers/compute.py, decoded by the gateway's own
consumer (`ComputeTelemetry.feed`, the same class the uplink feeds in the field) into the cabinet's job book:
`compute/job` when a job is submitted (state announced, deferrable, deadline), starts or restarts (running,
with the start its remaining time runs from), ends (done, trimmed to its real end); `compute/power` every
`power_period_s` with each running job's kW (the bridge's Kepler/DCGM per-job power; 0 = none: the ledger
then rests on the announcements). The cabinet's `ComputeHook` (controller/compute/hook.py: green headroom
and `defer_decisions`) publishes into `request` instead of MQTT; `compute/defer` is read with the bridge's
parser (controller/bridge/messages.py).

What it obeys (the bridge's rules, controller/bridge/defer.py): a defer holds a deferrable job - a running
one is paused (Slurm's suspend; its remaining time stops), a pending one does not start; a request for a
job that is not deferrable (or any job with flexibility off) is refused; a resume releases it. Its own
guard releases a held job at its latest start (deadline - remaining run time, or the request's resume_by
if earlier) less `guard_s`, so a job meets its deadline even when no resume comes. A job that ends after
its deadline, or has not ended when its deadline passes, is counted missed.

What the physics sees (tools/sim/site.py `it_cooling_kw`). The series' IT load already holds every job at
its natural window, sampled per minute like everything else (a one-minute ramp at each end). A job that is
not deferrable (and every job with flexibility off) is left exactly so: such a run is bit for bit the run
without this platform. A deferrable job's series contribution is taken out and its actual running state
put in (`delta_kw`: a step at each start and stop, so the physics draws exactly the energy it ran), with
the cooling that IT draws (the scenario's cooling fraction at the ambient temperature). A job that runs while the
series is at `it_nameplate_kw` would be under-corrected (the series clipped it); such minutes are counted
(`jobs_clipped_minutes`, 0 on the reference scenarios).

Resolution: the platform changes state at scan-cycle instants (1 s); transitions at the cabinet's
requests take effect in the cycle they are made (an ideal, in-process bridge: a real one adds its poll).
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from controller.bridge.messages import MessageError, parse_defer
from drivers import compute as C
from drivers.isotime import utc_iso

SOURCE = "sim-platform"
DEADLINE_TOL_S = 1.0        # a job ending within a cycle of its deadline has met it
TRAIN_LEAD_S = 3600.0       # a deferrable training batch is in the queue (announced) this long before its release


@dataclass
class SimJob:
    """One job on the simulated platform; times in seconds from the scenario's start."""

    id: str
    kw: float
    release_s: float                 # submitted / earliest start
    duration_s: float
    deferrable: bool                 # announced deferrable (the scenario's mark, and flexibility on)
    movable: bool                    # the scenario marks it deferrable (whatever the flex switch says)
    deadline_s: float | None         # latest end; None: not movable
    label: str
    announce_s: float                # when the platform announces it (<= release_s)
    baked: tuple[float, float]       # (start_h, end_h) of its window in the series (minute indicator)
    baked_lo_s: float = 0.0          # outside [lo, hi) its series share is 0 (the window +- a minute)
    baked_hi_s: float = 0.0
    # -- state ------------------------------------------------------------------------------------------
    announced: bool = False
    ran_s: float = 0.0
    running_since: float | None = None
    held_since: float | None = None
    held_s: float = 0.0
    holds: int = 0
    resume_by_s: float | None = None
    started_s: float | None = None
    done_s: float | None = None
    deviated: bool = False           # deferrable: its series contribution is replaced by its runs
    runs: list = field(default_factory=list)    # (from, to) spans it ran, seconds from the start

    @property
    def running(self) -> bool:
        return self.running_since is not None

    @property
    def held(self) -> bool:
        return self.held_since is not None

    def remaining_s(self, t: float) -> float:
        ran = self.ran_s + (t - self.running_since if self.running else 0.0)
        return max(0.0, self.duration_s - ran)

    def latest_start_s(self, t: float) -> float | None:
        c = [self.resume_by_s] if self.resume_by_s is not None else []
        if self.deadline_s is not None:
            c.append(self.deadline_s - self.remaining_s(t))
        return min(c) if c else None

    def energy_kwh(self, t: float) -> float:
        return self.kw * (self.duration_s - self.remaining_s(t)) / 3600.0


def _deferrable_batch(k: int, share: float) -> bool:
    """Batch k (1-based) is deferrable: `share` of the batches, spread evenly over the run (no random draw,
    so a scenario's share is exact and the same batches are marked in every run of a seed)."""
    return math.floor(k * share + 1e-9) > math.floor((k - 1) * share + 1e-9)


def platform_jobs(scn, series, seed: int, hours: float, flex: bool | None = None) -> list[SimJob]:
    """The scenario's jobs as the platform runs them (announced events, then training batches)."""
    from tools.sim.exogenous import _training_jobs
    cfg = scn["compute"]
    flex = cfg["flex"] if flex is None else bool(flex)
    slack_s = cfg["deadline_slack_h"] * 3600.0
    end_s = hours * 3600.0

    def deadline(movable, release_s, dur_s, given_h=-1.0):
        if not movable:
            return None
        natural = release_s + dur_s
        latest = given_h * 3600.0 if given_h >= 0 else natural + slack_s
        return min(latest, max(natural, end_s))           # not past the run's end (module docstring)

    jobs = []
    for i, ev in enumerate(series.jobs, start=1):
        start_s, dur_s = ev["start_h"] * 3600.0, ev["duration_min"] * 60.0
        movable = bool(ev.get("deferrable", False))
        jobs.append(SimJob(f"job{i}", float(ev["kw"]), start_s, dur_s, movable and flex, movable,
                           deadline(movable, start_s, dur_s, ev.get("deadline_h", -1.0)), ev.get("note", ""),
                           ev["at_h"] * 3600.0, (ev["start_h"], ev["start_h"] + ev["duration_min"] / 60.0)))
    load = scn["load"]
    if load["training_kw"] > 0.0:
        for k, (start_h, dur_h) in enumerate(_training_jobs(seed, load, hours), start=1):
            movable = _deferrable_batch(k, cfg["deferrable_share"])
            start_s, dur_s = start_h * 3600.0, dur_h * 3600.0
            # a deferrable batch is submitted (announced) TRAIN_LEAD_S before it may start, so the cabinet can
            # place it before it runs; the others are announced as they start (the run without the platform's)
            jobs.append(SimJob(f"train{k}", float(load["training_kw"]), start_s, dur_s, movable and flex, movable,
                               deadline(movable, start_s, dur_s), "training batch (simulated)",
                               max(0.0, start_s - TRAIN_LEAD_S) if movable and flex else start_s,
                               (start_h, start_h + dur_h)))
    return jobs


class Arrivals:
    """Per-job power that reaches the cabinet from outside the simulation (a bridge over MQTT, in the
    end-to-end test): `ComputeTelemetry` / `NetworkInputs` listeners on another thread queue it here and
    the platform hands it to the book in the scan cycle, stamped with the simulated time of its arrival
    (the simulated clock runs faster than the bridge's wall clock; the field stamps it_kw on arrival too)."""

    def __init__(self):
        self.q: deque = deque()
        self.received = 0

    def measure_power(self, p) -> None:
        self.q.append(p)

    def announce(self, job) -> None:
        pass                          # the platform announces its own jobs in simulated time

    def drain(self, book, t_utc: float) -> None:
        while self.q:
            p = self.q.popleft()
            p.t_s = t_utc
            book.measure_power(p)
            self.received += 1


def _due(j: SimJob) -> float:
    """When a job not held next needs looking at: its end while it runs, else its release time (a guard may
    release a hold before the job may start, when its window barely fits its run)."""
    return j.running_since + (j.duration_s - j.ran_s) if j.running else j.release_s


class SimPlatform:
    """The scheduler. `advance(t)` from the physics each cycle, `request(kind, payload, retain)` as the
    cabinet's ComputeHook publish, `delta_kw(t)` for the physics, `kpis(t)` at the end."""

    def __init__(self, scn, series, jobs: list[SimJob], t0_utc: float, clock: Callable[[], float], telemetry,
                 *, power_period_s: float | None = None, guard_s: float | None = None,
                 power_sinks: list | None = None, sink_period_s: float | None = None,
                 arrivals: Arrivals | None = None, book=None):
        """`telemetry`: the gateway's consumer the platform's messages go through (its listener: the
        cabinet's book); `arrivals` + `book`: per-job power comes from outside, not from this platform."""
        cfg = scn["compute"]
        self.series, self.jobs = series, {j.id: j for j in jobs}
        self.t0, self.clock, self.telemetry = t0_utc, clock, telemetry
        self.power_period_s = cfg["power_period_s"] if power_period_s is None else power_period_s
        self.guard_s = cfg["guard_s"] if guard_s is None else guard_s
        self.flex = any(j.deferrable for j in jobs)       # flexibility on and something to move
        self.power_sinks = list(power_sinks or [])      # (t_utc, {job: kW}, IT kW) on every change and sample
        self.sink_period_s = sink_period_s if sink_period_s is not None else (self.power_period_s or 15.0)
        self.arrivals, self.book = arrivals, book
        self.own_power = arrivals is None                 # the platform's samples are the measurement
        load = scn["load"]
        self.cool = (load["cooling_base_frac"], load["cooling_per_c"], load["free_cooling_below_c"])
        self.nameplate = load["it_nameplate_kw"]
        self.n_min = len(series.it_kw)
        self.log: list[dict] = []                       # one record per decision, as the bridge's action log
        self.counts = {"defer_requests": 0, "resume_requests": 0, "refused": 0, "holds": 0, "guard_releases": 0,
                       "cabinet_releases": 0, "bad_requests": 0}
        self.clipped_minutes: set[int] = set()
        # a deferrable job's IT is the platform's from the start (its series window out, its runs in), so
        # the energy the physics draws for it is exactly what it ran; the others stay the series' own
        self._deviated: list[SimJob] = [j for j in jobs if j.deferrable]
        for j in self._deviated:
            j.deviated = True
            j.baked_lo_s, j.baked_hi_s = j.baked[0] * 3600.0 - 120.0, j.baked[1] * 3600.0 + 120.0
        # advance() looks only at the jobs announced and not done (in the scenario's order, so messages go out
        # in the same order as a walk over all of them would send them); the rest wait, by announce time: a
        # year's ~700 batches walked at every transition and power sample cost ~100 us a cycle
        order = {j.id: i for i, j in enumerate(jobs)}
        self._order = order
        self._open: list[SimJob] = [j for j in jobs if j.announced and j.done_s is None]
        self._waiting = sorted((j for j in jobs if not j.announced and j.done_s is None),
                               key=lambda j: (j.announce_s, order[j.id]))
        self._wi = 0
        self._next = -1e18
        self._next_sample = 0.0
        self._next_sink = 0.0
        self._changed = False
        self._live = False

    # -- the physics' side ----------------------------------------------------------------------------
    def advance(self, t: float) -> None:
        """Transitions due at t (seconds from the start): announcements, releases, completions, guards."""
        if self.arrivals is not None and self.arrivals.q:
            self.arrivals.drain(self.book, self.t0 + t)
        if t < self._next:
            return
        nxt = math.inf
        w = self._wi
        while w < len(self._waiting) and self._waiting[w].announce_s <= t:
            w += 1
        if w > self._wi:                                 # due for announcement: join the open ones
            self._open = sorted(self._open + self._waiting[self._wi:w], key=lambda j: self._order[j.id])
            self._wi = w
        for j in self._open:
            nxt = min(nxt, self._step(j, t))
        self._open = [j for j in self._open if j.done_s is None]
        if w < len(self._waiting):
            nxt = min(nxt, self._waiting[w].announce_s)
        if self.own_power and self.power_period_s > 0 and t >= self._next_sample:
            self._to_book(t)
            self._next_sample = t + self.power_period_s
        if self.power_sinks and (self._changed or t >= self._next_sink):
            self._to_sinks(t)                            # the exporter sees every change at once
            self._next_sink = t + self.sink_period_s
        self._changed = False
        if self.own_power and self.power_period_s > 0:
            nxt = min(nxt, self._next_sample)
        if self.power_sinks:
            nxt = min(nxt, self._next_sink)
        self._next = nxt
        self._live = any(j.deferrable and j.done_s is None and j.announced for j in self._open)

    def _step(self, j: SimJob, t: float) -> float:
        """One job's transitions at t; returns when it next needs looking at."""
        if j.done_s is not None:
            return math.inf
        if not j.announced:
            if t < j.announce_s:
                return j.announce_s
            j.announced = True
            self._announce(j, "announced", j.release_s)
        if j.running:
            if j.remaining_s(t) <= 1e-9:
                self._finish(j, t)
                return math.inf
            return _due(j)
        if j.held:
            latest = j.latest_start_s(t)
            if latest is not None and t >= latest - self.guard_s:
                self._release(j, t, "guard", f"latest start {utc_iso(self.t0 + latest)} (deadline "
                              f"{utc_iso(self.t0 + j.deadline_s) if j.deadline_s is not None else 'none'}, "
                              f"{j.remaining_s(t) / 60.0:.1f} min to run)")
                return _due(j)
            return latest - self.guard_s if latest is not None else math.inf
        if t >= j.release_s:
            self._start(j, t)
            return _due(j)
        return j.release_s

    def delta_kw(self, t: float) -> tuple[float, float]:
        """(IT kW, cooling kW) to add to the series at t: held jobs out, resumed jobs back in."""
        if not self._deviated:
            return 0.0, 0.0
        d = 0.0
        for j in self._deviated:
            if j.running:
                d += j.kw * (1.0 - self._baked(j, t))
            elif j.baked_lo_s <= t < j.baked_hi_s:      # inside its series window (and its ramps)
                d -= j.kw * self._baked(j, t)
        if d == 0.0:
            return 0.0, 0.0
        if d > 0.0:
            i = min(int(t / 60.0), self.n_min - 1)
            if self.series.it_kw[i] >= self.nameplate - 1e-9:
                self.clipped_minutes.add(i)
        base, per_c, below = self.cool
        frac = base + per_c * max(0.0, self.series.at("ambient_c", t) - below)
        return d, d * frac

    def _baked(self, j: SimJob, t: float) -> float:
        """The job's share (0..1) of the series' IT at t: its window as a per-minute indicator, interpolated
        as Series.at interpolates (tools/sim/exogenous.py)."""
        s_h, e_h = j.baked
        x = t / 60.0
        i = int(x)
        if i >= self.n_min - 1:
            i, f = self.n_min - 1, 0.0
        else:
            f = x - i
        a = 1.0 if s_h <= i / 60.0 < e_h else 0.0
        if f == 0.0:
            return a
        b = 1.0 if s_h <= (i + 1) / 60.0 < e_h else 0.0
        return a * (1.0 - f) + b * f

    # -- transitions ----------------------------------------------------------------------------------
    def _start(self, j: SimJob, t: float) -> None:
        j.running_since = t
        if j.started_s is None:
            j.started_s = t
        self._changed = True
        self._announce(j, "running", t - j.ran_s)       # the start its remaining time runs from

    def _finish(self, j: SimJob, t: float) -> None:
        j.ran_s = j.duration_s
        j.runs.append((j.running_since, t))
        j.running_since = None
        j.done_s = t
        self._changed = True
        start = t - j.duration_s
        self._announce(j, "done", start, duration_s=max(1.0, t - start))

    def _hold(self, j: SimJob, t: float, reason: str) -> None:
        if j.running:
            j.ran_s += t - j.running_since
            j.runs.append((j.running_since, t))
            j.running_since = None
        if j.ran_s == 0.0:
            j.started_s = None                           # held in the second it was due: it never ran
        j.held_since = t
        j.holds += 1
        self.counts["holds"] += 1
        self._changed = True
        self._log(t, j, "hold" if j.ran_s == 0.0 else "suspend", "cabinet", reason)

    def _release(self, j: SimJob, t: float, source: str, reason: str) -> None:
        j.held_s += max(0.0, t - max(j.held_since, j.release_s))     # moved: held after it could have run
        j.held_since = None
        j.resume_by_s = None
        self.counts["guard_releases" if source == "guard" else "cabinet_releases"] += 1
        self._log(t, j, "release" if j.ran_s == 0.0 else "resume", source, reason)
        if t >= j.release_s:
            self._start(j, t)

    # -- the cabinet's side (ComputeHook's publish) ----------------------------------------------------
    def request(self, kind: str, payload: bytes, retain: bool = False) -> None:
        """A message the cabinet publishes: compute/defer is carried out; compute/headroom is not needed
        (this platform's only guard is the latest start)."""
        if kind != C.DEFER:
            return
        t = self.clock()
        try:
            req = parse_defer(payload)
        except MessageError as exc:
            self.counts["bad_requests"] += 1
            self.log.append({"t": utc_iso(self.t0 + t), "action": "refuse", "reason": str(exc)})
            return
        j = self.jobs.get(req.job)
        if req.action == "resume":
            self.counts["resume_requests"] += 1
            if j is None or not j.held:
                self._log(t, j, "skip", "cabinet", f"resume: not held ({req.reason})", job_id=req.job)
                return
            self._release(j, t, "cabinet", f"resume: {req.reason}")
        else:
            self.counts["defer_requests"] += 1
            if j is None or not j.deferrable:
                self.counts["refused"] += 1
                why = ("no such job" if j is None else
                       "not deferrable (flexibility off)" if j.movable else "not deferrable")
                self._log(t, j, "refuse", "cabinet", f"defer: {why}", job_id=req.job)
                return
            if j.held or j.done_s is not None or not j.announced:
                self._log(t, j, "skip", "cabinet", "defer: " + ("already held" if j.held else "done"
                                                                if j.done_s is not None else "not announced"))
                return
            if req.resume_by_s is not None:
                j.resume_by_s = req.resume_by_s - self.t0
            self._hold(j, t, req.reason)
        self._next = -1e18                               # look again in the next advance

    def live_deferrable(self) -> bool:
        """A deferrable job announced and not done: the cabinet has something to decide (the MPC's
        placement holds a job before its release; defer_decisions looks at released and deferred ones)."""
        return self._live

    # -- messages -------------------------------------------------------------------------------------
    def _announce(self, j: SimJob, state: str, start_s: float, duration_s: float | None = None) -> None:
        d = {"v": C.V, "id": j.id, "kw": j.kw, "start": utc_iso(self.t0 + start_s),
             "duration_min": round((j.duration_s if duration_s is None else duration_s) / 60.0, 6),
             "deferrable": j.deferrable, "state": state, "label": j.label[:128]}
        if j.deferrable and j.deadline_s is not None:
            d["deadline"] = utc_iso(self.t0 + j.deadline_s)
        self.telemetry.feed(C.JOB, json.dumps(d).encode())

    def running_kw(self) -> dict[str, float]:
        return {j.id: j.kw for j in self._open if j.running}

    def _total_kw(self, t: float) -> float:
        return max(0.0, self.series.at("it_kw", t) + self.delta_kw(t)[0])

    def _to_book(self, t: float) -> None:
        """Measured per-job power to the cabinet, as the bridge's compute/power (Kepler/DCGM per job)."""
        d = {"v": C.V, "t": utc_iso(self.t0 + t), "source": SOURCE, "total_kw": round(self._total_kw(t), 6),
             "jobs": {k: round(v, 6) for k, v in self.running_kw().items()}}
        self.telemetry.feed(C.POWER, json.dumps(d).encode())

    def _to_sinks(self, t: float) -> None:
        jobs, total = self.running_kw(), self._total_kw(t)
        for sink in self.power_sinks:                    # (UTC s, {job: kW}, IT kW), e.g. tools/sim/exporter.py
            sink(self.t0 + t, jobs, total)

    def _log(self, t: float, j: SimJob | None, action: str, source: str, reason: str, job_id: str = "") -> None:
        self.log.append({"t": utc_iso(self.t0 + t), "job": j.id if j else job_id, "action": action,
                         "source": source, "reason": reason})

    # -- results --------------------------------------------------------------------------------------
    def job_rows(self, t_end: float) -> list[dict]:
        rows = []
        for j in self.jobs.values():
            held = j.held_s + (max(0.0, t_end - max(j.held_since, j.release_s)) if j.held else 0.0)
            missed = j.deadline_s is not None and (
                (j.done_s is not None and j.done_s > j.deadline_s + DEADLINE_TOL_S)
                or (j.done_s is None and t_end > j.deadline_s + DEADLINE_TOL_S))
            rows.append({"id": j.id, "kw": j.kw, "deferrable": j.deferrable, "movable": j.movable, "label": j.label,
                         "release_h": round(j.release_s / 3600.0, 4), "duration_h": round(j.duration_s / 3600.0, 4),
                         "deadline_h": None if j.deadline_s is None else round(j.deadline_s / 3600.0, 4),
                         "started_h": None if j.started_s is None else round(j.started_s / 3600.0, 4),
                         "done_h": None if j.done_s is None else round(j.done_s / 3600.0, 4),
                         "held_h": round(held / 3600.0, 4), "holds": j.holds, "missed": bool(missed),
                         "kwh": round(j.energy_kwh(t_end), 3),
                         "runs_h": [(round(a / 3600.0, 4), round(b / 3600.0, 4))
                                    for a, b in j.runs + ([(j.running_since, t_end)] if j.running else [])]})
        return rows

    def kpis(self, t_end: float) -> dict:
        """The jobs_* keys of kpis.json (docs/compute.md)."""
        rows = self.job_rows(t_end)
        return {
            "jobs_flex": self.flex, "jobs_total": len(rows),
            "jobs_deferrable": sum(j.movable for j in self.jobs.values()),     # as the scenario marks them
            "jobs_held": sum(r["holds"] > 0 for r in rows), "jobs_done": sum(r["done_h"] is not None for r in rows),
            "jobs_deadline_missed": sum(r["missed"] for r in rows),
            "jobs_moved_hours": round(sum(r["held_h"] for r in rows), 3),
            "jobs_kwh": round(sum(r["kwh"] for r in rows), 3),
            "jobs_defer_requests": self.counts["defer_requests"], "jobs_refused": self.counts["refused"],
            "jobs_guard_releases": self.counts["guard_releases"],
            "jobs_cabinet_releases": self.counts["cabinet_releases"],
            "jobs_clipped_minutes": len(self.clipped_minutes),
            "jobs_payload_errors": self.telemetry.errors,
        }

    def write(self, out_dir: Path, t_end: float) -> str | None:
        """OUT/compute.json: every job's run and the platform's action log. Returns an error or None."""
        path = Path(out_dir) / "compute.json"
        try:
            path.write_text(json.dumps({"jobs": self.job_rows(t_end), "actions": self.log}, indent=1) + "\n")
        except OSError as exc:
            return f"{path}: not written ({exc.strerror or exc})"
        return None


class Cabinet:
    """The gateway's compute hook (controller/compute/hook.py, as `edge-ems run` has it) on the platform:
    its requests go to `platform.request`. Two shortcuts keep a simulated run with deferrable jobs close
    to the speed of one without (the hook is ~40 us per image and ~4 ms per headroom computation, which
    over a 48 h run at a 1 s period is seconds): the hook sees every `every`-th image only - its PV-derate
    and load learners weight each sample by the time it stands for, so they learn the same, and its
    once-a-minute decisions come at most `every` cycles later - and while no deferrable job is released or
    held nobody in the simulation reads its signal, so its headroom computation is skipped (`next_t`
    pushed on)."""

    def __init__(self, hook, platform: SimPlatform, every: int = 10):
        self.hook, self.platform, self.every = hook, platform, max(1, int(every))
        self._n = 0

    def __call__(self, loop, image, cmd, events, n) -> None:
        self._n += 1
        if self._n % self.every:
            return
        if not self.platform.live_deferrable():
            self.hook.next_t = float(image["t_s"]) + self.hook.period_s
        self.hook(loop, image, cmd, events, n)


@dataclass
class Attached:
    platform: SimPlatform
    book: object
    cabinet: Cabinet | None


def attach_platform(rt, scn, site, seed: int, hours: float, *, flex: bool | None = None,
                    power_sinks: list | None = None, arrivals: Arrivals | None = None,
                    power_period_s: float | None = None, sink_period_s: float | None = None) -> Attached | None:
    """Build the platform for run_sim when the scenario marks any job deferrable (else None: the run is
    today's). Adds the cabinet's ComputeHook to `rt` when flexibility is on; the returned `book` is the
    one the ledger must use (what the platform announced and measured). `arrivals`: per-job power comes
    from outside (the bridge, end-to-end test) instead of the platform's own samples."""
    from controller.compute.hook import ComputeHook
    from controller.compute.jobs import JobBook
    jobs = platform_jobs(scn, site.series, seed, hours, flex)
    if not any(j.movable for j in jobs):
        return None
    t0 = scn.start.timestamp()
    book = JobBook()
    telemetry = C.ComputeTelemetry("compute-platform", listeners=[book], utc=lambda: t0 + site.t_s,
                                   mono=lambda: site.t_s)
    platform = SimPlatform(scn, site.series, jobs, t0, lambda: site.t_s, telemetry,
                           power_period_s=power_period_s, power_sinks=power_sinks, sink_period_s=sink_period_s,
                           arrivals=arrivals,
                           book=book)
    site.compute = platform
    cabinet = None
    if platform.flex:
        hook = ComputeHook(scn.site, book, publish=platform.request, clock_status=lambda: "simulated",
                           keep_history=False)
        cabinet = Cabinet(hook, platform)
        rt.add("compute", "headroom", cabinet)
    return Attached(platform, book, cabinet)
