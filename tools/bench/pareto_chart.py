"""The Pareto chart (issue 16): credited cost vs credited CO2 of the carbon-price sweep of
tools/bench/pareto.py - the mpc's and the oracle's curves, rule and none as points - as one SVG.

Plain SVG text with every style inline (no CSS class, no script, no font file), so the same string is a
file in docs/img/ and a block inside the demo's self-contained report.html; well-formed XML either way.
No plotting library: the gateway install carries none, and a scatter with two polylines does not need one.
`demo_section` is what `edge-ems demo` puts in its report: the chart of the demo's scenario drawn from the
results file the bench saved (tools/bench/pareto.json, package data), dated, with the command that made it.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

CARBON = "carbon"
RESULTS = Path(__file__).with_name("pareto.json")
STYLE = {"mpc": ("#2a6f97", "circle", None), "oracle": ("#6a4c93", "square", "6 4"),
         "rule": ("#e76f51", "diamond", None), "none": ("#7a7a7a", "diamond", None)}
FONT = 'font-family="Helvetica,Arial,sans-serif"'
W, H = 960, 470
MT, MB = 52, 92                     # title above; axis labels and the legend row below
PANELS = ((66, 250), (392, 548))    # (left, width): all runs; the sweep zoomed


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _nice_step(span: float, n: int) -> float:
    raw = max(span, 1e-9) / n
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    step = _nice_step(hi - lo, n)
    v = math.ceil(lo / step) * step
    out = []
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    return out


def _plabel(price) -> str:
    return "carbon" if price == CARBON else f"{price:g}"


def _curve(pts, strategy):
    """The strategy's sweep, carbon price ascending, the carbon mode last."""
    c = [p for p in pts if p["strategy"] == strategy and p["price"] is not None]
    return sorted(c, key=lambda p: math.inf if p["price"] == CARBON else float(p["price"]))


def _marker(kind: str, x: float, y: float, color: str, tip: str, r: float = 4.5) -> str:
    t = f"<title>{_e(tip)}</title>"
    if kind == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{color}" stroke="#fff" stroke-width="1">{t}</circle>'
    if kind == "square":
        return (f'<rect x="{x - r + 0.5:.1f}" y="{y - r + 0.5:.1f}" width="{2 * r - 1}" height="{2 * r - 1}" '
                f'fill="{color}" stroke="#fff" stroke-width="1">{t}</rect>')
    d = r + 2.5
    return (f'<polygon points="{x:.1f},{y - d:.1f} {x + d:.1f},{y:.1f} {x:.1f},{y + d:.1f} {x - d:.1f},{y:.1f}" '
            f'fill="{color}" stroke="#fff" stroke-width="1">{t}</polygon>')


def _bounds(pts, fx=0.06, fy=0.08):
    xs = [p["co2_adjusted_kg"] for p in pts]
    ys = [p["cost_adjusted"] for p in pts]
    px = max((max(xs) - min(xs)) * fx, 0.5)
    py = max((max(ys) - min(ys)) * fy, 0.5)
    return min(xs) - px, max(xs) + px, min(ys) - py, max(ys) + py


def _tip(p, cur):
    name = p["strategy"] if p["price"] is None else f"{p['strategy']}, carbon price {_plabel(p['price'])}"
    src = " (the objectives table's run)" if p.get("source") else ""
    return (f"{name}: {p['co2_adjusted_kg']:.1f} kg, {p['cost_adjusted']:.2f} {cur}, unserved "
            f"{p.get('unserved_kwh') or 0:.1f} kWh, diesel {p.get('diesel_litres') or 0:.1f} L{src}")


