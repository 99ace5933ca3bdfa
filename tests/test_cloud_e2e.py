"""End to end (issue 18): three `edge-ems sim --mqtt ...?confirm=cloud` gateways, a real Mosquitto, the
ingest (`edge-ems-cloud ingest --workers 2`) into a real PostgreSQL; the ingest, the broker and a gateway
SIGKILLed at random moments and started again. Afterwards every seq of every gateway is in the database
exactly once (1..the spool's last seq, nothing else) and every stored interval's signed line verifies against
the gateway's registered key; nothing was quarantined."""
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from controller.carbon.keys import generate_key, write_public_key
from controller.carbon.ledger import parse_line
from pg_env import REPO, Ingest, Postgres, wait_subscribed
from uplink_broker import Broker, wait_for

SITES = {"gansu-edge": "gs-qy-gw-07", "inner-mongolia-mine": "imm-gw-01", "nordic-wind": "se1-lla-gw-02"}


class Gateway:
    def __init__(self, root, site, url, hours, speed):
        self.site, self.gw, self.url, self.hours, self.speed = site, SITES[site], url, hours, speed
        self.out = root / site
        self.data = self.out / "data"
        self.data.mkdir(parents=True)
        key = generate_key(self.out / "gateway.key")        # sim signs its ledger with OUT/gateway.key
        write_public_key(key, self.out / "registered.pub")
        self.proc = None
        self.runs = 0

    def start(self):
        self.runs += 1
        log = open(self.out / f"run{self.runs}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "sim", "--scenario", self.site,
                                      "--hours", str(self.hours), "--seed", "3", "--strategy", "rule",
                                      "--speed", str(self.speed),
                                      "--mqtt", self.url, "--out", str(self.out), "--data-dir", str(self.data)],
                                     cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def last_seq(self):
        db = sqlite3.connect(self.data / "uplink-spool.sqlite")
        try:
            last = int(db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])
            pending = db.execute("SELECT count(*) FROM records").fetchone()[0]
        finally:
            db.close()
        return last, pending


def _stored(conn, gw):
    return conn.execute("SELECT count(*) FROM uplink_records WHERE gateway_id = %s", (gw,)).fetchone()[0]


