"""A real PostgreSQL for the tests: initdb into a fresh directory, postgres on 127.0.0.1 at a free port,
stopped (and the directory removed) at the end.

Debian keeps the server binaries out of PATH, in /usr/lib/postgresql/<major>/bin: found by glob (the
highest major), else PATH (`initdb` there, e.g. another distribution). postgres refuses to run as root: when
the tests run as root (CI's `.ci/run` does), the cluster belongs to the `postgres` system user the Debian
package creates, in a directory of its own under the system temp dir (pytest's tmp_path is 0700 root), and
the server is started through `runuser`; as any other user it runs as that user. Authentication is `trust`
on 127.0.0.1 only (a throwaway cluster), superuser `postgres`.
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tools.netport import free_port

PG_USER = "postgres"
_TEMPLATE: Path | None = None         # this process's initdb'd cluster, copied for each Postgres()


def pg_bindir() -> Path:
    """The directory holding initdb and postgres (the highest major under /usr/lib/postgresql, else PATH)."""
    def major(p: str) -> int:
        m = re.search(r"/postgresql/(\d+)/bin", p)
        return int(m.group(1)) if m else -1
    found = sorted((p for p in glob.glob("/usr/lib/postgresql/*/bin") if os.path.isfile(os.path.join(p, "initdb"))),
                   key=major)
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb or initdb in PATH): "
                       "`make deps-debian` installs the Debian package postgresql")


class Postgres:
    """``with Postgres() as pg: psycopg.connect(pg.dsn)``; ``pg.kill()`` SIGKILLs the server, ``start()``."""

    def __init__(self, fsync: bool = True):
        self.bindir = pg_bindir()
        self.as_root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="edge-ems-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.port = free_port()
        self.fsync = fsync
        self.proc: subprocess.Popen | None = None
        if self.as_root:
            pw = pwd.getpwnam(PG_USER)          # KeyError: no postgres user - the Debian package makes it
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            os.chmod(self.base, 0o700)
        self._initdb()

    def _cmd(self, *argv: str) -> list[str]:
        return (["runuser", "-u", PG_USER, "--"] if self.as_root else []) + list(argv)

    def _initdb(self) -> None:
        """initdb once per test process (~1-4 s), then a copy of that cluster for every further instance."""
        global _TEMPLATE
        if _TEMPLATE is None or not (_TEMPLATE / "PG_VERSION").exists():
            tdir = Path(tempfile.mkdtemp(prefix="edge-ems-pg-template-"))
            if self.as_root:
                pw = pwd.getpwnam(PG_USER)
                os.chown(tdir, pw.pw_uid, pw.pw_gid)
            subprocess.run(self._cmd(str(self.bindir / "initdb"), "-D", str(tdir / "data"), "-U", PG_USER,
                                     "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
                           check=True, capture_output=True, timeout=120)
            _TEMPLATE = tdir / "data"
            atexit.register(shutil.rmtree, tdir, True)
        subprocess.run(self._cmd("cp", "-a", str(_TEMPLATE), str(self.data)), check=True, capture_output=True, timeout=60)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres connect_timeout=5"

    def start(self) -> "Postgres":
        opts = ["-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}", "-c", f"unix_socket_directories={self.base}",
                "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=200",
                "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning"]
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(self._cmd(str(self.bindir / "postgres"), "-D", str(self.data), *opts),
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            r = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                               capture_output=True)
            if r.returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready after 60 s: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)      # pg_isready's own wait returns at once while the port is closed

    def _server_pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends end when they notice), wait for it."""
        if self.proc is None:
            return
        pid = self._server_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), then remove the cluster's directory."""
        if self.proc is not None and self.proc.poll() is None:
            pid = self._server_pid()
            try:
                os.kill(pid if pid else self.proc.pid, signal.SIGINT)
                self.proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill()
        self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "Postgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the cloud side around it (tests/test_cloud_*.py) ---------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def cloud_cli(dsn: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`edge-ems-cloud --db DSN ARGV...` as a subprocess (the installed entry point's module)."""
    import sys
    return subprocess.run([sys.executable, "-m", "cloud.cli", "--db", dsn, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


class Ingest:
    """`edge-ems-cloud ingest --workers N` as a process group of its own (kill() = SIGKILL to the parent; its
    workers die with it by PR_SET_PDEATHSIG, as on a real host)."""

    def __init__(self, dsn: str, broker_url: str, workers: int = 1, group: str = "edge-ems-ingest", log: Path | None = None):
        self.argv = ["--db", dsn, "ingest", "--mqtt", broker_url, "--workers", str(workers), "--group", group]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Ingest":
        import sys
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "cloud.cli", *self.argv], cwd=REPO, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if self.log:
            out.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None


def wait_subscribed(port: int, topic: str, timeout: float = 60.0) -> None:
    """Until a QoS 1 publish to `topic` is no longer answered 0x10 'no matching subscribers' (MQTT v5): the
    ingest's shared subscription exists. The probe's payload is an empty status-like message the ingest
    quarantines, so the topic should be one of a throwaway gateway."""
    import threading
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    codes: list = []
    got = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{os.getpid()}-{time.monotonic_ns()}",
                    protocol=MQTTProtocolVersion.MQTTv5)

    def on_publish(client, userdata, mid, reason_code, properties):
        codes.append(reason_code.value)
        got.set()
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            got.clear()
            c.publish(topic, b"probe", qos=1)
            assert got.wait(10), "no PUBACK for the probe"
            if codes[-1] != 0x10:
                return
            assert time.monotonic() < deadline, f"nothing subscribed {topic} within {timeout} s"
            time.sleep(0.1)
    finally:
        c.loop_stop()
        c.disconnect()
