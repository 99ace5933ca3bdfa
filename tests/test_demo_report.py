"""`edge-ems demo` end to end, without a TTY: the report exists, is well-formed, shows the three charts and
the KPIs of the run's own kpis.json; the terminal report talks about unserved energy and fits 80 columns;
every label (legends, titles, summary, table headers, file notes) names the strategy that ran - the default
MPC run and a short rule run must each show their own name and never the other's."""
from __future__ import annotations

import contextlib
import io
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

pytest.importorskip("pvlib")

from tools.sim import report as R  # noqa: E402
from tools.sim.demo import run_demo  # noqa: E402

HOURS = 2.0
RULE_HOURS = 0.5          # the rule run only has to show its labels
VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "source", "wbr"}


class TagBalance(HTMLParser):
    """Checks every non-void element is closed in order; collects td[data-kpi] cells."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.cells: dict[tuple[str, str], tuple[str, str]] = {}
        self._cell = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "td" and "data-kpi" in a:
            self._cell = (a["data-kpi"], a["data-strategy"], a["data-value"])
            self._text = ""

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()
        if tag == "td" and self._cell:
            key, strategy, value = self._cell
            self.cells[(key, strategy)] = (value, self._text.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell:
            self._text += data


def _run(tmp_path_factory, hours, **kw):
    """One short demo run; its stdout (a StringIO: not a TTY, so no live view) is the terminal report."""
    out = tmp_path_factory.mktemp("demo")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run_demo(out, hours=hours, seed=1, **kw)
    return out, rc, buf.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo as `edge-ems demo` runs it: no strategy given (the default must be mpc)."""
    return _run(tmp_path_factory, HOURS)


@pytest.fixture(scope="module")
def demo_rule(tmp_path_factory):
    return _run(tmp_path_factory, RULE_HOURS, strategy="rule")


def test_demo_writes_a_wellformed_report_with_three_charts(demo):
    out, rc, _ = demo
    assert rc == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert not re.search(r'(src|href)="(https?:)?//', html), "external asset in a self-contained report"
    parser = TagBalance()
    parser.feed(html)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    svgs = re.findall(r"<svg\b.*?</svg>", html, re.S)
    ids = [ET.fromstring(s).get("id") for s in svgs]           # each SVG is well-formed XML
    assert ids == ["chart-soc", "chart-flows", "chart-carbon", "chart-pareto"]   # the bench's sweep (test_pareto)
    for s in svgs:
        root = ET.fromstring(s)
        drawn = root.findall(".//{http://www.w3.org/2000/svg}polyline") + \
            root.findall(".//{http://www.w3.org/2000/svg}polygon")
        assert drawn, "a chart with no data drawn"
    soc = ET.fromstring(svgs[0])
    text = " ".join(t.text or "" for t in soc.iter("{http://www.w3.org/2000/svg}text"))
    assert "reserve 35 %" in text and "min 10 %" in text


def test_report_shows_the_kpis_of_kpis_json(demo):
    out, _, _ = demo
    ctl = json.loads((out / "kpis.json").read_text())
    none = json.loads((out / "none" / "kpis.json").read_text())
    assert ctl["strategy"] == "mpc" and none["strategy"] == "none" and ctl["hours"] == HOURS
    parser = TagBalance()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    for key, *_ in R.KPI_ROWS:
        for strategy, kpis in (("mpc", ctl), ("none", none)):
            raw, shown = parser.cells[(key, strategy)]
            assert float(raw) == pytest.approx(kpis[key], abs=0), (key, strategy)
            expected = kpis[key] * (100 if key == "renewable_share" else 1)
            assert float(shown.replace(",", "")) == pytest.approx(expected, abs=0.51), (key, strategy, shown)


def test_carbon_intensity_uses_the_site_fuel_curve():
    site = {"genset": {"fuel_l_per_kwh": 0.25, "fuel_l_per_h_on": 4.0}, "emissions": {"diesel_kg_per_l": 2.0}}
    import numpy as np
    kg = R.diesel_kg_per_kwh(np.array([0.0, 40.0, 80.0]), site)
    assert kg.tolist() == pytest.approx([0.0, (0.25 + 0.1) * 2.0, (0.25 + 0.05) * 2.0])


def test_terminal_report_mentions_unserved_energy_and_fits_80_columns(demo):
    out, _, text = demo
    assert "\x1b[" not in text, "colour codes on a non-TTY stdout"
    assert "Unserved energy" in text
    for title in ("Battery state of charge", "Power flows", "Carbon intensity"):
        assert title in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert str(out / "report.html") in text.replace("\n", "")


def _svg_texts(html: str, chart_id: str) -> tuple[str, list[str]]:
    """(title, legend labels) of one chart."""
    svg = re.search(rf'<svg\b[^>]*id="{chart_id}".*?</svg>', html, re.S).group(0)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    legends = [t.text for t in root.iter(ns + "text") if t.get("class") == "legend"]
    return root.find(ns + "title").text, legends


@pytest.mark.parametrize("which, strategy, short, other", [
    ("demo", "mpc", "MPC", "rule"),
    ("demo_rule", "rule", "rule", "MPC"),
])
def test_every_label_names_the_strategy_that_ran(request, which, strategy, short, other):
    out, rc, text = request.getfixturevalue(which)
    assert rc == 0
    assert json.loads((out / "kpis.json").read_text())["strategy"] == strategy
    name = f"{short} controller"
    html = (out / "report.html").read_text(encoding="utf-8")
    # the Pareto block is the bench's sweep of every strategy (rule and mpc by name), not this run
    html = re.sub(r'<section id="pareto">.*?</section>', "", html, flags=re.S)

    heads = re.search(r'<table class="kpis".*?<thead>(.*?)</thead>', html, re.S).group(1)
    assert re.findall(r"<th[^>]*>(.*?)</th>", heads) == ["KPI", "unit", short, "none", f"{short} − none"]
    assert f'<th data-strategy="{strategy}">' in heads
    lead = re.search(r'<p class="lead">(.*?)</p>', html, re.S).group(1)
    assert lead.startswith(f"With the {name} ")
    for chart in ("chart-soc", "chart-carbon"):
        title, legends = _svg_texts(html, chart)
        assert legends[-2:] == [name, "no control"], (chart, legends)      # the legend box comes last
    title, _ = _svg_texts(html, "chart-flows")
    assert title.startswith(f"Power flows with the {name}")
    assert f"<h2>Power flows ({name})</h2>" in html and f"<h2>Controller events ({short})</h2>" in html
    assert f"the real scan loop and the {name} against" in html
    assert f"{other} controller" not in html and f">{other}<" not in html

    flat = " ".join(text.split())
    assert f"{name} vs no control" in flat and f"With the {name} " in flat
    assert f"Power flows, {name} (kW" in flat
    assert re.search(rf"^{re.escape(short)}\s+[▁-█]", text, re.M), "SOC/carbon chart row not named after the run"
    assert f"kpis.json ({strategy})" in flat and f"{other} controller" not in flat
