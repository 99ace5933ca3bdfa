"""The gateway registry: ids, sites, the site profile's command limits, ledger keys with validity windows.

- ``add``: a gateway with its site profile (limits for commands, controller/uplink/commands.py ``Limits``) and
  its first ledger public key (the PEM ``ledger.pub`` the gateway writes next to its ledger), valid from
  ``valid_from`` (default: from the start - the ledger may hold lines older than the registration).
- ``rotate_key``: the current key's window closes at ``at`` and the new key's opens there, in one
  transaction: lines dated before ``at`` verify with the old key, lines after it only with the new one.
- ``listing``: gateways with their keys and status.
Windows never overlap (checked here under a row lock), so a line time picks exactly one key.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from psycopg.types.json import Jsonb

from controller.carbon.keys import fingerprint, load_public_key, raw_public


class RegistryError(ValueError):
    pass


def load_limits(profile: str) -> tuple[dict, str, str, str]:
    """(limits, site name, gateway id, profile path) of a site profile (a path or a profiles/sites name)."""
    from controller.config import load_site
    from controller.schema import ProfileError
    from controller.uplink.commands import Limits
    try:
        cfg = load_site(profile)
    except (ProfileError, OSError, ValueError) as exc:
        raise RegistryError(f"site profile {profile}: {exc}") from None
    return asdict(Limits.from_site(cfg)), cfg["site"]["name"], cfg["site"]["gateway_id"], str(cfg.path)


def _key(path: str):
    try:
        pub = load_public_key(path)
    except (OSError, ValueError) as exc:
        raise RegistryError(f"public key {path}: {exc}") from None
    return pub


def _utc(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RegistryError(f"time {text!r}: expected ISO 8601, e.g. 2026-06-14T16:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def add(conn, profile: str, pubkey_path: str, gateway: str | None = None, site: str | None = None,
        company: str | None = None, valid_from: str | None = None) -> dict:
    limits, p_site, p_gw, path = load_limits(profile)
    gateway, site = gateway or p_gw, site or p_site
    pub = _key(pubkey_path)
    fp = fingerprint(pub)
    with conn.transaction():
        if conn.execute("SELECT 1 FROM gateways WHERE id = %s", (gateway,)).fetchone():
            raise RegistryError(f"gateway {gateway!r} is already registered (rotate-key changes its key)")
        other = conn.execute("SELECT gateway_id FROM gateway_keys WHERE fingerprint = %s", (fp,)).fetchone()
        if other:
            raise RegistryError(f"key {fp} is already registered for gateway {other[0]!r}: each gateway has its own")
        conn.execute("INSERT INTO gateways (id, site, company, limits, profile) VALUES (%s, %s, %s, %s, %s)",
                     (gateway, site, company, Jsonb(limits), path))
        conn.execute("INSERT INTO gateway_keys (gateway_id, fingerprint, pubkey, valid_from) "
                     "VALUES (%s, %s, %s, coalesce(%s, '-infinity'::timestamptz))",
                     (gateway, fp, raw_public(pub), _utc(valid_from)))
    return {"gateway": gateway, "site": site, "fingerprint": fp, "limits": limits, "profile": path}


def rotate_key(conn, gateway: str, pubkey_path: str, at: str | None = None) -> dict:
    pub = _key(pubkey_path)
    fp = fingerprint(pub)
    at_t = _utc(at) or datetime.now(timezone.utc)
    with conn.transaction():
        if not conn.execute("SELECT 1 FROM gateways WHERE id = %s FOR UPDATE", (gateway,)).fetchone():
            raise RegistryError(f"gateway {gateway!r} is not registered")
        if conn.execute("SELECT 1 FROM gateway_keys WHERE fingerprint = %s", (fp,)).fetchone():
            raise RegistryError(f"key {fp} is already registered")
        cur = conn.execute("SELECT fingerprint FROM gateway_keys WHERE gateway_id = %s AND valid_to IS NULL",
                           (gateway,)).fetchone()
        late = conn.execute("SELECT fingerprint FROM gateway_keys WHERE gateway_id = %s AND "
                            "(valid_from >= %s OR valid_to > %s)", (gateway, at_t, at_t)).fetchone()
        if late:
            raise RegistryError(f"gateway {gateway!r} has a key valid from {at_t.isoformat()} or later: rotate at a "
                                "later time")
        if cur:
            conn.execute("UPDATE gateway_keys SET valid_to = %s WHERE gateway_id = %s AND fingerprint = %s",
                         (at_t, gateway, cur[0]))
        conn.execute("INSERT INTO gateway_keys (gateway_id, fingerprint, pubkey, valid_from) VALUES (%s, %s, %s, %s)",
                     (gateway, fp, raw_public(pub), at_t))
    return {"gateway": gateway, "retired": cur[0] if cur else None, "fingerprint": fp, "at": at_t.isoformat()}


def listing(conn) -> list[dict]:
    out = []
    for gw, site, company, limits, counter, added in conn.execute(
            "SELECT id, site, company, limits, cmd_counter, added_at FROM gateways ORDER BY id").fetchall():
        keys = [{"fingerprint": fp, "valid_from": None if vf == "-infinity" else vf, "valid_to": vt}
                for fp, vf, vt in conn.execute(
                    "SELECT fingerprint, valid_from::text, valid_to::text FROM gateway_keys WHERE gateway_id = %s "
                    "ORDER BY valid_from", (gw,)).fetchall()]
        st = conn.execute("SELECT state, boot_id, received_at::text FROM gateway_status WHERE gateway_id = %s",
                          (gw,)).fetchone()
        out.append({"gateway": gw, "site": site, "company": company, "limits": limits, "cmd_counter": counter,
                    "added_at": added.isoformat(), "keys": keys,
                    "status": dict(zip(("state", "boot_id", "received_at"), st)) if st else None})
    return out


def format_listing(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        st = r["status"]["state"] if r["status"] else "-"
        lines.append(f"{r['gateway']:<20} site {r['site']:<22} {st:<8} counter {r['cmd_counter']}")
        for k in r["keys"]:
            lines.append(f"    key {k['fingerprint'][:23]}...  from {k['valid_from'] or 'the start'}  "
                         f"to {k['valid_to'] or 'open'}")
    return "\n".join(lines) if lines else "no gateways registered"


def to_json(rows) -> str:
    return json.dumps(rows, indent=2, default=str)

