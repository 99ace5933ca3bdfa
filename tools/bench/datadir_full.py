"""The data directory full under a running controller: does the loop keep its period, do recording, ledger
and spool degrade with an alarm and resume, and are the records the uplink never drops all there after?

    sudo python -m tools.bench.datadir_full [--full-s 60] [--baseline-s 30] [--after-s 30] [--speed 20]
                                            [--fs-size 64m] [--scenario inner-mongolia-mine] [--seed 1]

A real controller loop - the site runtime `edge-ems run` assembles (controller/runtime/field.py): the
segment recorder, the carbon ledger with its checkpoint, the uplink spool (offline, as without a broker),
the state file and the data-directory health alarms (StateKeeper) - with the simulator as its device
provider, its data directory on a tmpfs of ``--fs-size`` mounted here (root needed). After a warm-up
(``--warmup-s``, not counted) and ``--baseline-s``, a filler file takes every free byte of the tmpfs and
keeps taking what gets freed (once a second) for ``--full-s``; then it is deleted and the loop runs
``--after-s`` more. The site runs at ``--speed`` times real time (default 20: a 50 ms wall period for the
profile's 1 s, so a full minute spans a 15-minute ledger interval close and the loop has 20x less slack
than on a gateway).

Prints, per phase (baseline / full / after): cycles, the wall period between cycle starts (mean, p99,
max), the cycle time (mean, p99, max) and overruns (cycles longer than the wall period, as the loop counts
them); the alarms raised and cleared with the phase and second they changed in (recording_degraded,
ledger_degraded, state_file_unwritable, uplink_spool_full...); the spool's reserve and refusal counters;
and the check that every never-dropped record put into the spool (intervals, alarms, events, command
results; plus ``--events-per-s`` marker events from a hook, default 5/s) is in it exactly once, in order,
after the run. Exit 1 if that check fails. Not part of make test.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from controller.core import layout as L
from controller.params import build_params
from controller.runtime.datadir import DataDir
from controller.runtime.site import SiteRuntime
from controller.uplink.topics import NEVER_DROPPED


def canonical(body) -> str:
    """A body as the spool stores it (json with floats for odd numbers; NaN/deep nesting: a marker), key order
    free - what the put log is compared on."""
    try:
        text = json.dumps(body, allow_nan=False, default=float)
    except Exception:                                   # noqa: BLE001 - the spool stores a marker then
        return "<unencodable>"
    return json.dumps(json.loads(text), sort_keys=True)


class Filler:
    """Takes every free byte of a file system, and keeps taking what is freed, until stopped."""

    def __init__(self, fs: Path):
        self.path = fs / "filler"
        self.fd = -1
        self.size = 0

    def top_up(self) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        chunk = bytes(1 << 20)
        while True:
            st = os.statvfs(self.path)
            free = st.f_bavail * st.f_frsize
            if free <= 0:
                return
            try:
                n = os.pwrite(self.fd, chunk[:min(len(chunk), free)], self.size)
            except OSError:
                return
            self.size += n
            if n == 0:
                return

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


def stats_ms(values) -> dict:
    v = np.asarray(values, dtype=float) * 1e3
    if not len(v):
        return {"mean": None, "p99": None, "max": None}
    return {"mean": round(float(v.mean()), 3), "p99": round(float(np.percentile(v, 99)), 3),
            "max": round(float(v.max()), 3)}


def build(scn, data: Path, hours: float, speed: float, seed: int):
    """The runtime run_field assembles, with the simulator's devices and clock (tools/sim/provider.py)."""
    from controller.carbon.account import EnergyAccount
    from controller.carbon.hook import make_carbon_hook
    from controller.compute.jobs import JobBook
    from controller.runtime.field import STATE_SAVE_S, StateKeeper
    from controller.runtime.statefile import RunCounters, StateFile
    from controller.segments import SegmentRecorder
    from controller.uplink import make_uplink_hook
    from tools.sim.provider import SimProvider
    cfg = scn.site
    dd = DataDir(data).ensure()
    provided = SimProvider(scn, hours, seed, speed=speed).provide(cfg)
    params = build_params(cfg, None, t_ref_s=scn.start.timestamp())
    state0 = L.new_state(provided.clock.utc_s() - params[L.P_PERIOD_S])
    statefile = StateFile(dd.state_file, min_interval_s=STATE_SAVE_S)
    counters = RunCounters(statefile.load())
    recorder = SegmentRecorder(dd.recording_dir, params, state0, meta={
        "site": cfg.name, "gateway": cfg["site"]["gateway_id"], "provider": "sim", "bench": "datadir_full"})
    rt = SiteRuntime(cfg, provided, params=params, state0=state0, recorder=recorder)
    account = EnergyAccount(cfg)
    hook, uplink = make_uplink_hook(cfg, None, dd.spool_dir, clock_status="sim", account=account)
    carbon = make_carbon_hook(cfg, dd, jobs=JobBook(), clock_status=lambda: "simulated", account=account,
                              on_record=lambda body: uplink.spool.put("interval", body["end_s"], body))
    rt.add("ledger", "carbon", carbon, carbon.close)
    rt.add("uplink", "uplink", hook, lambda: uplink.close(drain_timeout_s=0.0))
    rt.alarms.listeners.append(lambda state, name, detail: (
        uplink.raise_alarm(time.time(), name, detail) if state == "raised" else uplink.clear_alarm(time.time(), name)))
    keeper = StateKeeper(rt, statefile, counters, recorder, carbon)
    rt.add("watchdog", "state", keeper, keeper.save)
    return rt, dd, uplink, carbon, recorder, statefile


