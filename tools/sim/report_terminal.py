"""The demo's report in the terminal: sparklines and block charts of the two runs, the events and the KPI
table, with rich (the HTML page with the same story is tools/sim/report.py, whose helpers this reads)."""
from __future__ import annotations

import math

import numpy as np

from tools.sim.report import (     # what the terminal view shares with the HTML one
    BATT, CREDIT_NOTE, EPS_KW, GEN, GRID, KPI_ROWS, LOAD, PV, SOC, T_H, UNSERVED, Context, RunSeries, _delta, _summary,
    _unit, context_of, controller_name, fmt_kpi, local_time, run_series, short_name, time_ticks,
)


# --- terminal -----------------------------------------------------------------------------------

BLOCKS = " ▁▂▃▄▅▆▇█"


def resample(t: np.ndarray, v: np.ndarray, hours: float, width: int, how: str = "mean") -> np.ndarray:
    """Values into `width` equal time buckets (NaN where a bucket has no sample)."""
    out = np.full(width, np.nan)
    if len(t) == 0 or width <= 0:
        return out
    idx = np.clip((np.asarray(t) / max(hours, 1e-9) * width).astype(int), 0, width - 1)
    for i in range(width):
        sel = v[idx == i]
        if len(sel):
            out[i] = sel.min() if how == "min" else sel.mean()
    # fill gaps (short runs at wide widths) with the previous bucket
    for i in range(1, width):
        if np.isnan(out[i]) and not np.isnan(out[i - 1]):
            out[i] = out[i - 1]
    return out


def spark(values: np.ndarray, lo: float, hi: float) -> str:
    span = max(hi - lo, 1e-9)
    chars = []
    for v in values:
        if np.isnan(v):
            chars.append(" ")
            continue
        level = int(round(np.clip((v - lo) / span, 0.0, 1.0) * 8))
        chars.append(BLOCKS[level] if level > 0 else ("▁" if v > lo + 1e-9 else " "))
    return "".join(chars)


def block_rows(values: np.ndarray, rows: int, lo: float, hi: float, color, guides=()) -> list:
    """A `rows`-high bar chart as rich Texts (top row first). color: style or f(value) -> style.
    guides: (value, style) horizontal guide lines drawn where the bars leave the cell empty."""
    from rich.text import Text
    span = max(hi - lo, 1e-9)
    levels = [None if np.isnan(v) else int(round(np.clip((v - lo) / span, 0, 1) * rows * 8)) for v in values]
    guide_rows = {}
    for gv, gstyle in guides:
        g = (gv - lo) / span * rows
        r = min(rows - 1, max(0, int(g)))
        guide_rows[r] = ("▁" if g - int(g) < 0.5 else "─", gstyle)
    lines = []
    for r in range(rows - 1, -1, -1):
        text = Text()
        for v, level in zip(values, levels):
            style = color(v) if callable(color) else color
            if level is None:
                text.append(" ")
            elif level >= (r + 1) * 8:
                text.append("█", style)
            elif level > r * 8:
                text.append(BLOCKS[level - r * 8], style)
            elif r in guide_rows:
                ch, gstyle = guide_rows[r]
                text.append(ch, gstyle)
            else:
                text.append(" ")
        lines.append(text)
    return lines


