"""What a flood of the technician socket by a client without a PIN costs the scan loop (issue 15).

    .venv/bin/python -m tools.bench.ipc_flood [--seconds 60] [--baseline-seconds S] [--json]

The controller runs in this process as on a gateway: the real scan loop at the site's period
(inner-mongolia-mine, 1 s; simulated devices, real time) with the IPC server on a Unix socket, an audit
file and a stand-in for the uplink's spool (an audit listener counting what it would be handed). A
SEPARATE process attaches: a subscriber (snapshots at 2 Hz, as a TUI) for the whole run; after
`--baseline-seconds` of quiet it floods for `--seconds`, as fast as it can, without a PIN session:
refused actions carrying 60 KB of junk, wrong-PIN logins, malformed lines (bad JSON, bad UTF-8, 60 000
'[', 4000-digit integers, hz NaN), and new connections opened and closed.

Printed for the quiet baseline and the flood: the cycle time (the loop's own measurement: mean, p99,
max), overruns against the period, the lateness of each cycle's start against its period boundary
(a flood that holds the interpreter delays the loop's wake-up, not only its work), the snapshots the
subscriber received per second; then flood / baseline ratios and what the server counted (rate
limited, dropped, refused connections, audit records kept and suppressed, spool records, audit file
and snapshot bytes). The first cycles (kernel cache load, first snapshot) are not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tools.bench.common import percentile

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = "inner-mongolia-mine"
WARM_CYCLES = 5


# --- the flooding process ---------------------------------------------------------------------------
class _Peer:
    """One non-blocking connection of the flooder: what is left to send, what came back."""

    def __init__(self, path: str):
        self.sock = _connect(path)
        self.out = b""
        self.closed = False

    def pump(self, counts: dict, sent: dict, kind: str) -> None:
        try:
            while self.out:
                n = self.sock.send(self.out)
                sent[kind] += self.out.count(b"\n", 0, n)          # lines that went out whole
                self.out = self.out[n:]
                counts["bytes_sent"] += n
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.closed = True
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    self.closed = True
                    break
                counts["replies"] += data.count(b"\n")
                counts["rate_limited_replies"] += data.count(b"rate limited")
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.closed = True
        if self.closed:
            self.sock.close()


def _connect(path: str) -> socket.socket:
    """A non-blocking connect: a full backlog (the server not accepting) fails at once (EAGAIN) and the
    flooder goes on with its other streams instead of waiting."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    err = s.connect_ex(path)
    if err:
        s.close()
        raise OSError(err, os.strerror(err))
    return s


def _subscriber(path: str, stop: threading.Event, stamps: list) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(b'{"op": "subscribe", "hz": 2, "id": 1}\n')
    sock.settimeout(0.5)
    buf = b""
    while not stop.is_set():
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        if not data:
            stamps.append(("closed", time.monotonic()))
            return
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.startswith(b'{"type":"snapshot"'):
                stamps.append(("snapshot", time.monotonic()))
    sock.close()


def flood_main(path: str, baseline_s: float, seconds: float) -> int:
    """The child: a subscriber throughout, quiet for baseline_s, then the flood; prints one JSON line."""
    stop = threading.Event()
    stamps: list = []
    sub = threading.Thread(target=_subscriber, args=(path, stop, stamps), daemon=True)
    sub.start()
    t_quiet = time.monotonic()
    print(json.dumps({"phase": "quiet", "t": t_quiet}), flush=True)
    time.sleep(baseline_s)
    junk = "x" * 60_000
    batches = {
        "junk_action": b"".join(json.dumps({"op": "action", "action": "mode", "mode": junk, "id": i}).encode()
                                + b"\n" for i in range(8)),
        "wrong_pin": b"".join(json.dumps({"op": "login", "pin": f"{i:04d}", "id": i}).encode() + b"\n"
                              for i in range(50)),
        "malformed": b"{not json\n\xff\xfe\n" + b"[" * 60_000 + b"\n" + b'{"op":"subscribe","hz":NaN}\n'
                     + b'{"op":"logout","id":' + b"9" * 4000 + b"}\n" + b'{"op":' + b'"o"' * 100 + b"}\n",
    }
    counts = {k: 0 for k in ("bytes_sent", "replies", "rate_limited_replies", "reconnects", "new_connections",
                             "connect_failures")}
    sent = {k: 0 for k in batches}
    peers = {k: None for k in batches}
    t_flood = time.monotonic()
    print(json.dumps({"phase": "flood", "t": t_flood}), flush=True)
    end = t_flood + seconds
    while time.monotonic() < end:
        for kind, batch in batches.items():
            p = peers[kind]
            if p is None or p.closed:
                try:
                    p = peers[kind] = _Peer(path)
                    counts["reconnects"] += 1
                except OSError:
                    counts["connect_failures"] += 1
                    peers[kind] = None
                    continue
            if not p.out:
                p.out = batch
            p.pump(counts, sent, kind)
        try:                                     # a new connection, closed at once
            _connect(path).close()
            counts["new_connections"] += 1
        except OSError:
            counts["connect_failures"] += 1
    t_end = time.monotonic()
    for p in peers.values():
        if p is not None and not p.closed:
            p.sock.close()
    time.sleep(1.0)                               # the subscriber's last snapshots
    stop.set()
    sub.join(timeout=2)
    snaps = [t for what, t in stamps if what == "snapshot"]
    print(json.dumps({"phase": "done", "t_quiet": t_quiet, "t_flood": t_flood, "t_end": t_end, "lines_sent": sent,
                      **counts, "subscriber_closed": any(w == "closed" for w, _ in stamps),
                      "snapshots_quiet": sum(1 for t in snaps if t_quiet + 1 <= t < t_flood),
                      "snapshots_flood": sum(1 for t in snaps if t_flood <= t < t_end)}), flush=True)
    return 0


