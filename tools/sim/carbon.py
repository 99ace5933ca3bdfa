"""The simulator's side of the carbon ledger: its jobs as a JobBook and a fresh ledger per `sim --out`.

Kept out of controller/carbon (the gateway's ledger) because it reads the simulator's series and its
random training jobs; a gateway's jobs come from the compute platform (controller/netinputs.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from controller.carbon.hook import CarbonHook, make_carbon_hook
from controller.compute.jobs import JobBook
from tools.sim.exogenous import _training_jobs


def sim_jobs(scn, series, seed: int | None = None, hours: float | None = None) -> JobBook:
    """The simulated compute platform's jobs as a JobBook: the scenario's announced jobs (job1, job2...,
    tools/sim/exogenous.py Series.jobs) and, given seed and hours, the random training jobs the simulator
    adds to the IT load (train1, train2...), which a Kepler bridge would report per job."""
    t0 = scn.start.timestamp()
    jobs = []
    for i, ev in enumerate(series.jobs, start=1):
        start = t0 + ev["start_h"] * 3600.0
        jobs.append({"id": f"job{i}", "kw": ev["kw"], "start_s": start, "end_s": start + ev["duration_min"] * 60.0,
                     "label": ev.get("note", "")})
    if seed is not None and hours is not None and scn["load"]["training_kw"] > 0.0:
        for i, (start_h, dur_h) in enumerate(_training_jobs(seed, scn["load"], hours), start=1):
            start = t0 + start_h * 3600.0
            jobs.append({"id": f"train{i}", "kw": scn["load"]["training_kw"], "start_s": start,
                         "end_s": start + dur_h * 3600.0, "label": "training batch (simulated, unannounced)"})
    return RollingJobBook(jobs)


class RollingJobBook(JobBook):
    """The simulated platform's book as a platform fills it: each job is announced LEAD_S before it starts
    and forgotten KEEP_S after it ended. Why: a year holds ~550-730 training batches; the book keeps at most
    MAX_JOBS (it pruned the later ones at once, so their kWh went unattributed after ~3 months) and
    `power_at` looks at every job each cycle. Its `power_at` is the active set, as the plain book's is
    for a run whose jobs fit in it (48 h: a handful), tests/test_year.py."""

    LEAD_S = 3600.0
    KEEP_S = 86400.0

    def __init__(self, jobs: list[dict]):
        super().__init__()
        self._ahead = sorted(jobs, key=lambda j: j["start_s"])
        self._next = 0
        self._next_prune = -float("inf")
        self._all_labels = {j["id"]: j.get("label", "") for j in jobs}

    @property
    def labels(self) -> dict[str, str]:
        return self._all_labels

    def _roll(self, t_s: float) -> None:
        ahead = self._ahead
        while self._next < len(ahead) and ahead[self._next]["start_s"] - self.LEAD_S <= t_s:
            self.announce(ahead[self._next])
            self._next += 1
        if t_s >= self._next_prune:
            self._next_prune = t_s + 3600.0
            for job in [k for k, j in self.jobs.items() if j.end_s < t_s - self.KEEP_S]:
                del self.jobs[job]

    def power_at(self, t_s: float):
        self._roll(t_s)
        return super().power_at(t_s)

    def forecast_arrays(self, t_s: float):
        self._roll(t_s)
        return super().forecast_arrays(t_s)


def sim_carbon_hook(scn, site, out_dir: Path, carbon: dict | None = None, seed: int | None = None,
                    hours: float | None = None, on_record: Callable[[dict], None] | None = None,
                    account=None, jobs: JobBook | None = None) -> CarbonHook:
    """`edge-ems sim`: a FRESH OUT/ledger signed with OUT/gateway.key (the simulated gateway's key, created
    on first use), the public key in OUT/ledger.pub, clock status 'simulated'. Each simulation run is a new
    simulated gateway whose clock restarts at the scenario's start, so a ledger left in OUT by an earlier
    run is deleted and replaced. Never use this for a real gateway: `make_carbon_hook(cfg, DataDir(...))`
    appends to the gateway's one ledger. `jobs`: the book of the simulated compute platform
    (tools/sim/compute_platform.py: announced as they are submitted, measured as they run); default: the
    scenario's jobs at their natural windows (`sim_jobs`)."""
    ledger = Path(out_dir) / "ledger"
    for stale in (ledger, ledger.with_name("ledger.pub")):
        if stale.exists():
            stale.unlink()
    hook = make_carbon_hook(scn.site, ledger, Path(out_dir) / "gateway.key",
                            jobs=jobs if jobs is not None else sim_jobs(scn, site.series, seed, hours),
                            clock_status=lambda: "simulated",
                            carbon=carbon, on_record=on_record, account=account)
    hook.writer.durable = False      # a throwaway simulated ledger: written whole, not fsync'd per record
    return hook