def _axis_text(ctx: Context, width: int, pad: int):
    """Time axis under a chart: tick labels at their column."""
    from rich.text import Text
    line = [" "] * (width + 8)
    for t, label in time_ticks(ctx, ctx.hours):
        col = int(round(t / max(ctx.hours, 1e-9) * (width - 1)))
        start = min(max(0, col - len(label) // 2), width + 8 - len(label))
        if all(c == " " for c in line[max(0, start - 1):start + len(label) + 1]):
            line[start:start + len(label)] = list(label)
    return Text(" " * pad + "".join(line).rstrip(), style="dim")


def _events_text(ctx: Context, width: int, pad: int, room: int = 12):
    """A marker row under a chart: ━━━ under grid outages and sandstorms, each labelled beside its band."""
    from rich.text import Text
    total = width + room
    cells: list[tuple[str, str]] = [(" ", "")] * total
    bands = []
    for kind, label, s, e, _ in ctx.events:
        if kind not in ("grid_outage", "pv_derate"):
            continue
        style = "bold blue" if kind == "grid_outage" else "bold yellow"
        c0 = max(0, int(s / max(ctx.hours, 1e-9) * width))
        c1 = min(width, max(c0 + 1, int(math.ceil(e / max(ctx.hours, 1e-9) * width))))
        for c in range(c0, c1):
            cells[c] = ("━", style)
        bands.append((c0, c1, label, style))
    if not bands:
        return None

    def free(a, b):
        return 0 <= a and b <= total and all(ch == " " for ch, _ in cells[max(0, a - 1):min(total, b + 1)])

    for c0, c1, label, style in bands:
        n = len(label)
        for start in (c1 + 1, c0 - n - 1):
            if free(start, start + n):
                for k, ch in enumerate(label):
                    cells[start + k] = (ch, style.replace("bold ", ""))
                break
    text = Text(" " * pad)
    for ch, style in cells:
        text.append(ch, style)
    text.rstrip()
    return text


def _carbon_style(v: float) -> str:
    if np.isnan(v):
        return ""
    if v < 0.25:
        return "green"
    if v < 0.5:
        return "yellow"
    return "red"


def terminal_charts(console, ctx: Context, ctl: RunSeries, none: RunSeries, short: str) -> list:
    """Renderables: SOC, flows and carbon intensity as block charts sized to the console; `short` names the
    controlled run's rows ("MPC", "rule")."""
    from rich.text import Text
    label_w = 10
    width = max(20, min(console.width - label_w - 14, 100))
    out = []
    hours = ctx.hours

    def labelled(label: str, line, right: str = "", style: str = ""):
        t = Text(f"{label:<{label_w}}", style=style)
        t.append_text(line)
        if right:
            t.append(" " + right, style="dim")
        return t

    # SOC
    head = Text("Battery state of charge (%) ", style="bold")
    head.append(f"yellow below reserve {ctx.reserve_pct:g} %, red below min {ctx.soc_min_pct:g} %", style="dim")
    out.append(head)
    guides = ((ctx.reserve_pct, "dark_orange"), (ctx.soc_min_pct, "red"))
    def soc_style(base):
        def f(v):
            if np.isnan(v):
                return ""
            return base if v >= ctx.reserve_pct else ("yellow" if v >= ctx.soc_min_pct else "red")
        return f

    for name, rs, style in ((short, ctl, "cyan"), ("none", none, "grey62")):
        v = resample(rs.log[:, T_H], rs.log[:, SOC], hours, width)
        rows = block_rows(v, 3, 0.0, 100.0, soc_style(style), guides)
        raw = rs.log[:, SOC]
        right = [f"{raw.max():.0f}", "", f"min {raw.min():.0f}"] if len(raw) else ["", "", ""]
        for i, line in enumerate(rows):
            out.append(labelled(name if i == 1 else "", line, right[i], style="bold " + style if i == 1 else ""))
    out.append(_axis_text(ctx, width, label_w))
    ev = _events_text(ctx, width, label_w, console.width - label_w - width)
    if ev is not None:
        out.append(ev)
    out.append(Text())

    # flows, common kW scale
    log = ctl.log
    t = log[:, T_H]
    flows = [("PV", np.maximum(log[:, PV], 0), "yellow"),
             ("Batt out", np.maximum(log[:, BATT], 0), "cyan"),
             ("Batt in", np.maximum(-log[:, BATT], 0), "dark_cyan"),
             ("Grid", np.maximum(log[:, GRID], 0), "blue"),
             ("Genset", np.maximum(log[:, GEN], 0), "red3"),
             ("Load", np.maximum(log[:, LOAD], 0), "white"),
             ("Unserved", np.maximum(log[:, UNSERVED], 0), "bold red")]
    cols = [(n, resample(t, v, hours, width), s, v) for n, v, s in flows]
    top = max(float(np.nanmax(c[1])) if np.any(~np.isnan(c[1])) else 0.0 for c in cols) or 1.0
    out.append(Text(f"Power flows, {short} controller (kW, one scale: full block = {top:.0f} kW)", style="bold"))
    for name, v, style, raw in cols:
        if name == "Unserved" and raw.max(initial=0.0) <= EPS_KW:
            continue
        kwh = raw.sum() / 60.0
        line = Text(spark(v, 0.0, top), style=style)
        out.append(labelled(name, line, f"{kwh:5.0f} kWh", style="bold " + style))
    out.append(_axis_text(ctx, width, label_w))
    out.append(Text())

    # carbon intensity
    peak = max(float(ctl.ci15.max(initial=0.0)), float(none.ci15.max(initial=0.0)), ctx.grid_co2) or 1.0
    out.append(Text(f"Carbon intensity of the supply (kg CO2e/kWh, 15-min; top = {peak:.2f}, "
                    f"grid {ctx.grid_co2:.2f} ─)", style="bold"))
    for name, rs in ((short, ctl), ("none", none)):
        v = resample(rs.ci15_t + 1e-6, rs.ci15, hours, width)
        rows = block_rows(v, 3, 0.0, peak, _carbon_style, ((ctx.grid_co2, "blue"),))
        mean = float(rs.ci.mean()) if len(rs.ci) else 0.0
        right = [f"{rs.ci15.max(initial=0.0):.2f}", f"avg {mean:.2f}", ""]
        for i, line in enumerate(rows):
            out.append(labelled(name if i == 1 else "", line, right[i], style="bold" if i == 1 else ""))
    out.append(_axis_text(ctx, width, label_w))
    if ev is not None:
        out.append(ev)
    return out


def kpi_table(result_ctl, result_none):
    from rich.table import Table
    from rich import box
    kr, kn = result_ctl.kpis, result_none.kpis
    short = short_name(kr)
    table = Table(title=f"{controller_name(kr)} vs no control", box=box.SIMPLE_HEAVY, title_style="bold",
                  pad_edge=False, expand=False)
    table.add_column("KPI", style="bold", no_wrap=True)
    table.add_column("unit", style="dim", no_wrap=True)
    table.add_column(short, justify="right", style="cyan", no_wrap=True)
    table.add_column("none", justify="right", style="grey62", no_wrap=True)
    table.add_column(f"{short} − none", justify="right", no_wrap=True)
    for key, label, unit, better in KPI_ROWS:
        vr, vn = kr.get(key), kn.get(key)
        text, verdict = _delta(key, better, vr, vn) if vr is not None and vn is not None else ("–", "same")
        style = {"better": "green", "worse": "red", "same": "dim"}[verdict]
        table.add_row(label, _unit(unit, kr), fmt_kpi(key, vr), fmt_kpi(key, vn), f"[{style}]{text}[/]")
    return table


def print_terminal_report(console, result_ctl, result_none) -> None:
    """KPI table and block charts for SOC, flows and carbon intensity; readable at 80 columns."""
    from rich.panel import Panel
    from rich.text import Text
    ctx = context_of(result_ctl)
    ctl, none = run_series(result_ctl), run_series(result_none)
    kr, kn = result_ctl.kpis, result_none.kpis
    t0 = local_time(ctx, 0.0)
    console.print()
    console.print(Text(f"edge-ems demo · {ctx.title} · {ctx.hours:g} h from {t0.strftime('%d %b %H:%M %Z')}",
                       style="bold"))
    console.print(Panel(Text(_summary(kr, kn)), border_style="cyan", expand=True))
    console.print(kpi_table(result_ctl, result_none))
    console.print(Text(CREDIT_NOTE, style="dim"))
    for item in terminal_charts(console, ctx, ctl, none, short_name(kr)):
        console.print(item, overflow="crop", no_wrap=True)
