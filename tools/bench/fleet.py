"""Fleet scale on one machine (issue 18): N simulated gateways through one Mosquitto into 1, 2, 4 ingest workers.

    python -m tools.bench.fleet [--gateways 1000] [--workers 1,2,4] [--rates 1,10] [--wall-s 180]
                                [--max-speed 200 --max-wall-s 60] [--out out/bench-fleet]

For each (workers, rate): a fresh PostgreSQL, Mosquitto and `edge-ems-cloud ingest --workers W`
(tools/fleet/stack.py: the real peers), a fresh fleet of N gateways over the three reference sites' traces
(recorded once from `edge-ems sim`, 24 h each, into OUT/traces), registered, then published for --wall-s at
`rate` x the default publishing rates (rate = the fleet's speed-up: virtual seconds per wall second). The
fleet starts at 00:14 UTC virtual, so the first wall minute ends in the quarter-hour burst (every gateway closes
its 15-minute interval at the same instant, UTC aligned: that burst, not the mean, sets the lag's tail).
Measured:
- records/s offered (spooled by the gateways) and sustained (confirmed by the cloud's receipts, each sent after
  its commit, while publishing), the backlog at the stop (published, not yet confirmed; telemetry the gateways
  still held is not backlog) and how long the drain took after the stop (held telemetry flushed included);
- end-to-end lag: a message's first publish -> its receipt at the gateway (the commit is in between), p50/p99/max;
- CPU seconds per wall second of the ingest (parent + workers), Mosquitto, PostgreSQL (every backend) and the
  generator, from /proc, scaled to 1,000 gateways (cores per 1,000 gateways at that rate);
- database size: pg_total_relation_size of the record tables after the run minus before it, per gateway and
  per virtual year (bytes / gateways / (virtual seconds / 365.25 d)): linear extrapolation of the run's mix.
`--max-speed S`: the same with the fleet at S x, to find what the workers sustain when offered more.
The machine is shared (other sessions' work): the load average is printed with each row.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SITES = ("inner-mongolia-mine", "gansu-edge", "nordic-wind")
TABLES = ("telemetry", "events", "alarms", "intervals", "provisional_intervals", "command_results", "rejected",
          "gateway_status")
YEAR_S = 365.25 * 86400
START = "2026-06-15T00:14:00Z"
HZ = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / HZ           # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _pg_pids(cs) -> list[int]:
    pm = int((cs.pg.data / "postmaster.pid").read_text().split()[0])
    return [pm, *_children(pm)]


def cpu_snapshot(cs) -> dict:
    ingest = cs.ingest_pids()
    return {"ingest": {p: _cpu(p) for p in ingest}, "broker": {cs.broker.proc.pid: _cpu(cs.broker.proc.pid)},
            "postgres": {p: _cpu(p) for p in _pg_pids(cs)}}


def cpu_delta(a: dict, b: dict) -> dict:
    """CPU seconds per component between two snapshots (a process that appeared counts from zero; one that
    exited in between is lost: postgres backends live as long as the ingest's connections)."""
    return {k: round(sum(b[k].get(p, 0.0) - a[k].get(p, 0.0) for p in b[k]), 2) for k in b}


def db_size(conn) -> dict:
    return {t: conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0] for t in TABLES}


