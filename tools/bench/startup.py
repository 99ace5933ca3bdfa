"""Gateway start-up and memory: `edge-ems run` from process start to its first control cycle, with a cold
and a warm numba cache, and its resident memory after simulated hours of operation.

    python -m tools.bench.startup [--site inner-mongolia-mine] [--warm 3] [--hours 1] [--no-cold] [--exe PATH]

--exe runs another installed edge-ems, e.g. the one install.sh put under a --root (a frozen copy of the code:
the numba cache dir is keyed by the kernel sources, so edits in the working tree make a "warm" start cold).

Start-to-first-cycle is measured the way systemd sees it: the time from spawning the process to its
READY=1 on $NOTIFY_SOCKET (controller/watchdog.py sends it after the first cycle ran). Cold: an empty
EDGE_EMS_CACHE_DIR, every kernel compiles. Warm: the same dir again (a restart, or a start after install.sh
compiled the kernels). Goal: warm < 3 s.

Memory: tools/bench/memory.py's measurement (the same `edge-ems run`, TUI socket on, recording, paced at
360x for --hours of simulated operation; RSS, PSS and USS of the controller and of each child it started).
Goal: RSS < 150 MB. `python -m tools.bench.memory` alone also shows the figure without the release of
numba's compiler pages and, with --cold, a start on an empty cache.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
READY_GOAL_S, RSS_GOAL_MB = 3.0, 150.0


EXE: list[str] = []


def edge_ems() -> list[str]:
    if EXE:
        return EXE
    exe = Path(sys.executable).with_name("edge-ems")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "controller.cli"]


def proc_status_mb(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM (peak RSS), RssAnon and RssFile of a live process, in MB; empty once it has exited."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) / 1024.0
    return out


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a live process has used (load-independent, unlike wall time)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_once(site: str, cache: Path, work: Path, cycles: int, speed: float, sample: bool) -> dict:
    """Spawn `edge-ems run`; seconds to READY=1, RSS at READY, last and peak RSS while it ran."""
    out = work / f"run-{time.monotonic_ns()}"
    notify_path = work / "notify.sock"
    if notify_path.exists():
        notify_path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.05)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "EDGE_EMS_CACHE_DIR": str(cache)}
    env.pop("NUMBA_CACHE_DIR", None)
    cmd = [*edge_ems(), "run", "--site", site, "--cycles", str(cycles), "--speed", str(speed), "--out", str(out),
           "--socket", str(work / "ipc.sock")]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ready_s = rss_ready = cpu_ready = None
    last, peak = {}, 0.0
    try:
        while proc.poll() is None:
            try:
                msg = sock.recv(4096)
                if ready_s is None and b"READY=1" in msg:
                    ready_s = time.perf_counter() - t0
                    rss_ready = proc_status_mb(proc.pid).get("VmRSS")
                    cpu_ready = cpu_s(proc.pid)
                    if not sample:
                        proc.terminate()
            except socket.timeout:
                pass
            if sample:
                s = proc_status_mb(proc.pid)
                if s:
                    last = s
                    peak = max(peak, s.get("VmHWM", 0.0))
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        sock.close()
        shutil.rmtree(out, ignore_errors=True)
    if ready_s is None:
        raise SystemExit(f"edge-ems run never sent READY=1 (exit {proc.returncode}):\n{err[-2000:]}")
    return {"ready_s": ready_s, "cpu_ready_s": cpu_ready, "rss_ready_mb": rss_ready, "rss_last_mb": last.get("VmRSS"), "rss_peak_mb": peak,
            "anon_last_mb": last.get("RssAnon"), "file_last_mb": last.get("RssFile"),
            "wall_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="inner-mongolia-mine")
    ap.add_argument("--warm", type=int, default=3, help="warm starts to time (median reported)")
    ap.add_argument("--hours", type=float, default=1.0, help="simulated hours for the memory figure")
    ap.add_argument("--no-cold", dest="cold", action="store_false", help="skip the cold start (slow: compiles)")
    ap.add_argument("--cache", type=Path, default=None, help="numba cache dir to use (default: a fresh temp dir)")
    ap.add_argument("--exe", default=None, help="the edge-ems to run (default: this environment's)")
    args = ap.parse_args(argv)
    if args.exe:
        EXE[:] = [args.exe]
    with tempfile.TemporaryDirectory(prefix="edge-ems-startup-") as tmp:
        work = Path(tmp)
        cache = args.cache or work / "cache"
        if args.cold:
            cold = run_once(args.site, cache, work, cycles=5, speed=1.0, sample=False)
            print(f"cold start to first cycle: {cold['ready_s']:6.2f} s wall, {cold['cpu_ready_s']:6.2f} s CPU "
                  "(empty numba cache: every kernel compiles)")
        else:
            run_once(args.site, cache, work, cycles=5, speed=1.0, sample=False)   # make sure it is warm
        before = sorted(cache.rglob("*.nbc"))
        runs = [run_once(args.site, cache, work, cycles=5, speed=1.0, sample=False) for _ in range(args.warm)]
        warm = [r["ready_s"] for r in runs]
        compiled = len(sorted(cache.rglob("*.nbc"))) - len(before)
        if compiled:       # a kernel source changed meanwhile (the cache dir is keyed by them): not a warm figure
            print(f"WARNING: {compiled} kernel(s) compiled during the warm starts: the figures below are not warm")
        w = statistics.median(warm)
        print(f"warm start to first cycle: {w:6.2f} s median of {len(warm)} "
              f"({', '.join(f'{x:.2f}' for x in warm)}); goal < {READY_GOAL_S:.0f} s: "
              f"{'ok' if w < READY_GOAL_S else 'ABOVE GOAL'} ({w / READY_GOAL_S:.2f} of the goal); CPU "
              f"{statistics.median(r['cpu_ready_s'] for r in runs):.2f} s; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
        if args.cold:
            print(f"cold / warm: {cold['ready_s'] / w:.1f}x")
        from tools.bench.memory import measure, report     # per process, after --hours (tools/bench/memory.py)
        report(f"memory of edge-ems run, {args.hours:g} h simulated",
               measure(args.site, args.hours, 360.0, cache, work, keep_llvm=False, exe=edge_ems()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
