"""The scan loop's carbon hook: integrates each image, closes 15-minute intervals, writes the ledger.

    hook = make_carbon_hook(cfg, "out/ledger", "/var/lib/edge-ems/gateway.key")
    ScanLoop(..., hooks=[hook]) ... ; hook.close()        # close() writes the partial last interval

The hook never blocks the cycle for long: one fsync'd append per 15 minutes. After a restart it picks
up the counter, the battery pool and the certificate volumes from the ledger's last interval record.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from controller.carbon.intervals import INTERVAL_S, Constants, Interval, Pool, interval_start, settle
from controller.carbon.keys import load_or_create_key, write_public_key
from controller.carbon.ledger import LedgerWriter
from controller.compute.jobs import JobBook  # noqa: F401  (re-exported: the hook's jobs= argument)
from drivers.isotime import utc_epoch

SYNC_FLAG = Path("/run/systemd/timesync/synchronized")   # systemd-timesyncd touches it once in sync


def system_clock_status() -> str:
    return "synchronised" if SYNC_FLAG.exists() else "unknown"


class CarbonHook:
    def __init__(self, cfg: dict, ledger_path, key_path, jobs: JobBook | None = None,
                 clock_status: Callable[[], str] | None = None, carbon: dict | None = None,
                 pub_path=None, on_record: Callable[[dict], None] | None = None):
        self.k = Constants.from_site(cfg, carbon)
        self.jobs = jobs
        self.on_record = on_record
        key = load_or_create_key(key_path)
        ledger_path = Path(ledger_path)
        write_public_key(key, pub_path or ledger_path.with_name(ledger_path.name + ".pub"))
        em, site = cfg["emissions"], cfg["site"]
        genesis = {
            "gateway_id": site["gateway_id"], "site": site["name"], "interval_s": INTERVAL_S,
            "factors": {"grid_kg_per_kwh": em["grid_kg_per_kwh"], "grid_factor_source": em["grid_factor_source"],
                        "grid_factor_year": em["grid_factor_year"], "diesel_kg_per_l": em["diesel_kg_per_l"],
                        "diesel_source": em["diesel_source"]},
            "fuel_curve": {"l_per_kwh": self.k.fuel_a, "l_per_h_on": self.k.fuel_b},
            "battery": {"capacity_kwh": self.k.capacity_kwh, "eta_charge": self.k.eta_charge,
                        "eta_discharge": self.k.eta_discharge},
            "carbon": {k: v for k, v in self.k.carbon.items()},
            "allocation": "PV -> loads, battery charge, export first; discharge, diesel, grid pro rata on the rest; "
                          "battery pool settled per interval",
        }
        self.writer = LedgerWriter(ledger_path, key, genesis, clock_status or system_clock_status)
        last = self.writer.last_interval
        self.pool: Pool | None = Pool.from_dict(last["pool"]) if last else None
        self.remaining = {c["name"]: c["volume_kwh"] for c in self.k.carbon["contracts"] if c["kind"] == "certificate"}
        if last:
            self.remaining.update(last["market"]["certificates_left_kwh"])
        self.iv: Interval | None = None
        self.prev_t: float | None = None
        self.pending_jumps = 0
        self.closed = 0

    # -- per cycle ----------------------------------------------------------------------------------
    def __call__(self, loop, image, cmd, events, n) -> None:
        t = float(image["t_s"])
        period = loop.period_s
        prev, self.prev_t = self.prev_t, t
        if prev is None:
            return
        dt = t - prev
        if not 0.0 < dt <= max(10.0 * period, 60.0):
            # the wall clock stepped or the loop stood still: nothing is known about the gap, so nothing
            # is integrated over it; the next interval written counts the jump (and its covered_s shows it)
            self.pending_jumps += 1
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
                    self._close(self.iv)
                self.iv = Interval(start)
            span = min(dt, start + INTERVAL_S - t0)
            self.iv.add(v, q, t0, span, self.k, jobs_kw)
            self.iv.clock_jumps += jump
            jump = 0
            t0 += span
            dt -= span

    # -- interval close -----------------------------------------------------------------------------
    def _close(self, iv: Interval, partial: bool = False) -> dict:
        if self.pool is None:
            kwh = (iv.soc_start or 0.0) / 100.0 * self.k.capacity_kwh
            init = self.k.carbon["battery_initial_kg_per_kwh"]
            self.pool = Pool(kwh, kwh * init, kwh * init, 0.0, 0.0)
        partial = partial or iv.covered_s < INTERVAL_S - 1e-6
        body = settle(iv, self.pool, self.k, self.remaining, partial)
        if self.jobs is not None:
            for job, d in body["jobs"].items():
                if self.jobs.labels.get(job):
                    d["label"] = self.jobs.labels[job]
        payload = self.writer.append("interval", body)
        self.closed += 1
        if self.on_record is not None:
            self.on_record(uplink_body(payload, self.writer.last_line))
        return payload

    def close(self) -> None:
        """Write the interval in progress (marked partial) and close the ledger."""
        if self.iv is not None and self.iv.covered_s > 0.0:
            self._close(self.iv)
        self.iv = None
        self.writer.close()


def uplink_body(payload: dict, line: bytes) -> dict:
    """An interval record as the uplink's `interval` body (controller/uplink/schemas/interval.json): the
    summary fields the cloud dashboards read, `provisional: false` (it replaces the uplink's own metered
    estimate for the same start_s), and the signed ledger line itself, so the cloud keeps a verifiable copy
    (the anchor for the ledger's tail: a hash chain alone cannot show records cut from its end)."""
    en, c = payload["energy_kwh"], payload["co2_kg"]
    src, snk = en["sources"], en["sinks"]
    loads = snk["it"] + snk["cooling"] + snk["aux"]
    start = utc_epoch(payload["t_start"])
    return {"start_s": start, "end_s": start + INTERVAL_S, "covered_s": payload["covered_s"],
            "grid_import_kwh": src["grid"], "grid_export_kwh": snk["export"], "pv_kwh": src["pv"],
            "genset_kwh": src["diesel"], "battery_discharge_kwh": src["battery_discharge"],
            "battery_charge_kwh": snk["battery_charge"], "it_kwh": snk["it"], "load_kwh": round(loads, 6),
            "grid_co2_kg": c["scope2_location"], "diesel_co2_kg": c["scope1_diesel"],
            "co2_kg": round(c["scope1_diesel"] + c["scope2_location"], 6),
            "renewable_share": round(payload["renewable_kwh"] / loads, 4) if loads > 1e-9 else None,
            "provisional": False, "ledger_n": payload["n"], "ledger_line": line.decode()}


def make_carbon_hook(cfg: dict, ledger_path, key_path, **kw) -> CarbonHook:
    """A ScanLoop hook `hook(loop, image, cmd, events, n)` writing the carbon ledger; call .close() at
    the end. Keywords: jobs (JobBook), clock_status (callable -> str), carbon (a [carbon] table when the
    site profile does not carry one), pub_path, on_record (callable: each interval as it is written, as
    `uplink_body(...)`, e.g. ``lambda b: uplink.spool.put("interval", b["end_s"], b)``)."""
    return CarbonHook(cfg, ledger_path, key_path, **kw)


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
        from tools.sim.exogenous import _training_jobs
        for i, (start_h, dur_h) in enumerate(_training_jobs(seed, scn["load"], hours), start=1):
            start = t0 + start_h * 3600.0
            jobs.append({"id": f"train{i}", "kw": scn["load"]["training_kw"], "start_s": start,
                         "end_s": start + dur_h * 3600.0, "label": "training batch (simulated, unannounced)"})
    return JobBook(jobs)


def sim_carbon_hook(scn, site, out_dir: Path, carbon: dict | None = None, seed: int | None = None,
                    hours: float | None = None, on_record: Callable[[dict], None] | None = None) -> CarbonHook:
    """`edge-ems sim`: a fresh OUT/ledger signed with OUT/gateway.key (the simulated gateway's key, created
    on first use), the public key in OUT/ledger.pub, clock status 'simulated'."""
    ledger = Path(out_dir) / "ledger"
    for stale in (ledger, ledger.with_name("ledger.pub")):
        if stale.exists():
            stale.unlink()
    return make_carbon_hook(scn.site, ledger, Path(out_dir) / "gateway.key",
                            jobs=sim_jobs(scn, site.series, seed, hours), clock_status=lambda: "simulated",
                            carbon=carbon, on_record=on_record)
