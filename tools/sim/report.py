"""The demo's report: an HTML page with inline SVG charts (the same story in the terminal: report_terminal.py).

Both compare two runs of one scenario (a controller - MPC or rule - against no control) from the
simulator's own per-minute meter log (`SimSite.meters.log`) and the runs' KPIs (`kpis.json`).
Nothing here touches the controller: it only reads finished `SimResult`s. Every label naming the
controller comes from the controlled run's own kpis.json "strategy" (what the loop actually ran), so
the report cannot show one strategy's name over another's figures.

The HTML is self-contained (inline CSS and SVG, no script, no external asset) and well-formed XML,
so it opens anywhere, prints, and can be archived next to the run's kpis.json.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

# Columns of SimSite.meters.log (one row per simulated minute).
T_H, SOC, PV, LOAD, GRID, BATT, GEN, UNSERVED, CURTAILED, GRID_CO2, PRICE, PV_AVAIL = range(12)

EPS_KW = 1e-3

# What "credited" means under the KPI table (the rule of tools/sim/runner.kpis_of, docs/kpis.md).
CREDIT_NOTE = ("Stored energy left: (stored kWh at the end - at the start) x the discharge efficiency, what the "
               "battery can still deliver. Credited: emissions and cost less that energy at the run's mean grid "
               "factor and mean import price, so a run that ends fuller is not penalised for what it bought and "
               "kept (one that ends emptier is debited the same way).")

# (kpis.json key, label, unit, better: "lower" / "higher" / None)
KPI_ROWS = (
    ("unserved_kwh", "Unserved energy", "kWh", "lower"),
    ("grid_import_kwh", "Grid import", "kWh", None),
    ("diesel_litres", "Diesel burnt", "L", "lower"),
    ("pv_used_kwh", "PV used", "kWh", "higher"),
    ("pv_curtailed_kwh", "PV curtailed", "kWh", "lower"),
    ("renewable_share", "Renewable share", "%", "higher"),
    ("co2_kg", "Emissions", "kg CO2e", "lower"),
    ("cost", "Energy cost", "{currency}", "lower"),
    ("stored_credit_kwh", "Stored energy left", "kWh", "higher"),
    ("co2_adjusted_kg", "Emissions, credited", "kg CO2e", "lower"),
    ("cost_adjusted", "Energy cost, credited", "{currency}", "lower"),
    ("soc_min_pct", "SOC min", "%", None),
    ("soc_max_pct", "SOC max", "%", None),
    ("interlock_trips", "Interlock trips", "", "lower"),
    ("cycle_p99_ms", "Scan cycle p99", "ms", "lower"),
)

COLORS = {"pv": "#f2b701", "battery": "#2a9d8f", "charge": "#8fd3c9", "grid": "#5b7db1", "genset": "#b5543c",
          "unserved": "#d62828", "load": "#1d1d1d", "ctl": "#2a6f97", "none": "#9a9a9a",
          "reserve": "#e76f51", "min": "#d62828", "max": "#6c757d", "outage": "#5b7db1", "sandstorm": "#c9a227",
          "other": "#888888"}

# How the report names the controlled run's strategy (kpis.json "strategy"): table columns, chart rows.
STRATEGY_SHORT = {"rule": "rule", "mpc": "MPC"}


def strategy_of(kpis: dict) -> str:
    """The strategy the loop ran (kpis.json records it from the loop's parameters)."""
    return str(kpis.get("strategy", "?"))


def short_name(kpis: dict) -> str:
    s = strategy_of(kpis)
    return STRATEGY_SHORT.get(s, s)


def controller_name(kpis: dict) -> str:
    """'MPC controller', 'rule controller': what legends, titles and the summary call the controlled run."""
    return f"{short_name(kpis)} controller"


# What the SOC chart's caption says the controller does, per strategy.
SOC_CAPTION = {
    "rule": "The rule controller holds the battery above its reserve for outages and starts the genset below "
            "its start SOC",
    "mpc": "The MPC controller re-plans battery, grid and genset over the next 24 h every minute (15-min steps, "
           "from its learned forecasts and the announced events), with the reserve as a soft floor the genset "
           "backs up",
}


# --- numbers ------------------------------------------------------------------------------------

def fmt_kpi(key: str, value) -> str:
    """How a KPI reads in the table (the raw value is kept in the HTML's data-value attribute)."""
    if value is None:
        return "–"
    if key == "renewable_share":
        return f"{100.0 * value:.1f}"
    if key == "interlock_trips":
        return f"{int(value)}"
    if key == "cycle_p99_ms":
        return f"{value:.2f}"
    if key in ("soc_min_pct", "soc_max_pct"):
        return f"{value:.1f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _unit(unit: str, kpis: dict) -> str:
    return unit.format(currency=kpis.get("currency", ""))


def _delta(key: str, better: str | None, ctl: float, none: float) -> tuple[str, str]:
    """(text, verdict) for ctl vs none; verdict is 'better', 'worse' or 'same'."""
    d = ctl - none
    if key == "renewable_share":
        d *= 100.0
    if abs(d) < 1e-9 or (abs(d) < 0.05 and key != "cycle_p99_ms"):
        return "=", "same"
    if key == "interlock_trips":
        text = f"{d:+.0f}"
    elif key == "cycle_p99_ms":
        text = f"{d:+.2f}"
    else:
        text = f"{d:+,.0f}" if abs(d) >= 100 else f"{d:+,.1f}"
    if better is None:
        return text, "same"
    good = d < 0 if better == "lower" else d > 0
    return text, "better" if good else "worse"


@dataclass
class RunSeries:
    """A run's per-minute log plus what the charts derive from it."""

    log: np.ndarray           # (n, 12) minute rows
    ci: np.ndarray            # carbon intensity of the supply, kg CO2e per kWh of load, per minute
    ci15_t: np.ndarray        # 15-min interval start (h)
    ci15: np.ndarray          # 15-min interval intensity (sum of emissions / sum of load)


def diesel_kg_per_kwh(gen_kw: np.ndarray, site: dict) -> np.ndarray:
    """kg CO2e per kWh from the genset at output P: (a + b / P) * kg/L from the site's fuel curve."""
    gen = site.get("genset") or {}
    kg_per_l = site["emissions"]["diesel_kg_per_l"]
    a = gen.get("fuel_l_per_kwh", 0.0)
    b = gen.get("fuel_l_per_h_on", 0.0)
    p = np.maximum(gen_kw, EPS_KW)
    return np.where(gen_kw > EPS_KW, (a + b / p) * kg_per_l, 0.0)


def run_series(result) -> RunSeries:
    log = np.asarray(result.site.meters.log, dtype=float).reshape(-1, 12)
    site = result.site.scn.site
    grid_in = np.maximum(log[:, GRID], 0.0)
    gen = np.maximum(log[:, GEN], 0.0)
    kg_per_h = grid_in * log[:, GRID_CO2] + gen * diesel_kg_per_kwh(gen, site)
    load = np.maximum(log[:, LOAD], EPS_KW)
    ci = kg_per_h / load
    n15 = max(1, int(math.ceil(len(log) / 15)))
    ci15_t = np.empty(n15)
    ci15 = np.empty(n15)
    for i in range(n15):
        sl = slice(15 * i, 15 * (i + 1))
        ci15_t[i] = log[sl, T_H][0] if len(log) else 0.0
        ci15[i] = kg_per_h[sl].sum() / max(load[sl].sum(), EPS_KW)
    return RunSeries(log, ci, ci15_t, ci15)


@dataclass
class Context:
    """What both reports need about the run: time base, horizon, scenario events, thresholds."""

    start_utc: datetime
    tz: object
    hours: float
    events: list             # (kind, label, start_h, end_h, note)
    reserve_pct: float
    soc_min_pct: float
    soc_max_pct: float
    grid_co2: float
    diesel_rated_kg: float
    title: str
    description: str
    currency: str


def _tz(name: str):
    try:
        from zoneinfo import ZoneInfo
        return ZoneInfo(name)
    except Exception:   # no tz database: fall back to UTC, labelled as such
        return timezone.utc


def event_label(ev: dict) -> str:
    kind = ev["kind"]
    if kind == "grid_outage":
        return "grid outage"
    if kind == "pv_derate":
        note = ev.get("note", "").lower()
        return "sandstorm" if "sand" in note or "dust" in note else "PV derate"
    return kind.replace("_", " ")


def context_of(result) -> Context:
    return context_for(result.site.scn, float(result.kpis.get("hours", 0.0)))


def context_for(scn, hours: float) -> Context:
    """The report context of a scenario run for `hours` (also what the live view uses before a result exists)."""
    site = scn.site
    events = []
    for ev in scn.get("events", []):
        start = float(ev["at_h"])
        if ev["kind"] == "job_announce" and ev.get("start_h", -1) >= 0:
            start = float(ev["start_h"])
        end = start + float(ev.get("duration_min", 0.0)) / 60.0
        if start < hours:
            events.append((ev["kind"], event_label(ev), start, min(end, hours), ev.get("note", "")))
    bat = site["battery"]
    gen = site.get("genset") or {}
    diesel = float(diesel_kg_per_kwh(np.array([gen.get("rated_kw", 0.0)]), site)[0]) if gen else 0.0
    return Context(scn.start, _tz(site["site"].get("timezone", "UTC")), hours, events, bat["reserve_pct"],
                   bat["soc_min_pct"], bat["soc_max_pct"], site["emissions"]["grid_kg_per_kwh"], diesel,
                   scn.name, scn["scenario"].get("description", ""), site["site"].get("currency", ""))


def local_time(ctx: Context, t_h: float) -> datetime:
    return (ctx.start_utc + timedelta(hours=t_h)).astimezone(ctx.tz)


def _tick_step_h(hours: float) -> float:
    for step in (0.5, 1, 2, 3, 6, 12, 24):
        if hours / step <= 9:
            return step
    return 48


def time_ticks(ctx: Context, hours: float) -> list[tuple[float, str]]:
    """Ticks on round local clock times: (t_h, label)."""
    step = _tick_step_h(hours)
    t0 = local_time(ctx, 0.0)
    midnight = t0.replace(hour=0, minute=0, second=0, microsecond=0)
    offset_h = (t0 - midnight).total_seconds() / 3600.0
    first = math.ceil(offset_h / step - 1e-9) * step - offset_h
    ticks = []
    t = first
    while t <= hours + 1e-9:
        lt = local_time(ctx, t)
        label = lt.strftime("%H:%M") if (lt.hour or lt.minute) else lt.strftime("%d %b")
        ticks.append((t, label))
        t += step
    return ticks


# --- SVG ----------------------------------------------------------------------------------------

def _e(s) -> str:
    return html.escape(str(s), quote=True)


class _Plot:
    W, H = 960, 300
    ML, MR, MT, MB = 64, 150, 38, 40

    def __init__(self, hours: float, y0: float, y1: float, height: int | None = None):
        self.H = height or self.H
        self.hours = max(hours, 1e-6)
        self.y0, self.y1 = y0, y1 if y1 > y0 else y0 + 1.0
        self.parts: list[str] = []

    @property
    def pw(self):
        return self.W - self.ML - self.MR

    @property
    def ph(self):
        return self.H - self.MT - self.MB

    def x(self, t_h):
        return self.ML + self.pw * np.clip(np.asarray(t_h, dtype=float) / self.hours, 0.0, 1.0)

    def y(self, v):
        frac = (np.asarray(v, dtype=float) - self.y0) / (self.y1 - self.y0)
        return self.MT + self.ph * (1.0 - np.clip(frac, 0.0, 1.0))

    def add(self, s: str) -> None:
        self.parts.append(s)

    def frame(self, ctx: Context, y_label: str, y_ticks, y_fmt="{:g}") -> None:
        for v in y_ticks:
            yy = float(self.y(v))
            self.add(f'<line x1="{self.ML}" y1="{yy:.1f}" x2="{self.ML + self.pw}" y2="{yy:.1f}" class="grid"/>')
            self.add(f'<text x="{self.ML - 6}" y="{yy + 4:.1f}" class="tick" text-anchor="end">'
                     f'{_e(y_fmt.format(v))}</text>')
        for t, label in time_ticks(ctx, ctx.hours):
            xx = float(self.x(t))
            self.add(f'<line x1="{xx:.1f}" y1="{self.MT}" x2="{xx:.1f}" y2="{self.MT + self.ph}" class="grid"/>')
            self.add(f'<text x="{xx:.1f}" y="{self.MT + self.ph + 16}" class="tick" text-anchor="middle">'
                     f'{_e(label)}</text>')
        self.add(f'<rect x="{self.ML}" y="{self.MT}" width="{self.pw}" height="{self.ph}" class="frame"/>')
        self.add(f'<text x="14" y="{self.MT + self.ph / 2:.1f}" class="axis" text-anchor="middle" '
                 f'transform="rotate(-90 14 {self.MT + self.ph / 2:.1f})">{_e(y_label)}</text>')
        tzname = local_time(ctx, 0.0).strftime("%Z") or "UTC"
        self.add(f'<text x="{self.ML + self.pw}" y="{self.H - 6}" class="axis" text-anchor="end">'
                 f'local time ({_e(tzname)})</text>')

    def event_bands(self, ctx: Context, labels: bool) -> None:
        lane_end = [-1e9, -1e9]          # two label lanes above the plot; a label takes the first free one
        for kind, label, start, end, note in ctx.events:
            x0, x1 = float(self.x(start)), float(self.x(end))
            color = COLORS["outage"] if kind == "grid_outage" else (
                COLORS["sandstorm"] if kind == "pv_derate" else COLORS["other"])
            if kind in ("grid_outage", "pv_derate"):
                self.add(f'<rect x="{x0:.1f}" y="{self.MT}" width="{max(x1 - x0, 1.0):.1f}" height="{self.ph}" '
                         f'fill="{color}" fill-opacity="0.13" class="event"><title>{_e(label)}: {_e(note)}'
                         f'</title></rect>')
            else:
                self.add(f'<line x1="{x0:.1f}" y1="{self.MT}" x2="{x0:.1f}" y2="{self.MT + self.ph}" '
                         f'stroke="{color}" stroke-dasharray="2 3" class="event"><title>{_e(label)}: '
                         f'{_e(note)}</title></line>')
            if labels:
                lane = 0 if x0 >= lane_end[0] else 1
                lane_end[lane] = x0 + 7.0 * (len(label) + 3)
                self.add(f'<text x="{x0 - 4:.1f}" y="{self.MT - 5 - 13 * lane}" class="evlabel" fill="{color}">'
                         f'▼ {_e(label)}</text>')

    def hline(self, v: float, color: str, label: str, dash: str = "6 4") -> None:
        yy = float(self.y(v))
        self.add(f'<line x1="{self.ML}" y1="{yy:.1f}" x2="{self.ML + self.pw}" y2="{yy:.1f}" stroke="{color}" '
                 f'stroke-width="1.2" stroke-dasharray="{dash}"/>')
        self.add(f'<text x="{self.ML + self.pw - 6}" y="{yy - 4:.1f}" class="legend" fill="{color}" '
                 f'text-anchor="end">{_e(label)}</text>')

    def polyline(self, t, v, color: str, width: float = 2.0, dash: str | None = None, step: bool = False) -> None:
        if len(t) == 0:
            return
        t, v = np.asarray(t, dtype=float), np.asarray(v, dtype=float)
        if step:
            t = np.repeat(t, 2)[1:]
            t = np.append(t, min(self.hours, float(t[-1]) + 0.25))
            v = np.repeat(v, 2)
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(self.x(t), self.y(v)))
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="{width}" '
                 f'stroke-linejoin="round"{extra}/>')

    def area(self, t, lo, hi, color: str, name: str) -> None:
        if len(t) == 0 or not np.any(np.abs(np.asarray(hi) - np.asarray(lo)) > 1e-6):
            return
        xs = self.x(t)
        top = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, self.y(hi)))
        bot = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs[::-1], self.y(np.asarray(lo)[::-1])))
        self.add(f'<polygon points="{top} {bot}" fill="{color}" fill-opacity="0.92" stroke="none">'
                 f'<title>{_e(name)}</title></polygon>')

    def legend(self, items: list[tuple[str, str, str]]) -> None:
        """items: (label, color, kind) with kind 'line', 'dash' or 'box'; drawn right of the plot."""
        y = self.MT + 8
        x = self.ML + self.pw + 12
        for label, color, kind in items:
            if kind == "box":
                self.add(f'<rect x="{x}" y="{y - 8}" width="14" height="10" fill="{color}"/>')
            else:
                dash = ' stroke-dasharray="5 3"' if kind == "dash" else ""
                self.add(f'<line x1="{x}" y1="{y - 3}" x2="{x + 14}" y2="{y - 3}" stroke="{color}" '
                         f'stroke-width="2.5"{dash}/>')
            self.add(f'<text x="{x + 20}" y="{y + 1}" class="legend">{_e(label)}</text>')
            y += 18

    def svg(self, chart_id: str, title: str) -> str:
        body = "\n".join(self.parts)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" id="{chart_id}" class="chart" viewBox="0 0 {self.W} '
                f'{self.H}" width="100%" role="img" aria-label="{_e(title)}">\n<title>{_e(title)}</title>\n'
                f'{body}\n</svg>')


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= m * mag:
            return m * mag
    return 10 * mag


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = _nice_max((hi - lo) / n)
    first = math.ceil(lo / step) * step
    out, v = [], first
    while v <= hi + 1e-9:
        out.append(round(v, 10))
        v += step
    return out


