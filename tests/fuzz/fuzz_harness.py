"""The fuzz harness's shared pieces: example budgets per target, per-target counters, and the strategies
several targets use (JSON values, byte mutations).

Why budgets live here and not in one global hypothesis profile: the default `make test` run shares its
~10 minute budget with the whole suite, and fuzz targets differ a hundredfold in cost per example (a
market payload decodes in microseconds, a recording replay runs the numba step). Each target states
its own example count for the two profiles registered in tests/fuzz/conftest.py ("ci", the default,
and "long", under `--run-slow` or EDGE_EMS_FUZZ=long); the profile gives everything else (no deadline,
no example database, derandomised in ci so the default run is reproducible and never flaky).

Every target's test body calls `hit(target)` once per example, so the harness can report how many
examples each target really ran (conftest.py prints the table and writes EDGE_EMS_FUZZ_REPORT).
"""
from __future__ import annotations

import json
import os
from collections import Counter

from hypothesis import HealthCheck, settings, strategies as st

# Set by tests/fuzz/conftest.py (pytest_configure runs before the test modules are imported).
MODE = "long" if os.environ.get("EDGE_EMS_FUZZ", "").lower() == "long" else "ci"
COUNTS: Counter = Counter()
SECONDS: Counter = Counter()

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture,
                                      HealthCheck.large_base_example))
settings.register_profile("ci", max_examples=100, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=2000, derandomize=False, **_COMMON)


def budget(ci: int, long: int):
    """The settings decorator of one target: `ci` examples in the default run, `long` under --run-slow."""
    return settings(settings.get_profile(MODE), max_examples=ci if MODE == "ci" else long)


def examples(ci: int, long: int) -> int:
    """The same budget for a loop that is not a hypothesis test (the bit-flip sweep, atheris runs)."""
    return ci if MODE == "ci" else long


def hit(target: str, n: int = 1) -> None:
    COUNTS[target] += n


def print_report(tr, rep: dict) -> None:
    """The examples-per-target table on pytest's terminal reporter `tr`, and EDGE_EMS_FUZZ_REPORT=path as
    JSON; `rep` = {"profile", "targets": {name: {"examples", "seconds"}}} (one process, or xdist's sum)."""
    targets = rep["targets"]
    tr.section(f"fuzz targets (profile {rep['profile']})")
    for t, v in targets.items():
        tr.write_line(f"{t:34s} {v['examples']:8d} examples {v['seconds']:8.1f} s")
    tr.write_line(f"{'total':34s} {sum(v['examples'] for v in targets.values()):8d} examples "
                  f"{sum(v['seconds'] for v in targets.values()):8.1f} s")
    out = os.environ.get("EDGE_EMS_FUZZ_REPORT")
    if out:
        with open(out, "w") as f:
            json.dump(rep, f, indent=2)


# -- strategies ---------------------------------------------------------------------------------------
# numbers a decoder must bound exactly: huge ints (no float can hold them), edges of float, signs
nasty_ints = st.sampled_from([0, 1, -1, 2 ** 31, 2 ** 53 + 1, 2 ** 63, 2 ** 64, -2 ** 63 - 1, 10 ** 20, 10 ** 400,
                              -10 ** 400])
nasty_floats = st.sampled_from([0.0, -0.0, 1e-320, 1e308, -1e308, 1.7976931348623157e308, 5e-324,
                                float("inf"), float("-inf"), float("nan")])
numbers = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), nasty_ints, nasty_floats)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)), max_leaves=24)
# ISO-like time strings: valid ones, edge years and offsets, near misses
times = st.one_of(
    st.sampled_from(["2026-04-10T09:00:00Z", "2026-04-10T09:00:00", "0001-01-01T00:00:00+01:00",
                     "0001-01-01T00:00:00-23:59", "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59+14:00",
                     "2026-02-30T00:00:00Z", "2026-04-10T09:00:00+25:00", "2026-04-10", "Z", "", "\x00",
                     "2026-04-10T09:00:00.999999999Z", "+002026-04-10T00:00:00Z"]),
    st.datetimes().map(lambda d: d.isoformat() + "Z"), st.text(max_size=30))


def dumps_loose(value) -> bytes:
    """JSON as a hostile sender writes it: NaN/Infinity allowed, huge ints as digits."""
    return json.dumps(value, allow_nan=True).encode()


def deep(depth: int, opener: str = "[") -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    inner = '{"a":' * depth + "1" + "}" * depth if opener == "{" else opener * depth + closer * depth
    return inner.encode()


@st.composite
def mutated(draw, seed: bytes, max_edits: int = 8) -> bytes:
    """`seed` with a few random byte edits: flips, overwrites, inserts, deletes, truncation, repeats."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_edits))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "dup")))
        if not data and op != "insert":
            op = "insert"
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[i:]
        else:
            j = min(len(data), i + draw(st.integers(1, 64)))
            data[i:i] = data[i:j]
    return bytes(data)
