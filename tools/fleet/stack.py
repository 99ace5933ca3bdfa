"""The cloud side for the fleet's tests and bench: a real PostgreSQL, a real Mosquitto, the real ingest.

    with CloudStack(tmp, workers=2) as cs:        # postgres (tests/pg_env.py), mosquitto (tests/uplink_broker.py),
        register(cs.conn, fleet_dir)              # `edge-ems-cloud ingest --workers 2` (cloud/ingest.py)
        ... publish ...
        cs.wait_records(n, timeout=60)            # bounded wait on the database, not a sleep

The peers are the test suite's own (as tools/bench/uplink.py uses them): nothing here is a mock.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))


class CloudStack:
    def __init__(self, workdir, workers: int = 1, *, batch: int = 200, pg_fsync: bool = True, ingest: bool = True):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.workers, self.batch, self.pg_fsync, self.want_ingest = workers, batch, pg_fsync, ingest
        self.pg = self.broker = self.ingest = self.conn = None

    def __enter__(self) -> "CloudStack":
        import psycopg
        from pg_env import Postgres
        from uplink_broker import Broker
        from cloud import schema
        try:
            self.pg = Postgres(fsync=self.pg_fsync).start()
            self.broker = Broker(self.dir / "broker").start()
            self.conn = psycopg.connect(self.pg.dsn, autocommit=True)
            schema.apply(self.conn)
            if self.want_ingest:
                self.start_ingest()
                self.wait_subscribed()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def dsn(self) -> str:
        return self.pg.dsn

    @property
    def mqtt_port(self) -> int:
        return self.broker.port

    def start_ingest(self, workers: int | None = None) -> subprocess.Popen:
        n = self.workers = workers or self.workers
        if (self.dir / "ingest.log").exists():
            (self.dir / "ingest.log").rename(self.dir / f"ingest-{time.time():.0f}.log")
        log = open(self.dir / "ingest.log", "ab")
        self.ingest = subprocess.Popen([sys.executable, "-m", "cloud.cli", "--db", self.pg.dsn, "ingest", "--mqtt",
                                        self.broker.url, "--workers", str(n), "--batch", str(self.batch)],
                                       cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self.ingest

    def wait_subscribed(self, timeout: float = 60.0) -> None:
        """Until every ingest worker said it connected and subscribed (cloud/ingest.py logs it). A message
        published before that gets PUBACK 0x10 and is offered again by its gateway (client.py; the fleet
        too), so this only saves the retry."""
        deadline = time.monotonic() + timeout
        log = self.dir / "ingest.log"
        while True:
            text = log.read_text(errors="replace") if log.exists() else ""
            if sum(f"worker {i}: connected" in text for i in range(self.workers)) >= self.workers:
                return
            if self.ingest is not None and self.ingest.poll() is not None:
                raise AssertionError(f"ingest exited {self.ingest.returncode}: {text[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"ingest workers not subscribed after {timeout} s: {text[-2000:]}")
            time.sleep(0.05)

    def ingest_pids(self) -> list[int]:
        """The ingest parent and its worker processes (for CPU accounting)."""
        if self.ingest is None:
            return []
        out = [self.ingest.pid]
        try:
            out += [int(x) for x in Path(f"/proc/{self.ingest.pid}/task/{self.ingest.pid}/children").read_text().split()]
        except OSError:
            pass
        return out

    def stop_ingest(self) -> None:
        p, self.ingest = self.ingest, None
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)

    def count(self, table: str = "uplink_records") -> int:
        return self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def wait_records(self, n: int, timeout: float, table: str = "uplink_records") -> int:
        """Wait (bounded) until `table` holds at least n rows; returns the count. AssertionError on timeout,
        with the ingest's log tail."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.count(table)
            if c >= n:
                return c
            if time.monotonic() > deadline:
                tail = (self.dir / "ingest.log").read_text()[-2000:] if (self.dir / "ingest.log").exists() else ""
                raise AssertionError(f"{table}: {c} of {n} rows after {timeout} s; ingest log:\n{tail}")
            if self.ingest is not None and self.ingest.poll() is not None:
                raise AssertionError(f"ingest exited {self.ingest.returncode}: "
                                     f"{(self.dir / 'ingest.log').read_text()[-2000:]}")
            time.sleep(0.1)      # polling the database: the condition itself is what is waited on

    def __exit__(self, *exc) -> None:
        try:
            self.stop_ingest()
        finally:
            if self.conn is not None:
                self.conn.close()
            if self.broker is not None:
                self.broker.kill()
            if self.pg is not None:
                self.pg.stop()
