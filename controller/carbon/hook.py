"""The scan loop's carbon hook: integrates each image, closes 15-minute intervals, writes the ledger.

    hook = make_carbon_hook(cfg, DataDir("/var/lib/edge-ems"))      # the gateway: its one ledger and key
    hook = make_carbon_hook(cfg, "out/ledger", "out/gateway.key")    # any ledger file and key
    ScanLoop(..., hooks=[hook]) ... ; hook.close()

The hook never blocks the cycle for long: one fsync'd append per 15 minutes, and (with a checkpoint file)
one small rename-replaced JSON file per minute. After a restart it picks up the counter, the battery pool
and the certificate volumes from the ledger's last interval record.

Restarts, one record per 15-minute interval (what `ledger verify` checks: no interval written twice):
- The interval in progress is checkpointed every `checkpoint_every_s` of image time (and on close()) to
  the checkpoint file. A restart inside the same interval resumes it: the seconds the controller was down
  are simply not covered (`covered_s` < 900, `partial`), the energy before the crash is kept (up to
  `checkpoint_every_s` of it lost on a SIGKILL). A restart in a later interval writes the checkpointed
  interval at once, as partial; intervals wholly inside the downtime get no record (`ledger verify`
  counts them as slots without a record).
- Without a checkpoint file (`edge-ems sim`, tests), close() writes the partial interval as before.
- A checkpoint older than the ledger's last interval (killed between closing an interval and the next
  checkpoint) is discarded: that interval is already in the ledger.

Disk full or failing: a record that cannot be written is kept in memory (at most PENDING_MAX, oldest
dropped and counted) and retried every `retry_s`; `.degraded`, `.faults`, `.dropped_intervals` and
`.last_error` say so. The ledger writer turns the torn bytes of the failed write into a `recovery`
record on the retry, so the chain continues; nothing written before is touched. Nothing here raises into
the cycle for a disk error.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import deque
from pathlib import Path
from typing import Callable

from controller.carbon.account import EnergyAccount
from controller.carbon.intervals import INTERVAL_S, Constants, Interval, Pool, settle
from controller.carbon.keys import load_or_create_key, public_pem
from controller.carbon.ledger import LedgerWriter
from controller.compute.jobs import JobBook  # noqa: F401  (re-exported: the hook's jobs= argument)
from drivers.isotime import utc_epoch

SYNC_FLAG = Path("/run/systemd/timesync/synchronized")   # systemd-timesyncd touches it once in sync
PENDING_MAX = 96              # a day of intervals kept in memory while the disk refuses them
CHECKPOINT_VERSION = 1


def system_clock_status() -> str:
    return "synchronised" if SYNC_FLAG.exists() else "unknown"


def _write_pub(key, path: Path) -> None:
    """The public key next to the ledger, rewritten only when missing or different (a start on a full
    disk must not fail over a file that can always be derived again from the key)."""
    pem = public_pem(key)
    try:
        if path.exists() and path.read_bytes() == pem:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(pem)
        os.replace(tmp, path)
    except OSError:
        pass


def interval_to_dict(iv: Interval) -> dict:
    return dataclasses.asdict(iv)


# the fields each later release added, oldest first, and what a checkpoint of an older release means by
# them (d: its fields, f: the profile's static grid CFE share): no per-job basis; grid kWh at the static share
_LATER_FIELDS = (
    {"jobs_basis_s": lambda d, f: {}, "jobs_deferred_s": lambda d, f: {}},
    {"grid_cfe_kwh": lambda d, f: [x * f for x in d["alloc"][2]], "grid_cfe_pushed_s": lambda d, f: 0.0},
)


def interval_from_dict(d: dict, grid_cfe_frac: float = 0.0) -> Interval:
    """Strict: exactly the Interval's fields (or an older release's), numbers where numbers belong
    (ValueError otherwise)."""
    names = {f.name for f in dataclasses.fields(Interval)}
    for k in range(len(_LATER_FIELDS)):
        later = {n: make for group in _LATER_FIELDS[k:] for n, make in group.items()}   # release k's
        if isinstance(d, dict) and set(d) == names - set(later):
            try:
                d = {**d, **{n: make(d, grid_cfe_frac) for n, make in later.items()}}
            except (TypeError, KeyError, IndexError):
                raise ValueError("checkpoint values malformed") from None
            break
    if not isinstance(d, dict) or set(d) != names:
        raise ValueError("checkpoint fields differ from Interval's")
    iv = Interval(**d)
    num = (int, float)
    ok = (isinstance(iv.t_start, num) and isinstance(iv.covered_s, num) and 0.0 <= iv.covered_s <= INTERVAL_S + 1e-6
          and isinstance(iv.e, dict) and all(isinstance(x, num) for x in iv.e.values())
          and len(iv.alloc) == 4 and all(len(r) == 3 and all(isinstance(x, num) for x in r) for r in iv.alloc)
          and len(iv.grid_kg_loc) == 3 and isinstance(iv.jobs_it_kwh, dict)
          and isinstance(iv.grid_cfe_kwh, list) and len(iv.grid_cfe_kwh) == 3
          and all(isinstance(x, num) for x in iv.grid_cfe_kwh) and isinstance(iv.grid_cfe_pushed_s, num)
          and isinstance(iv.jobs_basis_s, dict) and isinstance(iv.jobs_deferred_s, dict)
          and all(isinstance(b, list) and len(b) == 2 and all(isinstance(x, num) for x in b)
                  for b in iv.jobs_basis_s.values())
          and all(isinstance(x, num) for x in iv.jobs_deferred_s.values()))
    if not ok:
        raise ValueError("checkpoint values malformed")
    iv.t_start = float(iv.t_start)
    return iv


class CarbonHook:
    def __init__(self, cfg: dict, ledger_path, key_path, jobs: JobBook | None = None,
                 clock_status: Callable[[], str] | None = None, carbon: dict | None = None,
                 pub_path=None, on_record: Callable[[dict], None] | None = None,
                 checkpoint_path=None, checkpoint_every_s: float = 60.0, retry_s: float = 60.0,
                 account: EnergyAccount | None = None):
        self.k = Constants.from_site(cfg, carbon)
        self.jobs = jobs
        self.on_record = on_record
        key = load_or_create_key(key_path)
        ledger_path = Path(ledger_path)
        _write_pub(key, Path(pub_path) if pub_path else ledger_path.with_name(ledger_path.name + ".pub"))
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
        # fault accounting (read by the runtime for its alarm)
        self.faults = 0
        self.dropped_intervals = 0
        self.last_error = ""
        self.pending: deque = deque()          # interval bodies the disk refused, oldest first
        self._retry_s = retry_s
        self._next_retry = -1e18
        self.writer = LedgerWriter(ledger_path, key, genesis, clock_status or system_clock_status)
        if self.writer.broken is not None:
            self._fault(self.writer.broken)
        last = self.writer.last_interval
        self._last_start = utc_epoch(last["t_start"]) if last else -1e18
        self.pool: Pool | None = Pool.from_dict(last["pool"]) if last else None
        self.remaining = {c["name"]: c["volume_kwh"] for c in self.k.carbon["contracts"] if c["kind"] == "certificate"}
        if last:
            self.remaining.update(last["market"]["certificates_left_kwh"])
        self.closed = 0
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.checkpoint_every_s = checkpoint_every_s
        self._next_ckpt = -1e18
        self.checkpoint_note = ""
        # the integration itself is the energy account's, shared with the uplink and the TUI (account.py)
        if account is None:
            account = EnergyAccount(cfg, jobs=jobs, constants=self.k)
        else:
            account.bind(self.k, jobs)
        self.account = account
        account.closed_start = max(account.closed_start, self._last_start)
        account.resume = self._load_checkpoint()
        account.on_close = self._close

    @property
    def iv(self) -> Interval | None:
        return self.account.iv

    @property
    def prev_t(self) -> float | None:
        return self.account.prev_t

    @property
    def pending_jumps(self) -> int:
        return self.account.pending_jumps

    @property
    def degraded(self) -> bool:
        """True while a record waits for the disk (or the ledger cannot be opened): raise the alarm."""
        return bool(self.pending) or self.writer.broken is not None

    def _fault(self, exc: BaseException) -> None:
        self.faults += 1
        self.last_error = f"{self.writer.path}: {exc}"

    # -- checkpoint ---------------------------------------------------------------------------------
    def _load_checkpoint(self) -> Interval | None:
        p = self.checkpoint_path
        if p is None:
            return None
        try:
            if p.stat().st_size > 1 << 20:
                raise ValueError("larger than 1 MB")
            d = json.loads(p.read_bytes())
            if not isinstance(d, dict) or d.get("version") != CHECKPOINT_VERSION:
                raise ValueError("not a checkpoint of this version")
            iv = interval_from_dict(d["interval"], self.k.grid_cfe_frac)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.checkpoint_note = f"{p}: ignored ({exc})"
            return None
        if iv.t_start <= self._last_start:
            self.checkpoint_note = f"{p}: interval {iv.t_start:.0f} already in the ledger, discarded"
            return None
        return iv

    def _save_checkpoint(self) -> None:
        p = self.checkpoint_path
        if p is None:
            return
        tmp = p.with_name(p.name + ".tmp")
        try:      # rename-replaced, not fsync'd: it survives a SIGKILL (page cache); after a power loss an
            # empty or stale file is ignored or discarded on load
            if self.iv is None:
                if p.exists():
                    p.unlink()
                return
            tmp.write_text(json.dumps({"version": CHECKPOINT_VERSION, "interval": interval_to_dict(self.iv)}))
            os.replace(tmp, p)
        except OSError as exc:
            self._fault(exc)

    # -- per cycle ----------------------------------------------------------------------------------
    def __call__(self, loop, image, cmd, events, n) -> None:
        t = float(image["t_s"])
        if self.pending and t >= self._next_retry:
            self._flush_pending(t)
        # integrate (once per image, whoever of ledger / uplink / IPC asks first): a span over the gap rule
        # (the clock stepped, the loop stood still) or inside an interval already written is not integrated
        # and the next interval counts the jump; intervals that close come back through self._close
        acc = self.account
        acc.update(image, loop.period_s)
        if acc.iv is None or acc.iv.last_t != t:
            return                                # nothing integrated this cycle: no checkpoint either
        if t >= self._next_ckpt:
            self._next_ckpt = t + self.checkpoint_every_s
            self._save_checkpoint()

    # -- interval close -----------------------------------------------------------------------------
    def _close(self, iv: Interval, partial: bool = False, t_now: float | None = None) -> dict | None:
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
        self._last_start = iv.t_start       # settled: the pool moved on, the interval is closed for good
        self.closed += 1
        if self.pending:                     # keep the order: behind the ones already waiting
            self._queue(body, t_now)
            return None
        return self._write(body, t_now)

    def _write(self, body: dict, t_now: float | None) -> dict | None:
        try:
            payload = self.writer.append("interval", body)
        except OSError as exc:
            self._fault(exc)
            self._queue(body, t_now)
            return None
        if self.on_record is not None:
            self.on_record(uplink_body(payload, self.writer.last_line))
        return payload

    def _queue(self, body: dict, t_now: float | None) -> None:
        if len(self.pending) >= PENDING_MAX:
            self.pending.popleft()
            self.dropped_intervals += 1
        self.pending.append(body)
        self._next_retry = (t_now if t_now is not None else 0.0) + self._retry_s

    def _flush_pending(self, t_now: float | None) -> None:
        while self.pending:
            body = self.pending[0]
            last = self.writer.last_interval
            if last is not None and utc_epoch(body["t_start"]) <= utc_epoch(last["t_start"]):
                self.pending.popleft()          # it reached the file after all (the fsync failed, not the write)
                continue
            try:
                payload = self.writer.append("interval", body)
            except OSError as exc:
                self._fault(exc)
                self._next_retry = (t_now if t_now is not None else 0.0) + self._retry_s
                return
            self.pending.popleft()
            if self.on_record is not None:
                self.on_record(uplink_body(payload, self.writer.last_line))

    def close(self) -> None:
        """Stop: with a checkpoint file, the interval in progress goes there (a restart resumes it);
        without one it is written now, marked partial. Then the ledger is closed."""
        acc = self.account
        if acc.resume is not None and acc.iv is None:
            acc.iv, acc.resume = acc.resume, None
        if self.checkpoint_path is not None:
            self._save_checkpoint()
        else:
            acc.close_current()
        acc.iv = None
        if self.pending:
            self._flush_pending(None)
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


def make_carbon_hook(cfg: dict, ledger_path, key_path=None, **kw) -> CarbonHook:
    """A ScanLoop hook `hook(loop, image, cmd, events, n)` writing the carbon ledger; call .close() at
    the end. `ledger_path` a controller.runtime.datadir.DataDir: the gateway's one ledger, key, public key
    and checkpoint there (key_path not needed). Keywords: jobs (JobBook), clock_status (callable -> str),
    carbon (a [carbon] table when the site profile does not carry one), pub_path, checkpoint_path,
    on_record (callable: each interval as it is written, as `uplink_body(...)`, e.g.
    ``lambda b: uplink.spool.put("interval", b["end_s"], b)``)."""
    if hasattr(ledger_path, "gateway_key") and hasattr(ledger_path, "ledger"):
        dd = ledger_path
        kw.setdefault("pub_path", dd.ledger_pub)
        kw.setdefault("checkpoint_path", dd.ledger_checkpoint)
        return CarbonHook(cfg, dd.ledger, key_path or dd.gateway_key, **kw)
    if key_path is None:
        raise TypeError("make_carbon_hook: key_path is required unless a DataDir is given")
    return CarbonHook(cfg, ledger_path, key_path, **kw)
