"""Resident memory of `edge-ems run` on the reference site after simulated hours, per process.

    python -m tools.bench.memory [--site inner-mongolia-mine] [--hours 1] [--speed 360] [--no-compare]
                                 [--cold] [--cache DIR] [--exe PATH]

What runs: the real gateway command, `edge-ems run --site SITE` with its TUI socket and recording to a
temp --out, paced at --speed times real time (360: an hour in 10 s of wall time) with a numba cache made
warm by a short run first (as after install.sh). The snapshot is taken once --hours of simulated time have
passed since the controller's READY=1 (sent after its first cycle); the run is then stopped with SIGTERM
and the cycle count it reports on exit is printed, so the figure is "after at least that many cycles".

Per process (the controller and every child it started, e.g. the short-lived one that computes the
simulated site's pvlib series), from /proc/PID: RSS (the goal's measure: < 150 MB), split into anonymous
(the process's own heap) and file-backed (mapped libraries) pages; PSS (shared pages divided among the
processes mapping them) and USS (private pages only: what stopping the process would free); and the peak
RSS (VmHWM). Then the largest mappings of the controller, to show where the RSS goes.

--cold first measures a start on an empty cache (controller/warmup.compile_apart compiles the kernels in
a child process, which then shows among the children). --no-compare skips the second run with EDGE_EMS_KEEP_LLVM_PAGES=1, i.e. without controller/llvm_pages.py
giving back numba's compiler pages after the first cycle (the figure before that change).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tools.bench.startup import EXE, RSS_GOAL_MB, edge_ems

MB = 1024.0   # kB -> MB


def _kb_fields(text: str, keys: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            out[key] = int(rest.split()[0]) / MB
    return out


def status_mb(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM (peak RSS), RssAnon, RssFile in MB; empty once the process is gone."""
    try:
        return _kb_fields(Path(f"/proc/{pid}/status").read_text(), ("VmRSS", "VmHWM", "RssAnon", "RssFile"))
    except OSError:
        return {}


