"""Compile (or load from numba's cache) every kernel before the first cycle, never inside one.

`python -m controller.warmup` is run at install so the cache is warm on first start.
"""
from __future__ import annotations

import time

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


if __name__ == "__main__":
    print(f"kernels ready in {warmup():.2f} s")