def chart_soc(ctx: Context, ctl: RunSeries, none: RunSeries, name: str) -> str:
    p = _Plot(ctx.hours, 0.0, 100.0)
    p.frame(ctx, "state of charge (%)", range(0, 101, 20), "{:g}")
    p.event_bands(ctx, labels=True)
    p.hline(ctx.soc_max_pct, COLORS["max"], f"max {ctx.soc_max_pct:g} %", "2 3")
    p.hline(ctx.reserve_pct, COLORS["reserve"], f"reserve {ctx.reserve_pct:g} %")
    p.hline(ctx.soc_min_pct, COLORS["min"], f"min {ctx.soc_min_pct:g} %")
    p.polyline(none.log[:, T_H], none.log[:, SOC], COLORS["none"], 2.0, dash="6 3")
    p.polyline(ctl.log[:, T_H], ctl.log[:, SOC], COLORS["ctl"], 2.6)
    p.legend([(name, COLORS["ctl"], "line"), ("no control", COLORS["none"], "dash")])
    return p.svg("chart-soc", f"Battery state of charge, {name} vs no control")


def chart_flows(ctx: Context, ctl: RunSeries, name: str) -> str:
    log = ctl.log
    t = log[:, T_H]
    pv = np.maximum(log[:, PV], 0.0)
    dis = np.maximum(log[:, BATT], 0.0)
    chg = np.minimum(log[:, BATT], 0.0)
    grid = np.maximum(log[:, GRID], 0.0)
    gen = np.maximum(log[:, GEN], 0.0)
    uns = np.maximum(log[:, UNSERVED], 0.0)
    layers = [("PV", pv, COLORS["pv"]), ("battery discharge", dis, COLORS["battery"]),
              ("grid import", grid, COLORS["grid"]), ("genset", gen, COLORS["genset"]),
              ("unserved", uns, COLORS["unserved"])]
    top = pv + dis + grid + gen + uns
    hi = _nice_max(max(float(top.max(initial=0.0)), float(log[:, LOAD].max(initial=0.0)), 1.0) * 1.05)
    lo = -_nice_max(float(-chg.min(initial=0.0)) * 1.05) if chg.min(initial=0.0) < -EPS_KW else 0.0
    p = _Plot(ctx.hours, lo, hi, height=340)
    p.frame(ctx, "power (kW)", _nice_ticks(lo, hi, 6), "{:g}")
    p.event_bands(ctx, labels=True)
    base = np.zeros_like(t)
    for layer, values, color in layers:
        p.area(t, base, base + values, color, layer)
        base = base + values
    p.area(t, chg, np.zeros_like(t), COLORS["charge"], "battery charging")
    p.add(f'<line x1="{p.ML}" y1="{float(p.y(0)):.1f}" x2="{p.ML + p.pw}" y2="{float(p.y(0)):.1f}" '
          f'stroke="#444" stroke-width="1"/>')
    p.polyline(t, log[:, LOAD], COLORS["load"], 1.8)
    items = [("load", COLORS["load"], "line")] + [(n, c, "box") for n, v, c in layers if v.max(initial=0) > EPS_KW]
    items.append(("battery charging", COLORS["charge"], "box"))
    p.legend(items)
    return p.svg("chart-flows", f"Power flows with the {name}: supply stacked against the load")


