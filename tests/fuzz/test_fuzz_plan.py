"""Fuzz: `edge-ems plan FILE.json`, the planning-instance loader (controller/core/plan_instance.py) and,
for what it accepts, the solve and the JSON it prints.

Contract (docs/fuzzing.md): `plan_main(path)` returns 2 with "edge-ems plan: bad instance: <field>: ..."
on stderr, or 0 with one line of strict JSON on stdout (no NaN / Infinity: a consumer's parser refuses
them) whose arrays have the instance's horizon; `load_instance` raises InstanceError only. Any other
exception, exit code or non-JSON output is a crash.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import tempfile
from pathlib import Path

from hypothesis import example, given, strategies as st

import fuzz_harness as H
from controller.core.plan_instance import InstanceError, load_instance, plan_main
from tools.bench.mpc import make_instance_dict

BASE = make_instance_dict(3, 6, "genset")
DIR = Path(tempfile.mkdtemp(prefix="fuzz-plan-"))
ARRAYS = ("load_kw", "pv_kw", "grid_price", "export_price", "grid_co2_kg_per_kwh", "grid_import_max_kw")


def _strict(c):
    raise ValueError(f"{c} in the plan output")


@st.composite
def instances(draw):
    """Bytes of an instance file: the base with fuzzed values (scalars, array items, lengths, whole
    tables), the JSON text mutated, or junk."""
    how = draw(st.sampled_from(("values", "values", "values", "text", "junk")))
    if how == "junk":
        return draw(st.one_of(st.binary(max_size=300), st.builds(H.dumps_loose, H.json_values),
                              st.builds(H.deep, st.integers(5, 4000), st.sampled_from("[{"))))
    d = copy.deepcopy(BASE)
    if how == "text":
        return draw(H.mutated(json.dumps(d).encode()))
    for _ in range(draw(st.integers(1, 3))):
        table = draw(st.sampled_from((None, None, "battery", "diesel")))
        t = d if table is None or not isinstance(d.get(table), dict) else d[table]
        key = draw(st.one_of(st.sampled_from(sorted(t) or ["x"]), st.text(max_size=8)))
        r = draw(st.integers(0, 9))
        if r == 0:
            t.pop(key, None)
        elif r <= 2 and isinstance(t.get(key), list) and t[key]:
            t[key][draw(st.integers(0, len(t[key]) - 1))] = draw(H.numbers)
        elif r == 3 and isinstance(t.get(key), list):
            t[key] = t[key] * draw(st.sampled_from([0, 2, 300, 400]))
        elif r <= 6:
            t[key] = draw(H.numbers)          # in range or not: 1e308, 10**400, -0.0, NaN, 5e-324...
        elif r == 7 and key in ARRAYS:
            t[key] = [draw(H.numbers)] * len(d["load_kw"])
        else:
            t[key] = draw(H.json_values)
    return H.dumps_loose(d)


def run_plan(data: bytes) -> tuple[int, str, str]:
    path = DIR / "instance.json"
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = plan_main(path)
    return code, out.getvalue(), err.getvalue()


def check_plan_run(data: bytes) -> None:
    code, out, err = run_plan(data)
    if code == 2:
        assert err.startswith("edge-ems plan: bad instance: ") and not out, (out, err)
        return
    assert code == 0, (code, out, err)
    plan = json.loads(out, parse_constant=_strict)
    inst = load_instance(DIR / "instance.json")
    for k in ("grid_kw", "export_kw", "charge_kw", "discharge_kw", "diesel_kw", "curtail_kw", "unserved_kw"):
        assert len(plan[k]) == inst.horizon and all(math.isfinite(x) for x in plan[k]), k
    assert len(plan["soc_pct"]) == inst.horizon + 1
    assert math.isfinite(plan["objective"]), plan["objective"]


def _with(table, key, value) -> bytes:
    d = copy.deepcopy(BASE)
    (d[table] if table else d)[key] = value
    return H.dumps_loose(d)


@H.budget(ci=200, long=8000)
@given(instances())
@example(_with("battery", "capacity_kwh", 1e308))        # accepted, then objective inf: not JSON
@example(_with(None, "carbon_price_per_kg", -1e308))
@example(_with("diesel", "fuel_price_per_l", 1e308))
@example(_with("battery", "terminal_value_per_kwh", 1e308))
@example(_with(None, "unserved_penalty_per_kwh", 1e308))
@example(_with(None, "dt_h", 5e-324))
@example(_with("battery", "soc0_pct", 10 ** 400))
@example(_with("battery", "eta_charge", 1e-320))         # 1/eta infinite: the plan was NaN
@example(b"\xff\xfe{}")
def test_plan_instances(data):
    H.hit("plan.instances")
    check_plan_run(data)


def test_plan_loader_raises_instance_error_only():
    """The loader alone on the same corner cases, without a solve (fast, and names the field)."""
    for table, key, value in (("battery", "capacity_kwh", 1e308), (None, "dt_h", 1e300),
                              ("battery", "eta_charge", 1e-320), ("battery", "capacity_kwh", 1e-320),
                              ("diesel", "p_max_kw", 1e300), (None, "load_kw", [1e300] * 6)):
        try:
            load = json.loads(_with(table, key, value))
            path = DIR / "loader.json"
            path.write_text(json.dumps(load))
            load_instance(path)
        except InstanceError as exc:
            assert key in str(exc), exc
        else:
            raise AssertionError(f"{key}={value!r:.20}: accepted; the solve overflows on it")