# --- the controller side ----------------------------------------------------------------------------
def _phase_stats(times, late, period_s) -> dict:
    t = np.asarray(times)
    return {"cycles": int(len(t)), "mean_ms": float(t.mean() * 1e3) if len(t) else float("nan"),
            "p99_ms": percentile(t, 99, 1e3), "max_ms": float(t.max() * 1e3) if len(t) else float("nan"),
            "overruns": int((t > period_s).sum()), "late_p99_ms": percentile(late, 99, 1e3),
            "late_max_ms": float(np.max(late) * 1e3) if len(late) else float("nan")}


def run(seconds: float, baseline_s: float, workdir: Path) -> dict:
    from controller.ipc import start_ipc
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    scn = load_scenario(SCENARIO)
    sock = workdir / "ipc.sock"
    ipc = start_ipc(scn.site, sock, audit_path=workdir / "audit.jsonl")
    spooled = [0]
    ipc.audit_listeners.append(lambda rec: spooled.__setitem__(0, spooled[0] + 1))
    cycles: list[tuple[float, float, float]] = []          # (start, seconds, lateness)
    state: dict = {"child": None, "lines": [], "cpu": []}

    def capture(loop, image, cmd, events, n):
        if "wrapped" not in state:
            state["wrapped"] = True
            orig_add, orig_cycle, orig_sleep = loop.stats.add, loop.cycle, loop.clock.sleep_until

            clock = loop.clock

            def sleep_until(boundary):
                # the wall-clock instant of the period boundary the loop waits for (the simulated clock
                # paces its time against the wall from _wall0 at `speed`)
                state["wall_target"] = getattr(clock, "_wall0", 0.0) + boundary / clock.speed
                orig_sleep(boundary)

            def cycle():
                state["start"] = time.monotonic()
                target = state.get("wall_target")
                state["late"] = max(0.0, state["start"] - target) if target is not None else 0.0
                orig_cycle()

            def add(sec):
                cycles.append((state.get("start", time.monotonic()), sec, state.get("late", 0.0)))
                orig_add(sec)
            loop.stats.add, loop.cycle, loop.clock.sleep_until = add, cycle, sleep_until
        if loop.cycle_no == WARM_CYCLES and state["child"] is None:
            child = state["child"] = subprocess.Popen(
                [sys.executable, "-m", "tools.bench.ipc_flood", "--child", str(sock), "--seconds", str(seconds),
                 "--baseline-seconds", str(baseline_s)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
            def read():                  # each phase line with this process's CPU seconds (all threads) then
                for line in child.stdout:
                    state["lines"].append(line)
                    state["cpu"].append((json.loads(line)["phase"], time.process_time()))
            threading.Thread(target=read, daemon=True).start()
        child = state["child"]
        if child is not None and child.poll() is not None:
            loop.stop()

    hours = (baseline_s + seconds + 120.0) / 3600.0
    try:
        res = run_sim(scn, hours=hours, seed=1, speed=1.0, hooks=[ipc.hook, capture], ledger=False)
        time.sleep(0.2)                                   # the reader thread's last line
        snapshot_bytes = len(ipc._snapshot_line(ipc._pub)) if ipc._pub is not None else None
    finally:
        ipc.close()
        if state["child"] is not None and state["child"].poll() is None:
            state["child"].kill()
    done = next(json.loads(x) for x in state["lines"] if '"phase": "done"' in x)
    period_s = res.loop.period_s
    quiet = [c for c in cycles if done["t_quiet"] + 1.0 <= c[0] < done["t_flood"]]
    flood = [c for c in cycles if done["t_flood"] <= c[0] < done["t_end"]]
    out = {"period_ms": period_s * 1e3,
           "baseline": _phase_stats([c[1] for c in quiet], [c[2] for c in quiet], period_s),
           "flood": _phase_stats([c[1] for c in flood], [c[2] for c in flood], period_s),
           "flooder": done, "server": {**{k: ipc.stats[k] for k in (
               "rate_limited", "flood_dropped", "connections_refused", "bad_requests", "request_errors",
               "audit_suppressed", "dropped_clients")}, "rate_limited_by": dict(ipc.rate_limited_by),
               "audit_records": ipc._audit_seq, "spool_records": spooled[0],
               "audit_file_bytes": (workdir / "audit.jsonl").stat().st_size if (workdir / "audit.jsonl").exists() else 0,
               "snapshot_bytes": snapshot_bytes,
               "ipc_errors": sum(1 for r in ipc.audit if r["action"] == "ipc_error")},
           "loop_overruns_total": res.loop.stats.overruns, "loop_cycles_total": res.loop.stats.cycles}
    out["server"]["refusals_served_by_kind"] = dict(ipc.audit_refused)
    cpu = dict(state["cpu"])
    out["controller_cpu_pct"] = {
        "baseline": 100.0 * (cpu["flood"] - cpu["quiet"]) / max(1e-9, done["t_flood"] - done["t_quiet"]),
        "flood": 100.0 * (cpu["done"] - cpu["flood"]) / max(1e-9, time_done(done))}
    q, f = out["baseline"], out["flood"]
    out["ratio"] = {k: (f[k] / q[k] if q[k] else float("nan")) for k in ("mean_ms", "p99_ms", "max_ms")}
    out["snapshots_per_s"] = {"baseline": done["snapshots_quiet"] / max(1e-9, done["t_flood"] - done["t_quiet"] - 1.0),
                              "flood": done["snapshots_flood"] / max(1e-9, done["t_end"] - done["t_flood"])}
    return out


def time_done(done: dict) -> float:
    """Seconds from the flood's start to the flooder's report (its end, and one quiet second after)."""
    return done["t_end"] - done["t_flood"] + 1.0


def report(r: dict) -> None:
    print(f"scan loop at its period ({r['period_ms']:.0f} ms), {SCENARIO} simulated in real time; the flooder is "
          "a separate process without a PIN")
    for name in ("baseline", "flood"):
        s = r[name]
        print(f"  {name:<8} {s['cycles']:4d} cycles  cycle mean {s['mean_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms  "
              f"max {s['max_ms']:7.2f} ms  overruns {s['overruns']}/{s['cycles']}  start late p99 "
              f"{s['late_p99_ms']:5.1f} ms max {s['late_max_ms']:5.1f} ms  snapshots/s "
              f"{r['snapshots_per_s'][name]:.2f}")
    cp = r["controller_cpu_pct"]
    print(f"  controller process CPU (loop + IPC thread): baseline {cp['baseline']:.1f} %, flood {cp['flood']:.1f} % "
          "of one core")
    ra = r["ratio"]
    print(f"  ratio flood/baseline: mean {ra['mean_ms']:.2f}  p99 {ra['p99_ms']:.2f}  max {ra['max_ms']:.2f}")
    fl, sv = r["flooder"], r["server"]
    dur = fl["t_end"] - fl["t_flood"]
    print(f"  flooder wrote in {dur:.0f} s: " + ", ".join(f"{v} {k} lines" for k, v in fl["lines_sent"].items())
          + f", {fl['bytes_sent'] / 1e6:.0f} MB, {fl['new_connections']} new connections, {fl['reconnects']} "
          f"reconnects after a drop, {fl['connect_failures']} connects refused (backlog full); got {fl['replies']} replies ({fl['rate_limited_replies']} rate limited); "
          f"subscriber dropped: {fl['subscriber_closed']}")
    print(f"  server: {sv['rate_limited']} rate limited {sv['rate_limited_by']}, {sv['flood_dropped']} "
          f"connections dropped for flooding, {sv['connections_refused']} connections refused, "
          f"{sv['bad_requests']} bad requests, {sv['request_errors']} request errors, {sv['ipc_errors']} ipc_error; "
          f"refusals served by kind {sv['refusals_served_by_kind']}")
    print(f"  kept: {sv['audit_records']} audit records ({sv['audit_suppressed']} refusals only counted), "
          f"{sv['spool_records']} spool records, audit file {sv['audit_file_bytes']} B, snapshot "
          f"{sv['snapshot_bytes']} B")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the flood (default 60 s)")
    ap.add_argument("--baseline-seconds", type=float, default=None, help="quiet baseline before it "
                    "(default: as long as the flood)")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    ap.add_argument("--child", metavar="SOCKET", help=argparse.SUPPRESS)      # the flooding process
    args = ap.parse_args(argv)
    baseline_s = args.seconds if args.baseline_seconds is None else args.baseline_seconds
    if args.child:
        return flood_main(args.child, baseline_s, args.seconds)
    with tempfile.TemporaryDirectory(prefix="edge-ems-bench-ipc-flood-") as tmp:
        r = run(args.seconds, baseline_s, Path(tmp))
    report(r)
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
