"""Shared fixtures. Slow soak/fault suites run only with --run-slow (make test-long)."""
import pytest


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the long soak and fault suites (marked slow)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="long suite: run with --run-slow (make test-long)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


# The fuzz suite's examples-per-target table under pytest-xdist (make test runs -n 2): each worker counts
# (tests/fuzz/conftest.py) and hands its counts over in workeroutput; the controller, which never loads
# tests/fuzz/conftest.py, sums them here and prints the table. One process: tests/fuzz/conftest.py prints.
_FUZZ_WORKERS: dict = {}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    rep = getattr(node, "workeroutput", {}).get("fuzz_report")
    if rep:
        _FUZZ_WORKERS[node.gateway.id] = rep


def pytest_terminal_summary(terminalreporter):
    if not _FUZZ_WORKERS:
        return
    total = {"profile": next(iter(_FUZZ_WORKERS.values()))["profile"], "targets": {}}
    for rep in _FUZZ_WORKERS.values():
        for t, v in rep["targets"].items():
            acc = total["targets"].setdefault(t, {"examples": 0, "seconds": 0.0})
            acc["examples"] += v["examples"]
            acc["seconds"] = round(acc["seconds"] + v["seconds"], 2)
    total["targets"] = dict(sorted(total["targets"].items()))
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz"))
    import fuzz_harness
    fuzz_harness.print_report(terminalreporter, total)
