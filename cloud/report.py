"""`edge-ems-cloud report`: per site and for the fleet, by month and year, from the database.

The figures are computed from the signed ledger lines the ingest stored (table `intervals`, column `line`,
one row per line that verified on arrival) by the gateway's own report code, controller/carbon/report.py
`build_report` - the same definitions `edge-ems ledger report` applies to the gateway's ledger file - so the
cloud's report and the gateway's cannot disagree: a site's report here equals its own `ledger report` over
the same intervals, figure for figure (tests/test_cloud_report.py checks it on the three reference sites).
Energy by source and sink, Scope 1, Scope 2 location- and market-based, CFE, renewable share, PUE, CUE,
REF (EED / EN 50600-4 style KPIs), per job, by UTC month and year.

The fleet: energies, litres and kg are the sums over sites; the ratios are recomputed from those sums
(never averaged); the 24/7 CFE is capped per site and hour (a site's clean surplus does not serve another
site), hours weighted by consumption. A line stored twice (same signed bytes) counts once.

`--verify`: the re-verification of a site's stored lines end to end (verify_site): every line again
against the gateway's registered key valid at its t_start (cloud/verify.py, the ingest's own check), the
hash links between consecutive counters, each 15-minute interval at most once and in order; counter gaps
(records that never travel: the genesis, recovery records) are listed; lines the ingest quarantined
(`rejected`) are counted.

    edge-ems-cloud --db DSN report [--site S ...] [--from 2026-06] [--to 2026-07] [--format text|json|csv]
                                  [--out DIR (report.json, report.csv, jobs.csv, report.svg)] [--verify]
"""
from __future__ import annotations

import csv
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

from controller.carbon.report import CSV_COLUMNS, JOB_COLUMNS, NOTES, _Acc, build_report, parse_when, to_csv

FLEET = "(fleet)"


def _where(sites, t_from, t_to) -> tuple[str, list]:
    cond, args = [], []
    if sites:
        cond.append("site = ANY(%s)")
        args.append(list(sites))
    if t_from is not None:
        cond.append("t_start >= to_timestamp(%s)")
        args.append(t_from)
    if t_to is not None:
        cond.append("t_start < to_timestamp(%s)")
        args.append(t_to)
    return (" WHERE " + " AND ".join(cond)) if cond else "", args


def site_lines(conn, sites=None, t_from=None, t_to=None):
    """(site, gateway, line) of every stored signed line, each distinct line once, by site, gateway, time."""
    where, args = _where(sites, t_from, t_to)
    sql = ("SELECT DISTINCT ON (site, gateway_id, t_start, line_sha256) site, gateway_id, line FROM intervals"
           f"{where} ORDER BY site, gateway_id, t_start, line_sha256")
    with conn.transaction(), conn.cursor(name="report_lines") as cur:   # server-side (needs a transaction):
        cur.itersize = 2000                                             # a fleet's year never sits in memory
        cur.execute(sql, args)
        yield from cur


def _merge(dst: _Acc, src: _Acc, tag: str) -> None:
    """Add a site's accumulator into the fleet's; its CFE hours stay its own (capped per site and hour)."""
    for k, v in src.e.items():
        dst.e[k] += v
    for k, v in src.c.items():
        dst.c[k] += v
    for h, (clean, load) in src.hours.items():
        dst.hours[(tag, h)] = [clean, load]
    dst.intervals += src.intervals
    dst.partial += src.partial
    dst.estimated_s += src.estimated_s
    dst.max_residual_pct = max(dst.max_residual_pct, src.max_residual_pct)
    for attr, pick in (("first", min), ("last", max)):
        a, b = getattr(dst, attr), getattr(src, attr)
        setattr(dst, attr, b if a is None else a if b is None else pick(a, b))


