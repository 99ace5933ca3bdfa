"""A fleet on disk: its gateways' identities (ids, sites, keys, phases) and how to run them.

`init_fleet(DIR, traces, n)` creates `DIR/gateways.json` (the manifest the cloud's registry is loaded from:
gateway, site, trace, phase, public key and fingerprint) and one directory per gateway holding its key
(`gateway.key`, 0600, controller/carbon/keys.py) and, once it runs, its ledger (`ledger`, the real writer:
`edge-ems ledger verify DIR/gw/ID/ledger --pubkey DIR/gw/ID/ledger.pub` checks it). `register(conn, DIR)`
enters every gateway in the cloud's registry (cloud/registry.py `add`: the trace's site profile for the limits,
the gateway's own site name and key). `run_fleet` runs a slice of them on one
FleetLoop; `run_procs` splits the fleet over several processes and merges their figures.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from controller.carbon.keys import fingerprint, generate_key, load_private_key, public_b64, write_public_key
from tools.fleet import trace as trace_mod
from tools.fleet.gateway import SimGateway, phase_of

MANIFEST = "gateways.json"


def init_fleet(fleet_dir, traces: list[str], n: int, *, offsets: bool = True, shared_sites: bool = False,
               prefix: str = "fl") -> list[dict]:
    """N gateways over the traces (round robin), each with its own key; refuses an existing fleet."""
    d = Path(fleet_dir)
    if (d / MANIFEST).exists():
        raise FileExistsError(f"{d / MANIFEST}: a fleet is already there (use a fresh directory)")
    if n < 1:
        raise ValueError(f"--gateways {n}: expected at least 1")
    loaded = [trace_mod.load(t) for t in traces]
    rows = []
    for i in range(n):
        j = i % len(loaded)
        tr = loaded[j]
        site = tr.site if shared_sites else f"{tr.site}-{i:05d}"
        gw = f"{prefix}{i:05d}-{tr.gateway}"
        key = generate_key(d / "gw" / gw / "gateway.key")
        write_public_key(key, d / "gw" / gw / "ledger.pub")
        rows.append({"gateway": gw, "site": site, "trace": str(Path(traces[j]).resolve()), "trace_site": tr.site,
                     "phase_s": phase_of(i // len(loaded), tr.length_s) if offsets else 0.0,
                     "pubkey": public_b64(key.public_key()), "fingerprint": fingerprint(key.public_key())})
    tmp = d / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"fleet": 1, "gateways": rows}, indent=1))
    os.replace(tmp, d / MANIFEST)
    return rows


def register(conn, fleet_dir) -> int:
    """Every gateway of the fleet into the cloud's registry (one `registry.add` each)."""
    import functools
    from cloud import registry
    rows = load_manifest(fleet_dir)
    uncached = registry.load_limits
    # a thousand gateways share three site profiles: parse each once (~40 ms a parse), not once per add
    registry.load_limits = functools.lru_cache(maxsize=None)(uncached)
    try:
        for r in rows:
            registry.add(conn, r["trace_site"], str(Path(fleet_dir) / "gw" / r["gateway"] / "ledger.pub"),
                         gateway=r["gateway"], site=r["site"])
    finally:
        registry.load_limits = uncached
    return len(rows)


def load_manifest(fleet_dir) -> list[dict]:
    p = Path(fleet_dir) / MANIFEST
    try:
        m = json.loads(p.read_text())
        rows = m["gateways"]
        for r in rows:
            for k in ("gateway", "site", "trace", "phase_s", "pubkey"):
                r[k]
    except FileNotFoundError:
        raise ValueError(f"{p}: no fleet here (run `python -m tools.fleet init` first)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{p}: expected {{\"fleet\": 1, \"gateways\": [{{gateway, site, trace, phase_s, pubkey}}]}} "
                         f"({type(exc).__name__}: {exc})") from None
    return rows


