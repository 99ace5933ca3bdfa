"""The fuzz suite's profile and its report (docs/fuzzing.md).

The hypothesis profiles "ci" and "long" are registered in fuzz_harness.py (imported here, so they exist
before any fuzz module); which one applies is chosen here: "long" under `--run-slow` (make test-long) or
with EDGE_EMS_FUZZ=long, else "ci". Profiles are applied per target (fuzz_harness.budget), never loaded
globally, so the rest of the suite's hypothesis tests keep their own settings.

At the end of a run that executed fuzz targets, a table of examples and seconds per target is printed;
EDGE_EMS_FUZZ_REPORT=path also writes it as JSON (how docs/fuzzing.md's figures are measured).
"""
from __future__ import annotations

import json
import os
import time

import pytest

import fuzz_harness as H


def pytest_configure(config):
    long = bool(config.getoption("--run-slow", default=False)) or os.environ.get("EDGE_EMS_FUZZ", "").lower() == "long"
    H.MODE = "long" if long else "ci"


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:          # @example inputs of 5000 digits or 50 000 brackets: their repr is long, on purpose
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.filterwarnings("ignore:Generating overly large repr"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    before = dict(H.COUNTS)
    t0 = time.perf_counter()
    yield
    dt = time.perf_counter() - t0
    moved = [t for t, n in H.COUNTS.items() if n != before.get(t, 0)]
    for t in moved:
        H.SECONDS[t] += dt / len(moved)


def pytest_terminal_summary(terminalreporter):
    if not H.COUNTS:
        return
    tr = terminalreporter
    tr.section(f"fuzz targets (profile {H.MODE})")
    for t in sorted(H.COUNTS):
        tr.write_line(f"{t:34s} {H.COUNTS[t]:8d} examples {H.SECONDS[t]:8.1f} s")
    tr.write_line(f"{'total':34s} {sum(H.COUNTS.values()):8d} examples {sum(H.SECONDS.values()):8.1f} s")
    out = os.environ.get("EDGE_EMS_FUZZ_REPORT")
    if out:
        with open(out, "w") as f:
            json.dump({"profile": H.MODE, "targets": {t: {"examples": H.COUNTS[t], "seconds": round(H.SECONDS[t], 2)}
                                                      for t in sorted(H.COUNTS)}}, f, indent=2)
