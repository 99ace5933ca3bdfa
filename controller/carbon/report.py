"""`edge-ems ledger report`: monthly / annual / period totals from a verified ledger, JSON or CSV.

KPIs in the spirit of the EU Energy Efficiency Directive (Art. 12) data-centre scheme (Delegated Reg.
2024/1364) and EN 50600-4: total energy E_DC, IT energy, PUE, REF / renewable share; plus Scope 1,
Scope 2 (location and market), CUE and the hourly 24/7 CFE score. Definitions:

- e_dc_kwh: energy the node consumed: loads (IT + cooling + aux) + battery losses (model) + genset
  conversion losses (fuel energy at 9.9 kWh/L minus the set's electrical output): fuels count in E_DC.
- pue = e_dc / IT; pue_electric = loads / IT (the cabinet-level figure most vendors quote).
- renewable_share = renewable kWh delivered to the loads (on-site PV directly and through the battery,
  plus grid kWh covered by renewable contracts) / loads; ref = the same renewable kWh / e_dc.
- pv_share_of_supply = PV / (PV + grid + diesel): the simulator's `renewable_share` KPI, for comparison.
- cfe_pct: per UTC hour min(100 %, clean / consumption), hours weighted by consumption.
- co2_kg = Scope 1 + Scope 2 location-based; co2_kg_market = Scope 1 + Scope 2 market-based.
- cue = co2 / IT kWh (kgCO2e/kWh).
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from typing import Iterable, Iterator

from controller.carbon.ledger import JOB_FIELDS, _bad_number
from drivers.isotime import utc_epoch, utc_iso

NOTES = [
    "What the cabinet cannot know: water use (WUE) and waste-heat reuse (ERF) are not metered here; "
    "energy upstream of the cabinet (site transformer and feeder losses, other buildings) is outside its meters.",
    "The grid factor is the profile's regional average (or the cloud-pushed hourly intensity when it was fresh): "
    "the marginal or real-time mix of the feeder is not measured on site.",
    "Market-based figures are only as good as the contracts entered in the profile; registry cancellation "
    "of certificates (GEC / I-REC / GO) happens outside the cabinet and must be checked against the registry.",
    "IT energy is what the compute platform reports (node / PDU telemetry); per-job figures attribute the node's "
    "energy and emissions by the jobs' share of IT energy, that share from measured per-job power (Kepler / DCGM "
    "through the bridge) where it was fresh, else from the job's announced kW: each job's basis says which "
    "(measured_h / announced_h). Kepler's per-job figure is a model of RAPL and GPU counters, not a meter.",
    "Diesel litres come from the profile's fuel curve, not a flow meter; a tank-dip reconciliation is needed "
    "for audit-grade Scope 1.",
    "Life-cycle (embodied) emissions of PV, battery and IT hardware and Scope 3 are not included; on-site PV "
    "counts 0 kgCO2e/kWh.",
    "A hash chain shows edits, removals and reordering, not a cut of the last records: compare the tail with "
    "the copy received over the uplink.",
]

_E_KEYS = ("pv", "pv_direct", "battery_discharge", "grid", "diesel", "it", "cooling", "aux", "battery_charge",
           "export", "curtailment", "e_dc", "fuel", "battery_loss_model")


def parse_when(text: str | None, option: str = "--from") -> float | None:
    """'2026', '2026-04', '2026-04-10', '2026-04-10T12:00:00Z' -> UTC epoch seconds."""
    if not text:
        return None
    full = text + "-01" if len(text) == 7 else text + "-01-01" if len(text) == 4 else text
    try:
        return utc_epoch(full)
    except ValueError:
        raise ValueError(f"{option}: expected a UTC time like 2026, 2026-04, 2026-04-10 or 2026-04-10T12:00:00Z, "
                         f"got {text!r}") from None


class _Acc:
    def __init__(self):
        self.e = defaultdict(float)
        self.c = defaultdict(float)
        self.hours: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.intervals = 0
        self.partial = 0
        self.estimated_s = 0.0
        self.max_residual_pct = 0.0
        self.first = None
        self.last = None

    def add(self, p: dict) -> None:
        en = p["energy_kwh"]
        src, snk = en["sources"], en["sinks"]
        for k in ("pv", "pv_direct", "battery_discharge", "grid", "diesel"):
            self.e[k] += src[k]
        for k in ("it", "cooling", "aux", "battery_charge", "export", "curtailment"):
            self.e[k] += snk[k]
        for k in ("e_dc", "fuel", "battery_loss_model"):
            self.e[k] += en[k]
        self.e["renewable"] += p["renewable_kwh"]
        c = p["co2_kg"]
        for k in ("scope1_diesel", "scope2_location", "scope2_market", "loads_location", "loads_market"):
            self.c[k] += c[k]
        self.c["diesel_l"] += p["diesel_l"]
        cfe = p["cfe"]
        h = self.hours[int(utc_epoch(p["t_start"]) // 3600)]
        h[0] += cfe["onsite_kwh"] + cfe["contract_kwh"] + cfe["grid_kwh"]
        h[1] += cfe["load_kwh"]
        self.intervals += 1
        self.partial += bool(p["partial"])
        self.estimated_s += p["estimated_s"]
        self.max_residual_pct = max(self.max_residual_pct, abs(en["closure"]["residual_pct"]))
        self.first = p["t_start"] if self.first is None else min(self.first, p["t_start"])
        self.last = p["t_end"] if self.last is None else max(self.last, p["t_end"])

    def result(self) -> dict:
        e, c = self.e, self.c
        loads = e["it"] + e["cooling"] + e["aux"]
        supply = e["pv"] + e["grid"] + e["diesel"]
        clean = sum(min(h[0], h[1]) for h in self.hours.values() if h[1] > 0)      # capped per hour
        load_h = sum(h[1] for h in self.hours.values() if h[1] > 0)
        s1, s2l, s2m = c["scope1_diesel"], c["scope2_location"], c["scope2_market"]
        it = e["it"]

        def div(a, b, nd=4):
            return round(a / b, nd) if b > 1e-9 else None
        return {
            "from": self.first, "to": self.last, "intervals": self.intervals, "partial_intervals": self.partial,
            "estimated_s": round(self.estimated_s, 1), "max_closure_residual_pct": round(self.max_residual_pct, 4),
            "energy_kwh": {**{k: round(e[k], 3) for k in _E_KEYS}, "loads": round(loads, 3),
                           "renewable": round(e["renewable"], 3)},
            "diesel_litres": round(c["diesel_l"], 3),
            "co2_kg": round(s1 + s2l, 3), "co2_kg_market": round(s1 + s2m, 3),
            "scope1_kg": round(s1, 3), "scope2_location_kg": round(s2l, 3), "scope2_market_kg": round(s2m, 3),
            "loads_attributed_kg": {"location": round(c["loads_location"], 3), "market": round(c["loads_market"], 3)},
            "kpi": {
                "total_energy_kwh": round(e["e_dc"], 3), "it_energy_kwh": round(it, 3),
                "pue": div(e["e_dc"], it), "pue_electric": div(loads, it),
                "renewable_share": div(e["renewable"], loads), "ref": div(e["renewable"], e["e_dc"]),
                "pv_share_of_supply": div(e["pv"], supply),
                "cfe_pct": round(100.0 * clean / load_h, 2) if load_h > 1e-9 else None,
                "cue_location": div(s1 + s2l, it, 5), "cue_market": div(s1 + s2m, it, 5),
            },
        }


def _add_interval(p, t_from, t_to, total, months, years, jobs) -> None:
    t0 = utc_epoch(p["t_start"])
    if (t_from is not None and t0 < t_from) or (t_to is not None and t0 >= t_to):
        return
    staged = _Acc()                 # added to the totals only once the whole record has been read
    staged.add(p)
    rows = {}
    for job, d in p["jobs"].items():
        vals = {k: float(d[k]) for k in ("it_kwh", "kwh", "kg_location", "kg_market")}
        for k in ("measured_s", "announced_s", "deferred_s", "renewable_kwh"):
            vals[k] = _job_num(d, k, job)
        rows[job] = (str(d.get("label", "")), vals, "renewable_kwh" in d)
    for acc in (total, months[p["t_start"][:7]], years[p["t_start"][:4]]):
        acc.add(p)
    for job, (label, vals, has_renewable) in rows.items():
        j = jobs.setdefault(job, {"label": label, **dict.fromkeys(JOB_FIELDS, 0.0), "intervals": 0,
                                  "renewable_known": True})
        for k, v in vals.items():
            j[k] += v
        j["renewable_known"] = j["renewable_known"] and (has_renewable or vals["kwh"] == 0.0)
        j["intervals"] += 1


def _job_num(d: dict, key: str, job: str) -> float:
    """A per-job figure added since the first ledgers (0 when absent); anything but a bounded finite
    number is a bad record, named (the same rule as `ledger verify`)."""
    x = d.get(key, 0.0)
    bad = _bad_number(x, f"jobs.{job}.{key}")
    if bad:
        raise ValueError(bad)
    return float(x)


def _job_row(j: dict) -> dict:
    """A job's summed line: kWh, kg, renewable share, the basis of its figures and the hours it was moved."""
    m, a = j.pop("measured_s"), j.pop("announced_s")
    known = j.pop("renewable_known")
    out = {"label": j["label"], "intervals": j["intervals"]}
    for k in ("it_kwh", "kwh", "kg_location", "kg_market"):
        out[k] = round(j[k], 3)
    out["renewable_kwh"] = round(j["renewable_kwh"], 3) if known else None
    out["renewable_share"] = round(j["renewable_kwh"] / j["kwh"], 4) if known and j["kwh"] > 1e-9 else None
    out["basis"] = ("mixed" if m > 0 and a > 0 else "measured" if m > 0 else "announced" if a > 0 else "unstated")
    out["measured_h"], out["announced_h"] = round(m / 3600.0, 3), round(a / 3600.0, 3)
    out["moved_h"] = round(j["deferred_s"] / 3600.0, 3)
    return out


