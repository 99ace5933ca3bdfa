"""`edge-ems demo`: a simulated day at the Inner Mongolia mine node, live in the terminal, then a report.

The real scan loop and a controller (`--strategy mpc`, the default, or `rule`) run against the simulated
site; a live rich view shows local time, the battery, the power flows, mode, genset and the controller's
events. Then the same day runs without control, and the two are compared in the terminal and in
OUT/report.html, every label naming the strategy that ran (taken from its kpis.json, not from the flag).

The live view is refreshed from the run's progress callback, between scan cycles, never from a thread
and never inside a cycle: the cycle-time KPIs stay those of the controller, not of the display.
When stdout is not a terminal (CI, a pipe) there is no live view, only the final report.
"""
from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np

from controller.core import layout as L

SCENARIO = "inner-mongolia-mine"
REFRESH_HZ = 8.0
STRATEGIES = ("mpc", "rule")       # what the demo compares against no control; mpc first = the default


def _pace_s(hours: float) -> float:
    """Wall seconds the live run should take at least: a day in ~22 s, short runs still watchable."""
    return min(22.0, max(6.0, hours * 0.9))


class LiveView:
    """Keeps a snapshot of the running loop and renders it; fed by a cheap hook and the progress callback."""

    def __init__(self, scn, hours: float, ctx, name: str):
        self.scn, self.hours, self.ctx, self.name = scn, hours, ctx, name
        self.loop = None
        self.events: deque = deque(maxlen=8)    # (t_s utc, code, value)
        self.soc: list[float] = []              # one sample per snapshot
        self.snap: dict | None = None
        self.frac = 0.0
        site = scn.site
        self.reserve = site["battery"]["reserve_pct"]
        self.soc_min = site["battery"]["soc_min_pct"]
        self.scale_kw = max(scn["pv"]["kwp"], (site.get("genset") or {}).get("rated_kw", 0.0),
                            site["grid"]["import_max_kw"], scn["load"]["it_nameplate_kw"] * 1.3, 1.0)

    # called every cycle inside the loop: keep it trivial
    def hook(self, loop, image, cmd, events, n) -> None:
        if self.loop is None:
            self.loop = loop
        for i in range(n):
            self.events.append((float(image["t_s"]), int(events[i, 0]), float(events[i, 1])))

    # called between chunks of cycles, outside the cycle timing
    def sample(self, frac: float) -> None:
        self.frac = frac
        loop = self.loop
        if loop is None:
            return
        site = loop.clock.site
        f = site.flows
        gen = site.genset
        self.snap = {
            "t_h": site.t_s / 3600.0, "soc": site.battery.soc_pct, "pv": f.pv_kw, "battery": f.battery_kw,
            "grid": f.grid_kw, "genset": f.genset_kw, "load": f.load_kw, "unserved": f.unserved_kw,
            "curtailed": f.curtailed_kw, "grid_up": site.grid_up(),
            "gen_state": gen.state if gen else "none", "fuel": gen.fuel_pct if gen else 0.0,
            "mode": L.MODE_NAMES[int(loop.commands[L.C_MODE])] if 0 <= int(loop.commands[L.C_MODE]) < 3 else "?",
            "unserved_kwh": site.meters.unserved_kwh, "pv_kwh": site.meters.pv_used_kwh,
            "diesel_l": gen.litres if gen else 0.0, "p99": loop.stats.quantile_ms(0.99),
        }
        self.soc.append(site.battery.soc_pct)

    # --- rendering ---------------------------------------------------------------------------------
    def _bar(self, kw: float, width: int, style: str):
        from rich.text import Text
        eighths = " ▏▎▍▌▋▊▉█"
        frac = min(abs(kw) / self.scale_kw, 1.0)
        cells = frac * width
        full = int(cells)
        text = Text("█" * full, style=style)
        rest = int(round((cells - full) * 8))
        if full < width and rest:
            text.append(eighths[rest], style)
        if abs(kw) > self.scale_kw:
            text.append("▶", "bold " + style)
        text.pad_right(width + 1 - len(text))
        return text

    def _soc_bar(self, soc: float, width: int):
        from rich.text import Text
        style = "green" if soc >= self.reserve else ("yellow" if soc >= self.soc_min else "red")
        filled = int(round(soc / 100.0 * width))
        res_col = int(round(self.reserve / 100.0 * width))
        text = Text()
        for i in range(width):
            if i < filled:
                text.append("█", style)
            elif i == res_col:
                text.append("│", "dark_orange")
            else:
                text.append("░", "grey35")
        return text

    def _spark(self, width: int):
        from rich.text import Text
        from tools.sim.report_terminal import BLOCKS
        n_total = max(1, int(round(self.hours * 6)))        # one sample per 10 simulated minutes
        text = Text()
        if not self.soc:
            return text
        per = max(1, int(np.ceil(n_total / width)))
        vals = [float(np.mean(self.soc[i:i + per])) for i in range(0, len(self.soc), per)]
        for v in vals[:width]:
            level = int(round(np.clip(v / 100.0, 0, 1) * 8))
            style = "green" if v >= self.reserve else ("yellow" if v >= self.soc_min else "red")
            text.append(BLOCKS[max(level, 1)], style)
        return text

    def render(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text
        from tools.sim.report import local_time
        s = self.snap
        title = f"[bold]edge-ems demo[/] · {self.scn.name} · {self.name}"
        if s is None:
            return Panel(Text("compiling kernels and starting the scan loop…", style="dim"), title=title,
                         border_style="cyan", width=80)
        lt = local_time(self.ctx, s["t_h"])
        head = Table.grid(expand=True)
        head.add_column()
        head.add_column(justify="right")
        prog = Text(f"{s['t_h']:5.1f} h of {self.hours:g} h ", style="dim")
        prog.append("█" * int(self.frac * 12), "cyan")
        prog.append("░" * (12 - int(self.frac * 12)), "grey35")
        head.add_row(Text(lt.strftime("%a %d %b  %H:%M %Z"), style="bold"), prog)

        g = Table.grid(padding=(0, 1))
        g.add_column(width=8, style="bold")
        g.add_column(width=33, no_wrap=True)
        g.add_column(width=10, justify="right", no_wrap=True)
        g.add_column()
        soc_note = Text(f"reserve {self.reserve:g} %", style="dark_orange")
        g.add_row("SOC", self._soc_bar(s["soc"], 32), Text(f"{s['soc']:.1f} %", style="bold"), soc_note)
        g.add_row("", self._spark(32), "", Text("SOC so far", style="dim"))
        b = s["battery"]
        b_note = ("discharging" if b > 0.5 else "charging" if b < -0.5 else "idle")
        grid_note = Text("up", style="green") if s["grid_up"] else Text("OUTAGE", style="bold red")
        gen_style = {"running": "bold red3", "starting": "yellow", "off": "dim"}.get(s["gen_state"], "dim")
        rows = [("PV", s["pv"], "yellow", Text(f"curtailed {s['curtailed']:.0f} kW", style="dim")
                 if s["curtailed"] > 0.5 else Text("")),
                ("Battery", b, "cyan", Text(b_note, style="cyan")),
                ("Grid", s["grid"], "blue", grid_note),
                ("Genset", s["genset"], "red3", Text(f"{s['gen_state']} · fuel {s['fuel']:.0f} %", style=gen_style)),
                ("Load", s["load"], "white", Text(f"unserved {s['unserved']:.0f} kW", style="bold red")
                 if s["unserved"] > 0.05 else Text("served", style="green"))]
        for name, kw, style, note in rows:
            g.add_row(Text(name, style=style), self._bar(kw, 32, style), Text(f"{kw:7.1f} kW"), note)

        mode_style = {"normal": "green", "conservative": "yellow", "safe": "bold red"}.get(s["mode"], "white")
        status = Text("mode ")
        status.append(s["mode"], mode_style)
        status.append(f" · unserved {s['unserved_kwh']:.1f} kWh · PV {s['pv_kwh']:.0f} kWh · diesel "
                      f"{s['diesel_l']:.0f} L · p99 {s['p99']:.2f} ms", style="dim")

        ev = Text()
        items = []
        start_s = self.ctx.start_utc.timestamp()
        for t_s, code, value in list(self.events):
            name = L.EVENT_NAMES.get(code, str(code))
            if code in (L.EV_GENSET_START, L.EV_GENSET_STOP):
                name = name.split(" (")[0] + f" at SOC {value:.0f} %"
            style = "red" if code in (L.EV_GRID_LOST, L.EV_BMS_STALE, L.EV_METER_STALE) else "white"
            items.append(((t_s - start_s) / 3600.0, name, style))
        for kind, label, st, en, note in self.ctx.events:
            if st <= s["t_h"]:
                items.append((st, f"scenario: {note or label}", "dim italic"))
        items.sort(key=lambda x: x[0])
        for i, (t_h, name, style) in enumerate(items[-4:]):
            ev.append(("\n" if i else "") + local_time(self.ctx, t_h).strftime("%H:%M  "), "dim")
            if len(name) > 66:
                name = name.split(" (")[0][:66]
            ev.append(name, style)
        if not items:
            ev.append("no events yet", "dim")
        body = Group(head, Text(""), g, Text(""), status, Text("events", style="bold"), ev)
        return Panel(body, title=title, border_style="cyan", width=80)


def run_demo(out, hours: float = 24.0, seed: int = 1, strategy: str = "mpc") -> int:
    """Run the demo into `out` (kpis.json, recording, report.html; the no-control run in out/none):
    `strategy` ("mpc" or "rule") against no control."""
    from rich.console import Console
    from rich.live import Live
    from tools.sim.report import context_for, controller_name, write_report
    from tools.sim.report_terminal import print_terminal_report
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario

    if strategy not in STRATEGIES:
        raise ValueError(f"edge-ems demo: strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    console = Console()
    name = controller_name({"strategy": strategy})
    out = Path(out)
    scn = load_scenario(SCENARIO)
    interactive = console.is_terminal
    try:
        if interactive:
            view = LiveView(scn, hours, context_for(scn, hours), name)
            pace = _pace_s(hours)
            last = [0.0]
            with Live(view.render(), console=console, auto_refresh=False, transient=False) as live:
                wall0 = time.monotonic()

                def progress(frac: float) -> None:
                    view.sample(frac)
                    now = time.monotonic()
                    delay = wall0 + frac * pace - now
                    if delay > 0:
                        time.sleep(delay)
                    if now - last[0] >= 1.0 / REFRESH_HZ or frac >= 1.0:
                        last[0] = now
                        live.update(view.render(), refresh=True)

                result_ctl = run_sim(scn, hours=hours, seed=seed, strategy=strategy, out_dir=out,
                                     progress=progress, hooks=[view.hook])
                view.sample(1.0)
                live.update(view.render(), refresh=True)
            result_none = _run_quiet(console, scn, hours, seed, out / "none", show=True)
        else:
            console.print(f"edge-ems demo: {scn.name}, {hours:g} h, seed {seed}: {name} …")
            result_ctl = run_sim(scn, hours=hours, seed=seed, strategy=strategy, out_dir=out)
            console.print("edge-ems demo: the same run without control, for the comparison …")
            result_none = _run_quiet(console, scn, hours, seed, out / "none", show=False)
    except KeyboardInterrupt:
        console.print("[yellow]edge-ems demo: interrupted[/]")
        return 130
    result_ctl.seed = seed
    result_none.seed = seed
    if result_ctl.kpis.get("strategy") != strategy:     # the report names what ran; it must be what was asked
        raise RuntimeError(f"edge-ems demo: asked for {strategy}, the loop ran {result_ctl.kpis.get('strategy')}")
    path = write_report(out, result_ctl, result_none)
    print_terminal_report(console, result_ctl, result_none)
    console.print()
    console.print(f"report: [bold]{path}[/]")
    console.print(f"KPIs:   {out / 'kpis.json'} ({result_ctl.kpis['strategy']}), "
                  f"{out / 'none' / 'kpis.json'} (none)", style="dim")
    return 0


def _run_quiet(console, scn, hours, seed, out_dir, show: bool):
    """The comparison run: no live view; a progress bar refreshed between cycles when interactive."""
    from tools.sim.runner import run_sim
    if not show:
        return run_sim(scn, hours=hours, seed=seed, strategy="none", out_dir=out_dir)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn("[dim]the same run without control, for the comparison"), BarColumn(),
                  TimeElapsedColumn(), console=console, auto_refresh=False, transient=True) as bar:
        task = bar.add_task("none", total=1.0)
        last = [0.0]

        def progress(frac: float) -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0 / REFRESH_HZ:
                last[0] = now
                bar.update(task, completed=frac, refresh=True)

        return run_sim(scn, hours=hours, seed=seed, strategy="none", out_dir=out_dir, progress=progress)
