"""The fuzz suite's profile and its report (docs/fuzzing.md).

The hypothesis profiles "ci" and "long" are registered in fuzz_harness.py (imported here, so they exist
before any fuzz module); which one applies is chosen here: "long" under `--run-slow` (make test-long) or
with EDGE_EMS_FUZZ=long, else "ci". Profiles are applied per target (fuzz_harness.budget), never loaded
globally, so the rest of the suite's hypothesis tests keep their own settings.

At the end of a run that executed fuzz targets, a table of examples and seconds per target is printed;
EDGE_EMS_FUZZ_REPORT=path also writes it as JSON (how docs/fuzzing.md's figures are measured). Under
pytest-xdist each worker hands its counts to the controller, and tests/conftest.py prints their sum.
"""
from __future__ import annotations

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


def report() -> dict:
    return {"profile": H.MODE, "targets": {t: {"examples": H.COUNTS[t], "seconds": round(H.SECONDS[t], 2)}
                                           for t in sorted(H.COUNTS)}}


def pytest_sessionfinish(session):
    """Under pytest-xdist (make test: -n 2): hand this worker's counts to the controller, which sums the
    workers' and prints the table (tests/conftest.py pytest_testnodedown / pytest_terminal_summary)."""
    out = getattr(session.config, "workeroutput", None)
    if out is not None and H.COUNTS:
        out["fuzz_report"] = report()


def pytest_terminal_summary(terminalreporter):
    if H.COUNTS and not hasattr(terminalreporter.config, "workerinput"):     # one process, no xdist
        H.print_report(terminalreporter, report())