def iter_payloads(path) -> "Iterator[dict]":
    """Every record that parses, in file order, one at a time (no verification; `ledger verify` first):
    a year's ledger is ~35 000 records, whose parsed dicts would take hundreds of MB held all at once."""
    from controller.carbon.ledger import LineError, parse_line
    with open(path, "rb") as f:
        for line in f:
            try:
                yield parse_line(line.rstrip(b"\n"))[0]
            except LineError:
                continue


def build_report(payloads: "Iterable[dict]", t_from: float | None = None, t_to: float | None = None,
                 verified: dict | None = None) -> dict:
    """Raises ValueError naming the first interval record whose fields cannot be summed."""
    from controller.carbon.ledger import interval_type_problem
    genesis: dict = {}
    total, months, years = _Acc(), defaultdict(_Acc), defaultdict(_Acc)
    jobs: dict[str, dict] = {}
    for p in payloads:               # any iterable, read once (a year's ledger streams: iter_payloads)
        if p.get("kind") == "genesis" and not genesis:
            genesis = p
        if p.get("kind") != "interval":
            continue
        bad = interval_type_problem(p)
        if bad is None and not isinstance(p.get("t_start"), str):
            bad = f"t_start: expected a UTC time string, got {type(p.get('t_start')).__name__}"
        if bad is None:
            try:
                _add_interval(p, t_from, t_to, total, months, years, jobs)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:    # a missing or odd field
                bad = f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyError) else f"{exc}: missing"
        if bad:
            raise ValueError(f"record n={p.get('n')!r}: {bad} (nothing reported)")
    tot = total.result()
    rest = None
    if jobs:      # the IT energy no job claimed (inference baseline, idle), so the job rows add up to the total
        rest = {"label": "IT not attributed to an announced or measured job", "intervals": total.intervals,
                "it_kwh": tot["energy_kwh"]["it"], "kwh": tot["energy_kwh"]["loads"],
                "kg_location": total.c["loads_location"], "kg_market": total.c["loads_market"],
                "renewable_kwh": total.e["renewable"]}
        known = all(j["renewable_known"] for j in jobs.values())
        for j in jobs.values():
            for k in ("it_kwh", "kwh", "kg_location", "kg_market", "renewable_kwh"):
                rest[k] -= j[k]
        for k in ("it_kwh", "kwh", "kg_location", "kg_market"):
            rest[k] = round(rest[k], 3)
        rest["renewable_share"] = (round(rest["renewable_kwh"] / rest["kwh"], 4)
                                   if known and rest["kwh"] > 1e-9 else None)
        rest["renewable_kwh"] = round(rest["renewable_kwh"], 3) if known else None
    jobs = {job: _job_row(j) for job, j in jobs.items()}
    if rest is not None:
        jobs["(unattributed)"] = rest
    return {
        "ledger": {"site": genesis.get("site"), "gateway": genesis.get("gateway_id"),
                   "key_fingerprint": genesis.get("key_fingerprint"), **(verified or {})},
        "factors": genesis.get("factors", {}),
        "residual_mix": {k: genesis.get("carbon", {}).get(k) for k in
                         ("residual_mix_kg_per_kwh", "residual_mix_source", "residual_mix_year")},
        "period": {"from": None if t_from is None else utc_iso(t_from), "to": None if t_to is None else utc_iso(t_to)},
        "total": tot,
        "months": {k: a.result() for k, a in sorted(months.items())},
        "years": {k: a.result() for k, a in sorted(years.items())},
        "jobs": jobs,
        "notes": NOTES,
    }


