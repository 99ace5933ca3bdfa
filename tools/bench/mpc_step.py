"""Benchmark: the whole MPC step (forecast + plan + real-time correction + interlocks), cycle by cycle.

`python -m tools.bench.mpc_step [--scenario S] [--hours H] [--recording REC]`

Why from a recording: the step is timed alone (no simulated devices, no recorder, no hooks), on the
very images the controller saw, and the replay is also checked bit for bit on the way. Without
--recording, a short `edge-ems sim --strategy mpc` run makes one first. Prints p50/p99/max of every
cycle and of the cycles that planned, and the ratio of the 10 ms budget (issue 4) to p99.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.bench.common import percentile

BUDGET_MS = 10.0


def time_steps(recording: Path) -> dict:
    from controller.core import layout as L
    from controller.core.step import step
    from controller.replay import iter_records, open_recording

    rec = open_recording(recording)
    if int(rec.params[L.P_STRATEGY]) != L.STRATEGY_MPC:
        raise SystemExit(f"{recording}: recorded with strategy {L.STRATEGY_NAMES[int(rec.params[L.P_STRATEGY])]}, "
                         "not mpc")
    state = rec.state0.copy()
    all_ms, plan_ms = [], []
    mismatches = 0
    for r in iter_records(recording, rec):
        value = np.ascontiguousarray(r.image["value"])
        quality = np.ascontiguousarray(r.image["quality"])
        t_s = float(r.image["t_s"])
        t0 = time.perf_counter()
        new, cmd, _, _ = step(rec.params, state, t_s, value, quality)
        ms = (time.perf_counter() - t0) * 1e3
        all_ms.append(ms)
        if new[L.S_PLAN_COUNT] > state[L.S_PLAN_COUNT]:
            plan_ms.append(ms)
        mismatches += cmd.tobytes() != r.commands.tobytes()
        state = new
    a, p = np.array(all_ms), np.array(plan_ms)
    return {"cycles": a.size, "plans": p.size, "mismatches": mismatches, "max_at_cycle": int(a.argmax()),
            "p50_ms": percentile(a, 50), "p99_ms": percentile(a, 99), "max_ms": float(a.max()),
            # the first step of a replay also initialises the forecasters and makes the first plan cold
            "max_after_first_ms": float(a[1:].max()) if a.size > 1 else float("nan"),
            "plan_p50_ms": percentile(p, 50), "plan_p99_ms": percentile(p, 99),
            "plan_max_ms": float(p.max()) if p.size else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="inner-mongolia-mine")
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--recording", default=None)
    args = ap.parse_args(argv)
    if args.recording:
        recording = Path(args.recording)
    else:
        from tools.sim.runner import run_sim
        from tools.sim.scenario import load_scenario
        out = Path(tempfile.mkdtemp(prefix="bench-mpc-step-"))
        run_sim(load_scenario(args.scenario), hours=args.hours, seed=1, strategy="mpc", out_dir=out, ledger=False)
        recording = out / "recording"
    from controller.warmup import warmup
    warmup()
    r = time_steps(recording)
    print(f"{recording}: {r['cycles']} cycles, {r['plans']} plans, replay mismatches {r['mismatches']}")
    print(f"  every cycle:   p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  max {r['max_ms']:.3f} ms (cycle {r['max_at_cycle']})")
    print(f"  after the first cycle: max {r['max_after_first_ms']:.3f} ms")
    print(f"  planning ones: p50 {r['plan_p50_ms']:.3f} ms  p99 {r['plan_p99_ms']:.3f} ms  max {r['plan_max_ms']:.3f} ms")
    print(f"  budget {BUDGET_MS:.0f} ms / p99 = {BUDGET_MS / r['p99_ms']:.1f}x")
    return 0 if r["mismatches"] == 0 and r["p99_ms"] <= BUDGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