def run_fleet(tmp_path, hours, kills, seed, speed=0.0):
    rng = random.Random(seed)
    pg = Postgres().start()
    broker = Broker(tmp_path / "broker").start()
    ingest = Ingest(pg.dsn, broker.url, workers=2, group="e2e", log=tmp_path / "ingest.log")
    gws = [Gateway(tmp_path, s, broker.url + "?confirm=cloud", hours, speed) for s in SITES]
    conn = psycopg.connect(pg.dsn, autocommit=True)
    t0 = time.monotonic()
    done = {"ingest": 0, "broker": 0, "gateway": 0}
    try:
        from cloud import registry, schema
        schema.apply(conn)
        for g in gws:                                        # (the CLI's `gateway add`: tests/test_cloud_ingest.py)
            registry.add(conn, g.site, str(g.out / "registered.pub"))
        ingest.start()
        wait_subscribed(broker.port, "edge-ems/v1/probe/probe-gw/event")
        for g in gws:
            g.start()
        # (a cold kernel cache compiles in every gateway first: minutes on a loaded machine)
        wait_for(lambda: all(_stored(conn, g.gw) >= 3 for g in gws), 420, "records of all three gateways")
        plan = [*(["ingest"] * kills), *(["broker"] * kills), *(["gateway"] * kills)]
        rng.shuffle(plan)
        for what in plan:
            time.sleep(rng.uniform(0.0, 1.0))                # a random moment, not a wait for a condition
            if what == "ingest":
                ingest.kill()
                time.sleep(rng.uniform(0.0, 0.5))
                ingest.start()
            elif what == "broker":
                broker.kill()
                time.sleep(rng.uniform(0.2, 1.0))
                broker.start()
            else:
                g = rng.choice([g for g in gws if g.proc.poll() is None] or gws)
                if g.proc.poll() is None:
                    g.proc.send_signal(signal.SIGKILL)
                    g.proc.wait(20)
                    assert g.proc.returncode == -signal.SIGKILL
                    g.start()
                else:
                    continue
            done[what] += 1
        for g in gws:
            rc = g.proc.wait(600)
            assert rc == 0, (g.out / f"run{g.runs}.log").read_text()[-3000:]
        t_gw = time.monotonic() - t0
        for g in gws:
            last, pending = g.last_seq()
            assert pending == 0, f"{g.gw}: the final run drained its spool (every record confirmed by the cloud)"
            g.last = last
        # the receipts came after the commits: everything is in the database already
        for g in gws:
            rows = conn.execute("SELECT seq, count(*) FROM uplink_records WHERE gateway_id = %s GROUP BY seq",
                                (g.gw,)).fetchall()
            seqs = {s for s, _ in rows}
            assert seqs == set(range(1, g.last + 1)), \
                f"{g.gw}: missing {sorted(set(range(1, g.last + 1)) - seqs)[:10]}, extra {sorted(seqs - set(range(1, g.last + 1)))[:10]}"
            assert all(n == 1 for _, n in rows), f"{g.gw}: seqs stored twice {[s for s, n in rows if n > 1][:10]}"
        assert conn.execute("SELECT count(*) FROM rejected WHERE gateway_id <> 'probe-gw'").fetchone()[0] == 0
        n_iv = 0
        for g in gws:
            pub = Ed25519PublicKey.from_public_bytes(bytes(conn.execute(
                "SELECT pubkey FROM gateway_keys WHERE gateway_id = %s", (g.gw,)).fetchone()[0]))
            lines = conn.execute("SELECT line, key_fingerprint FROM intervals WHERE gateway_id = %s", (g.gw,)).fetchall()
            assert lines, f"{g.gw}: no signed interval stored"
            for line, fp in lines:
                payload, head, sig = parse_line(line.encode())
                pub.verify(sig, head)                      # raises InvalidSignature
                assert payload["gw"] == g.gw
            n_iv += len(lines)
            # every signed line the gateway's last run wrote is in the database
            own = [ln for ln in (g.out / "ledger").read_bytes().splitlines() if b'"kind":"interval"' in ln]
            stored = {ln for ln, _ in lines}
            assert {ln.decode() for ln in own} <= stored
        counts = {g.gw: g.last for g in gws}
        ingest.stop()                                      # its workers print their counters as they stop
        ing = [json.loads(line)["stats"] for line in (tmp_path / "ingest.log").read_text().splitlines()
               if line.startswith('{"stats"')]
        ing = [{k: s[k] for k in ("worker", "messages", "records", "lag_ms_p50", "lag_ms_p99", "connects")} for s in ing]
        print(f"\ncloud e2e: {hours} h x 3 gateways in {t_gw:.1f} s; kills {done}; seqs {counts}; "
              f"{n_iv} signed intervals verified; gateway runs {[g.runs for g in gws]}; "
              f"the last ingest's workers (since its start): {ing}")
        assert done["ingest"] == kills and done["broker"] == kills and done["gateway"] >= 1
        return counts
    finally:
        for g in gws:
            if g.proc is not None and g.proc.poll() is None:
                g.proc.kill()
                g.proc.wait(10)
        conn.close()
        ingest.stop()
        broker.kill()
        pg.stop()


def test_three_gateways_ingest_broker_and_gateway_killed_every_seq_once_every_interval_verifies(tmp_path):
    """Bounded: 1 simulated hour at 400x (at least 9 s a run, so the kills find the gateways running)."""
    run_fleet(tmp_path, hours=1, kills=1, seed=int(os.environ.get("CLOUD_E2E_SEED", "18")), speed=400.0)


@pytest.mark.slow
def test_three_gateways_many_kills_long(tmp_path):
    run_fleet(tmp_path, hours=12, kills=4, seed=int(time.time()))
