"""Compute telemetry: the MQTT payloads between the cabinet and the compute platform (pure decode/encode).

The compute platform (Kubernetes with a Kepler exporter, DCGM for GPUs, a Slurm/Volcano scheduler...)
runs a small bridge that turns its exporters' counters into the JSON below; the cabinet never scrapes
Prometheus itself. This module only turns bytes into checked data and back: the MQTT connection is the
uplink's (controller/uplink), which subscribes the two inbound topics and hands each message's payload
to controller/netinputs.py (`ComputeTelemetry.feed` -> `decode(kind, payload)`), and publishes what
`encode_headroom` / `encode_defer` return.

Topics (levels after the uplink's ``edge-ems/v1/{site}/{gateway}/``; ``topic(topics, KIND)``):

| kind              | dir | QoS | retained | payload                                                      |
| ----------------- | --- | --- | -------- | ------------------------------------------------------------ |
| ``compute/power`` | in  | 0   | no       | IT power now, every 10-60 s (below)                          |
| ``compute/job``   | in  | 1   | no       | a job announcement or a change of its state (below)          |
| ``compute/headroom`` | out | 1 | yes      | the green-headroom signal, every minute and on change        |
| ``compute/defer`` | out | 1   | no       | a defer or resume request for one deferrable job             |

``compute/power`` (kW; every map optional, ``t`` = when the bridge sampled, UTC)::

    {"v": 1, "t": "2026-04-10T09:00:00Z", "source": "kepler+dcgm",
     "total_kw": 71.4,                                   # whole IT load (defaults to the sum of nodes)
     "cooling_kw": 6.1, "aux_kw": 1.2,                   # optional, when the bridge also reads the CDU / aux
     "racks": {"r1": 36.0, "r2": 35.4},
     "nodes": {"gpu-01": 9.1, "gpu-02": 8.8},
     "jobs":  {"job-17": 20.3, "infer-cams": 14.2}}       # per job: Kepler's pod/container energy rate

A Kepler bridge sends ``rate(kepler_container_joules_total[1m]) / 1000`` summed per job label; DCGM's
``DCGM_FI_DEV_POWER_USAGE`` (W) / 1000 summed per node; a rack PDU's kW per rack.

``compute/job``::

    {"v": 1, "id": "job-17", "kw": 20.0, "start": "2026-04-10T09:00:00Z", "duration_min": 180,
     "deferrable": true, "deadline": "2026-04-10T20:00:00Z",  # latest END; defaults to start + duration
     "label": "3D model rebuild, east pit", "node": "gpu-01",
     "state": "announced"}               # announced | running | done | cancelled

``compute/headroom`` (retained; a scheduler reads it as the weight for "green energy on this node")::

    {"v": 1, "t": "...", "clock": "synchronised", "valid_until": "...",   # t + 2 publish periods
     "now_kw": 35.2,                     # kW that can be added for the next 15 min without grid/diesel
     "windows_kw": {"1h": 30.1, "2h": 22.0, "4h": 12.5, "8h": 3.0},   # constant kW over [now, now+W)
     "hourly_kw": [30.1, 28.0, ...],     # kW that can be added in hour k alone (k = 0 is this hour)
     "short_kw": 0.0,                    # grid/diesel kW the site needs now (0 when green)
     "soc_pct": 62.0, "reserve_pct": 35.0,
     "basis": "PV forecast + battery above reserve; no grid, no diesel, no added shortfall later"}

``compute/defer``::

    {"v": 1, "t": "...", "job": "job-17", "action": "defer" | "resume",
     "reason": "site short 12.0 kW" | "green headroom 25.0 kW over 3.0 h" | "deadline",
     "resume_by": "..."}                 # latest start that still meets the job's deadline

Bad input raises `ComputePayloadError` naming the topic kind, the key and what was expected.
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field, replace

from drivers.base import QUALITY_OK
from drivers.isotime import NoOffsetError, utc_epoch, utc_iso as iso

V = 1
POWER, JOB, HEADROOM, DEFER = "compute/power", "compute/job", "compute/headroom", "compute/defer"
INBOUND = (POWER, JOB)
OUTBOUND = {HEADROOM: {"qos": 1, "retain": True}, DEFER: {"qos": 1, "retain": False}}
JOB_STATES = ("announced", "running", "done", "cancelled")
MAX_BYTES = 64 * 1024         # a power sample of a few hundred nodes is a few KiB; the market feed's bound


class ComputePayloadError(ValueError):
    pass


def topic(topics, kind: str) -> str:
    """Full topic for `kind` given the uplink's `controller.uplink.topics.Topics` (or any callable base)."""
    return topics(kind)