CSV_COLUMNS = ("period", "from", "to", "intervals", "total_energy_kwh", "it_energy_kwh", "pue", "pue_electric",
               "renewable_share", "ref", "pv_share_of_supply", "cfe_pct", "co2_kg", "co2_kg_market", "scope1_kg",
               "scope2_location_kg", "scope2_market_kg", "cue_location", "cue_market", "diesel_litres",
               "pv_kwh", "grid_kwh", "diesel_kwh", "battery_charge_kwh", "battery_discharge_kwh", "export_kwh",
               "curtailment_kwh", "loads_kwh")


JOB_COLUMNS = ("job", "label", "it_kwh", "kwh", "kg_location", "kg_market", "renewable_kwh", "renewable_share",
               "basis", "measured_h", "announced_h", "moved_h", "intervals")


BY = ("month", "year", "total")


def report_rows(report: dict, by: str = "month") -> list[tuple[str, dict]]:
    """(name, figures) rows: by month -> every month, the years and the total; by year -> the years and
    the total; by total -> the total (months and years are UTC calendar periods: intervals are UTC)."""
    if by not in BY:
        raise ValueError(f"--by: expected one of {', '.join(BY)}, got {by!r}")
    rows = [(f"month {k}", r) for k, r in report.get("months", {}).items()] if by == "month" else []
    rows += [(f"year {k}", r) for k, r in report.get("years", {}).items()] if by in ("month", "year") else []
    return rows + [("total", report["total"])]