def _accumulate(payloads, t_from, t_to) -> tuple[_Acc, dict, dict]:
    """A site's total / month / year accumulators (controller/carbon/report.py `_Acc`, the same add())."""
    from drivers.isotime import utc_epoch
    total, months, years = _Acc(), defaultdict(_Acc), defaultdict(_Acc)
    for p in payloads:
        t0 = utc_epoch(p["t_start"])
        if (t_from is not None and t0 < t_from) or (t_to is not None and t0 >= t_to):
            continue
        for acc in (total, months[p["t_start"][:7]], years[p["t_start"][:4]]):
            acc.add(p)
    return total, months, years


def build(conn, sites=None, t_from=None, t_to=None) -> dict:
    """{"sites": {site: the `ledger report` of its lines + gateways}, "fleet": {total, months, years, jobs}}."""
    from controller.carbon.ledger import parse_line
    by_site: dict[str, list] = {}
    gateways: dict[str, set] = defaultdict(set)
    out_sites = {}
    fleet_total, fleet_months, fleet_years = _Acc(), defaultdict(_Acc), defaultdict(_Acc)
    fleet_jobs = {}

    def close(site: str, payloads: list) -> None:
        rep = build_report(payloads, t_from, t_to)        # ValueError names the record that cannot be summed
        rep["ledger"] = {"site": site, "gateways": sorted(gateways[site]), "source": "cloud database, table intervals"}
        out_sites[site] = rep
        tot, months, years = _accumulate(payloads, t_from, t_to)
        _merge(fleet_total, tot, site)
        for k, a in months.items():
            _merge(fleet_months[k], a, site)
        for k, a in years.items():
            _merge(fleet_years[k], a, site)
        for job, row in rep["jobs"].items():
            fleet_jobs[f"{site}/{job}"] = {"site": site, **row}

    current, payloads = None, []
    for site, gw, line in site_lines(conn, sites, t_from, t_to):
        if site != current:
            if current is not None:
                close(current, payloads)
            current, payloads = site, []
        gateways[site].add(gw)
        payloads.append(parse_line(line.encode())[0])
    if current is not None:
        close(current, payloads)
    for s in sites or ():
        if s not in out_sites:
            raise ValueError(f"--site {s}: no stored interval for this site"
                             f"{' in the period' if t_from is not None or t_to is not None else ''}")
    from drivers.isotime import utc_iso
    return {
        "period": {"from": None if t_from is None else utc_iso(t_from), "to": None if t_to is None else utc_iso(t_to)},
        "fleet": {"sites": len(out_sites), "gateways": sum(len(v) for v in gateways.values()),
                  "total": fleet_total.result(), "months": {k: a.result() for k, a in sorted(fleet_months.items())},
                  "years": {k: a.result() for k, a in sorted(fleet_years.items())}, "jobs": fleet_jobs},
        "sites": out_sites,
        "notes": NOTES + ["Fleet: sums over sites; ratios recomputed from the sums; CFE capped per site and hour."],
    }