def build_gateways(fleet_dir, rows: list[dict], start_s: float | None = None) -> list[SimGateway]:
    d = Path(fleet_dir)
    traces: dict[str, object] = {}
    out = []
    for r in rows:
        tr = traces.get(r["trace"]) or traces.setdefault(r["trace"], trace_mod.load(r["trace"]))
        gdir = d / "gw" / r["gateway"]
        if (gdir / "ledger").exists():
            raise FileExistsError(f"{gdir / 'ledger'}: this fleet already ran (a gateway's ledger and seq would "
                                  "restart); init a fresh one")
        out.append(SimGateway(tr, r["gateway"], r["site"], load_private_key(gdir / "gateway.key"), gdir,
                              phase_s=float(r["phase_s"]), start_s=start_s, tele_first=1 + len(out) % 5))
    return out


def run_fleet(fleet_dir, host: str, port: int, *, speed: float, wall_s: float | None, virtual_s: float | None,
              start_s: float | None = None, part: tuple[int, int] = (0, 1), drain_s: float = 30.0,
              keep_lags: bool = False) -> dict:
    from tools.fleet.loop import FleetLoop
    rows = load_manifest(fleet_dir)
    i, k = part
    rows = rows[i::k]
    gws = build_gateways(fleet_dir, rows, start_s)
    v0 = start_s if start_s is not None else min(g.trace.start_s for g in gws)
    loop = FleetLoop(gws, host, port, speed=speed, v0=v0)
    connected = loop.connect_all()
    try:
        st = loop.run(wall_s=wall_s, virtual_s=virtual_s, drain_s=drain_s)
    finally:
        loop.close()
    st["connected_at_start"] = connected
    if keep_lags:
        st["lags"] = [round(x, 5) for g in gws for x in g.lags]
    return st


def run_procs(fleet_dir, host: str, port: int, procs: int, *, speed: float, wall_s, virtual_s, start_s=None,
              drain_s: float = 30.0) -> dict:
    """The fleet split over `procs` processes (`python -m tools.fleet run --part i/k`), figures merged."""
    d = Path(fleet_dir)
    children = []
    for i in range(procs):
        out = d / f"stats-part{i}.json"
        cmd = [sys.executable, "-m", "tools.fleet", "run", str(d), "--broker", f"mqtt://{host}:{port}",
               "--speed", str(speed), "--part", f"{i}/{procs}", "--stats", str(out), "--keep-lags",
               "--drain-s", str(drain_s)]
        if wall_s is not None:
            cmd += ["--wall-s", str(wall_s)]
        if virtual_s is not None:
            cmd += ["--virtual-h", str(virtual_s / 3600.0)]
        if start_s is not None:
            cmd += ["--start-s", str(start_s)]
        children.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL), out))
    parts = []
    for p, out in children:
        rc = p.wait()
        if rc != 0:
            raise RuntimeError(f"fleet part {out.name}: exit {rc}")
        parts.append(json.loads(out.read_text()))
    return merge(parts)


def merge(parts: list[dict]) -> dict:
    lags = sorted(x for p in parts for x in p.get("lags", []))

    def q(p):
        return round(lags[min(len(lags) - 1, int(p * len(lags)))], 4) if lags else None
    out = {k: sum(p[k] for p in parts) for k in ("gateways", "connected", "records", "ledger_lines", "messages",
                                                  "batches", "resends", "nacks", "payload_bytes", "confirmed", "unconfirmed",
                                                  "disconnects", "connect_failures", "publish_errors", "cpu_s",
                                                  "confirmed_at_stop", "sent_at_stop")}
    out["wall_s"] = max(p["wall_s"] for p in parts)
    out["virtual_s"] = min(p["virtual_s"] for p in parts)
    out["speed"] = parts[0]["speed"]
    out["started_utc"] = min(p["started_utc"] for p in parts)
    out["records_per_s"] = round(out["records"] / out["wall_s"], 2) if out["wall_s"] else None
    out["lag_s"] = {"n": len(lags), "p50": q(0.5), "p99": q(0.99), "max": lags[-1] if lags else None}
    out["processes"] = len(parts)
    return out
