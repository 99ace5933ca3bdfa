"""Simulation speed: simulated seconds per wall second for each reference scenario (goal: >= 500x),
and the scan cycle's own cost (p50/p99 per cycle, acquire to record).

    python -m tools.bench.sim [--hours 48]
"""
from __future__ import annotations

import argparse

from tools.sim.runner import run_sim
from tools.sim.scenario import list_scenarios, load_scenario


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=48.0)
    ap.add_argument("--scenario", action="append")
    args = ap.parse_args(argv)
    print(f"{'scenario':22} {'hours':>6} {'wall s':>8} {'x real time':>12} {'cycle p50 ms':>13} {'cycle p99 ms':>13}")
    worst = float("inf")
    for name in args.scenario or list_scenarios():
        r = run_sim(load_scenario(name), hours=args.hours, seed=1, strategy="rule")
        stats = r.loop.stats.as_dict()
        speed = args.hours * 3600.0 / r.wall_s
        worst = min(worst, speed)
        print(f"{name:22} {args.hours:6.0f} {r.wall_s:8.1f} {speed:12.0f} {stats['p50_ms']:13.3f} {stats['p99_ms']:13.3f}")
    print(f"slowest: {worst:.0f}x real time (goal >= 500x): {'ok' if worst >= 500 else 'BELOW GOAL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