# --- outputs ----------------------------------------------------------------------------------------------
def to_csv_all(rep: dict) -> str:
    """One table: a `scope` column (a site or "(fleet)") before controller/carbon/report.py's CSV_COLUMNS."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("scope",) + CSV_COLUMNS)
    scopes = [(FLEET, rep["fleet"])] + list(rep["sites"].items())
    for scope, r in scopes:
        body = to_csv({"months": r["months"], "years": r["years"], "total": r["total"], "jobs": {}})
        for row in list(csv.reader(io.StringIO(body)))[1:]:
            if row:
                w.writerow([scope] + row)
    return buf.getvalue()


def jobs_csv(rep: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("site",) + JOB_COLUMNS)
    for site, r in rep["sites"].items():
        for job, j in r["jobs"].items():
            w.writerow((site, job, *(j.get(k, "") for k in JOB_COLUMNS[1:])))
    return buf.getvalue()


def _f(x, nd=1):
    return "-" if x is None else f"{x:,.{nd}f}"


def to_text(rep: dict) -> str:
    head = (f"{'scope':<28} {'period':<13} {'loads kWh':>11} {'PV kWh':>10} {'grid kWh':>10} {'diesel kWh':>10} "
            f"{'S1 kg':>9} {'S2loc kg':>9} {'S2mkt kg':>9} {'CFE %':>6} {'ren %':>6} {'REF':>6} {'PUE':>6} "
            f"{'CUE':>7}")
    lines = [head, "-" * len(head)]
    for scope, r in [(FLEET, rep["fleet"])] + list(rep["sites"].items()):
        periods = [(f"month {k}", v) for k, v in r["months"].items()] + [(f"year {k}", v) for k, v in r["years"].items()]
        for name, v in periods + [("total", r["total"])]:
            k, e = v["kpi"], v["energy_kwh"]
            ren = None if k["renewable_share"] is None else 100 * k["renewable_share"]
            lines.append(f"{scope[:28]:<28} {name:<13} {_f(e['loads']):>11} {_f(e['pv']):>10} {_f(e['grid']):>10} "
                         f"{_f(e['diesel']):>10} {_f(v['scope1_kg']):>9} {_f(v['scope2_location_kg']):>9} "
                         f"{_f(v['scope2_market_kg']):>9} {_f(k['cfe_pct']):>6} {_f(ren):>6} {_f(k['ref'], 3):>6} "
                         f"{_f(k['pue'], 3):>6} {_f(k['cue_location'], 3):>7}")
    return "\n".join(lines) + "\n"


# --- end-to-end re-verification ----------------------------------------------------------------------------
def verify_site(conn, site: str) -> dict:
    """Every stored line of the site's gateways checked again (see the module docstring)."""
    from controller.carbon.hook import uplink_body
    from controller.carbon.ledger import _check_interval, VerifyResult, line_hash, parse_line
    from cloud.store import load_registry
    from cloud.verify import LineRejected, verify_interval
    gws = [r[0] for r in conn.execute("SELECT DISTINCT gateway_id FROM intervals WHERE site = %s ORDER BY 1",
                                      (site,)).fetchall()]
    _, keys = load_registry(conn, gws)
    out = {"site": site, "ok": True, "gateways": {}}
    for gw in gws:
        rows = conn.execute("SELECT DISTINCT ON (ledger_n, line_sha256) ledger_n, line_sha256, line FROM intervals "
                            "WHERE gateway_id = %s AND site = %s ORDER BY ledger_n, line_sha256", (gw, site)).fetchall()
        g = {"lines": len(rows), "verified": 0, "links": 0, "gaps": [], "first_problem": None}
        prev_n, prev_hash, last_iv = None, None, None
        res = VerifyResult(ok=True)
        for n, sha, line in rows:
            raw = line.encode()
            problem = None
            try:
                payload = parse_line(raw)[0]
                verify_interval(gw, uplink_body(payload, raw), keys.get(gw, []))
            except (LineRejected, ValueError, KeyError, TypeError) as exc:
                problem = f"record n={n}: {exc}"
            if problem is None and line_hash(raw) != sha:
                problem = f"record n={n}: stored line_sha256 differs from the line's SHA-256"
            if problem is None and prev_n is not None:
                if n == prev_n:
                    problem = f"record n={n}: two different lines with the same counter (two ledgers, or a forgery)"
                elif n == prev_n + 1:
                    if payload["prev"] != prev_hash:
                        problem = f"record n={n}: hash link broken (prev is not the SHA-256 of record n={prev_n})"
                    else:
                        g["links"] += 1
                else:
                    g["gaps"].append([prev_n, n])
            if problem is None:
                bad = _check_interval(payload, last_iv, res)
                if bad:
                    problem = f"record n={n}: {bad}"
                elif bad is not None:
                    last_iv = payload
            if problem is not None:
                g["first_problem"] = g["first_problem"] or problem
                out["ok"] = False
                continue
            g["verified"] += 1
            prev_n, prev_hash = n, line_hash(raw)
        g["missing_intervals"] = res.missing_intervals
        g["first_n"] = rows[0][0] if rows else None
        g["last_n"] = rows[-1][0] if rows else None
        g["quarantined"] = conn.execute("SELECT count(*) FROM rejected WHERE gateway_id = %s", (gw,)).fetchone()[0]
        out["gateways"][gw] = g
    if not gws:
        out["ok"], out["message"] = False, f"no stored interval for site {site!r}"
    return out


