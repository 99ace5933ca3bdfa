"""A trace: what one simulated gateway put in its uplink spool during an `edge-ems sim` run, in order.

Why a recording and not a model: the records the fleet publishes must be the gateway's own (the summary's
16 points, the kernel's events and alarms, the carbon hook's intervals), so the cloud is tested on what it
will receive. `record()` runs the real controller against the simulated site with the real uplink hook
in spool-only mode (no broker: `make_uplink_hook(cfg, None, ...)`) and the ledger's intervals handed to
the spool exactly as `edge-ems sim --mqtt` does; then it reads the spool's rows back.

Trace file (`DIR/trace.jsonl.gz`): a header line, then one line per record in seq order:
    {"trace": 1, "site": ..., "gateway": ..., "scenario": ..., "seed": ..., "hours": ..., "start_s": T0,
     "genesis": {the ledger genesis body, minus the chain and key fields}}
    {"dt": seconds after T0, "kind": "telemetry"|"interval"|"alarm"|"event"|"cmd/result", "body": {...}}
    {"dt": ..., "kind": "interval", "ledger": {the signed interval payload minus v, n, prev, kind, gw, clock}}
A signed interval is kept as its ledger body, not its line: each fleet gateway signs it again with its own key
into its own chain (gateway.py). `uplink_boot` events are dropped (each gateway sends its own at start).
"""
from __future__ import annotations

import gzip
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

TRACE_FILE = "trace.jsonl.gz"
CHAIN_FIELDS = ("v", "n", "prev", "kind", "gw", "clock")
GENESIS_DROP = ("v", "n", "prev", "kind", "gw", "clock", "pubkey", "key_fingerprint", "format")


@dataclass
class Trace:
    site: str
    gateway: str
    start_s: float
    hours: float
    genesis: dict
    records: list = field(default_factory=list)     # (dt_s, kind, body | None, ledger body | None)
    meta: dict = field(default_factory=dict)

    @property
    def length_s(self) -> float:
        return self.hours * 3600.0

    def counts(self) -> dict:
        out: dict[str, int] = {}
        for _, kind, body, led in self.records:
            k = "interval(ledger)" if led is not None else kind
            out[k] = out.get(k, 0) + 1
        return out


def record(scenario: str, hours: float, out_dir, seed: int = 1, strategy: str = "rule") -> Path:
    """Run `edge-ems sim` with the uplink spooling to OUT/uplink (no broker) and write OUT/trace.jsonl.gz."""
    from controller.carbon.account import EnergyAccount
    from controller.carbon.ledger import read_payloads
    from controller.uplink import make_uplink_hook
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spool_dir = out / "uplink"
    if (spool_dir / "uplink-spool.sqlite").exists():
        raise FileExistsError(f"{spool_dir}: a spool from an earlier recording; use a fresh --out")
    from controller.warmup import compile_apart, warmup
    compile_apart()                   # as `edge-ems run`: a cold kernel cache compiles in a child process
    warmup()
    scn = load_scenario(scenario)
    account = EnergyAccount(scn.site)
    hook, up = make_uplink_hook(scn.site, None, spool_dir, clock_status="sim", account=account)
    try:
        result = run_sim(scn, hours=hours, seed=seed, strategy=strategy, out_dir=out, hooks=[hook],
                         ledger_on_record=lambda b: up.spool.put("interval", b["end_s"], b), account=account)
    finally:
        up.close()
    t0 = scn.start.timestamp()
    genesis = next(p for p in read_payloads(out / "ledger") if p.get("kind") == "genesis")
    lines = []
    db = sqlite3.connect(spool_dir / "uplink-spool.sqlite")
    try:
        rows = db.execute("SELECT kind, payload FROM records ORDER BY seq").fetchall()
    finally:
        db.close()
    for kind, payload in rows:
        rec = json.loads(payload)
        body = rec["body"]
        line = {"dt": round(rec["t_s"] - t0, 3), "kind": kind}
        if kind == "event" and body.get("event") == "uplink_boot":
            continue
        if kind == "interval" and body.get("ledger_line"):
            from controller.carbon.ledger import parse_line
            signed = parse_line(body["ledger_line"].encode())[0]
            line["ledger"] = {k: v for k, v in signed.items() if k not in CHAIN_FIELDS}
        else:
            line["body"] = body
        lines.append(json.dumps(line, separators=(",", ":")))
    head = {"trace": 1, "site": scn.site["site"]["name"], "gateway": scn.site["site"]["gateway_id"],
            "scenario": scn.name, "seed": seed, "strategy": strategy, "hours": hours, "start_s": t0,
            "genesis": {k: v for k, v in genesis.items() if k not in GENESIS_DROP},
            "kpis": {k: result.kpis.get(k) for k in ("co2_kg", "load_kwh", "it_kwh", "grid_import_kwh")}}
    tmp = out / (TRACE_FILE + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.write(json.dumps(head, separators=(",", ":")) + "\n")
        for s in lines:
            f.write(s + "\n")
    tmp.replace(out / TRACE_FILE)
    return out / TRACE_FILE


def load(path) -> Trace:
    """A trace file (or the directory holding one). ValueError naming the file and line when malformed."""
    p = Path(path)
    if p.is_dir():
        p = p / TRACE_FILE
    with gzip.open(p, "rt", encoding="utf-8") as f:
        head = json.loads(f.readline() or "null")
        if not isinstance(head, dict) or head.get("trace") != 1:
            raise ValueError(f"{p}: line 1: expected a trace header {{\"trace\": 1, ...}}")
        tr = Trace(head["site"], head["gateway"], float(head["start_s"]), float(head["hours"]), head["genesis"],
                   meta=head)
        for i, text in enumerate(f, start=2):
            try:
                d = json.loads(text)
                tr.records.append((float(d["dt"]), str(d["kind"]), d.get("body"), d.get("ledger")))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{p}: line {i}: expected {{\"dt\", \"kind\", \"body\"|\"ledger\"}} ({exc})") from None
    if tr.length_s % 900:
        raise ValueError(f"{p}: hours {tr.hours}: expected a whole number of 15-minute intervals")
    return tr