def spool_rows(path: Path) -> list[tuple[int, str, dict]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [(seq, kind, json.loads(p)["body"]) for seq, kind, p in
                db.execute("SELECT seq, kind, payload FROM records ORDER BY seq")]
    finally:
        db.close()


def check_never_dropped(put_log: list[tuple[str, str]], rows) -> dict:
    """Every never-dropped record put is in the spool exactly once, per kind in the order put. Records the
    spool adds itself (uplink_boot before the log started, spool_evicted) are not counted."""
    from collections import Counter
    own = {"uplink_boot", "spool_evicted"}
    out = {}
    for kind in NEVER_DROPPED:
        want = [c for k, c in put_log if k == kind]
        wanted = set(want)
        got = [canonical(b) for _, k, b in rows if k == kind
               and not (isinstance(b, dict) and b.get("event") in own and canonical(b) not in wanted)]
        w, g = Counter(want), Counter(got)
        out[kind] = {"put": len(want), "in_spool": len(got), "missing": sum((w - g).values()),
                     "duplicates": sum((g - w).values()), "in_order": got == want}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full-s", type=float, default=60.0, help="wall seconds the tmpfs stays full")
    ap.add_argument("--baseline-s", type=float, default=30.0)
    ap.add_argument("--after-s", type=float, default=30.0)
    ap.add_argument("--warmup-s", type=float, default=5.0, help="first wall seconds, not counted")
    ap.add_argument("--speed", type=float, default=20.0, help="times real time (the wall period is period/speed)")
    ap.add_argument("--fs-size", default="64m", help="tmpfs size (mount -o size=)")
    ap.add_argument("--scenario", default="inner-mongolia-mine")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--events-per-s", type=float, default=5.0,
                    help="extra `event` records per wall second from a loop hook (what IPC audit records and "
                         "command verdicts add on a busy gateway), so the reserve is exercised; 0: none")
    args = ap.parse_args(argv)
    for name in ("full_s", "baseline_s", "after_s", "speed"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0")
    if os.geteuid() != 0:
        print("datadir_full: needs root (it mounts a tmpfs)", file=sys.stderr)
        return 2
    from tools.sim.scenario import load_scenario
    scn = load_scenario(args.scenario)
    period_s = float(scn.site["control"]["period_s"])
    wall_period = period_s / args.speed
    total_wall = args.warmup_s + args.baseline_s + args.full_s + args.after_s
    hours = (total_wall + 60.0) * args.speed / 3600.0
    mnt = Path(tempfile.mkdtemp(prefix="datadir-full-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.fs_size}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"datadir_full: cannot mount a tmpfs on {mnt}: {r.stderr.strip()}", file=sys.stderr)
        return 2
    try:
        return run(args, scn, mnt, period_s, wall_period, hours)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        try:
            mnt.rmdir()
        except OSError:
            pass


def run(args, scn, mnt: Path, period_s: float, wall_period: float, hours: float) -> int:
    rt, dd, uplink, carbon, recorder, statefile = build(scn, mnt / "D", hours, args.speed, args.seed)
    spool = uplink.spool
    phase = ["warmup"]
    t_run0 = time.monotonic()
    t_phase = {"warmup": t_run0}
    samples: list[tuple[float, float, str]] = []       # (cycle start, cycle time, phase)
    alarm_log: list[dict] = []
    put_log: list[tuple[str, str]] = []

    real_put = spool.put

    def logged_put(kind, t_s, body):                     # what the controller promised: logged as it goes in
        if kind in NEVER_DROPPED:
            put_log.append((kind, canonical(body)))
        real_put(kind, t_s, body)
    spool.put = logged_put

    def note(state: str, name: str, detail) -> None:
        now = time.monotonic()
        alarm_log.append({"alarm": name, "state": state, "phase": phase[0],
                          "at_s": round(now - t_phase[phase[0]], 2), "detail": str(detail)[:120]})

    real_raise, real_clear = uplink.raise_alarm, uplink.clear_alarm

    def raise_alarm(t_s, name, value=None):
        if name not in uplink.active_alarms:
            note("raised", name, value)
        real_raise(t_s, name, value)

    def clear_alarm(t_s, name, value=None):
        if name in uplink.active_alarms:
            note("cleared", name, value)
        real_clear(t_s, name, value)
    uplink.raise_alarm, uplink.clear_alarm = raise_alarm, clear_alarm

    every = max(1, round(1.0 / (args.events_per_s * wall_period))) if args.events_per_s > 0 else 0

    def bench_events(loop_, image, cmd, events, n):    # the uplink slot, after the uplink's own hook
        if every and loop_.cycle_no % every == 0:
            spool.put("event", float(image["t_s"]), {"event": "bench_marker", "cycle": loop_.cycle_no,
                                                     "phase": phase[0]})
    rt.add("uplink", "bench-events", bench_events)
    loop = rt.start()
    real_cycle = loop.cycle

    def timed_cycle():
        t0 = time.perf_counter()
        real_cycle()
        samples.append((t0, time.perf_counter() - t0, phase[0]))
    loop.cycle = timed_cycle
    filler = Filler(mnt)
    free_when_full: list[int] = []
    errors: list[str] = []

    def control() -> None:
        try:
            time.sleep(args.warmup_s)
            for name, secs in (("baseline", args.baseline_s), ("full", args.full_s), ("after", args.after_s)):
                t_phase[name] = time.monotonic()
                phase[0] = name
                end = t_phase[name] + secs
                while time.monotonic() < end:
                    if name == "full":
                        filler.top_up()
                        st = os.statvfs(mnt)
                        free_when_full.append(st.f_bavail * st.f_frsize)
                    time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                if name == "full":
                    filler.release()
        except Exception as exc:                          # noqa: BLE001 - said, and the run ends
            errors.append(repr(exc))
        finally:
            filler.release()
            rt.stop()

    ctl = threading.Thread(target=control, name="bench-control", daemon=True)
    print(f"datadir_full: {scn.name}, period {period_s:g} s at {args.speed:g}x = {wall_period * 1e3:.1f} ms wall; "
          f"tmpfs {args.fs_size} at {mnt}; warm-up {args.warmup_s:g} s, baseline {args.baseline_s:g} s, "
          f"full {args.full_s:g} s, after {args.after_s:g} s", flush=True)
    ctl.start()
    try:
        rt.run(None)
    finally:
        rt.close()
    ctl.join(5)
    sp = spool.stats()
    print(f"\n{'phase':9s} {'cycles':>6s} | {'period ms: mean':>15s} {'p99':>8s} {'max':>8s} | "
          f"{'cycle ms: mean':>14s} {'p99':>7s} {'max':>7s} | overruns (> {wall_period * 1e3:.0f} ms)")
    report = {"speed": args.speed, "wall_period_ms": wall_period * 1e3, "phases": {}}
    for name in ("baseline", "full", "after"):
        rows = [(t, d) for t, d, p in samples if p == name]
        starts = [t for t, _ in rows]
        periods = np.diff(starts) if len(starts) > 1 else []
        durs = [d for _, d in rows]
        over = sum(1 for d in durs if d > wall_period)
        ps, cs = stats_ms(periods), stats_ms(durs)
        report["phases"][name] = {"cycles": len(rows), "period_ms": ps, "cycle_ms": cs, "overruns": over}
        print(f"{name:9s} {len(rows):6d} | {ps['mean']:15.2f} {ps['p99']:8.2f} {ps['max']:8.2f} | "
              f"{cs['mean']:14.2f} {cs['p99']:7.2f} {cs['max']:7.2f} | {over}")
    print(f"\nfree bytes on the tmpfs while full: max {max(free_when_full) if free_when_full else None}")
    print("\nalarms (phase, seconds into it):")
    for a in alarm_log:
        if a["phase"] != "warmup":
            print(f"  {a['state']:8s} {a['alarm']:24s} {a['phase']:8s} +{a['at_s']:6.2f} s  {a['detail']}")
    active = sorted(uplink.active_alarms)
    print(f"  still active at the end: {active or 'none'}")
    print(f"\nspool: reserve {sp['reserve']}, refused telemetry {sp['refused_telemetry']}, retry_dropped "
          f"{sp['retry_dropped']}, writer errors {sp['writer_errors']}, restarts {sp['writer_restarts']}")
    print(f"recording: records {recorder.records}, dropped {recorder.dropped}, faults {recorder.faults}; "
          f"ledger: faults {carbon.faults}, pending {len(carbon.pending)}, dropped {carbon.dropped_intervals}, "
          f"closed {carbon.closed}; state file: saves {statefile.saves}, faults {statefile.faults}")
    from controller.carbon.ledger import verify
    led = verify(dd.ledger)
    print(f"ledger verify: {'ok' if led.ok else 'FAILED'} ({led.records} records, {led.intervals} intervals"
          f"{'' if led.ok else ': ' + led.message})")
    check = check_never_dropped(put_log, spool_rows(spool.path))
    ok = all(c["missing"] == 0 and c["duplicates"] == 0 and c["in_order"] for c in check.values())
    print("\nnever-dropped records, put vs in the spool afterwards:")
    for kind, c in check.items():
        print(f"  {kind:10s} put {c['put']:5d}  in spool {c['in_spool']:5d}  missing {c['missing']}  "
              f"duplicates {c['duplicates']}  in order {c['in_order']}")
    print(f"  => {'all there' if ok else 'RECORDS LOST'}")
    report.update(alarms=[a for a in alarm_log if a["phase"] != "warmup"], still_active=active, spool=sp,
                  never_dropped=check, never_dropped_ok=ok, ledger_ok=led.ok, errors=errors,
                  recording={"records": recorder.records, "dropped": recorder.dropped, "faults": recorder.faults},
                  ledger={"faults": carbon.faults, "closed": carbon.closed, "dropped": carbon.dropped_intervals})
    print(json.dumps(report, default=str))
    if errors:
        print(f"datadir_full: control thread failed: {errors}", file=sys.stderr)
    return 0 if ok and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