def _panel(out: list, pts: list, left: float, pw: float, bounds, cur: str, heading: str, labels: bool,
           nticks: int) -> tuple:
    """One scatter panel; returns its (X, Y) maps. Points outside `bounds` are not drawn."""
    x0, x1, y0, y1 = bounds
    ph = H - MT - MB

    def X(v):
        return left + pw * (v - x0) / (x1 - x0)

    def Y(v):
        return MT + ph * (1.0 - (v - y0) / (y1 - y0))

    def inside(p):
        return x0 <= p["co2_adjusted_kg"] <= x1 and y0 <= p["cost_adjusted"] <= y1

    for v in _ticks(x0, x1, nticks):
        xx = X(v)
        out.append(f'<line x1="{xx:.1f}" y1="{MT}" x2="{xx:.1f}" y2="{MT + ph}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{xx:.1f}" y="{MT + ph + 15}" font-size="10.5" fill="#555" text-anchor="middle">'
                   f'{v:,.0f}</text>')
    for v in _ticks(y0, y1, 7):
        yy = Y(v)
        out.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + pw}" y2="{yy:.1f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{left - 5}" y="{yy + 4:.1f}" font-size="10.5" fill="#555" text-anchor="end">'
                   f'{v:,.0f}</text>')
    out.append(f'<rect x="{left}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>')
    out.append(f'<text x="{left}" y="{MT - 7}" font-size="11.5" fill="#333">{_e(heading)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{MT + ph + 32}" font-size="11" fill="#333" '
               f'text-anchor="middle">CO2e, credited (kg)</text>')
    out.append(f'<text x="{left - 50}" y="{MT + ph / 2:.1f}" font-size="11" fill="#333" text-anchor="middle" '
               f'transform="rotate(-90 {left - 50} {MT + ph / 2:.1f})">cost, credited ({_e(cur)})</text>')
    placed: list[tuple[float, float]] = []          # labels already drawn, both curves
    for strategy in ("oracle", "mpc"):
        c = [p for p in _curve(pts, strategy) if inside(p)]
        if not c:
            continue
        color, kind, dash = STYLE[strategy]
        line = " ".join(f"{X(p['co2_adjusted_kg']):.1f},{Y(p['cost_adjusted']):.1f}" for p in c)
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.8"{extra}/>')
        for p in c:
            out.append(_marker(kind, X(p["co2_adjusted_kg"]), Y(p["cost_adjusted"]), color, _tip(p, cur),
                               4.5 if labels else 3.2))
        if not labels:
            continue
        groups: list[list[dict]] = []
        for p in c:                         # consecutive prices closer than a label share one ("0-0.3")
            if groups and math.hypot(X(p["co2_adjusted_kg"]) - X(groups[-1][0]["co2_adjusted_kg"]),
                                     Y(p["cost_adjusted"]) - Y(groups[-1][0]["cost_adjusted"])) < 14:
                groups[-1].append(p)
            else:
                groups.append([p])
        for g in groups:
            text = _plabel(g[0]["price"]) + (f"–{_plabel(g[-1]['price'])}" if len(g) > 1 else "")
            gx, gy = X(g[0]["co2_adjusted_kg"]), Y(g[0]["cost_adjusted"])
            right, left_ = ((7, -7), (7, 13)), ((-7 - 6 * len(text), -7), (-7 - 6 * len(text), 13))
            near_edge = gx + 7 + 6 * len(text) > left + pw
            for dx, dy in (left_ + right) if near_edge else (right + left_):
                lx, ly = gx + dx, gy + dy
                if all(abs(lx - a) > 6 * len(text) + 4 or abs(ly - b) > 11 for a, b in placed):
                    break
            placed.append((lx, ly))
            out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="10" fill="{color}">{_e(text)}</text>')
    for p in pts:
        if p["strategy"] in ("rule", "none") and inside(p):
            color, kind, _ = STYLE[p["strategy"]]
            xx, yy = X(p["co2_adjusted_kg"]), Y(p["cost_adjusted"])
            out.append(_marker(kind, xx, yy, color, _tip(p, cur)))
            anchor, dx = ("end", -10) if xx > left + pw * 0.75 else ("start", 10)
            dy = -8 if p["strategy"] == "rule" else 15          # the two are often close: rule above, none below
            out.append(f'<text x="{xx + dx:.1f}" y="{yy + dy:.1f}" font-size="11" font-weight="bold" fill="{color}" '
                       f'text-anchor="{anchor}">{_e(p["strategy"])}</text>')
    return X, Y


