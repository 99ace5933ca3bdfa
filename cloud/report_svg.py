"""The cloud report's chart: one self-contained SVG (no script, no external asset, well-formed XML), like the
demo report's charts (tools/sim/report.py), which the cloud does not import (tools/ is not installed there).

Left: each site's supply by source (PV, grid, diesel; kWh), stacked. Right: its emissions, Scope 1 (diesel)
and Scope 2 location-based stacked, the market-based total as a tick. The fleet is the first row; at most
MAX_SITES sites are drawn (the largest by load; the CSV has them all).
"""
from __future__ import annotations

import html

MAX_SITES = 30
COLORS = {"pv": "#f2b701", "grid": "#5b7db1", "diesel": "#b5543c", "s1": "#b5543c", "s2": "#5b7db1", "mkt": "#1d1d1d"}


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _nice(v: float) -> float:
    import math
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= m * mag:
            return m * mag
    return 10 * mag


def chart(rep: dict) -> str:
    sites = sorted(rep["sites"].items(), key=lambda kv: -kv[1]["total"]["energy_kwh"]["loads"])[:MAX_SITES]
    rows = [("fleet", rep["fleet"]["total"])] + [(s, r["total"]) for s, r in sites]
    row_h, top, left, gap, pw = 22, 56, 190, 40, 330
    h = top + row_h * len(rows) + 40
    w = left + 2 * pw + gap + 20
    e_max = _nice(max([t["energy_kwh"]["pv"] + t["energy_kwh"]["grid"] + t["energy_kwh"]["diesel"] for _, t in rows] + [1e-9]))
    c_max = _nice(max([max(t["co2_kg"], t["co2_kg_market"]) for _, t in rows] + [1e-9]))
    x2 = left + pw + gap
    p = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
         f'font-family="sans-serif" font-size="12" role="img" aria-label="Energy by source and emissions per site">',
         "<title>Energy by source and emissions per site</title>",
         f'<text x="{left}" y="18" font-size="14" font-weight="600">Supply by source (kWh)</text>',
         f'<text x="{x2}" y="18" font-size="14" font-weight="600">Emissions (kg CO2e)</text>']
    legend = [(left, "PV", COLORS["pv"]), (left + 60, "grid", COLORS["grid"]), (left + 130, "diesel", COLORS["diesel"]),
              (x2, "Scope 1", COLORS["s1"]), (x2 + 80, "Scope 2 location", COLORS["s2"])]
    for x, label, color in legend:
        p.append(f'<rect x="{x}" y="28" width="12" height="10" fill="{color}"/><text x="{x + 16}" y="37">{_e(label)}</text>')
    p.append(f'<line x1="{x2 + 210}" y1="28" x2="{x2 + 210}" y2="40" stroke="{COLORS["mkt"]}" stroke-width="2"/>'
             f'<text x="{x2 + 216}" y="37">market-based</text>')
    for i, (name, t) in enumerate(rows):
        y = top + i * row_h
        e = t["energy_kwh"]
        bold = ' font-weight="600"' if i == 0 else ""
        p.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end"{bold}>{_e(name[:28])}</text>')
        x = left
        for k in ("pv", "grid", "diesel"):
            bw = pw * e[k] / e_max
            if bw > 0.05:
                p.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{bw:.1f}" height="{row_h - 6}" fill="{COLORS[k]}">'
                         f'<title>{_e(name)} {k}: {e[k]:,.1f} kWh</title></rect>')
            x += bw
        x = x2
        for k, key in (("s1", "scope1_kg"), ("s2", "scope2_location_kg")):
            bw = pw * t[key] / c_max
            if bw > 0.05:
                p.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{bw:.1f}" height="{row_h - 6}" fill="{COLORS[k]}">'
                         f'<title>{_e(name)} {key}: {t[key]:,.1f} kg</title></rect>')
            x += bw
        xm = x2 + pw * t["co2_kg_market"] / c_max
        p.append(f'<line x1="{xm:.1f}" y1="{y + 1}" x2="{xm:.1f}" y2="{y + row_h - 1}" stroke="{COLORS["mkt"]}" '
                 f'stroke-width="2"><title>{_e(name)} market-based: {t["co2_kg_market"]:,.1f} kg</title></line>')
        cfe = t["kpi"]["cfe_pct"]
        p.append(f'<text x="{w - 14}" y="{y + 14}" text-anchor="end" fill="#555">'
                 f'{"" if cfe is None else f"CFE {cfe:.0f} %"}</text>')
    yb = top + row_h * len(rows) + 16
    for x0, vmax, unit in ((left, e_max, "kWh"), (x2, c_max, "kg")):
        p.append(f'<line x1="{x0}" y1="{yb - 12}" x2="{x0 + pw}" y2="{yb - 12}" stroke="#bbb"/>')
        for f in (0, 0.5, 1.0):
            p.append(f'<text x="{x0 + pw * f:.1f}" y="{yb + 2}" text-anchor="middle" fill="#555">'
                     f'{vmax * f:,.0f}{" " + unit if f == 1.0 else ""}</text>')
    period = rep.get("period", {})
    p.append(f'<text x="{left}" y="{h - 6}" fill="#555">period {_e(period.get("from") or "start")} to '
             f'{_e(period.get("to") or "end")}; {rep["fleet"]["sites"]} site(s), {rep["fleet"]["gateways"]} gateway(s)'
             f'{"; largest " + str(MAX_SITES) + " sites shown" if len(rep["sites"]) > MAX_SITES else ""}</text>')
    p.append("</svg>")
    return "\n".join(p) + "\n"
