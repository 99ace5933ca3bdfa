"""The cloud's PostgreSQL schema: cloud/schema.sql, versioned in table ``schema_version``.

``apply(conn)`` brings a database to SCHEMA_VERSION under an advisory lock (several ingest workers start
together; the statements are idempotent anyway). A database newer than this code is refused, not touched.
"""
from __future__ import annotations

from pathlib import Path

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("schema.sql")
_LOCK = 0x6564_6765_656d_73      # pg_advisory_xact_lock key: "edgeems"


class SchemaError(RuntimeError):
    pass


def current_version(conn) -> int:
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])


def apply(conn) -> int:
    """Create or upgrade the schema in one transaction; returns the version now in the database."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        have = current_version(conn)
        if have > SCHEMA_VERSION:
            raise SchemaError(f"database schema version {have} is newer than this edge-ems-cloud's "
                              f"{SCHEMA_VERSION}: upgrade edge-ems-cloud")
        if have < SCHEMA_VERSION:
            conn.execute(SCHEMA_FILE.read_text())
    return SCHEMA_VERSION