# --- the command ---------------------------------------------------------------------------------------------
def cmd_report(args) -> int:
    import psycopg
    if not args.db:
        print("edge-ems-cloud: no database: pass --db DSN or set EDGE_EMS_CLOUD_DB", file=sys.stderr)
        return 2
    try:
        t_from, t_to = parse_when(args.t_from, "--from"), parse_when(args.t_to, "--to")
    except ValueError as exc:
        print(f"edge-ems-cloud: {exc}", file=sys.stderr)
        return 2
    try:
        conn = psycopg.connect(args.db, connect_timeout=10)
    except psycopg.OperationalError as exc:
        print(f"edge-ems-cloud: database {args.db!r}: {str(exc).strip()[:300]}", file=sys.stderr)
        return 3
    with conn:
        try:
            rep = build(conn, args.site or None, t_from, t_to)
        except ValueError as exc:
            print(f"edge-ems-cloud: {exc}", file=sys.stderr)
            return 2
        if args.verify:
            rep["verification"] = {s: verify_site(conn, s) for s in rep["sites"]}
    ok = all(v["ok"] for v in rep.get("verification", {}).values())
    if args.out:
        from cloud.report_svg import chart
        d = Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        for name, text in (("report.json", json.dumps(rep, indent=1)), ("report.csv", to_csv_all(rep)),
                           ("jobs.csv", jobs_csv(rep)), ("report.svg", chart(rep))):
            tmp = d / (name + ".tmp")
            tmp.write_text(text)
            tmp.replace(d / name)
    if args.format == "json":
        print(json.dumps(rep, indent=1))
    elif args.format == "csv":
        print(to_csv_all(rep), end="")
        print()
        print(jobs_csv(rep), end="")
    else:
        print(to_text(rep), end="")
        for s, v in rep.get("verification", {}).items():
            gws = v["gateways"].values()
            print(f"verify {s}: {'ok' if v['ok'] else 'FAILED'}: {sum(g['verified'] for g in gws)} of "
                  f"{sum(g['lines'] for g in gws)} lines, {sum(g['links'] for g in gws)} hash links, "
                  f"{sum(len(g['gaps']) for g in gws)} counter gap(s), {sum(g['quarantined'] for g in gws)} "
                  f"quarantined" + "".join(f"; {gw}: {g['first_problem']}" for gw, g in v["gateways"].items()
                                           if g["first_problem"]))
    return 0 if ok else 1


def add_report_parser(sub) -> None:
    """The `report` subcommand for cloud/cli.py."""
    p = sub.add_parser("report", help="per site and fleet: energy by source, Scope 1/2, CFE, KPIs, per job")
    p.add_argument("--site", action="append", help="only this site (repeatable; default: every site)")
    p.add_argument("--from", dest="t_from", help="UTC start, e.g. 2026-06 or 2026-06-14T00:00:00Z")
    p.add_argument("--to", dest="t_to", help="UTC end (exclusive)")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text")
    p.add_argument("--out", help="also write report.json, report.csv, jobs.csv and report.svg here")
    p.add_argument("--verify", action="store_true", help="re-verify every stored line of each site (exit 1 if one fails)")
    p.set_defaults(fn=cmd_report)


def main(argv=None) -> int:
    import argparse
    import os
    ap = argparse.ArgumentParser(prog="python -m cloud.report")
    ap.add_argument("--db", default=os.environ.get("EDGE_EMS_CLOUD_DB"))
    sub = ap.add_subparsers(dest="command", required=True)
    add_report_parser(sub)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
