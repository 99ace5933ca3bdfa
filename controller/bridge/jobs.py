"""A scheduler's job as the bridge sees it, and its ``compute/job`` announcement (drivers/compute.py).

The adapter (slurm.py, or a Kubernetes one: adapter.py) fills a `SchedJob` from the scheduler's own
view; `announcement` turns it into the gateway's payload, and `Announcer` decides when to send it: on
any change of what the gateway would store, and again every ``announce_every_s`` for the live ones
(compute/job is not retained: a gateway that restarted learns the queue within that period).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from drivers.compute import ComputePayloadError, V, parse_job
from drivers.isotime import utc_epoch, utc_iso

PHASES = ("pending", "running", "suspended", "ended")
MAX_DURATION_S = 7 * 24 * 3600.0     # drivers/compute.py: duration_min in (0, 10080]


@dataclass
class SchedJob:
    id: str                     # as announced: prefix + the scheduler's id ("slurm-42")
    native_id: str              # the scheduler's id ("42")
    phase: str                  # pending | running | suspended | ended
    state: str                  # the scheduler's own word (PENDING, RUNNING, SUSPENDED, COMPLETED...)
    kw: float
    start_s: float              # pending: earliest start; running: the start its remaining time runs from
    duration_s: float           # the time limit
    remaining_s: float          # of the time limit, from now (pending: all of it)
    deadline_s: float | None    # latest end (Slurm --deadline); None: not movable
    deferrable: bool
    why: str                    # why (not) deferrable, for the action log
    held: bool = False          # pending and held (by anyone)
    reason: str = ""            # the scheduler's reason (JobHeldAdmin, Resources, BeginTime...)
    label: str = ""
    node: str = ""
    ran: bool = False           # ended: it started at some point (done) or never did (cancelled)
    end_s: float | None = None  # ended: when


def announcement(j: SchedJob) -> dict:
    """The compute/job payload (a dict; `encode` makes it bytes)."""
    state = {"pending": "announced", "running": "running", "suspended": "running"}.get(
        j.phase, "done" if j.ran else "cancelled")
    start, dur = j.start_s, j.duration_s
    if j.phase == "ended" and j.ran and j.end_s is not None:
        dur = max(1.0, j.end_s - start)               # done: the gateway trims the job to start + duration
    dur = min(max(dur, 1.0), MAX_DURATION_S)
    d = {"v": V, "id": j.id, "kw": round(j.kw, 4), "start": utc_iso(start),
         "duration_min": round(dur / 60.0, 4), "deferrable": j.deferrable, "state": state,
         "label": j.label[:128], "node": j.node[:128]}
    # the gateway refuses a deadline before start + duration (an infeasible one: Slurm ends such a job)
    if j.deadline_s is not None and j.deadline_s >= start + round(dur / 60.0, 4) * 60.0:
        d["deadline"] = utc_iso(j.deadline_s)
    return d


def encode(d: dict) -> bytes:
    payload = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    parse_job(payload)                        # raises ComputePayloadError: what the gateway would refuse
    return payload


class Announcer:
    """Which announcements to send now: changed ones, the periodic repeat, and the end of a job that
    left the queue without our seeing its end state ("done" at the time it vanished)."""

    def __init__(self, every_s: float = 300.0):
        self.every_s = every_s
        self.sent: dict[str, tuple[dict, float]] = {}      # id -> (payload dict, when)
        self.refused: list[str] = []                        # what the gateway's parser would refuse

    def due(self, jobs: list[SchedJob], now_s: float) -> list[tuple[dict, bytes]]:
        out = []
        seen = set()
        for j in jobs:
            seen.add(j.id)
            last = self.sent.get(j.id)
            if j.phase == "ended" and last is not None and last[0]["state"] == "running":
                j.ran = True                 # we saw it run: done, however short its end says it was
            d = announcement(j)
            if j.phase == "ended" and last is None:
                continue                     # ended before we announced it: the gateway never knew it
            if last is not None and last[0] == d and (d["state"] in ("done", "cancelled")
                                                      or now_s - last[1] < self.every_s):
                continue
            try:
                out.append((d, encode(d)))
            except ComputePayloadError as exc:
                self.refused.append(f"{j.id}: {exc}")   # said once per change, not every poll
                self.sent[j.id] = (d, now_s)
                continue
            self.sent[j.id] = (d, now_s)
        for jid in [k for k in self.sent if k not in seen]:
            d, _ = self.sent.pop(jid)
            if d["state"] in ("done", "cancelled"):
                continue
            gone = dict(d, state="done")
            start = utc_epoch(d["start"])
            if d["state"] == "announced" or now_s <= start:
                gone["state"] = "cancelled"      # never seen running: it did not draw what was announced
            else:                                # ran until about now; a deadline stays after the shorter end
                gone["duration_min"] = round(max(1.0, min(now_s - start, MAX_DURATION_S)) / 60.0, 4)
            try:
                out.append((gone, encode(gone)))
            except ComputePayloadError as exc:
                self.refused.append(f"{jid}: {exc}")
        return out
