"""Applying the cabinet's defer / resume requests and headroom to the scheduler, safely.

The cabinet decides (controller/compute/headroom.py `defer_decisions`); the bridge carries it out on
the scheduler, with rules of its own that hold whatever the cabinet sends:

- Only a deferrable job (the adapter's one rule, e.g. its partition) is ever touched: a request for
  any other job is refused and logged. A job held by someone else is left alone, and the bridge never
  releases a hold it did not place (`HoldBook`).
- ``defer``: a pending job is held; a running one is suspended only where the site allows it
  (``suspend_running``); a request older than ``max_request_age_s`` is refused (a defer that waited in
  a broker's queue is about a site state that has passed). A ``resume`` is always carried out.
- Guards, checked on every queue poll, release a job the bridge holds when
  - its latest start has come (deadline - remaining time, or the request's ``resume_by``, whichever is
    earlier) less ``guard_s``: the job still meets its ``--deadline`` even when the cabinet's resume
    never arrives ("guard");
  - it has been held ``max_hold_h`` (a job without a deadline is not held forever; "guard");
  - the retained headroom has been green for it: at least its kW x (1 + headroom_margin) over its
    remaining run time and no shortfall now, after ``min_hold_s`` (a lost resume message; "headroom");
  - the cabinet has been silent (no headroom message) for ``release_when_silent_s`` ("silent"): a dead
    gateway must not hold the compute platform hostage.
- A hold lifted by someone else (``scontrol release`` by an admin) is dropped from the book ("outside").
"""
from __future__ import annotations

from drivers.isotime import utc_iso

from controller.bridge.actions import ActionLog, HoldBook
from controller.bridge.adapter import Adapter, AdapterError
from controller.bridge.jobs import SchedJob
from controller.bridge.messages import DeferRequest, Headroom


