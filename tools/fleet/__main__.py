"""`python -m tools.fleet record|init|run` - the fleet load generator (tools/fleet/__init__.py).

    python -m tools.fleet record --scenario gansu-edge --hours 24 --out out/trace/gansu-edge
    python -m tools.fleet init out/fleet --trace out/trace/gansu-edge --trace out/trace/nordic-wind --gateways 1000
    (register out/fleet/gateways.json with the cloud: edge-ems-cloud gateway add ... per row)
    python -m tools.fleet run out/fleet --broker mqtt://127.0.0.1:1883 --speed 10 --wall-s 600 [--procs 2]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from urllib.parse import urlparse

from drivers.isotime import utc_epoch


def _broker(url: str) -> tuple[str, int]:
    u = urlparse(url)
    if u.scheme != "mqtt" or not u.hostname:
        raise ValueError(f"--broker {url!r}: expected mqtt://HOST[:PORT] (the fleet speaks plain MQTT v5)")
    return u.hostname, u.port or 1883


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.fleet", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="record a trace: edge-ems sim with the uplink spooling (no broker)")
    r.add_argument("--scenario", required=True)
    r.add_argument("--hours", type=float, required=True)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--strategy", default="rule")
    r.add_argument("--out", required=True)
    i = sub.add_parser("init", help="create N gateways (keys, manifest) over one or more traces")
    i.add_argument("dir")
    i.add_argument("--trace", action="append", required=True, help="a trace directory or file (repeatable)")
    i.add_argument("--gateways", type=int, required=True)
    i.add_argument("--no-offsets", action="store_true", help="every gateway at phase 0 of its trace")
    i.add_argument("--shared-sites", action="store_true", help="a trace's gateways share its site name")
    i.add_argument("--prefix", default="fl")
    g = sub.add_parser("run", help="publish the fleet to a broker")
    g.add_argument("dir")
    g.add_argument("--broker", required=True, metavar="mqtt://HOST:PORT")
    g.add_argument("--speed", type=float, default=1.0, help="virtual seconds per wall second (1: default rates)")
    g.add_argument("--wall-s", type=float, default=None)
    g.add_argument("--virtual-h", type=float, default=None)
    g.add_argument("--start", default=None, help="virtual start, UTC ISO on the 15-min grid (default: the trace's)")
    g.add_argument("--start-s", type=float, default=None, help=argparse.SUPPRESS)
    g.add_argument("--procs", type=int, default=1)
    g.add_argument("--part", default="0/1", help=argparse.SUPPRESS)
    g.add_argument("--drain-s", type=float, default=30.0)
    g.add_argument("--stats", default=None, help="write the figures here as JSON too")
    g.add_argument("--keep-lags", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "record":
            from tools.fleet.trace import load, record
            p = record(a.scenario, a.hours, a.out, seed=a.seed, strategy=a.strategy)
            print(json.dumps({"trace": str(p), "records": load(p).counts()}))
            return 0
        if a.cmd == "init":
            from tools.fleet.fleet import init_fleet
            rows = init_fleet(a.dir, a.trace, a.gateways, offsets=not a.no_offsets, shared_sites=a.shared_sites,
                              prefix=a.prefix)
            print(json.dumps({"manifest": str(Path(a.dir) / "gateways.json"), "gateways": len(rows)}))
            return 0
        from tools.fleet.fleet import run_fleet, run_procs
        host, port = _broker(a.broker)
        start_s = a.start_s if a.start_s is not None else (utc_epoch(a.start) if a.start else None)
        if a.wall_s is None and a.virtual_h is None:
            raise ValueError("run: give --wall-s and/or --virtual-h (how long to publish)")
        virtual_s = a.virtual_h * 3600.0 if a.virtual_h is not None else None
        if a.procs > 1:
            st = run_procs(a.dir, host, port, a.procs, speed=a.speed, wall_s=a.wall_s, virtual_s=virtual_s,
                           start_s=start_s, drain_s=a.drain_s)
        else:
            k, n = (int(x) for x in a.part.split("/"))
            st = run_fleet(a.dir, host, port, speed=a.speed, wall_s=a.wall_s, virtual_s=virtual_s, start_s=start_s,
                           part=(k, n), drain_s=a.drain_s, keep_lags=a.keep_lags)
    except (OSError, ValueError) as exc:
        print(f"tools.fleet: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(st)
    if a.stats:
        Path(a.stats).write_text(text + "\n")
    print(json.dumps({k: v for k, v in st.items() if k != "lags"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