@dataclass
class ITPower:
    """One IT power sample from the compute platform, kW."""

    t_s: float
    total_kw: float
    racks: dict = field(default_factory=dict)
    nodes: dict = field(default_factory=dict)
    jobs: dict = field(default_factory=dict)
    source: str = ""
    cooling_kw: float | None = None
    aux_kw: float | None = None


@dataclass
class JobAnnouncement:
    """A compute job the platform announces: the load forecast adds it, the ledger attributes to it."""

    id: str
    kw: float
    start_s: float
    duration_s: float
    deferrable: bool = False
    deadline_s: float | None = None      # latest end; None -> start + duration (not movable)
    label: str = ""
    node: str = ""
    state: str = "announced"

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    @property
    def latest_end_s(self) -> float:
        return self.deadline_s if self.deadline_s is not None else self.end_s


def parse_time(text, kind: str, key: str) -> float:
    if not isinstance(text, str):
        raise ComputePayloadError(f"{kind}: key {key!r}: expected an ISO 8601 UTC time string, got {text!r}")
    try:
        return utc_epoch(text, naive_is_utc=False)
    except NoOffsetError:
        raise ComputePayloadError(f"{kind}: key {key!r}: time {text!r} has no UTC offset (add Z)") from None
    except ValueError:
        raise ComputePayloadError(f"{kind}: key {key!r}: expected an ISO 8601 UTC time like "
                                  f"2026-04-10T09:00:00Z, got {text!r}") from None


def _kw(x, kind: str, key: str, hi: float = 100_000.0) -> float:
    # an int is compared exactly: math.isfinite of a 400-digit JSON integer raises OverflowError
    if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and not math.isfinite(x)) \
            or not 0.0 <= x <= hi:
        raise ComputePayloadError(f"{kind}: key {key!r}: expected a number of kW in 0..{hi:g}, got {str(x)[:40]}")
    return float(x)