def select(report: dict, by: str = "month") -> dict:
    """The report with only the periods `--by` asks for (JSON output)."""
    report_rows(report, by)                     # validates `by`
    out = dict(report)
    if by != "month":
        out.pop("months", None)
    if by == "total":
        out.pop("years", None)
    return out


TEXT_COLUMNS = (  # (header, width, getter): energy by source, renewable share, REF, PUE, CUE, Scope 1 / 2
    ("period", 13, lambda r: r["_name"]),
    ("E_DC kWh", 11, lambda r: r["kpi"]["total_energy_kwh"]),
    ("IT kWh", 10, lambda r: r["kpi"]["it_energy_kwh"]),
    ("PV kWh", 10, lambda r: r["energy_kwh"]["pv"]),
    ("grid kWh", 10, lambda r: r["energy_kwh"]["grid"]),
    ("diesel kWh", 10, lambda r: r["energy_kwh"]["diesel"]),
    ("diesel L", 9, lambda r: r["diesel_litres"]),
    ("renew %", 7, lambda r: None if r["kpi"]["renewable_share"] is None else 100.0 * r["kpi"]["renewable_share"]),
    ("REF", 6, lambda r: r["kpi"]["ref"]),
    ("CFE %", 6, lambda r: r["kpi"]["cfe_pct"]),
    ("PUE", 6, lambda r: r["kpi"]["pue"]),
    ("PUEel", 6, lambda r: r["kpi"]["pue_electric"]),
    ("Scope1 kg", 10, lambda r: r["scope1_kg"]),
    ("Scope2 kg", 10, lambda r: r["scope2_location_kg"]),
    ("S2 mkt kg", 10, lambda r: r["scope2_market_kg"]),
    ("CUE kg/kWh", 10, lambda r: r["kpi"]["cue_location"]),
)