def ensure_traces(out: Path, hours: float) -> list[str]:
    paths = []
    for site in SITES:
        d = out / "traces" / f"{site}-{hours:g}h"
        if not (d / "trace.jsonl.gz").exists():
            print(f"recording {site} {hours:g} h ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "tools.fleet", "record", "--scenario", site, "--hours", str(hours),
                            "--out", str(d)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        paths.append(str(d))
    return paths


def one_run(traces: list[str], n: int, workers: int, speed: float, wall_s: float, workdir: Path) -> dict:
    from drivers.isotime import utc_epoch
    from tools.fleet.fleet import init_fleet, register, run_fleet
    from tools.fleet.stack import CloudStack
    # the fleet's ledgers on tmpfs: each gateway fsyncs its own ledger per interval (LedgerWriter), which on a
    # real gateway is its own SD card; a thousand of them on this one disk stalled the generator's quarter-hour
    # round for ~18 s (measured before this), which is not the cloud's lag
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else workdir
    fleet = Path(tempfile.mkdtemp(prefix="bench-fleet-gw-", dir=shm))
    t0 = time.monotonic()
    init_fleet(fleet, traces, n)
    with CloudStack(workdir / "stack", workers=workers) as cs:
        register(cs.conn, fleet)
        setup_s = time.monotonic() - t0
        size0 = db_size(cs.conn)
        load0 = os.getloadavg()[0]
        cpu0 = cpu_snapshot(cs)
        st = run_fleet(fleet, "127.0.0.1", cs.mqtt_port, speed=speed, wall_s=wall_s, virtual_s=None,
                       start_s=utc_epoch(START), drain_s=120.0)
        cpu1 = cpu_snapshot(cs)
        load1 = os.getloadavg()[0]
        stored = cs.count()
        size1 = db_size(cs.conn)
        rows = {t: cs.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    import shutil
    shutil.rmtree(fleet, ignore_errors=True)
    wall = st["wall_s"] + st["drain_s"]              # the cloud's CPU ran over publishing + draining
    cpu = cpu_delta(cpu0, cpu1)
    grow = sum(size1.values()) - sum(size0.values())
    per_k = 1000.0 / n
    return {
        "gateways": n, "workers": workers, "speed": speed, "wall_s": st["wall_s"], "drain_s": st["drain_s"],
        "virtual_s": st["virtual_s"], "setup_s": round(setup_s, 1), "records": st["records"], "stored": stored,
        "messages": st["messages"], "batches": st["batches"], "resends": st["resends"], "nacks": st.get("nacks"),
        "offered_rps": round(st["records"] / st["wall_s"], 1),
        "sustained_rps": round(st["confirmed_at_stop"] / st["wall_s"], 1),
        "sent_at_stop": st["sent_at_stop"], "backlog_at_stop": st["sent_at_stop"] - st["confirmed_at_stop"],
        "unconfirmed_after_drain": st["unconfirmed"],
        "lag_s": st["lag_s"],
        "cpu_s": {**cpu, "generator": st["cpu_s"]},
        "cores_per_1000_gw": {k: round(v / wall * per_k, 3) for k, v in {**cpu, "cloud": sum(cpu.values())}.items()},
        "generator_cores_per_1000_gw": round(st["cpu_s"] / st["wall_s"] * per_k, 3),
        "db_bytes": grow, "db_rows": rows,
        "db_bytes_per_gateway_year": round(grow / n / (st["virtual_s"] / YEAR_S)),
        "db_bytes_by_table": {t: size1[t] - size0[t] for t in TABLES},
        "loadavg": [round(load0, 1), round(load1, 1)],
        "disconnects": st["disconnects"], "connect_failures": st["connect_failures"],
    }


def fmt(r: dict) -> str:
    lag = r["lag_s"]
    return (f"{r['gateways']:>5} gw  {r['workers']} worker(s)  {r['speed']:>5g}x  offered {r['offered_rps']:>7.1f} rec/s  "
            f"sustained {r['sustained_rps']:>7.1f} rec/s  backlog {r['backlog_at_stop']:>6} (drained in "
            f"{r['drain_s']:.0f} s)  lag p50 {lag['p50']} s p99 {lag['p99']} s max {lag['max']} s  "
            f"cloud {r['cores_per_1000_gw']['cloud']:.3f} cores/1000 gw (ingest {r['cores_per_1000_gw']['ingest']:.3f}, "
            f"broker {r['cores_per_1000_gw']['broker']:.3f}, pg {r['cores_per_1000_gw']['postgres']:.3f}), generator "
            f"{r['generator_cores_per_1000_gw']:.3f}  db {r['db_bytes_per_gateway_year'] / 1e6:.1f} MB/gw-year  "
            f"load {r['loadavg'][0]}-{r['loadavg'][1]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.fleet", description=__doc__.splitlines()[0])
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--rates", default="1,10", help="speed-ups of the default publishing rates")
    ap.add_argument("--wall-s", type=float, default=180.0)
    ap.add_argument("--max-speed", type=float, default=0.0, help="also probe this speed-up (0: no)")
    ap.add_argument("--max-wall-s", type=float, default=60.0)
    ap.add_argument("--trace-hours", type=float, default=24.0)
    ap.add_argument("--traces", default=None, help="comma-separated trace directories (default: record the "
                    "three reference sites into OUT/traces)")
    ap.add_argument("--out", default="out/bench-fleet")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    traces = a.traces.split(",") if a.traces else ensure_traces(out, a.trace_hours)
    plan = [(int(w), float(r), a.wall_s) for w in a.workers.split(",") for r in a.rates.split(",")]
    if a.max_speed:
        plan += [(int(w), a.max_speed, a.max_wall_s) for w in a.workers.split(",")]
    results = out / "results.jsonl"
    for w, speed, wall in plan:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            r = one_run(traces, a.gateways, w, speed, wall, Path(tmp))
        r["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(results, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(fmt(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