def chart_svg(scenario: str, pts: list[dict], hours: float = 48.0, seed: int = 1, standalone: bool = False,
              chart_id: str = "chart-pareto") -> str:
    """The chart of one scenario's points (dicts with strategy, price, co2_adjusted_kg, cost_adjusted,
    currency, unserved_kwh). Two panels, x credited CO2 (kg), y credited cost: every run (rule and none
    are usually far off), and the two sweeps zoomed, each point labelled with its carbon price (per kg,
    site currency; consecutive points closer than a label share one, "0-0.3")."""
    if not pts:
        raise ValueError(f"pareto chart {scenario}: no points")
    sweep = [p for p in pts if p["price"] is not None]
    if not sweep:
        raise ValueError(f"pareto chart {scenario}: no sweep point (strategy mpc or oracle with a price)")
    cur = pts[0].get("currency", "")
    title = f"{scenario}: cost vs CO2 as the carbon price rises ({hours:g} h, seed {seed}; both credited)"
    size = f'width="{W}" height="{H}"' if standalone else 'width="100%"'
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="{_e(chart_id)}" class="chart" viewBox="0 0 {W} {H}" {size} role="img" '
           f'aria-label="{_e(title)}" {FONT}>', f"<title>{_e(title)}</title>",
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
           f'<text x="{PANELS[0][0] - 50}" y="20" font-size="13.5" font-weight="bold" fill="#1d1d1d">'
           f'{_e(title)}</text>']
    zoom = _bounds(sweep)
    (la, wa), (lb, wb) = PANELS
    X, Y = _panel(out, pts, la, wa, _bounds(pts), cur, "every run", False, 4)
    x0, x1, y0, y1 = zoom
    out.append(f'<rect x="{X(x0):.1f}" y="{Y(y1):.1f}" width="{max(X(x1) - X(x0), 2):.1f}" '
               f'height="{max(Y(y0) - Y(y1), 2):.1f}" fill="none" stroke="#2a6f97" stroke-dasharray="3 2"/>')
    _panel(out, pts, lb, wb, zoom, cur, "the two sweeps, zoomed (dashed box on the left)", True, 7)
    lx, ly = PANELS[0][0] - 50, H - 30
    for text, key in (("mpc, carbon price sweep", "mpc"), ("oracle (perfect foresight), same sweep", "oracle"),
                      ("rule", "rule"), ("none (no control)", "none")):
        color, kind, dash = STYLE[key]
        if key in ("mpc", "oracle"):
            extra = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 18}" y2="{ly}" stroke="{color}" stroke-width="2"'
                       f'{extra}/>')
        out.append(_marker(kind, lx + 9, ly, color, text))
        out.append(f'<text x="{lx + 24}" y="{ly + 4}" font-size="11" fill="#333">{_e(text)}</text>')
        lx += 34 + 6.2 * len(text)
    out.append(f'<text x="{PANELS[0][0] - 50}" y="{H - 8}" font-size="10.5" fill="#666">labels: carbon '
               f'price, {_e(cur)}/kg CO2e; carbon = objective "carbon"; lower left is better</text>')
    out.append("</svg>")
    return "\n".join(out)


def load_results(path: Path | str = RESULTS) -> dict | None:
    """The results file tools/bench/pareto.py --save wrote, or None when there is none."""
    p = Path(path)
    if not p.exists():
        return None
    return json.loads(p.read_text())


def demo_section(scenario: str, path: Path | str = RESULTS) -> str:
    """The demo report's Pareto block for `scenario`: the chart from the bench's saved sweep and a caption
    saying which run it is, or one paragraph saying how to make it when the file has no such scenario."""
    doc = load_results(path)
    pts = (doc or {}).get("scenarios", {}).get(scenario)
    if not pts:
        return (f'<p class="cap" id="pareto-missing">No carbon-price sweep of {_e(scenario)} saved with this '
                f'install: <code>python -m tools.bench.pareto --scenarios {_e(scenario)} --save '
                f'tools/bench/pareto.json</code> makes one.</p>')
    svg = chart_svg(scenario, pts, doc.get("hours", 48.0), doc.get("seed", 1))
    cur = pts[0].get("currency", "")

    def prices(strategy):
        return ", ".join(_plabel(p["price"]) for p in _curve(pts, strategy) if p["price"] != CARBON)

    return (f"{svg}\n<p class=\"cap\">The trade-off this site's objective chooses on: the mpc and the "
            f"perfect-foresight oracle re-run over {doc.get('hours', 48):g} h (seed {doc.get('seed', 1)}) with the "
            f"carbon price at {_e(prices('mpc'))} (mpc) and {_e(prices('oracle'))} (oracle) {_e(cur)}/kg and then "
            f"carbon first (<code>objective = \"carbon\"</code>), "
            f"reliability weighted up with the price as the carbon mode weighs it; rule and none once. Both axes "
            f"credited for the stored energy left. Measured {_e(doc.get('date', '?'))} at commit "
            f"{_e(doc.get('commit', '?'))} by <code>python -m tools.bench.pareto</code>, not by this demo, whose own "
            f"run is not one of its points (a sweep is {len(pts)} runs; docs/objectives.md, Pareto).</p>")
