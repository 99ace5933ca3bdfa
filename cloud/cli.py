"""``edge-ems-cloud``: the central cloud's command (issue 18; docs/cloud.md). Never on a gateway.

    edge-ems-cloud [--db DSN] init
    edge-ems-cloud [--db DSN] ingest --mqtt URL [--workers N] [--group G]
    edge-ems-cloud [--db DSN] gateway add --profile SITE.toml|NAME --pubkey ledger.pub [--id GW] [--site S]
    edge-ems-cloud [--db DSN] gateway rotate-key --id GW --pubkey NEW.pub [--at TIME]
    edge-ems-cloud [--db DSN] gateway list [--json]
    edge-ems-cloud keygen PATH            (the cloud's command key: PATH and PATH.pub, the gateway's cloud_pubkey.pem)
    edge-ems-cloud [--db DSN] command --gateway GW --type T --args JSON --key PATH --mqtt URL [--ttl S] [--wait S]
    edge-ems-cloud [--db DSN] report ...     (cloud/report.py: per site and fleet, docs/cloud-scale.md)

``--db`` defaults to $EDGE_EMS_CLOUD_DB (a libpq connection string or URI). Exit codes: 0 ok, 1 a command
refused or without a verdict, 2 bad input (arguments, profile, key, unknown gateway), 3 database unreachable.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DB = 0, 1, 2, 3


def _die(code: int, msg: str) -> int:
    print(f"edge-ems-cloud: {msg}", file=sys.stderr)
    return code


def _connect(args):
    import psycopg
    from cloud import schema
    if not args.db:
        raise SystemExit(_die(EXIT_BAD_INPUT, "no database: pass --db DSN or set EDGE_EMS_CLOUD_DB"))
    try:
        conn = psycopg.connect(args.db, connect_timeout=10)
        schema.apply(conn)
    except psycopg.OperationalError as exc:
        raise SystemExit(_die(EXIT_DB, f"database {args.db!r}: {str(exc).strip()[:300]}"))
    except schema.SchemaError as exc:
        raise SystemExit(_die(EXIT_DB, str(exc)))
    return conn


def _broker(url: str | None):
    from controller.uplink.client import BrokerConfig
    if not url:
        raise SystemExit(_die(EXIT_BAD_INPUT, "no broker: pass --mqtt URL or set EDGE_EMS_CLOUD_MQTT"))
    try:
        return BrokerConfig.from_url(url)
    except ValueError as exc:
        raise SystemExit(_die(EXIT_BAD_INPUT, f"--mqtt: {exc}"))


def cmd_init(args) -> int:
    conn = _connect(args)
    from cloud.schema import current_version
    print(f"schema version {current_version(conn)}")
    return EXIT_OK


def cmd_ingest(args) -> int:
    from cloud.ingest import run_parent, run_worker
    broker = _broker(args.mqtt)
    if not args.db:
        return _die(EXIT_BAD_INPUT, "no database: pass --db DSN or set EDGE_EMS_CLOUD_DB")
    if args.worker_index is not None:
        return run_worker(args.db, broker, args.group, args.worker_index, args.batch, args.stats_every)
    if args.workers < 1 or args.workers > 64:
        return _die(EXIT_BAD_INPUT, f"--workers {args.workers}: expected 1..64")
    _connect(args).close()                     # schema in place (and the database reachable) before the workers
    # the DSN and the broker URL (passwords) reach the workers in their environment, never in their argv
    env = {"EDGE_EMS_CLOUD_DB": args.db, "EDGE_EMS_CLOUD_MQTT": args.mqtt}
    base = ["ingest", "--group", args.group, "--batch", str(args.batch), "--stats-every", str(args.stats_every)]
    return run_parent(lambda i: [*base, "--worker-index", str(i)], args.workers, env)


def cmd_gateway(args) -> int:
    from cloud import registry
    conn = _connect(args)
    try:
        if args.action == "add":
            out = registry.add(conn, args.profile, args.pubkey, args.id, args.site, args.company, args.valid_from)
        elif args.action == "rotate-key":
            out = registry.rotate_key(conn, args.id, args.pubkey, args.at)
        else:
            rows = registry.listing(conn)
            print(registry.to_json(rows) if args.json else registry.format_listing(rows))
            return EXIT_OK
    except registry.RegistryError as exc:
        return _die(EXIT_BAD_INPUT, str(exc))
    print(json.dumps(out))
    return EXIT_OK


def cmd_keygen(args) -> int:
    from controller.carbon.keys import fingerprint, generate_key, write_public_key
    try:
        key = generate_key(args.path)
    except FileExistsError:
        return _die(EXIT_BAD_INPUT, f"{args.path} exists: a key is never overwritten")
    write_public_key(key, args.path + ".pub")
    print(json.dumps({"key": args.path, "public": args.path + ".pub", "fingerprint": fingerprint(key.public_key())}))
    return EXIT_OK


def cmd_command(args) -> int:
    from cloud import command
    from controller.carbon.keys import load_private_key
    try:
        cmd_args = json.loads(args.args)
    except ValueError as exc:
        return _die(EXIT_BAD_INPUT, f"--args: not JSON ({exc})")
    key_path = args.key or os.environ.get("EDGE_EMS_CLOUD_SIGNING_KEY")
    if not key_path:
        return _die(EXIT_BAD_INPUT, "no signing key: pass --key PATH or set EDGE_EMS_CLOUD_SIGNING_KEY")
    try:
        key = load_private_key(key_path)
    except (OSError, ValueError) as exc:
        return _die(EXIT_BAD_INPUT, f"--key {key_path}: {exc}")
    broker = _broker(args.mqtt)
    conn = _connect(args)
    try:
        issued = command.prepare(conn, key, args.gateway, args.type, cmd_args, args.ttl, args.clock,
                                 args.operator or os.environ.get("USER", "cli"), args.issued_s)
    except command.CommandError as exc:
        return _die(EXIT_BAD_INPUT, str(exc))
    if issued.status == "refused_by_cloud":
        print(command.describe(issued))
        return _die(EXIT_FAILED, f"not sent: the gateway would refuse it ({issued.reason})")
    site = conn.execute("SELECT site FROM gateways WHERE id = %s", (args.gateway,)).fetchone()[0]
    try:
        issued = command.publish_and_wait(conn, issued, site, broker, args.wait)
    except (OSError, command.CommandError) as exc:
        return _die(EXIT_FAILED, f"{issued.id} audited as published but not confirmed sent: {exc}")
    print(command.describe(issued))
    return EXIT_OK if issued.status == "accepted" else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-ems-cloud", description="edge-ems central cloud: ingest, registry, commands")
    ap.add_argument("--db", default=os.environ.get("EDGE_EMS_CLOUD_DB"), help="PostgreSQL DSN (default $EDGE_EMS_CLOUD_DB)")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="create or upgrade the schema")
    p.set_defaults(fn=cmd_init)
    p = sub.add_parser("ingest", help="the fleet's uplink into PostgreSQL (MQTT v5 shared subscription)")
    p.add_argument("--mqtt", default=os.environ.get("EDGE_EMS_CLOUD_MQTT"),
                   metavar="mqtt[s]://[user:pass@]HOST:PORT[?ca=&cert=&key=]", help="default $EDGE_EMS_CLOUD_MQTT")
    p.add_argument("--workers", type=int, default=1, help="worker processes in the shared subscription")
    p.add_argument("--group", default="edge-ems-ingest", help="shared subscription group (and client id prefix)")
    p.add_argument("--batch", type=int, default=200, help="messages per database transaction, at most")
    p.add_argument("--stats-every", type=float, default=0.0, help="print worker stats every S seconds (stderr)")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_ingest)
    p = sub.add_parser("gateway", help="the gateway registry")
    gsub = p.add_subparsers(dest="action", required=True)
    g = gsub.add_parser("add")
    g.add_argument("--profile", required=True, help="the gateway's site profile (file or profiles/sites name): limits")
    g.add_argument("--pubkey", required=True, help="the gateway's ledger public key (PEM ledger.pub, or raw base64/hex)")
    g.add_argument("--id", default=None, help="gateway id (default: the profile's site.gateway_id)")
    g.add_argument("--site", default=None, help="site (default: the profile's site.name)")
    g.add_argument("--company", default=None)
    g.add_argument("--valid-from", default=None, help="the key's validity start (ISO 8601; default: from the start)")
    g = gsub.add_parser("rotate-key")
    g.add_argument("--id", required=True)
    g.add_argument("--pubkey", required=True)
    g.add_argument("--at", default=None, help="ledger time the new key takes over (ISO 8601, default now)")
    g = gsub.add_parser("list")
    g.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_gateway)
    p = sub.add_parser("keygen", help="create the cloud's Ed25519 command key (PATH, PATH.pub)")
    p.add_argument("path")
    p.set_defaults(fn=cmd_keygen)
    p = sub.add_parser("command", help="sign, check, publish a command and show its verdict")
    p.add_argument("--gateway", required=True)
    p.add_argument("--type", required=True)
    p.add_argument("--args", default="{}", help="the command's args as JSON")
    p.add_argument("--key", default=None, help="the cloud's private key (default $EDGE_EMS_CLOUD_SIGNING_KEY)")
    p.add_argument("--mqtt", default=os.environ.get("EDGE_EMS_CLOUD_MQTT"), help="default $EDGE_EMS_CLOUD_MQTT")
    p.add_argument("--ttl", type=float, default=600.0, help="seconds until it expires (at most 86400)")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the verdict")
    p.add_argument("--clock", choices=("system", "gateway"), default="system",
                   help="issued_s from the system clock or the gateway's (estimated from its latest record)")
    p.add_argument("--issued-s", type=float, default=None,
                   help="issued_s as the gateway's UTC epoch (a simulated gateway whose clock is not the system's)")
    p.add_argument("--operator", default=None, help="who issues it (audit; default $USER)")
    p.set_defaults(fn=cmd_command)
    from cloud.report import add_report_parser      # `report`: H2's fleet report (cloud/report.py)
    add_report_parser(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
