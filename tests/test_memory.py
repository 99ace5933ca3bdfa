"""The gateway's memory: `edge-ems run` gives back numba's compiler pages after its first cycle and never
loads the simulator's pvlib/pandas (they run in a short-lived child). Figures: tools/bench/memory.py."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from controller.llvm_pages import mappings, releasable

REPO = Path(__file__).resolve().parents[1]

SMAPS = """\
7f0000000000-7f0000365000 r--p 00000000 fe:00 42    /venv/llvmlite/binding/libllvmlite.so
Rss:                3476 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
7f0000365000-7f0005394000 r-xp 00365000 fe:00 42    /venv/llvmlite/binding/libllvmlite.so
Rss:               52392 kB
Anonymous:             0 kB
7f0005394000-7f0005677000 r--p 05394000 fe:00 42    /venv/llvmlite/binding/libllvmlite.so
Rss:                1792 kB
Anonymous:          1792 kB
7f0005677000-7f00056a0000 rw-p 0983c000 fe:00 42    /venv/llvmlite/binding/libllvmlite.so
Rss:                 156 kB
Anonymous:           156 kB
7f00056a0000-7f00056b0000 r-xp 00000000 fe:00 43    /usr/lib/libc.so.6
Rss:                1500 kB
Anonymous:             0 kB
7f00056b0000-7f00056c0000 rw-p 00000000 00:00 0
Rss:                  64 kB
Anonymous:            64 kB
"""



def _stop(proc, sock) -> None:
    """SIGTERM the run (it must exit cleanly), kill it if it does not, close the notify socket."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    sock.close()

def test_only_clean_read_only_mappings_of_llvm_are_releasable():
    maps = mappings(SMAPS)
    assert [(m.perms, m.rss_kb, m.anonymous_kb) for m in maps] == [
        ("r--p", 3476, 0), ("r-xp", 52392, 0), ("r--p", 1792, 1792), ("rw-p", 156, 156)]
    # relocated read-only data (copy-on-write pages) and .data are never handed back: only file copies
    assert [(m.perms, m.start) for m in releasable(maps)] == [("r--p", 0x7F0000000000), ("r-xp", 0x7F0000365000)]


_PROBE = """
import json
from numba import njit
from controller.llvm_pages import mappings, release_llvm_pages

def llvm_file_mb():
    return sum(m.rss_kb - m.anonymous_kb for m in mappings(open('/proc/self/smaps').read())) / 1024

@njit
def f(x):
    return x * 2 + 1

f(1)
before = llvm_file_mb()
released = release_llvm_pages()
after = llvm_file_mb()

@njit
def g(x):               # compiling after the release runs LLVM again: its pages fault back in from the file
    return x * 3

print(json.dumps({"before": before, "released": released, "after": after, "g": g(2), "f": f(5),
                  "again": llvm_file_mb()}))
"""


