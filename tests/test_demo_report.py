"""`edge-ems demo` end to end, without a TTY: the report exists, is well-formed, shows the three charts and
the KPIs of the run's own kpis.json; the terminal report talks about unserved energy and fits 80 columns."""
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


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One short demo run; its stdout (a StringIO: not a TTY, so no live view) is the terminal report."""
    out = tmp_path_factory.mktemp("demo")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run_demo(out, hours=HOURS, seed=1)
    return out, rc, buf.getvalue()


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
    assert ids == ["chart-soc", "chart-flows", "chart-carbon"]
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
    rule = json.loads((out / "kpis.json").read_text())
    none = json.loads((out / "none" / "kpis.json").read_text())
    assert rule["strategy"] == "rule" and none["strategy"] == "none" and rule["hours"] == HOURS
    parser = TagBalance()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    for key, *_ in R.KPI_ROWS:
        for strategy, kpis in (("rule", rule), ("none", none)):
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