def to_text(report: dict, by: str = "month") -> str:
    """A table a person reads at the end of a year run: one line per month, year and the total."""
    def cell(x, w):
        if x is None:
            return "-".rjust(w)
        if isinstance(x, str):
            return x.ljust(w)
        return (f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}" if abs(x) < 10 else f"{x:.1f}").rjust(w)
    led = report.get("ledger", {})
    lines = [f"ledger report: site {led.get('site')}, gateway {led.get('gateway')}, "
             f"{'verified' if led.get('verified') else 'NOT verified'} ({led.get('verify', '')})",
             " ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w, _) in enumerate(TEXT_COLUMNS))]
    for name, r in report_rows(report, by):
        row = {**r, "_name": name.removeprefix("month ")}
        lines.append(" ".join(cell(get(row), w) for _, w, get in TEXT_COLUMNS))
    t = report["total"]
    lines.append(f"total: {t['intervals']} intervals from {t['from']} to {t['to']} ({t['partial_intervals']} partial); "
                 f"CO2 {t['co2_kg']:,.1f} kg location / {t['co2_kg_market']:,.1f} kg market-based; "
                 f"largest closure residual {t['max_closure_residual_pct']} %; months and years are UTC periods")
    return "\n".join(lines) + "\n"


def to_csv(report: dict, by: str = "month") -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    rows = report_rows(report, by)
    for name, r in rows:
        e, kpi = r["energy_kwh"], r["kpi"]
        w.writerow([name, r["from"], r["to"], r["intervals"], kpi["total_energy_kwh"], kpi["it_energy_kwh"],
                    kpi["pue"], kpi["pue_electric"], kpi["renewable_share"], kpi["ref"], kpi["pv_share_of_supply"],
                    kpi["cfe_pct"], r["co2_kg"], r["co2_kg_market"], r["scope1_kg"], r["scope2_location_kg"],
                    r["scope2_market_kg"], kpi["cue_location"], kpi["cue_market"], r["diesel_litres"], e["pv"],
                    e["grid"], e["diesel"], e["battery_charge"], e["battery_discharge"], e["export"],
                    e["curtailment"], e["loads"]])
    if report["jobs"]:
        w.writerow([])
        w.writerow(JOB_COLUMNS)
        for job, j in report["jobs"].items():
            w.writerow((job, *(j.get(k, "") for k in JOB_COLUMNS[1:])))
    return buf.getvalue()


def is_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def ledger_verify_main(args) -> int:
    """`edge-ems ledger verify FILE [--pubkey K]`: exit 0 only if every record holds, else 1 (2: bad input)."""
    import sys
    from controller.carbon.keys import load_public_key
    from controller.carbon.ledger import verify
    try:
        pub = load_public_key(args.pubkey) if args.pubkey else None
        res = verify(args.file, pub)
    except (OSError, ValueError) as exc:
        print(f"edge-ems: {exc}", file=sys.stderr)
        return 2
    if res.torn_tail:
        print(f"note: {res.torn_tail}", file=sys.stderr)
    if res.ok:
        print(f"ok: {res.message}")
        return 0
    print(f"FAILED: first bad record: {res.message}")
    return 1


def ledger_report_main(args) -> int:
    """`edge-ems ledger report FILE [--from T] [--to T] [--format csv|json|text] [--by month|year|total]
    [--pubkey K]`."""
    import json
    import sys
    from controller.carbon.keys import load_public_key
    from controller.carbon.ledger import verify
    try:
        pub = load_public_key(args.pubkey) if args.pubkey else None
        res = verify(args.file, pub)
        t_from, t_to = parse_when(args.t_from, "--from"), parse_when(args.t_to, "--to")
    except (OSError, ValueError) as exc:
        print(f"edge-ems: {exc}", file=sys.stderr)
        return 2
    payloads = iter_payloads(args.file)     # streamed: a year's records are never all held at once
    if not res.ok:
        print(f"WARNING: the ledger does not verify ({res.message}); figures below are not evidence",
              file=sys.stderr)
    try:
        rep = build_report(payloads, t_from, t_to, {"verified": res.ok, "verify": res.message,
                                                    "key_source": res.key_source})
    except ValueError as exc:                 # a record whose fields cannot be summed
        print(f"edge-ems: {args.file}: {exc}", file=sys.stderr)
        return 2
    by = getattr(args, "by", "month")
    if args.format == "csv":
        print(to_csv(rep, by), end="")
    elif args.format == "text":
        print(to_text(rep, by), end="")
    else:
        print(json.dumps(select(rep, by), indent=2))
    return 0 if res.ok else 1


def add_ledger_parser(sub) -> None:
    """The `ledger` subcommand group for controller/cli.py."""
    p = sub.add_parser("ledger", help="verify the carbon ledger or report totals from it")
    lsub = p.add_subparsers(dest="ledger_command", required=True)
    v = lsub.add_parser("verify", help="exit 0 only if every hash, link, counter and signature holds")
    v.add_argument("file")
    v.add_argument("--pubkey", help="the gateway's public key (PEM, or raw base64/hex); default: the genesis record's")
    v.set_defaults(func=ledger_verify_main)
    r = lsub.add_parser("report", help="monthly / annual totals and EED-style KPIs")
    r.add_argument("file")
    r.add_argument("--from", dest="t_from", help="UTC start, e.g. 2026-04 or 2026-04-10T00:00:00Z")
    r.add_argument("--to", dest="t_to", help="UTC end (exclusive)")
    r.add_argument("--format", choices=("json", "csv", "text"), default="json",
                   help="text: one line per period (energy by source, renewable share, REF, CFE, PUE, Scope 1/2, CUE)")
    r.add_argument("--by", choices=BY, default="month",
                   help="the periods shown: month (months, years, total), year (years, total) or total")
    r.add_argument("--pubkey")
    r.set_defaults(func=ledger_report_main)
