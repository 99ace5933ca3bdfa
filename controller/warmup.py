"""Compile (or load from numba's cache) every kernel before the first cycle, never inside one.

`python -m controller.warmup` is run at install so the cache is warm on first start.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from controller.core import layout as L
from controller.points import N_POINTS


def warmup() -> float:
    """Run each kernel once on a synthetic image; returns the seconds it took (compile or cache load)."""
    from controller.core.step import step

    t0 = time.perf_counter()
    params = np.zeros(L.N_PARAMS)
    params[L.P_PERIOD_S] = 1.0
    params[L.P_STRATEGY] = L.STRATEGY_RULE
    step(params, L.new_state(0.0), 1.0, np.zeros(N_POINTS), np.zeros(N_POINTS, dtype=np.uint8))
    return time.perf_counter() - t0


def kernels_cached() -> bool:
    """Whether numba's cache dir (controller/__init__.py) holds the step's index: a start will load the
    kernels rather than compile them. A glob, so it costs nothing and does not import numba."""
    cache = os.environ.get("NUMBA_CACHE_DIR")
    return bool(cache) and any(Path(cache).rglob("step.step-*.nbi"))


def compile_apart() -> float:
    """Compile every kernel into the cache in a child process (`python -m controller.warmup`) when the
    cache has none, so that the caller only loads them. Why: compiling leaves ~400 MB of numba's and
    LLVM's working memory in the process that did it (measured: RSS 554 MB after a cold start against
    116 MB after a warm one, tools/bench/memory.py); the controller runs for months and must not keep
    it. install.sh compiles at install; this covers a start without that (a new cache dir after an
    update of the kernels, a wiped data dir). Returns the seconds spent (0.0 when already cached)."""
    if kernels_cached():
        return 0.0
    import subprocess
    import sys

    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "controller.warmup"], stdout=subprocess.DEVNULL, check=False)
    if done.returncode != 0:      # the in-process warm-up will compile (and report) instead
        print(f"edge-ems: compiling the kernels in a child process failed (exit {done.returncode}); "
              "compiling them in the controller", file=sys.stderr)
    return time.perf_counter() - t0


if __name__ == "__main__":
    print(f"kernels ready in {warmup():.2f} s")
