"""The job book: what the compute platform announced and measured, per job, over time.

Three users read it: the carbon ledger (`power_at`: IT kW per job for the per-job attribution, with the
basis of each figure and the jobs deferred at that moment), the
load forecast (`forecast_arrays`: the announced jobs in the layout controller/core/forecast.py's
`load_forecast` takes), and the defer/resume policy (controller/compute/headroom.py). Measured per-job
power (compute/power `jobs`) overrides the announcement while it is fresh (`max_age_s`), because the
announcement is the platform's estimate and the exporter's reading is what the node drew. A job that a
power sample leaves out after earlier samples measured it drew nothing at that sample (it ended, or it is
held): a bridge publishes a sample only when all its queries answered (docs/bridge.md), so absence there is
a reading of zero, not a gap.
"""
from __future__ import annotations

import math

import numpy as np

from drivers.compute import MAX_JOBS, ITPower, JobAnnouncement, prune_jobs


MEASURED, ANNOUNCED = "measured", "announced"


class JobPower(dict):
    """`JobBook.power_at`'s answer: {job: IT kW} (a plain dict to every reader) that also says, per job,
    what the figure rests on (`basis[job]`: "measured" - the platform's per-job power, e.g. Kepler through
    the bridge - or "announced" - the compute/job estimate), and which jobs the cabinet holds deferred at
    that moment (`deferred`), so the ledger can state both per job and interval."""

    __slots__ = ("basis", "deferred")

    def __init__(self):
        super().__init__()
        self.basis: dict[str, str] = {}
        self.deferred: frozenset = frozenset()


def _as_job(j) -> JobAnnouncement:
    if isinstance(j, JobAnnouncement):
        return j
    return JobAnnouncement(j["id"], float(j["kw"]), float(j["start_s"]), float(j["end_s"]) - float(j["start_s"]),
                           bool(j.get("deferrable", False)), j.get("deadline_s"), j.get("label", ""),
                           j.get("node", ""), j.get("state", "announced"))