def chart_carbon(ctx: Context, ctl: RunSeries, none: RunSeries, name: str) -> str:
    peak = max(float(ctl.ci15.max(initial=0.0)), float(none.ci15.max(initial=0.0)), ctx.grid_co2,
               ctx.diesel_rated_kg)
    p = _Plot(ctx.hours, 0.0, _nice_max(peak * 1.08))
    p.frame(ctx, "kg CO2e per kWh of load", _nice_ticks(0.0, p.y1, 5), "{:.2f}")
    p.event_bands(ctx, labels=True)
    p.hline(ctx.grid_co2, COLORS["grid"], f"grid {ctx.grid_co2:.2f}", "2 3")
    if ctx.diesel_rated_kg > 0:
        p.hline(ctx.diesel_rated_kg, COLORS["genset"], f"diesel@rated {ctx.diesel_rated_kg:.2f}", "2 3")
    p.polyline(none.ci15_t, none.ci15, COLORS["none"], 2.0, dash="6 3", step=True)
    p.polyline(ctl.ci15_t, ctl.ci15, COLORS["ctl"], 2.6, step=True)
    p.legend([(name, COLORS["ctl"], "line"), ("no control", COLORS["none"], "dash")])
    return p.svg("chart-carbon", "Carbon intensity of the supply mix per 15-minute interval")


