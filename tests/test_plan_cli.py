"""`edge-ems plan` reports what it measures and takes a stream (issue 16): `solve_ms` is the solve alone
(the first call's kernel load is `load_ms`, apart), and `edge-ems plan -` solves one instance per line
of stdin, one answer per line out, a bad line answered with its error without stopping the stream."""
import json
import subprocess
import sys

from test_hostile_files import _instance

PLAN = [sys.executable, "-m", "controller.cli", "plan"]


def test_solve_ms_is_the_solve_and_the_kernel_load_is_apart(tmp_path):
    p = tmp_path / "inst.json"
    p.write_text(json.dumps(_instance(96)))
    r = subprocess.run(PLAN + [str(p)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["load_ms"] > 0 and out["solve_ms"] > 0
    assert out["solve_ms"] < out["load_ms"]               # the load is no longer inside the solve's figure
    assert len(out["soc_pct"]) == 97


def test_a_stream_of_instances_one_answer_per_line_and_bad_lines_named():
    good = json.dumps(_instance(48))
    lines = "\n".join([good, '{"dt_h": 0.25}', "", good, "x" * 100]) + "\n"
    r = subprocess.run(PLAN + ["-"], input=lines, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr                   # a line was refused: the caller learns it at the end too
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(out) == 4                                 # the blank line gets no answer
    assert "load_ms" in out[0] and all("load_ms" not in o for o in out[1:])
    assert out[0]["objective"] == out[2]["objective"] and len(out[2]["grid_kw"]) == 48
    assert out[1]["line"] == 2 and "load_kw" in out[1]["error"]
    assert out[3]["line"] == 5 and "not valid JSON" in out[3]["error"]
    ok = subprocess.run(PLAN + ["-"], input=good + "\n" + good + "\n", capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 2


def test_soc_min_equal_to_soc_max_holds_the_battery(tmp_path):
    """Documented rather than refused: a battery pinned at one SOC moves no energy; the plan is the rest."""
    inst = _instance(8)
    inst["battery"].update(soc_min_pct=50.0, soc_max_pct=50.0, soc0_pct=50.0)
    p = tmp_path / "pinned.json"
    p.write_text(json.dumps(inst))
    r = subprocess.run(PLAN + [str(p)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert max(out["charge_kw"]) < 1e-6 and max(out["discharge_kw"]) < 1e-6
    assert all(abs(s - 50.0) < 1e-6 for s in out["soc_pct"])
    assert all(abs(g - 10.0) < 1e-6 for g in out["grid_kw"])   # the load, from the grid
