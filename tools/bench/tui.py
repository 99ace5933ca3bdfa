"""What the technician's TUI costs: bytes on the serial line, and the scan loop's cycle time.

    .venv/bin/python -m tools.bench.tui [--speed 5] [--cycles 100] [--rounds 2] [--line-s 20]

1. Line: the controller runs in this process (inner-mongolia-mine, simulated devices; real time, and
   60x real time where every value on the screen moves between two frames),
   `edge-ems tui` runs on one end of a socat pty pair at 115200 8N1 and the other end is read at the
   UART's byte rate (tools/bench/serial_line.SerialLine, 11,520 B/s). On the overview, after the first
   paint, bytes/s over `--line-s` seconds; then Ctrl-L (a full repaint) for scale.
2. Loop: the same run at `--speed` times real time, `--cycles` cycles per run, in alternating rounds
   of three set-ups: no socket at all, the socket with nobody attached, the socket with the TUI
   attached on the overview. Every cycle's time is taken (the loop's own measurement, unbucketed) and
   the p99 of each set-up is printed with the ratios. The TUI is a separate process, as in the field.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.bench.common import percentile
from tools.bench.serial_line import SerialLine, open_line
from tools.bench.startup import cpu_s

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = "inner-mongolia-mine"
BAUD = 115200


class Line:
    """A socat pty pair; the TUI on the gateway side; SerialLine on the laptop side."""

    def __init__(self, workdir: Path, sock: Path, ascii: bool = False):
        if not shutil.which("socat"):
            raise SystemExit("socat is needed (make deps-debian)")
        self.gw, self.lap = workdir / "tty-gw", workdir / "tty-laptop"
        for p in (self.gw, self.lap):
            if p.exists() or p.is_symlink():
                p.unlink()
        self.socat = subprocess.Popen(["socat", f"pty,raw,echo=0,link={self.gw},b{BAUD}",
                                       f"pty,raw,echo=0,link={self.lap},b{BAUD}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not (self.gw.exists() and self.lap.exists()):
            if time.monotonic() > deadline:
                raise RuntimeError("socat made no pty pair")
            time.sleep(0.05)
        self.lap_fd = open_line(str(self.lap), BAUD)
        self.line = SerialLine(self.lap_fd, BAUD).start()
        self.gw_fd = os.open(self.gw, os.O_RDWR | os.O_NOCTTY)
        self.tui = subprocess.Popen([sys.executable, "-m", "controller.cli", "tui", "--socket", str(sock)]
                                    + (["--ascii"] if ascii else []), stdin=self.gw_fd, stdout=self.gw_fd,
                                    stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)

    def cpu_s(self) -> float:
        """The TUI process's CPU seconds so far (user + system, from /proc)."""
        s = cpu_s(self.tui.pid)
        return float("nan") if s is None else s

    def key(self, data: bytes) -> None:
        os.write(self.lap_fd, data)

    def close(self) -> None:
        self.tui.terminate()
        try:
            self.tui.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.tui.kill()
        self.line.close()
        for fd in (self.gw_fd, self.lap_fd):
            os.close(fd)
        self.socat.terminate()
        self.socat.wait(timeout=5)


