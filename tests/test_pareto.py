"""The Pareto view (issue 16, tools/bench/pareto.py + pareto_chart.py): the chart builder on a fixed small
input, the monotonicity check, the demo's block from a results file (and from the one shipped), one point
of the sweep on a short horizon (what the carbon price raises), and the demo report carrying the chart."""
from __future__ import annotations

import contextlib
import io
import json
import re
import xml.etree.ElementTree as ET

import pytest

from tools.bench import pareto as PB
from tools.bench import pareto_chart as PC

SVG = "{http://www.w3.org/2000/svg}"


def _pt(strategy, price, kg, cost, unserved=0.0):
    return {"strategy": strategy, "price": price, "co2_adjusted_kg": kg, "cost_adjusted": cost, "currency": "CNY",
            "unserved_kwh": unserved, "diesel_litres": 0.0}


# a mine-like sweep: mpc not monotone at 1 -> 3 (CO2 up) and at 30 -> carbon (CO2 up), the oracle monotone
POINTS = [_pt("mpc", 0.0, 1402.7, 1115.1), _pt("mpc", 0.1, 1402.5, 1115.3), _pt("mpc", 1.0, 1398.0, 1130.0),
          _pt("mpc", 3.0, 1405.0, 1160.0), _pt("mpc", 30.0, 1394.0, 1230.0), _pt("mpc", "carbon", 1415.2, 1251.2),
          _pt("oracle", 0.0, 1405.0, 1065.6), _pt("oracle", 1.0, 1401.0, 1075.0),
          _pt("oracle", "carbon", 1399.5, 1088.6), _pt("rule", None, 1538.5, 2736.4),
          _pt("none", None, 1488.4, 1731.4, unserved=8.1)]


def test_chart_is_wellformed_svg_with_both_sweeps_and_both_points():
    svg = PC.chart_svg("inner-mongolia-mine", POINTS, 48, 1, standalone=True)
    root = ET.fromstring(svg)
    assert root.get("id") == "chart-pareto" and root.get("width") == str(PC.W)
    assert "<script" not in svg and "class=\"" not in svg.replace('class="chart"', "")   # styles inline
    # two panels, each with the mpc and the oracle polyline
    lines = root.findall(f".//{SVG}polyline")
    assert len(lines) == 4
    assert {ln.get("stroke") for ln in lines} == {PC.STYLE["mpc"][0], PC.STYLE["oracle"][0]}
    # the zoomed panel's mpc line runs through its 6 points in price order, the carbon mode last (rightmost)
    zoom_mpc = [ln for ln in lines if ln.get("stroke") == PC.STYLE["mpc"][0]][1]
    xs = [float(p.split(",")[0]) for p in zoom_mpc.get("points").split()]
    assert len(xs) == 6 and xs[-1] == max(xs)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "0–0.1" in texts, "two prices closer than a label share one"
    assert texts.count("carbon") == 2 and "rule" in texts and "none" in texts
    tips = [t.text for t in root.iter(f"{SVG}title")]
    assert any(t.startswith("none: 1488.4 kg, 1731.40 CNY, unserved 8.1 kWh") for t in tips)
    # rule and none are far off the sweeps: drawn in the left panel only (one diamond each)
    assert sum(t.startswith("rule:") for t in tips) == 1


def test_chart_refuses_an_empty_sweep():
    with pytest.raises(ValueError, match="no sweep point"):
        PC.chart_svg("x", [_pt("rule", None, 1.0, 1.0)])


def test_monotone_names_the_steps_that_are_not():
    assert PB.monotone(POINTS, "oracle") == []
    bad = PB.monotone(POINTS, "mpc")
    assert bad == ["1 -> 3: CO2 +7.0 kg", "30 -> carbon: CO2 +21.2 kg"]
    flat = [_pt("mpc", 0.0, 100.0, 50.0), _pt("mpc", 1.0, 100.04, 49.96)]       # within the 0.05 tolerances
    assert PB.monotone(flat, "mpc") == []