class DeferApplier:
    def __init__(self, adapter: Adapter, log: ActionLog, holds: HoldBook, bridge_cfg: dict, sched_cfg: dict,
                 started_s: float):
        self.adapter, self.log, self.holds = adapter, log, holds
        self.max_age_s = bridge_cfg["max_request_age_s"]
        self.silent_s = bridge_cfg["release_when_silent_s"]
        self.guard_s = sched_cfg["guard_s"]
        self.max_hold_s = sched_cfg["max_hold_h"] * 3600.0
        self.on_headroom = sched_cfg["resume_on_headroom"]
        self.min_hold_s = sched_cfg["min_hold_s"]
        self.margin = sched_cfg["headroom_margin"]
        self.headroom: Headroom | None = None
        self.heard_s = started_s               # the last headroom's arrival (the bridge's start before one)

    # -- inputs --------------------------------------------------------------------------------------
    def headroom_received(self, h: Headroom, now_s: float) -> None:
        self.headroom, self.heard_s = h, now_s

    def request(self, req: DeferRequest, jobs: dict[str, SchedJob], now_s: float) -> dict:
        """One compute/defer request; returns the action log record."""
        ctx = dict(request_t=utc_iso(req.t_s), resume_by=utc_iso(req.resume_by_s) if req.resume_by_s else None)
        j = jobs.get(req.job)
        if req.action == "resume":
            entry = self.holds.held.get(req.job)
            if entry is None:
                return self.log.write("skip", req.job, f"resume: not deferred by the bridge ({req.reason})",
                                      native=j.native_id if j else "", **ctx)
            return self._undo(req.job, entry, j, f"resume: {req.reason}", "cabinet", now_s, **ctx)
        if now_s - req.t_s > self.max_age_s:
            return self.log.write("refuse", req.job, f"stale defer request ({now_s - req.t_s:.0f} s old > "
                                  f"bridge.max_request_age_s {self.max_age_s:g})", **ctx)
        if j is None:
            return self.log.write("refuse", req.job, "defer: no such job in the queue", **ctx)
        if not j.deferrable:
            return self.log.write("refuse", req.job, f"defer: not deferrable ({j.why})", native=j.native_id, **ctx)
        if req.job in self.holds.held:
            return self.log.write("skip", req.job, "defer: already deferred by the bridge", native=j.native_id, **ctx)
        if j.phase == "pending":
            if j.held:
                return self.log.write("skip", req.job, f"defer: already held outside the bridge ({j.reason})",
                                      native=j.native_id, **ctx)
            return self._do("hold", j, req, now_s, ctx)
        if j.phase == "running":
            if not self.adapter.can_suspend:
                return self.log.write("refuse", req.job, "defer: running, and suspending running jobs is off "
                                      "(slurm.suspend_running = false)", native=j.native_id, **ctx)
            return self._do("suspend", j, req, now_s, ctx)
        return self.log.write("skip", req.job, f"defer: job is {j.state.lower() or j.phase}", native=j.native_id,
                              **ctx)

    def _do(self, verb: str, j: SchedJob, req: DeferRequest, now_s: float, ctx: dict) -> dict:
        # written ahead: a hold the bridge could forget (a crash after scontrol, a restart with the file
        # lost or unwritable) would never be released by its guards, so it is not placed at all
        if not self.holds.add(j.id, j.native_id, verb, now_s, req.reason, req.resume_by_s):
            return self.log.write("refuse", j.id, f"{verb}: the hold book {self.holds.path} cannot be written "
                                  f"({self.holds.problem}); a hold the bridge could forget is never placed",
                                  native=j.native_id, **ctx)
        try:
            detail = getattr(self.adapter, verb)(j)
        except AdapterError as exc:
            self.holds.drop(j.id)
            return self.log.write(verb, j.id, req.reason, ok=False, native=j.native_id, detail=str(exc), **ctx)
        return self.log.write(verb, j.id, req.reason, native=j.native_id, detail=detail, **ctx)

    def _undo(self, job_id: str, entry: dict, j: SchedJob | None, reason: str, source: str, now_s: float,
              **ctx) -> dict:
        verb = "release" if entry["action"] == "hold" else "resume"
        target = j or SchedJob(job_id, entry["native"], "pending", "", 0.0, 0.0, 0.0, 0.0, None, True, "")
        try:
            detail = getattr(self.adapter, verb)(target)
        except AdapterError as exc:
            return self.log.write(verb, job_id, reason, ok=False, source=source, native=entry["native"],
                                  detail=str(exc), **ctx)
        self.holds.drop(job_id)
        held_s = now_s - entry["t_s"]
        return self.log.write(verb, job_id, reason, source=source, native=entry["native"], detail=detail,
                              held_s=round(held_s, 1), **ctx)

    # -- guards (every queue poll) ------------------------------------------------------------------
    def latest_start_s(self, entry: dict, j: SchedJob) -> float | None:
        c = [entry["resume_by_s"]] if entry.get("resume_by_s") else []
        if j.deadline_s is not None:
            c.append(j.deadline_s - j.remaining_s)
        return min(c) if c else None

    def tick(self, jobs: dict[str, SchedJob], now_s: float) -> list[dict]:
        out = []
        silent = self.silent_s > 0 and now_s - self.heard_s > self.silent_s
        h = self.headroom
        fresh = h is not None and now_s <= h.valid_until_s
        for job_id, entry in list(self.holds.held.items()):
            j = jobs.get(job_id)
            if j is None or j.phase == "ended":
                self.holds.drop(job_id)
                out.append(self.log.write("skip", job_id, "left the queue while deferred", source="outside",
                                          native=entry["native"]))
                continue
            if (entry["action"] == "hold" and not (j.phase == "pending" and j.held)) or \
                    (entry["action"] == "suspend" and j.phase != "suspended"):
                self.holds.drop(job_id)
                out.append(self.log.write("skip", job_id, f"no longer {entry['action']}ed: lifted outside the "
                                          f"bridge (now {j.state})", source="outside", native=j.native_id))
                continue
            latest = self.latest_start_s(entry, j)
            why = None
            if latest is not None and now_s >= latest - self.guard_s:
                why = ("guard", f"latest start {utc_iso(latest)} (deadline "
                       f"{utc_iso(j.deadline_s) if j.deadline_s else 'none'}, {j.remaining_s / 60:.1f} min to run)")
            elif now_s - entry["t_s"] >= self.max_hold_s:
                why = ("guard", f"held {self.max_hold_s / 3600:g} h (slurm.max_hold_h)")
            elif silent:
                why = ("silent", f"no headroom from the cabinet for {now_s - self.heard_s:.0f} s "
                       "(bridge.release_when_silent_s)")
            elif self.on_headroom and fresh and h.short_kw <= 0.0 and now_s - entry["t_s"] >= self.min_hold_s:
                green = h.green_kw_over(j.remaining_s / 3600.0)
                if green >= j.kw * (1.0 + self.margin):
                    why = ("headroom", f"green headroom {green:.1f} kW over {j.remaining_s / 3600:.1f} h "
                           f">= {j.kw:.2f} kW x {1 + self.margin:g}")
            if why is not None:
                out.append(self._undo(job_id, entry, j, why[1], why[0], now_s))
        return out