def run(setup: str, cycles: int, speed: float, workdir: Path, line_s: float = 0.0) -> dict:
    """One controller run in this process; returns every cycle's seconds (and line figures)."""
    from controller.ipc import start_ipc
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    scn = load_scenario(SCENARIO)
    times: list[float] = []
    wrapped = {}

    def capture(loop, image, cmd, events, n):
        if not wrapped:                       # take the loop's own per-cycle measurement, unbucketed
            orig = loop.stats.add
            wrapped["x"] = True

            def add(seconds, _orig=orig):
                times.append(seconds)
                _orig(seconds)
            loop.stats.add = add

    hooks = [capture]
    ipc = line = None
    out = {"setup": setup}
    if setup != "none":
        sock = workdir / f"ipc-{setup}.sock"
        ipc = start_ipc(scn.site, sock)
        hooks.insert(0, ipc.hook)
        if setup == "tui":
            line = Line(workdir, sock)
    try:
        if line_s > 0:
            import threading
            marks = {}

            def measure():
                time.sleep(5.0)                                  # past the first full paint
                marks["t0"], marks["b0"] = time.monotonic(), line.line.bytes
                time.sleep(line_s)
                marks["t1"], marks["b1"] = time.monotonic(), line.line.bytes
                line.key(b"\x0c")                                # Ctrl-L: one full repaint
                time.sleep(2.0)
                marks["b2"] = line.line.bytes
            th = threading.Thread(target=measure, daemon=True)
            th.start()
        hours = cycles * 1.0 / 3600.0
        t0 = time.monotonic()
        run_sim(scn, hours=hours, seed=1, speed=speed, hooks=hooks, ledger=False)
        out["wall_s"] = time.monotonic() - t0
        if line is not None:
            out["tui_cpu_pct"] = 100.0 * line.cpu_s() / out["wall_s"]
        if line_s > 0:
            th.join(timeout=line_s + 15)
            rate = (marks["b1"] - marks["b0"]) / (marks["t1"] - marks["t0"])
            steady_2s = rate * 2.0
            out.update({"line_bytes_per_s": rate, "line_share": rate / (BAUD / 10.0),
                        "full_repaint_bytes": marks["b2"] - marks["b1"] - steady_2s,
                        "first_seconds_bytes": marks["b0"], "snapshots_sent": ipc.stats["sent"]})
    finally:
        if line is not None:
            line.close()
        if ipc is not None:
            out["hook_max_us"] = ipc.stats["hook_max_us"]
            ipc.close()
    out["times"] = times
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", type=float, default=5.0, help="loop runs: times real time")
    ap.add_argument("--cycles", type=int, default=80, help="cycles per loop run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the three set-ups (spreads "
                    "the noise of a shared machine evenly over them)")
    ap.add_argument("--skip-line", action="store_true", help="only the loop figures")
    ap.add_argument("--line-s", type=float, default=20.0, help="seconds of steady overview measured on the line")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edge-ems-bench-tui-") as tmp:
        work = Path(tmp)
        print(f"serial line 115200 8N1 (capacity {BAUD // 10} B/s), TUI on the overview, {args.line_s:.0f} s "
              "steady state after the first paint:")
        lines = {1.0: {"line_bytes_per_s": float("nan"), "full_repaint_bytes": float("nan")},
                 60.0: {"line_bytes_per_s": float("nan")}}
        for speed, label in (() if args.skip_line else
                             ((1.0, "real time"), (60.0, "60x: every value moves every frame"))):
            line = lines[speed] = run("tui", int((args.line_s + 10) * speed), speed, work, line_s=args.line_s)
            print(f"  {label:<36} {line['line_bytes_per_s']:6.0f} B/s = {100 * line['line_share']:4.1f} % of the "
                  f"line; full repaint (Ctrl-L) {line['full_repaint_bytes']:.0f} B")
        line = lines[1.0]
        pooled: dict[str, list[float]] = {"none": [], "idle": [], "tui": []}
        rounds: dict[str, list[float]] = {"none": [], "idle": [], "tui": []}
        tui_cpu = []
        for r in range(args.rounds):
            for setup in ("none", "idle", "tui"):
                res = run(setup, args.cycles, args.speed, work)
                pooled[setup] += res["times"][5:]                # the first cycles warm caches
                rounds[setup].append(percentile(res["times"][5:], 99, 1000.0))
                if "tui_cpu_pct" in res:
                    tui_cpu.append(res["tui_cpu_pct"])
        p99 = {k: percentile(v, 99, 1000.0) for k, v in pooled.items()}
        p50 = {k: percentile(v, 50, 1000.0) for k, v in pooled.items()}
        print(f"loop cycle, {args.rounds} x {args.cycles} cycles per set-up at {args.speed:g}x real time "
              f"(simulated devices):")
        for k, label in (("none", "no socket"), ("idle", "socket, no TUI"), ("tui", "socket + TUI on overview")):
            print(f"  {label:<26} p50 {p50[k]:7.3f} ms  p99 {p99[k]:7.3f} ms  (n={len(pooled[k])}; p99 of each "
                  f"round {' '.join(f'{x:.2f}' for x in rounds[k])})")
        print(f"  the TUI process (nice 10) used {np.mean(tui_cpu):.1f} % of one core")
        print(f"  ratio p99 TUI / no TUI: {p99['tui'] / p99['idle']:.2f}   TUI / no socket: "
              f"{p99['tui'] / p99['none']:.2f}")
        print(json.dumps({"line_bytes_per_s": round(line["line_bytes_per_s"], 1),
                          "line_bytes_per_s_60x": round(lines[60.0]["line_bytes_per_s"], 1),
                          "full_repaint_bytes": line["full_repaint_bytes"],
                          "p99_ms": {k: round(v, 3) for k, v in p99.items()},
                          "ratio_tui_over_idle": round(p99["tui"] / p99["idle"], 3),
                          "round_p99_ms": {k: [round(x, 3) for x in v] for k, v in rounds.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