class JobBook:
    """Announced jobs (kW over [start, end)), overridden by fresh measured per-job telemetry.

    Accepts `JobAnnouncement`s or dicts {id, kw, start_s, end_s, label[, deferrable, deadline_s]}.
    """

    def __init__(self, announced=None, max_age_s: float = 120.0):
        self.jobs: dict[str, JobAnnouncement] = {}
        self.measured: dict[str, tuple[float, float]] = {}
        self.deferred: dict[str, float] = {}          # job -> remaining seconds when it was deferred
        self.deferred_at: dict[str, float] = {}
        self.last_power: ITPower | None = None
        self.max_age_s = max_age_s
        # power_at runs every scan cycle: it walks only the jobs that may still be active (not done or
        # cancelled, not ended by _cand_t), rebuilt from the book whenever the book changes, not the up to
        # MAX_JOBS the book keeps (a year's finished batches cost ~50 us a cycle otherwise)
        self._cand: list[JobAnnouncement] | None = None
        self._cand_t = -math.inf
        self._cand_n = -1
        for j in announced or []:
            self.announce(j)

    @property
    def labels(self) -> dict[str, str]:
        return {j.id: j.label for j in self.jobs.values()}

    # -- inputs -------------------------------------------------------------------------------------
    def announce(self, job) -> None:
        """A new announcement, or a later message about the same id (state running/done/cancelled)."""
        job = _as_job(job)
        self._cand = None
        old = self.jobs.get(job.id)
        if job.state in ("done", "cancelled") and old is not None:
            old.state = job.state
            if job.state == "done":
                old.duration_s = max(0.0, min(old.duration_s, job.start_s + job.duration_s - old.start_s))
            self.deferred.pop(job.id, None)
            return
        if job.state == "running" and job.id in self.deferred and (old is None or job.start_s > old.start_s + 1.0):
            # the platform (re)started it (its own guard released it at its latest start, or an operator did):
            # what runs is what the plan follows and the ledger counts, whatever the cabinet asked. A
            # running announcement with the start it had when it was deferred is the bridge's periodic
            # repeat for a suspended job (announced "running", docs/bridge.md): it stays deferred.
            self.deferred.pop(job.id)
            self.deferred_at.pop(job.id, None)
        self.jobs[job.id] = job
        if len(self.jobs) > MAX_JOBS:               # bounded: finished jobs go first
            prune_jobs(self.jobs, job.start_s)
            for d in (self.deferred, self.deferred_at):
                for k in [k for k in d if k not in self.jobs]:
                    del d[k]

    def measure(self, job: str, kw: float, t_s: float) -> None:
        self.measured[job] = (float(kw), float(t_s))
        if len(self.measured) > MAX_JOBS:           # bounded: the oldest readings go first
            for k, _ in sorted(self.measured.items(), key=lambda kv: kv[1][1])[:len(self.measured) - MAX_JOBS // 2]:
                del self.measured[k]

    def measure_power(self, p: ITPower) -> None:
        self.last_power = p
        for job, (kw, ts) in list(self.measured.items()):
            if job in p.jobs or ts > p.t_s:
                continue
            j = self.jobs.get(job)
            if kw == 0.0 and (j is None or j.state in ("done", "cancelled")):
                del self.measured[job]                      # nothing left to say about it
            else:
                self.measured[job] = (0.0, float(p.t_s))    # measured before, left out now: drew nothing
        for job, kw in p.jobs.items():
            self.measure(job, kw, p.t_s)

    # -- queries ------------------------------------------------------------------------------------
    def active(self, j: JobAnnouncement, t_s: float) -> bool:
        return j.state not in ("done", "cancelled") and j.id not in self.deferred and j.start_s <= t_s < j.end_s

    def power_at(self, t_s: float) -> JobPower:
        """IT kW per job at t_s (a JobPower: with each figure's basis and the deferred jobs). A fresh
        measurement wins over the announcement, also for a job the cabinet deferred (the platform may have
        refused or released it: the reading is what the node drew); a measured zero is left out."""
        out = JobPower()
        fresh = {job: kw for job, (kw, ts) in self.measured.items() if 0.0 <= t_s - ts <= self.max_age_s}
        cand = self._cand
        if cand is None or t_s < self._cand_t or self._cand_n != len(self.jobs):
            cand = [j for j in self.jobs.values() if j.state not in ("done", "cancelled")]
            self._cand_n = len(self.jobs)
        self._cand = cand = [j for j in cand if j.end_s > t_s]     # ended: never active again (book order kept)
        self._cand_t = t_s
        for j in cand:
            if j.id not in fresh and self.active(j, t_s):
                out[j.id] = j.kw
                out.basis[j.id] = ANNOUNCED
        for job, kw in fresh.items():
            if kw > 0.0:
                out[job] = kw
                out.basis[job] = MEASURED
        if self.deferred:
            out.deferred = frozenset(j for j in self.deferred if j not in out)
        return out

    def forecast_arrays(self, t_s: float):
        """(job_kw, job_start_s, job_dur_s, n) of the jobs still ahead or running, for load_forecast.
        A deferred job is placed at its latest start (the worst case the planner must keep room for)."""
        rows = []
        for j in self.jobs.values():
            if j.state in ("done", "cancelled"):
                continue
            if j.id in self.deferred:
                rem = self.deferred[j.id]
                rows.append((j.kw, max(t_s, j.latest_end_s - rem), rem))
            elif j.end_s > t_s:
                rows.append((j.kw, j.start_s, j.duration_s))
        a = np.array(rows, dtype=np.float64).reshape(-1, 3)
        return (np.ascontiguousarray(a[:, 0]), np.ascontiguousarray(a[:, 1]), np.ascontiguousarray(a[:, 2]),
                len(rows))

    # -- defer / resume (the policy is headroom.defer_decisions; this keeps the book) ---------------------
    def mark_deferred(self, job: str, t_s: float) -> None:
        j = self.jobs[job]
        self._cand = None
        self.deferred[job] = max(0.0, j.end_s - max(t_s, j.start_s))
        self.deferred_at[job] = t_s

    def mark_resumed(self, job: str, t_s: float) -> None:
        rem = self.deferred.pop(job)
        j = self.jobs[job]
        self._cand = None
        j.start_s, j.duration_s = t_s, rem           # runs its remaining time from now
        self.deferred_at.pop(job, None)
