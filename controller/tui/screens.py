"""The TUI's screens: pure functions (hello, snapshot, history, options) -> rich Text, 80 columns wide.

Fixed-width number formats everywhere, so a changing value rewrites its own cells and nothing around it.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone

from rich.text import Text

SCREENS = (("o", "overview", "O)verview"), ("b", "battery", "B)attery"), ("a", "alarms", "A)larms"),
           ("d", "devices", "D)evices"), ("c", "carbon", "C)arbon"), ("u", "uplink", "U)plink"),
           ("e", "events", "E)vents"))
ACTIONS = "P)IN M)ode S)etpoint G)enset K)ack alarms R)ead dev N)scan bus X)export Q)uit"
BLOCKS = " ▁▂▃▄▅▆▇█"
ASCII_BLOCKS = " ..--==##"


def val(snap: dict, name: str):
    """(value, ok) of a point."""
    v, q = snap["points"].get(name, [None, 1])
    return (v if v is not None else math.nan), q == 0


def fnum(x, width: int = 7, prec: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-".rjust(width)
    return f"{x:{width}.{prec}f}"


def pv(snap, name, width=7, prec=1) -> str:
    """A point formatted; a stale/error value gets a '?' after it."""
    v, ok = val(snap, name)
    return fnum(v, width, prec) + ("" if ok else "?")


def local_time(t_s: float, tz: str, fmt: str = "%H:%M:%S") -> str:
    try:
        from zoneinfo import ZoneInfo
        return datetime.fromtimestamp(t_s, ZoneInfo(tz)).strftime(fmt)
    except Exception:
        return datetime.fromtimestamp(t_s, timezone.utc).strftime(fmt)


def lines(*items) -> Text:
    out = Text(no_wrap=True, overflow="crop")
    for i, item in enumerate(items):
        if i:
            out.append("\n")
        out.append(item if isinstance(item, Text) else Text(str(item)))
    return out


def two_cols(left: list, right: list, width: int = 40) -> list[Text]:
    out = []
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else Text("")
        b = right[i] if i < len(right) else Text("")
        a = a if isinstance(a, Text) else Text(a)
        b = b if isinstance(b, Text) else Text(b)
        a = a.copy()
        a.truncate(width, pad=True)
        out.append(Text.assemble(a, b))
    return out


def sparkline(values: list[float], lo: float, hi: float, rows: int, ascii: bool) -> list[str]:
    blocks = ASCII_BLOCKS if ascii else BLOCKS
    out = []
    levels = rows * 8
    scaled = []
    for v in values:
        if v is None or not math.isfinite(v):
            scaled.append(None)
        else:
            scaled.append(int(round((min(max(v, lo), hi) - lo) / (hi - lo or 1.0) * levels)))
    for r in range(rows - 1, -1, -1):
        row = []
        for s in scaled:
            if s is None:
                row.append(" ")
            else:
                row.append(blocks[max(0, min(8, s - r * 8))])
        out.append("".join(row))
    return out


def header(hello: dict, snap: dict | None, screen: str, session: bool, width: int) -> Text:
    site = hello["site"]
    t = Text(no_wrap=True, overflow="crop")
    t.append(" edge-ems ", style="reverse bold")
    t.append(f" {site['gateway_id']} {site['name']}"[:32])
    if snap:
        t.append("  " + local_time(snap["t_s"], site["timezone"], "%m-%d %H:%M:%S"))
        mode = snap["mode"].upper()
        t.append("  ")
        t.append(f"{mode:<12}", style="bold" if snap["mode"] == "normal" else "bold reverse")
    t.append("  ")
    t.append("PIN ok" if session else "locked", style="reverse" if session else "")
    t.truncate(width, pad=True)
    return t


def keys_line(current: str, width: int) -> Text:
    t = Text(no_wrap=True, overflow="crop")
    for key, name, label in SCREENS:
        t.append(" ")
        t.append(label, style="reverse bold" if name == current else "bold")
    t.truncate(width - 1, pad=True)
    return t


# --- screens -------------------------------------------------------------------------------------------
def overview(hello, snap, hist, ascii: bool, ui: dict | None = None) -> Text:
    lim = hello["limits"]
    c = snap["commands"]
    bat_kw, _ = val(snap, "battery_kw")
    grid_kw, _ = val(snap, "grid_kw")
    gen_run, _ = val(snap, "genset_running")
    load = sum(val(snap, n)[0] for n in ("grid_kw", "pv_kw", "battery_kw", "genset_kw"))
    bdir = "discharging" if bat_kw > 0.5 else "charging" if bat_kw < -0.5 else "idle"
    left = [Text("POWER FLOWS (kW)", style="bold"),
            Text.assemble("PV      ", (pv(snap, "pv_kw"), "bold green"), "  avail", pv(snap, "pv_available_kw")),
            Text.assemble("Battery ", (pv(snap, "battery_kw"), "bold cyan"), f"  {bdir}"),
            Text.assemble("Grid    ", (pv(snap, "grid_kw"), "bold yellow"),
                          f"  {'import' if grid_kw >= 0 else 'export'} cap {lim['grid_import_max_kw']:.0f}"),
            Text.assemble("Genset  ", (pv(snap, "genset_kw"), "bold red"),
                          f"  {'running' if gen_run > 0.5 else 'off'} cmd {'run' if c['genset_run'] else 'stop'}"),
            Text.assemble("IT      ", (pv(snap, "it_kw"), "bold")),
            Text.assemble("Cooling ", pv(snap, "cooling_kw")),
            Text.assemble("Aux     ", pv(snap, "aux_kw")),
            Text.assemble("Load    ", fnum(load), "  (meter balance)")]
    soc, soc_ok = val(snap, "soc_pct")
    bar_n = 20
    filled = int(round(min(max(soc, 0.0), 100.0) / 100.0 * bar_n)) if math.isfinite(soc) else 0
    m = snap["manual"]
    act = snap["alarms"]["active"]
    right = [Text("BATTERY / CONTROL", style="bold"),
             Text.assemble("SOC   ", (fnum(soc, 6) + ("" if soc_ok else "?"), "bold"), " %  [",
                           ("#" * filled, "cyan"), "." * (bar_n - filled), "]"),
             Text(f"Mode  {snap['mode']:<13} operator {m['mode']}"),
             Text(f"Chg <= {fnum(c['charge_limit_kw'], 6)} kW {snap['charge_reason']}"),
             Text(f"Dis <= {fnum(c['discharge_limit_kw'], 6)} kW {snap['discharge_reason']}"),
             Text.assemble("Alarms ", (f"{bin(act).count('1')} active", "bold red" if act else ""),
                           f", {bin(snap['alarms']['unacked']).count('1')} unacked"),
             Text(f"Cycle p99 {fnum(snap['loop'].get('p99_ms'), 6, 2)} ms  overruns {snap['loop'].get('overruns', 0):.0f}"),
             manual_line(m)]
    body = two_cols(left, right, 40)
    body.append(Text(""))
    rows = (hist or {}).get("rows") or []
    step_h = (hist or {}).get("step_s", 60) / 3600.0
    hist_cols, plan_cols = 48, 24
    recent = rows[-hist_cols:]
    plan = (hist or {}).get("plan")
    head = Text.assemble(("SOC % ", "bold"), f"last {len(recent) * step_h:4.1f} h (1 min/col) | ")
    if plan and plan.get("soc_pct"):
        # the plan in columns of plan_h / plan_cols each: the next hours at a glance
        per = max(1, int(math.ceil(len(plan["soc_pct"]) / plan_cols)))
        psoc = [plan["soc_pct"][i] for i in range(0, len(plan["soc_pct"]), per)][:plan_cols]
        head.append(f"plan next {len(psoc) * per * plan['step_s'] / 3600.0:4.1f} h")
    elif snap.get("plan"):
        # the MPC keeps only the plan in force (its first 15-min step) in the state: show that
        pl = snap["plan"]
        psoc = []
        head.append(f"plan {local_time(pl['plan_t_s'], hello['site']['timezone'], '%H:%M')}: SOC -> "
                    f"{fnum(pl['plan_soc_end_pct'], 4, 0).strip()} %")
    else:
        psoc = []
        head.append(f"plan: not available ({hello['site']['strategy']} strategy)")
    body.append(head)
    socs = [r[1] for r in recent]
    chart = sparkline(socs, 0.0, 100.0, 3, ascii)
    pchart = sparkline(psoc, 0.0, 100.0, 3, ascii) if psoc else [""] * 3
    for i, line in enumerate(chart):
        label = ("100 |", " 50 |", "  0 |")[i]
        body.append(Text.assemble(label, (f"{line:<{hist_cols}}", "cyan"), "|", (pchart[i], "bold")))
    pvs = [r[2] for r in recent]
    loads = [r[6] for r in recent]
    top = max([lim["pv_rated_kw"], *[x for x in loads if x is not None and math.isfinite(x)], 1.0])
    pl = snap.get("plan") if not psoc else None
    body.append(Text.assemble(" PV |", (f"{sparkline(pvs, 0.0, top, 1, ascii)[0]:<{hist_cols}}", "green"), "|",
                              f" grid {fnum(pl['plan_grid_kw'] - pl['plan_export_kw'], 6)}" if pl else ""))
    body.append(Text.assemble("Load|", f"{sparkline(loads, 0.0, top, 1, ascii)[0]:<{hist_cols}}", "|",
                              f" batt {fnum(pl['plan_battery_kw'], 6)} gen {fnum(pl['plan_diesel_kw'], 4, 0)}"
                              if pl else ""))
    return lines(*body)


def manual_line(m: dict) -> Text:
    if m["mode"] != "manual":
        return Text("")
    if m["clamped"]:
        return Text(f"clamped to {m['battery_kw']:.1f} kW by {m['reason']}", style="bold reverse")
    return Text(f"manual {m['requested_kw']:+.1f} kW: within limits")


def battery(hello, snap, hist, ascii: bool, ui: dict | None = None) -> Text:
    lim = hello["limits"]
    c = snap["commands"]
    vmax, _ = val(snap, "cell_v_max")
    vmin, _ = val(snap, "cell_v_min")
    spread = (vmax - vmin) * 1000.0
    yn = lambda name: "yes" if val(snap, name)[0] > 0.5 else "no"  # noqa: E731
    left = [Text("BMS", style="bold"),
            Text.assemble("SOC          ", pv(snap, "soc_pct"), " %"),
            Text.assemble("SOH          ", pv(snap, "soh_pct"), " %"),
            Text.assemble("Pack         ", pv(snap, "battery_v") if val(snap, "battery_v")[1] else "     --", " V"),
            Text.assemble("Current      ", pv(snap, "battery_a"), " A"),
            Text.assemble("Power        ", pv(snap, "battery_kw"), " kW"),
            Text.assemble("Temp         ", pv(snap, "battery_temp_c"), " °C"),
            Text.assemble("Cell V max   ", pv(snap, "cell_v_max", 7, 3), " V"),
            Text.assemble("Cell V min   ", pv(snap, "cell_v_min", 7, 3), " V"),
            Text.assemble("Cell spread  ", fnum(spread, 7, 0), " mV"),
            Text.assemble("Cell T max   ", pv(snap, "cell_temp_max_c"), " °C"),
            Text.assemble("Cell T min   ", pv(snap, "cell_temp_min_c"), " °C"),
            Text.assemble("CVL          ", pv(snap, "bms_cvl_v"), " V"),
            Text.assemble("CCL          ", pv(snap, "bms_ccl_a"), " A"),
            Text.assemble("DCL          ", pv(snap, "bms_dcl_a"), " A")]
    bits, _ = val(snap, "bms_alarm_bits")
    bits = int(bits) if math.isfinite(bits) else 0
    right = [Text("INTERLOCKS (what limits the battery)", style="bold"),
             Text(f"Charge limit     {fnum(c['charge_limit_kw'])} kW"),
             Text.assemble("  limited by     ", (snap["charge_reason"], "bold")),
             Text(f"Discharge limit  {fnum(c['discharge_limit_kw'])} kW"),
             Text.assemble("  limited by     ", (snap["discharge_reason"], "bold")),
             Text(f"Command          {fnum(c['battery_kw'])} kW"),
             Text(f"Charge enable    {yn('bms_charge_enable'):<4} Discharge {yn('bms_discharge_enable')}"),
             Text(f"BMS force charge {yn('bms_force_charge'):<4} alarm bits {bits:#06x}"),
             Text(f"Interlock trips  {snap['loop'].get('interlock_trips', 0)}"),
             Text(""),
             Text("PROFILE", style="bold"),
             Text(f"SOC {lim['soc_min_pct']:.0f}..{lim['soc_max_pct']:.0f} %  reserve {lim['reserve_pct']:.0f} %"),
             Text(f"cells {lim['cell_v_min']:.2f}..{lim['cell_v_max']:.2f} V x {lim['cells_series']}"),
             Text(f"max chg {lim['charge_max_kw']:.0f} / dis {lim['discharge_max_kw']:.0f} kW"),
             manual_line(snap["manual"])]
    return lines(*two_cols(left, right, 38))


def _alarm_by_bit(hello) -> dict:
    return {a["bit"]: a for a in hello["alarms"]}


def alarms(hello, snap, hist, ascii: bool, ui: dict | None = None) -> Text:
    cat = _alarm_by_bit(hello)
    act, unacked = snap["alarms"]["active"], snap["alarms"]["unacked"]
    out = [Text.assemble(("ACTIVE ALARMS", "bold"), f" ({bin(act).count('1')})    K: acknowledge all unacked")]
    shown = 0
    for bit in sorted(cat):
        if not act >> bit & 1:
            continue
        a = cat[bit]
        sev = {"critical": "bold red", "warning": "yellow"}.get(a["severity"], "")
        out.append(Text.assemble(("! " if unacked >> bit & 1 else "  "), (f"{a['name']:<20}", "bold"),
                                 (f"{a['severity']:<9}", sev), ("UNACKED " if unacked >> bit & 1 else "acked   "),
                                 a["text"][:40]))
        out.append(Text("    check: " + a["check"][:68], style="dim"))
        shown += 1
        if shown >= 5:
            break
    if not act:
        out.append(Text("  none"))
    pending = unacked & ~act
    if pending:
        out.append(Text("  cleared, awaiting ack: " + ", ".join(cat[b]["name"] for b in cat if pending >> b & 1)))
    out.append(Text(""))
    out.append(Text("HISTORY (newest first)", style="bold"))
    from controller.core import layout as L
    kinds = {L.EV_ALARM_RAISED: "raised ", L.EV_ALARM_CLEARED: "cleared", L.EV_ALARM_ACKED: "acked  "}
    hist_rows = [e for e in snap["events"] if e[2] in kinds]
    room = 20 - len(out)
    for seq, t, code, value in reversed(hist_rows[-room:]):
        a = cat.get(int(value), {"name": str(value), "severity": ""})
        out.append(Text(f"  {local_time(t, hello['site']['timezone'])}  {kinds[code]}  {a['name']:<20} {a['severity']}"))
    if not hist_rows:
        out.append(Text("  no alarm events since the TUI socket started"))
    return lines(*out[:20])


def devices(hello, snap, hist, ascii: bool, ui: dict | None = None) -> Text:
    out = [Text(f"{'#':<2}{'DEVICE':<12}{'ROLE':<12}{'BUS':<8}{'LAST GOOD':>9}{'PTS OK':>8}{'ERR':>5}{'STALE':>6}"
                " STALE PTS/COUNTERS", style="bold")]
    for i, d in enumerate(snap["devices"]):
        age = d["last_good_age_s"]
        age_s = f"{age:7.1f} s" if age is not None else "    never"
        stale = ",".join(d["stale"]) or "-"
        counters = " ".join(f"{k}={v}" for k, v in d["counters"].items())
        style = "" if not d["stale"] else "bold red"
        out.append(Text.assemble(f"{i + 1:<2}{d['name'][:11]:<12}{d['role'][:11]:<12}{d['bus'][:7]:<8}", (age_s, style),
                                 f"{d['ok']:>4}/{d['points']:<3}{d['error_cycles']:>5}{d['stale_cycles']:>6} ",
                                 ((stale + (" " + counters if counters else ""))[:18], style)))
    buses = hello.get("buses", {})
    out.append(Text("BUSES  " + "  ".join(f"{k}:{b['kind']}{(' ' + str(b['port'])) if b['port'] else ''}"
                                          for k, b in buses.items())[:72]))
    field = (ui or {}).get("field")
    if field is None:
        out.append(Text("ERR/STALE: cycles with the device's points in error / not fresh; R reads one, N scans"))
        ipc = snap.get("ipc", {})
        out.append(Text(f"IPC clients {ipc.get('clients', 0)}  snapshots sent {ipc.get('sent', 0)}  slow-skipped "
                        f"{ipc.get('skipped_slow', 0)}  hook max {ipc.get('hook_max_us', 0):.0f} us", style="dim"))
        return lines(*out[:20])
    if not field.get("ok"):
        out.append(Text(f"{field.get('action', '').upper()} FAILED: {field.get('error', '')}"[:79],
                        style="bold reverse"))
    elif field.get("action") == "scan":
        out.append(Text(f"SCAN {field['bus']} ({field['port']}, {field['ms']:.0f} ms)"[:79], style="bold"))
        out.append(Text(f"  answering units: {' '.join(map(str, field['found'])) or 'none'}"[:79]))
        out.append(Text(f"  profile units not answering: {' '.join(map(str, field['missing'])) or 'none'}"[:79]))
    else:
        out.append(Text(f"READ {field['device']} ({field['source']}, {field['ms']:.0f} ms)"[:79], style="bold"))
        cells = [f"{k[:15]:<15}{v:>10.4g}" for k, v in field["values"].items()]
        room = 20 - len(out)
        for r in range(min(room, (len(cells) + 2) // 3)):
            out.append(Text("  ".join(cells[r * 3:r * 3 + 3])))
    return lines(*out[:20])


def carbon(hello, snap, hist, ascii: bool, ui: dict | None = None) -> Text:
    cb = snap.get("carbon") or {}
    d = cb.get("today") or {}
    g = lambda k, w=8, p=1: fnum(d.get(k), w, p)  # noqa: E731
    share = d.get("renewable_share")
    intensity, ok = val(snap, "grid_co2_kg_per_kwh")
    cfe_pct, cfe_ok = val(snap, "grid_cfe_pct")
    # the grid's share the ledger counts imports at: pushed (market feed / grid update), else the profile's
    cfe = f"{fnum(cfe_pct, 5)} %" if cfe_ok else "- (none pushed)"
    out = [Text.assemble(("CARBON TODAY", "bold"), f"  local day {d.get('day')}  covered {fnum(d.get('covered_s', 0) / 3600.0, 5)} h"),
           Text(f"PV            {g('pv_kwh')} kWh     Load          {g('load_kwh')} kWh"),
           Text(f"Grid import   {g('grid_import_kwh')} kWh     IT            {g('it_kwh')} kWh"),
           Text(f"Grid export   {g('grid_export_kwh')} kWh     Batt charge   {g('battery_charge_kwh')} kWh"),
           Text(f"Genset        {g('genset_kwh')} kWh     Batt dischg   {g('battery_discharge_kwh')} kWh"),
           Text(f"Diesel        {g('diesel_l')} L"),
           Text(""),
           Text(f"CO2 grid      {g('co2_grid_kg')} kg      CO2 diesel    {g('co2_diesel_kg')} kg"),
           Text.assemble("CO2 total     ", (g("co2_kg"), "bold"), " kg      per kWh load  ",
                         fnum(d.get("kg_per_kwh_load"), 8, 3), " kg"),
           Text(f"Renewable share (PV / supplied) {fnum(share * 100 if share is not None else None, 6)} %"),
           Text(f"Grid intensity now {fnum(intensity, 6, 3)}{'' if ok else '?'} kgCO2e/kWh"
                f"   carbon-free {cfe}"),
           Text("")]
    led = cb.get("ledger")
    if led:
        out.append(Text(f"Ledger: {led['intervals_closed']} intervals closed, current from {led['interval_start']}"
                        f" ({fnum(led['interval_covered_s'], 5, 0)} s)"))
        lt = led.get("today")
        if lt and lt.get("intervals"):
            # summed over the signed 15-min intervals the ledger closed today
            out.append(Text.assemble("CFE today (ledger) ", (fnum(lt.get("cfe_pct"), 6), "bold"),
                                     f" %   CO2 loads {fnum(lt['co2_location_kg'], 7)} kg loc "
                                     f"{fnum(lt['co2_market_kg'], 7)} kg mkt"))
            jobs = sorted(lt["jobs"].items(), key=lambda kv: -kv[1]["kwh"])[:20 - len(out) - 1]
            for job, j in jobs:
                out.append(Text(f"  job {job[:28]:<28} {fnum(j['kwh'], 8)} kWh {fnum(j['kg'], 8, 2)} kg CO2e"))
            if not jobs:
                out.append(Text("  per-job: no jobs reported in today's intervals"))
        else:
            out.append(Text("CFE / per-job: not available until the ledger closes its first 15-min interval"))
    else:
        out.append(Text("Ledger: not available in this process (edge-ems run --out DIR writes one)"))
        out.append(Text("CFE / per-job: not available without the ledger"))
    out.append(Text(f"source: {cb.get('source', '-')}"[:78], style="dim"))
    return lines(*out[:20])


def audit_message(rec: dict, ui: dict | None) -> str:
    """The message of an audit record the snapshot lists: snapshots carry only the server-made fields
    (seq, time, who, kind, outcome, refusal count); the message comes from the records the app fetched
    with the audit op (App.fetch_audit), else a summary of those fields."""
    full = ((ui or {}).get("audit") or {}).get(rec["seq"])
    if full is not None:
        return str(full.get("message", ""))
    return "" if rec["ok"] else f"refused (#{rec['refused']} of its kind)" if "refused" in rec else "refused"


def uplink(hello, snap, hist, ascii: bool, ui: dict | None = None) -> Text:
    u = snap.get("uplink") or {}
    out = [Text("UPLINK", style="bold")]
    if not u.get("attached"):
        out.append(Text("Connected      no uplink in this process"))
        out.append(Text(u.get("message", "")[:78], style="dim"))
    else:
        spool = u.get("spool") or {}
        out.append(Text(f"Connected      {u.get('connected', '-')}"))
        out.append(Text(f"Spool depth    {spool.get('depth', spool.get('pending', '-'))}"))
        out.append(Text(f"Oldest unsent  {spool.get('oldest_unsent_s', spool.get('oldest_s', '-'))}"))
        for k, v in list(u.items())[:10]:
            if k not in ("attached", "spool"):
                out.append(Text(f"{k:<15}{str(v)[:62]}"))
    out.append(Text(""))
    out.append(Text("AUDIT (actions from this socket; the uplink forwards them)", style="bold"))
    for rec in reversed(snap.get("audit", [])[-10:]):
        out.append(Text(f"{rec['t_utc'][11:19]}Z {rec['action']:<10} {'ok ' if rec['ok'] else 'NO '} "
                        f"{audit_message(rec, ui)}"[:78]))
    return lines(*out[:20])


def events(hello, snap, hist, ascii: bool, ui: dict | None = None) -> Text:
    names = hello["events"]
    out = [Text("EVENTS (newest first; controller events and technician actions)", style="bold")]
    rows = [(t, names.get(str(code), str(code)).split(":")[0].split(" (")[0], value)
            for seq, t, code, value in snap["events"]]
    for rec in snap.get("audit", []):
        if rec.get("t_s") is not None:
            rows.append((rec["t_s"], f"TUI {rec['action']} {'ok' if rec['ok'] else 'refused'}",
                         audit_message(rec, ui)))
    rows.sort(key=lambda r: r[0])
    tz = hello["site"]["timezone"]
    for t, name, value in reversed(rows[-19:]):
        v = f"{value:g}" if isinstance(value, (int, float)) else str(value)
        out.append(Text(f"{local_time(t, tz)}  {name:<24} {v}"[:78]))
    if len(out) == 1:
        out.append(Text("  none yet"))
    return lines(*out)


RENDER = {"overview": overview, "battery": battery, "alarms": alarms, "devices": devices, "carbon": carbon,
          "uplink": uplink, "events": events}