def _kw_map(d, kind: str, key: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ComputePayloadError(f"{kind}: key {key!r}: expected an object {{id: kW}}, got {type(d).__name__}")
    out = {}
    for name, x in d.items():
        if not name or len(name) > 128:
            raise ComputePayloadError(f"{kind}: key {key!r}: ids must be 1..128 characters, got {name!r}")
        out[name] = _kw(x, kind, f"{key}.{name}")
    return out


def _obj(payload, kind: str) -> dict:
    if isinstance(payload, (bytes, bytearray, str)):
        if len(payload) > MAX_BYTES:
            raise ComputePayloadError(f"{kind}: payload of {len(payload)} bytes is over the {MAX_BYTES} byte limit")
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:   # RecursionError: crafted nesting
            raise ComputePayloadError(f"{kind}: payload is not JSON ({type(exc).__name__}: {str(exc)[:80]})") from None
    if not isinstance(payload, dict):
        raise ComputePayloadError(f"{kind}: payload must be a JSON object, got {type(payload).__name__}")
    if payload.get("v", V) != V:
        raise ComputePayloadError(f"{kind}: key 'v': expected {V}, got {payload.get('v')!r}")
    return payload


def parse_power(payload) -> ITPower:
    d = _obj(payload, POWER)
    if "t" not in d:
        raise ComputePayloadError(f"{POWER}: key 't' is required (UTC time of the sample)")
    racks, nodes, jobs = (_kw_map(d.get(k), POWER, k) for k in ("racks", "nodes", "jobs"))
    if "total_kw" in d:
        total = _kw(d["total_kw"], POWER, "total_kw")
    elif nodes or racks:
        total = sum((nodes or racks).values())
    else:
        raise ComputePayloadError(f"{POWER}: needs 'total_kw', or 'nodes' / 'racks' to sum")
    src = d.get("source", "")
    if not isinstance(src, str):
        raise ComputePayloadError(f"{POWER}: key 'source': expected a string, got {src!r}")
    extra = {k: _kw(d[k], POWER, k) for k in ("cooling_kw", "aux_kw") if d.get(k) is not None}
    return ITPower(parse_time(d["t"], POWER, "t"), total, racks, nodes, jobs, src, **extra)


def parse_job(payload) -> JobAnnouncement:
    d = _obj(payload, JOB)
    for key in ("id", "kw", "start", "duration_min"):
        if key not in d:
            raise ComputePayloadError(f"{JOB}: key {key!r} is required")
    job_id = d["id"]
    if not isinstance(job_id, str) or not 0 < len(job_id) <= 128:
        raise ComputePayloadError(f"{JOB}: key 'id': expected a string of 1..128 characters, got {job_id!r}")
    dur = d["duration_min"]
    if isinstance(dur, bool) or not isinstance(dur, (int, float)) or not 0 < dur <= 7 * 24 * 60:
        raise ComputePayloadError(f"{JOB}: key 'duration_min': expected minutes in (0, 10080], got {dur!r}")
    start = parse_time(d["start"], JOB, "start")
    deadline = parse_time(d["deadline"], JOB, "deadline") if d.get("deadline") is not None else None
    if deadline is not None and deadline < start + dur * 60.0:
        raise ComputePayloadError(f"{JOB}: key 'deadline': {d['deadline']} is before start + duration")
    deferrable = d.get("deferrable", False)
    if not isinstance(deferrable, bool):
        raise ComputePayloadError(f"{JOB}: key 'deferrable': expected true or false, got {deferrable!r}")
    state = d.get("state", "announced")
    if state not in JOB_STATES:
        raise ComputePayloadError(f"{JOB}: key 'state': expected one of {', '.join(JOB_STATES)}, got {state!r}")
    for key in ("label", "node"):
        if not isinstance(d.get(key, ""), str):
            raise ComputePayloadError(f"{JOB}: key {key!r}: expected a string, got {d[key]!r}")
    return JobAnnouncement(job_id, _kw(d["kw"], JOB, "kw"), start, float(dur) * 60.0, deferrable, deadline,
                           d.get("label", ""), d.get("node", ""), state)


def decode(kind: str, payload) -> ITPower | JobAnnouncement:
    """The uplink's entry point for an inbound message on `compute/power` or `compute/job`."""
    if kind == POWER:
        return parse_power(payload)
    if kind == JOB:
        return parse_job(payload)
    raise ComputePayloadError(f"{kind}: not an inbound compute topic (expected one of {', '.join(INBOUND)})")


def _dumps(d: dict) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def encode_headroom(h: dict, t_s: float, clock: str, period_s: float = 60.0) -> bytes:
    """`h`: controller.compute.headroom.green_headroom(...) output."""
    return _dumps({"v": V, "t": iso(t_s), "clock": clock, "valid_until": iso(t_s + 2.0 * period_s), **h})


def encode_defer(req: dict, t_s: float) -> bytes:
    """`req`: one of controller.compute.headroom.defer_decisions(...) requests."""
    out = {"v": V, "t": iso(t_s), "job": req["job"], "action": req["action"], "reason": req["reason"]}
    if req.get("resume_by_s") is not None:
        out["resume_by"] = iso(req["resume_by_s"])
    return _dumps(out)


MAX_JOBS = 256                     # jobs kept per book: a platform that announces without end cannot grow it


def prune_jobs(jobs: dict, t_s: float, keep: int = MAX_JOBS // 2) -> None:
    """Bound a dict of JobAnnouncements in place: drop the finished (done, cancelled, or ended) first,
    the earliest-ending first, until at most `keep` remain; live jobs go last, latest-starting first."""
    def rank(j):
        over = j.state in ("done", "cancelled") or j.latest_end_s <= t_s
        return (0, j.latest_end_s) if over else (1, -j.start_s)
    for j in sorted(jobs.values(), key=rank)[:max(0, len(jobs) - keep)]:
        del jobs[j.id]


def next_job(jobs, t_s: float) -> JobAnnouncement | None:
    """The running or next announced job that is not deferrable (earliest start among those not over, not
    done/cancelled); deferrable jobs go to their own slots (deferrable_slots), where the MPC places them."""
    live = [j for j in jobs if j.state not in ("done", "cancelled") and j.end_s > t_s and not j.deferrable]
    return min(live, key=lambda j: (j.start_s, j.id)) if live else None


N_DJOB_SLOTS = 3                 # as controller/points.py N_DJOB
DJOB_POINTS = tuple(f"djob{k}_{f}" for k in range(N_DJOB_SLOTS) for f in ("kw", "start_s", "dur_s", "deadline_s",
                                                                             "state"))


def deferrable_slots(jobs, t_s: float) -> list[tuple[str, float]]:
    """The deferrable jobs the MPC places (issue 17) as the image's djob points, earliest deadline first (at
    most N_DJOB_SLOTS; zeros for an empty slot): kW, the start (earliest start while waiting - announced or
    held -, the start its run time counts from once running), run time, deadline, state (1 waiting, 2
    running). A job is live until its deadline while waiting, until its end while running."""
    live = []
    for j in jobs:
        if not j.deferrable or j.state in ("done", "cancelled"):
            continue
        running = j.state == "running"
        if (j.end_s if running else j.latest_end_s) <= t_s:
            continue
        live.append((j.latest_end_s, j.id, j, running))
    live.sort(key=lambda r: (r[0], r[1]))
    out = []
    for k in range(N_DJOB_SLOTS):
        if k < len(live):
            _, _, j, running = live[k]
            vals = (j.kw, j.start_s, j.duration_s, j.latest_end_s, 2.0 if running else 1.0)
        else:
            vals = (0.0, 0.0, 0.0, 0.0, 0.0)
        out.extend(zip(DJOB_POINTS[5 * k:5 * k + 5], vals))
    return out


class ComputeTelemetry:
    """The compute platform as a field device (drivers/base.py Device, kind "compute").

    The uplink's MQTT thread calls `feed(kind, payload)` for each compute/power and compute/job message;
    the scan cycle's acquire step reads the latest values as canonical points: it_kw (and cooling_kw /
    aux_kw when the bridge sends them) stamped with the message's arrival, so a silent bridge goes stale
    by the point catalogue's max age; job_kw / job_start_s / job_end_s of the running or next announced
    job (zeros when none). `listeners` (e.g. the carbon ledger's controller.compute.jobs.JobBook) get
    each decoded item: `.announce(JobAnnouncement)` and `.measure_power(ITPower)`. A bad message never
    raises into the MQTT thread: it is counted (`errors`) and kept (`last_error`) for the status page.
    """

    kind = "compute"

    def __init__(self, name: str = "compute", listeners=(), utc=time.time, mono=time.monotonic):
        self.name = name
        self.listeners = list(listeners)
        self.utc, self.mono = utc, mono
        self._lock = threading.Lock()
        self.power: ITPower | None = None
        self.power_mono = 0.0
        self.jobs: dict[str, JobAnnouncement] = {}
        self.errors = 0
        self.last_error = ""

    def feed(self, kind: str, payload, recv_t_utc_s: float | None = None) -> bool:
        """One inbound message; `recv_t_utc_s`: when it arrived (UTC), so its points carry that age even
        when it waited in a queue (default: now)."""
        try:
            item = decode(kind, payload)
        except ComputePayloadError as exc:
            with self._lock:
                self.errors += 1
                self.last_error = str(exc)
            return False
        with self._lock:
            if isinstance(item, ITPower):
                age = 0.0 if recv_t_utc_s is None else max(0.0, self.utc() - recv_t_utc_s)
                self.power, self.power_mono = item, self.mono() - age
            else:
                old = self.jobs.get(item.id)
                if old is not None and item.state in ("done", "cancelled"):
                    old.state = item.state
                else:
                    self.jobs[item.id] = item
                    if len(self.jobs) > MAX_JOBS:
                        prune_jobs(self.jobs, self.utc())
        for listener in self.listeners:          # a copy each: a listener may move a deferred job's start
            (listener.measure_power if isinstance(item, ITPower) else listener.announce)(replace(item))
        return True

    def acquire(self, now_mono_s: float, sink) -> None:
        with self._lock:
            p, stamp = self.power, self.power_mono
            job = next_job(list(self.jobs.values()), self.utc())
            slots = deferrable_slots(list(self.jobs.values()), self.utc())
        if p is not None:
            sink(self.name, "it_kw", p.total_kw, stamp, QUALITY_OK)
            for point in ("cooling_kw", "aux_kw"):
                if getattr(p, point) is not None:
                    sink(self.name, point, getattr(p, point), stamp, QUALITY_OK)
        kw, start, end = (job.kw, job.start_s, job.end_s) if job is not None else (0.0, 0.0, 0.0)
        for point, value in (("job_kw", kw), ("job_start_s", start), ("job_end_s", end), *slots):
            sink(self.name, point, value, now_mono_s, QUALITY_OK)

    def actuate(self, commands: dict, now_mono_s: float) -> None:
        pass                                        # the platform is asked, not commanded: compute/defer

    def close(self) -> None:
        pass