def _probe(keep_pages: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_EMS_KEEP_LLVM_PAGES"}
    if keep_pages:
        env["EDGE_EMS_KEEP_LLVM_PAGES"] = "1"
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_release_unmaps_llvm_code_and_compiling_afterwards_still_works():
    r = _probe(keep_pages=False)
    assert r["before"] > 20.0                         # numba's LLVM faults in tens of MB of its library
    assert r["released"] >= 0.9 * r["before"]
    assert r["after"] < 0.05 * r["before"]
    assert r["g"] == 6 and r["f"] == 11               # lossless: old code runs, new code compiles
    assert r["again"] > r["after"]                    # ... by faulting LLVM back in from the file
    kept = _probe(keep_pages=True)
    assert kept["released"] == 0.0 and kept["after"] >= 0.9 * kept["before"]


def test_series_apart_is_the_same_series_without_pandas_in_the_caller(tmp_path):
    """`edge-ems run` computes the pvlib series in a child process: same arrays, and the caller never
    imports pandas, pvlib or scipy."""
    code = f"""
import sys, numpy as np, pickle
from dataclasses import fields
from tools.sim.scenario import load_scenario
from tools.sim.exogenous import build_series_apart
s = build_series_apart(load_scenario("inner-mongolia-mine"), 30, 7)
assert not {{"pandas", "pvlib", "scipy"}} & set(sys.modules), sorted({{"pandas", "pvlib", "scipy"}} & set(sys.modules))
pickle.dump(s, open({str(tmp_path / 'series.pkl')!r}, "wb"))
"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}     # an empty store: the child runs
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "series").glob("*.pkl"))) == 1              # and its result was kept
    import pickle

    from tools.sim.exogenous import build_series
    from tools.sim.scenario import load_scenario
    apart = pickle.loads((tmp_path / "series.pkl").read_bytes())
    here = build_series(load_scenario("inner-mongolia-mine"), 30, 7)
    assert len(here.t_min) == 30 * 60 + 2 and here.pv_clear_kw.max() > 0.0
    for f in fields(here):
        a, b = getattr(apart, f.name), getattr(here, f.name)
        assert (np.array_equal(a, b) if isinstance(b, np.ndarray) else a == b), f.name


def test_a_restart_takes_the_kept_series_and_starts_no_child(tmp_path, monkeypatch):
    import subprocess as sp

    from tools.sim.exogenous import start_series_apart
    from tools.sim.scenario import load_scenario
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    scn = load_scenario("inner-mongolia-mine")
    first = start_series_apart(scn, 3.0, 11)()
    started = []
    monkeypatch.setattr(sp, "Popen", lambda *a, **k: started.append(a) or (_ for _ in ()).throw(OSError("no")))
    again = start_series_apart(scn, 3.0, 11)()
    assert not started and np.array_equal(again.pv_avail_kw, first.pv_avail_kw)
    with pytest.raises(OSError):                       # another seed is other series: computed afresh
        start_series_apart(scn, 3.0, 12)
    assert len(started) == 1


def test_series_child_failure_is_reported_with_the_scenario(capfd):
    from tools.sim.exogenous import build_series_apart
    from tools.sim.scenario import load_scenario
    scn = load_scenario("inner-mongolia-mine")
    scn["pv"] = {**scn["pv"], "tmy_file": "no-such-tmy.csv"}      # pvlib fails in the child
    with pytest.raises(RuntimeError, match="inner-mongolia-mine.*child process failed"):
        build_series_apart(scn, 1.0, 1)
    assert "no-such-tmy.csv" in capfd.readouterr().err                # the child's own error reaches stderr


def _file_rss_kb(pid: int, name_part: str) -> tuple[int, int]:
    """(file-backed RSS kB of mappings whose path contains name_part, number of such mappings)."""
    rss = count = 0
    cur = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            cur = len(head) == 6 and name_part in head[5]
            count += cur
        elif cur and line.startswith("Rss:"):
            rss += int(line.split()[1])
        elif cur and line.startswith("Anonymous:"):
            rss -= int(line.split()[1])
    return rss, count


def test_gateway_run_holds_no_compiler_pages_and_no_pandas(tmp_path):
    """The real `edge-ems run` on the reference site: once it is READY (after its first cycle) no page of
    libllvmlite.so's code stays mapped, and nothing of pandas is loaded at all."""
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(1.0)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify)}
    env.pop("EDGE_EMS_KEEP_LLVM_PAGES", None)
    err = tmp_path / "stderr.txt"          # a file, not a pipe nobody drains while it runs
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--site", "inner-mongolia-mine",
                             "--cycles", "600", "--speed", "20", "--socket", "none", "--out", str(tmp_path / "out")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err.open("w"))
    try:
        deadline = time.monotonic() + 300           # a cold numba cache compiles every kernel first
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, f"no READY=1: {err.read_text()[-3000:]}"
            try:
                if b"READY=1" in sock.recv(4096):
                    break
            except socket.timeout:
                pass
        llvm_kb, llvm_maps = _file_rss_kb(proc.pid, "libllvmlite.so")
        _, pandas_maps = _file_rss_kb(proc.pid, "/pandas/")
        assert llvm_maps >= 3                      # numba is loaded ...
        assert llvm_kb < 1024                      # ... but its compiler's pages were given back
        assert pandas_maps == 0                    # the pvlib series were computed in the child
    finally:
        _stop(proc, sock)
    assert proc.returncode == 0, err.read_text()[-3000:]


def test_watchdog_ping_never_blocks_on_a_receiver_that_stopped_reading(tmp_path, monkeypatch):
    """Found by tools/bench/memory.py: a NOTIFY_SOCKET reader that stopped reading filled the datagram
    queue and the next WATCHDOG=1 blocked the scan cycle (and SIGTERM) for good. A full queue now costs
    only that ping."""
    from controller.watchdog import SystemdNotifier
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notifier = SystemdNotifier()
        t0 = time.monotonic()
        for _ in range(500):                 # far more than a unix datagram queue holds (10 by default)
            notifier.notify("WATCHDOG=1")
        assert time.monotonic() - t0 < 5.0
        assert 0 < notifier.sent < 500        # the queue filled: the rest were dropped, none waited
        assert sock.recv(64) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_kernels_cached_looks_for_the_step_index(tmp_path, monkeypatch):
    from controller.warmup import kernels_cached
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert not kernels_cached()
    (tmp_path / "core_0123").mkdir()
    (tmp_path / "core_0123" / "step.step-102.py311.nbi").write_bytes(b"")
    assert kernels_cached()
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert not kernels_cached()


@pytest.mark.slow
def test_cold_start_compiles_in_a_child_and_the_controller_stays_small(tmp_path):
    """An empty numba cache: `edge-ems run` compiles every kernel in a child process (~600 MB at its peak)
    and only loads them itself, so its own peak stays that of a warm start (~180 MB, not ~600 MB)."""
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(1.0)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "EDGE_EMS_KEEP_LLVM_PAGES")}
    env.update(NOTIFY_SOCKET=str(notify), EDGE_EMS_CACHE_DIR=str(tmp_path / "cache"))
    err = tmp_path / "stderr.txt"
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--site", "inner-mongolia-mine",
                             "--cycles", "600", "--speed", "20", "--socket", "none", "--out", str(tmp_path / "out")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err.open("w"))
    kid_peak = 0
    try:
        deadline = time.monotonic() + 900
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, f"no READY=1: {err.read_text()[-3000:]}"
            for kid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                try:
                    status = Path(f"/proc/{kid}/status").read_text()
                except OSError:
                    continue
                if "controller.warmup" in Path(f"/proc/{kid}/cmdline").read_bytes().decode(errors="replace"):
                    kid_peak = max(kid_peak, int(status.split("VmHWM:")[1].split()[0]) // 1024)
            try:
                if b"READY=1" in sock.recv(4096):
                    break
            except socket.timeout:
                pass
        peak = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmHWM:")[1].split()[0]) // 1024
        assert list((tmp_path / "cache").rglob("step.step-*.nbi"))       # the child filled the cache
        assert kid_peak > 2 * peak, (kid_peak, peak)                      # the compiler's memory was the child's
    finally:
        _stop(proc, sock)