def rollup_mb(pid: int) -> dict[str, float]:
    """Rss, Pss, Pss_Anon, Pss_File and USS (Private_Clean + Private_Dirty) in MB from smaps_rollup."""
    try:
        f = _kb_fields(Path(f"/proc/{pid}/smaps_rollup").read_text(),
                       ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Clean", "Private_Dirty"))
    except OSError:
        return {}
    f["USS"] = f.pop("Private_Clean", 0.0) + f.pop("Private_Dirty", 0.0)
    return f


def by_mapping(pid: int) -> list[tuple[str, float, float]]:
    """(mapping name, RSS MB, PSS MB) per file name / [heap] / [anon], largest RSS first."""
    rss, pss = Counter(), Counter()
    name = "[anon]"
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            name = os.path.basename(head[5].strip()) if len(head) == 6 and head[5].strip() else "[anon]"
        elif line.startswith("Rss:"):
            rss[name] += int(line.split()[1]) / MB
        elif line.startswith("Pss:"):
            pss[name] += int(line.split()[1]) / MB
    return [(n, v, pss[n]) for n, v in rss.most_common()]


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def measure(site: str, hours: float, speed: float, cache: Path, work: Path, keep_llvm: bool,
            exe: list[str] | None = None) -> dict:
    """One `edge-ems run` (`exe`, default this environment's): status, rollup and mappings of the controller
    after `hours` simulated, and the peak RSS and lifetime of each child process it started."""
    notify = work / "notify.sock"
    notify.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(0.05)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify), "EDGE_EMS_CACHE_DIR": str(cache)}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("EDGE_EMS_KEEP_LLVM_PAGES", None)
    if keep_llvm:
        env["EDGE_EMS_KEEP_LLVM_PAGES"] = "1"
    cycles = int(hours * 3600 * 1.5 + speed * 60)   # a minute of wall time spare; SIGTERM stops it
    cmd = [*(exe or edge_ems()), "run", "--site", site, "--cycles", str(cycles), "--speed", str(speed),
           "--out", str(work / f"out-{time.monotonic_ns()}"), "--socket", str(work / "ipc.sock")]
    t0 = time.monotonic()
    out_path, err_path = work / "stdout.txt", work / "stderr.txt"     # files: no pipe can fill and block it
    proc = subprocess.Popen(cmd, env=env, stdout=out_path.open("w"), stderr=err_path.open("w"))
    kids: dict[int, dict] = {}
    ready = None
    at_ready = {}
    try:
        while proc.poll() is None:
            try:                                  # read every datagram, as systemd does
                if b"READY=1" in sock.recv(4096) and ready is None:
                    ready = time.monotonic()
                    at_ready = status_mb(proc.pid)
            except socket.timeout:
                pass
            for kid in children(proc.pid):
                s = status_mb(kid)
                k = kids.setdefault(kid, {"cmd": cmdline(kid), "first": time.monotonic(), "peak": 0.0})
                if s:
                    k["peak"], k["last"], k["rss"] = max(k["peak"], s.get("VmHWM", 0.0)), time.monotonic(), s
            if ready is not None and time.monotonic() - ready >= hours * 3600.0 / speed:
                break
            if time.monotonic() - t0 > 600 + hours * 3600.0 / speed:
                raise SystemExit("edge-ems run: no READY=1 within 600 s")
        if proc.poll() is not None:
            raise SystemExit(f"edge-ems run exited early ({proc.returncode}):\n{err_path.read_text()[-2000:]}")
        sim_s = (time.monotonic() - ready) * speed
        end = {"pid": proc.pid, "status": status_mb(proc.pid), "rollup": rollup_mb(proc.pid), "maps": by_mapping(proc.pid),
               "live_children": {k: status_mb(k) for k in children(proc.pid)}}
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            tasks = {t.name: (Path(t, "wchan").read_text(), Path(t, "stat").read_text().split(")")[1].split()[0])
                     for t in Path(f"/proc/{proc.pid}/task").iterdir()}
            raise SystemExit(f"edge-ems run did not stop within 60 s of SIGTERM (tasks: {tasks}):\n"
                             f"{out_path.read_text()[-1000:]}\n{err_path.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    out, err = out_path.read_text(), err_path.read_text()
    stats = {}
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            stats = json.loads(line)
            break
    return {"cmd": cmd, "ready_s": ready - t0, "at_ready": at_ready, "sim_s": sim_s, "end": end, "kids": kids,
            "cycles": stats.get("cycles"), "overruns": stats.get("overruns"), "rc": proc.returncode,
            "stderr": err}


def report(label: str, m: dict) -> bool:
    """Print one run's figures; True when the controller's RSS is under the goal."""
    s, r = m["end"]["status"], m["end"]["rollup"]
    ok = s["VmRSS"] < RSS_GOAL_MB
    print(f"\n{label}: READY after {m['ready_s']:.1f} s; snapshot after {m['sim_s'] / 3600:.2f} h simulated, "
          f"the run stopped at cycle {m['cycles']} ({m['overruns']} overruns; exit {m['rc']})")
    print(f"  controller `edge-ems run` (pid {m['end']['pid']}): RSS {s['VmRSS']:.0f} MB "
          f"({s['RssAnon']:.0f} anonymous + {s['RssFile']:.0f} file-backed), PSS {r['Pss']:.0f} MB, "
          f"USS {r['USS']:.0f} MB, peak RSS {s['VmHWM']:.0f} MB (at READY {m['at_ready'].get('VmRSS', 0):.0f} MB); "
          f"goal RSS < {RSS_GOAL_MB:.0f} MB: {'met' if ok else 'ABOVE GOAL'} ({s['VmRSS'] / RSS_GOAL_MB:.2f} of it)")
    for pid, k in sorted(m["kids"].items()):
        alive = "still running" if pid in m["end"]["live_children"] else \
            f"exited after {k.get('last', k['first']) - k['first'] + 0.05:.1f} s"
        print(f"  child pid {pid} ({k['cmd'][:90]}): peak RSS {k['peak']:.0f} MB, {alive}")
    if not m["kids"]:
        print("  no child processes")
    top = ", ".join(f"{n} {v:.1f}" for n, v, _ in m["end"]["maps"][:8])
    llvm = sum(v for n, v, _ in m["end"]["maps"] if n.startswith("libllvmlite"))
    print(f"  largest mappings (RSS MB): {top}; libllvmlite.so in all: {llvm:.1f} MB")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="inner-mongolia-mine")
    ap.add_argument("--hours", type=float, default=1.0, help="simulated hours before the snapshot")
    ap.add_argument("--speed", type=float, default=360.0, help="times real time (360: 1 h in 10 s)")
    ap.add_argument("--no-compare", dest="compare", action="store_false",
                    help="skip the run that keeps numba's compiler pages (EDGE_EMS_KEEP_LLVM_PAGES=1)")
    ap.add_argument("--cold", action="store_true",
                    help="first measure a start on an empty numba cache (every kernel compiles: minutes)")
    ap.add_argument("--cache", type=Path, default=None, help="numba cache dir (default: a temp dir, warmed first)")
    ap.add_argument("--exe", default=None, help="the edge-ems to run (default: this environment's)")
    args = ap.parse_args(argv)
    if args.hours <= 0 or args.speed <= 0:
        ap.error("--hours and --speed must be > 0")
    if args.exe:
        EXE[:] = [args.exe]
    with tempfile.TemporaryDirectory(prefix="edge-ems-memory-") as tmp:
        work = Path(tmp)
        cache = args.cache or work / "cache"
        if args.cold:
            cold_cache = work / "cold-cache"
            m = measure(args.site, args.hours, args.speed, cold_cache, work, keep_llvm=False)
            report(f"edge-ems run on an empty numba cache ({len(list(cold_cache.rglob('*.nbi')))} kernels "
                   "compiled before READY)", m)
        t = time.monotonic()
        before = len(list(cache.rglob("*.nbi")))
        measure(args.site, 0.01, args.speed, cache, work, keep_llvm=False)      # warm the numba cache
        print(f"numba cache {cache}: {len(list(cache.rglob('*.nbi'))) - before} kernels compiled in the warm-up "
              f"run ({time.monotonic() - t:.0f} s); {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        runs = [("edge-ems run (compiler pages given back after the first cycle)", False)]
        if args.compare:
            runs.append(("edge-ems run with EDGE_EMS_KEEP_LLVM_PAGES=1 (compiler pages kept)", True))
        oks = []
        for label, keep in runs:
            n0 = len(list(cache.rglob("*.nbi")))
            m = measure(args.site, args.hours, args.speed, cache, work, keep_llvm=keep)
            if len(list(cache.rglob("*.nbi"))) != n0:
                print("WARNING: kernels compiled during the measured run (a source changed?): not a warm figure")
            oks.append(report(label, m))
    return 0 if oks[0] else 1


if __name__ == "__main__":
    sys.exit(main())