def test_demo_section_from_a_results_file(tmp_path):
    f = tmp_path / "pareto.json"
    f.write_text(json.dumps({"hours": 48, "seed": 1, "prices": [0, 0.1, 1, 3, 30], "commit": "abc1234",
                             "date": "2026-12-02", "scenarios": {"inner-mongolia-mine": POINTS}}))
    html = PC.demo_section("inner-mongolia-mine", f)
    ET.fromstring(re.search(r"<svg\b.*?</svg>", html, re.S).group(0))
    assert "Measured 2026-12-02 at commit abc1234" in html
    assert "0, 0.1, 1, 3, 30 (mpc) and 0, 1 (oracle) CNY/kg" in html
    missing = PC.demo_section("gansu-edge", f)
    assert 'id="pareto-missing"' in missing and "<svg" not in missing
    assert 'id="pareto-missing"' in PC.demo_section("gansu-edge", tmp_path / "absent.json")


def test_the_shipped_results_cover_the_reference_scenarios():
    doc = PC.load_results()
    assert doc is not None, f"{PC.RESULTS} missing: python -m tools.bench.pareto --save {PC.RESULTS}"
    assert doc["hours"] == 48 and doc["seed"] == 1
    for scn in PB.SCENARIOS:
        pts = doc["scenarios"][scn]
        got = [(p["strategy"], p["price"]) for p in pts]
        want = PB.points(doc["prices"], doc["mpc_prices"])
        assert got == [w for w in want if w in got], scn                    # in order, nothing else
        # each curve's ends (cost mode, carbon mode), the oracle's whole sweep, rule and none: always there
        ends = [("mpc", 0.0), ("mpc", "carbon"), ("rule", None), ("none", None)]
        assert all(e in got for e in ends + [w for w in want if w[0] == "oracle"]), scn
        for p in pts:
            assert p["unserved_kwh"] is not None and p["co2_adjusted_kg"] > 0, (scn, p)


def test_one_point_raises_reliability_with_the_carbon_price():
    """A short oracle point at 10 CNY/kg: VOLL x (1 + kappa p); the carbon mode's point keeps the site's."""
    o = PB.run_point("inner-mongolia-mine", "oracle", 10.0, 0.5, 1)
    f = 1.0 + o["kappa"] * 10.0
    assert o["kappa"] == pytest.approx(0.6361 / 0.5158, rel=1e-3)
    assert o["voll_per_kwh"] == pytest.approx(50.0 * f) and o["objective"] == "cost"
    assert o["oracle_status"] == 0 and o["unserved_kwh"] == 0.0
    c = PB.run_point("inner-mongolia-mine", "oracle", "carbon", 0.5, 1)
    assert c["objective"] == "carbon" and c["voll_per_kwh"] == 50.0


@pytest.mark.slow
def test_an_mpc_point_raises_the_reserve_and_gives_build_params_back():
    """The mpc's point (the real scan loop, 15 min): the reserve's weight x (1 + kappa p), the sim's
    build_params restored afterwards. Slow: a process whose kernels are not compiled yet compiles them."""
    from tools.sim import runner
    build = runner.build_params
    m = PB.run_point("inner-mongolia-mine", "mpc", 10.0, 0.25, 1)
    assert m["reserve_penalty"] == pytest.approx(0.03 * (1.0 + m["kappa"] * 10.0)) and m["unserved_kwh"] == 0.0
    assert runner.build_params is build


def test_demo_report_contains_the_chart(tmp_path):
    """The shortest demo (rule: no planner kernels to load; the mpc demo's report is checked for the same
    chart by test_demo_report)."""
    from tools.sim.demo import run_demo
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_demo(tmp_path, hours=0.05, seed=1, strategy="rule") == 0
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    sec = re.search(r'<section id="pareto">(.*?)</section>', html, re.S).group(1)
    root = ET.fromstring(re.search(r"<svg\b.*?</svg>", sec, re.S).group(0))
    assert root.get("id") == "chart-pareto"
    assert "inner-mongolia-mine" in root.find(f"{SVG}title").text