# --- HTML ---------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;color:#1d1d1d;
max-width:1000px;margin:24px auto;padding:0 16px;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.1em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}.lead{font-size:1.05em;background:#f4f7f9;border-left:4px solid #2a6f97;
padding:10px 14px}table{border-collapse:collapse;margin:8px 0}th,td{padding:4px 12px;border-bottom:1px solid #eee}
th{text-align:left;background:#fafafa}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.better{color:#1b7f3b}td.worse{color:#b3261e}td.same{color:#777}
svg.chart{display:block;margin:4px 0 2px 0;font-family:inherit}
svg .grid{stroke:#e6e6e6;stroke-width:1}svg .frame{fill:none;stroke:#bbb}
svg .tick{font-size:11px;fill:#555}svg .axis{font-size:12px;fill:#333}svg .legend{font-size:12px;fill:#333}
svg .evlabel{font-size:11px;font-weight:600}.cap{color:#555;font-size:.92em;margin-top:0}
.events td{font-size:.92em}footer{color:#888;font-size:.85em;margin-top:2em}
"""


def _summary(kr: dict, kn: dict) -> str:
    cur = kr.get("currency", "")
    name = controller_name(kr)
    parts = []
    if kr["unserved_kwh"] <= 1e-6:
        parts.append(f"With the {name} the compute node never lost power")
    else:
        parts.append(f"With the {name} {kr['unserved_kwh']:.1f} kWh of load went unserved")
    if kn["unserved_kwh"] > 1e-6:
        parts.append(f"; without control it would have lost {kn['unserved_kwh']:.1f} kWh")
    else:
        parts.append("; without control it would not have lost power either")
    s = "".join(parts) + ". "
    s += (f"Renewable share {100 * kr['renewable_share']:.0f} % (no control: {100 * kn['renewable_share']:.0f} %), "
          f"{kr['co2_kg']:.0f} kg CO2e ({kn['co2_kg']:.0f}), cost {kr['cost']:.0f} {cur} ({kn['cost']:.0f})")
    if "co2_adjusted_kg" in kr and "co2_adjusted_kg" in kn:
        s += (f"; credited for the energy left in the battery ({kr['stored_credit_kwh']:+.0f} kWh, no control "
              f"{kn['stored_credit_kwh']:+.0f}) {kr['co2_adjusted_kg']:.0f} kg CO2e ({kn['co2_adjusted_kg']:.0f}) "
              f"and {kr['cost_adjusted']:.0f} {cur} ({kn['cost_adjusted']:.0f})")
    if kr["diesel_litres"] > kn["diesel_litres"] + 0.05:
        s += f", keeping the load up burnt {kr['diesel_litres'] - kn['diesel_litres']:.0f} L of diesel"
    return s + "."


def kpi_table_html(kr: dict, kn: dict) -> str:
    strategy, short = _e(strategy_of(kr)), _e(short_name(kr))
    rows = ['<table class="kpis" id="kpis"><thead><tr><th>KPI</th><th>unit</th>'
            f'<th data-strategy="{strategy}">{short}</th><th data-strategy="none">none</th>'
            f'<th>{short} − none</th></tr></thead><tbody>']
    for key, label, unit, better in KPI_ROWS:
        vr, vn = kr.get(key), kn.get(key)
        text, verdict = _delta(key, better, vr, vn) if vr is not None and vn is not None else ("–", "same")
        rows.append(f'<tr><th>{_e(label)}</th><td>{_e(_unit(unit, kr))}</td>'
                    f'<td class="num" data-kpi="{key}" data-strategy="{strategy}" data-value="{_e(repr(vr))}">'
                    f'{_e(fmt_kpi(key, vr))}</td>'
                    f'<td class="num" data-kpi="{key}" data-strategy="none" data-value="{_e(repr(vn))}">'
                    f'{_e(fmt_kpi(key, vn))}</td><td class="num {verdict}">{_e(text)}</td></tr>')
    rows.append("</tbody></table>")
    return "\n".join(rows)


def write_report(out_dir, result_ctl, result_none) -> Path:
    """Write out_dir/report.html comparing two runs of one scenario; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = context_of(result_ctl)
    ctl, none = run_series(result_ctl), run_series(result_none)
    kr, kn = result_ctl.kpis, result_none.kpis
    name = controller_name(kr)
    caption = SOC_CAPTION.get(strategy_of(kr), f"The {name}")
    t0 = local_time(ctx, 0.0)
    ev_rows = "".join(
        f"<tr><td>{_e(local_time(ctx, s).strftime('%d %b %H:%M'))}</td><td>{(e - s) * 60:.0f} min</td>"
        f"<td>{_e(label)}</td><td>{_e(note)}</td></tr>" for _, label, s, e, note in ctx.events)
    ctl_rows = "".join(
        f"<tr><td>{_e(local_time(ctx, (t - ctx.start_utc.timestamp()) / 3600.0).strftime('%d %b %H:%M:%S'))}"
        f"</td><td>{_e(event)}</td><td>{value:g}</td></tr>" for t, event, value in controller_events(result_ctl))
    seed = getattr(result_ctl, "seed", None)
    from tools.bench.pareto_chart import demo_section as pareto_section   # the bench's saved sweep, no run
    seed_txt = f", seed {_e(seed)}" if seed is not None else ""
    doc = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<title>edge-ems demo: {_e(ctx.title)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>edge-ems demo: {_e(ctx.title)}</h1>
<p class="sub">{_e(ctx.description)}<br/>
{ctx.hours:g} simulated hours from {_e(t0.strftime('%a %d %b %Y %H:%M %Z'))}{seed_txt}; the real scan loop and the {_e(name)} against the simulated
site, compared with the same site and weather without control (battery idle, genset never started).</p>
<p class="lead">{_e(_summary(kr, kn))}</p>
<h2>Key figures</h2>
{kpi_table_html(kr, kn)}
<p class="cap">{_e(CREDIT_NOTE)}</p>
<h2>Battery state of charge</h2>
{chart_soc(ctx, ctl, none, name)}
<p class="cap">{_e(caption)}; without control the battery only discharges until it reaches its floor.</p>
<h2>Power flows ({_e(name)})</h2>
{chart_flows(ctx, ctl, name)}
<p class="cap">Supply stacked against the load (black line); battery charging below zero. One-minute averages.</p>
<h2>Carbon intensity of the supply</h2>
{chart_carbon(ctx, ctl, none, name)}
<p class="cap">(grid import × grid factor + genset output × diesel factor at its load) ÷ load, per 15-minute
interval. Diesel factor from the site's fuel curve: (fuel_l_per_kwh + fuel_l_per_h_on / P) × kg CO2e per litre.
Energy from the battery counts as zero here: its carbon is booked when it is charged, which is why the
intensity rises above the diesel factor while the genset carries the load and charges the battery.</p>
<section id="pareto"><h2>Cost vs CO2 as the carbon price rises (bench sweep)</h2>
{pareto_section(ctx.title)}</section>
<h2>Scenario events</h2>
<table class="events"><thead><tr><th>local time</th><th>duration</th><th>event</th><th>note</th></tr></thead>
<tbody>{ev_rows or '<tr><td colspan="4">none in this horizon</td></tr>'}</tbody></table>
<h2>Controller events ({_e(short_name(kr))})</h2>
<table class="events"><thead><tr><th>local time</th><th>event</th><th>value</th></tr></thead>
<tbody>{ctl_rows or '<tr><td colspan="3">none</td></tr>'}</tbody></table>
<footer>edge-ems · scenario {_e(ctx.title)} · {kr.get('cycles', 0)} scan cycles per run ·
{kr.get('speedup_x') or '–'}× real time · kpis.json holds every figure above.</footer>
</body>
</html>
"""
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path


def controller_events(result) -> list[tuple[float, str, float]]:
    """The loop's recent events as (utc_s, short name, value)."""
    from controller.core import layout as L
    out = []
    for t_s, code, value in list(result.loop.events):
        name = L.EVENT_NAMES.get(code, str(code)).split(":")[0].split(" (")[0]
        out.append((t_s, name, value))
    return out
