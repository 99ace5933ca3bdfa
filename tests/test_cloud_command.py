"""Signed commands from the cloud to real `edge-ems sim --mqtt` gateways (issue 18): the counter and expiry the
gateway checks, limits refused by the cloud before sending (and audited), the verdict from cmd/result, a
command signed for one gateway refused by another, a replay refused; every command in the audit table.
The gateways run at 30x real time (their clock is the scenario's, not the system's: the tool is given it
with --issued-s). The registry's bad inputs exit 2 with a message naming what was wrong."""
import json
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from controller.carbon.keys import generate_key, write_public_key
from pg_env import REPO, Ingest, Postgres, wait_subscribed
from uplink_broker import Broker, wait_for

A, B = ("gansu-edge", "gs-qy-gw-07"), ("inner-mongolia-mine", "imm-gw-01")
SPEED = 30            # the gateways run 30x real time: their first telemetry batch (5 simulated min) in ~10 s


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmd")
    pg = Postgres().start()
    broker = Broker(d / "broker").start()
    rc, _, err = _cli(pg.dsn, "keygen", str(d / "cloud.key"))
    assert rc == 0, err
    ingest = Ingest(pg.dsn, broker.url, group="t-cmd", log=d / "ingest.log").start()
    procs = {}
    try:
        from cloud import registry, schema
        with psycopg.connect(pg.dsn, autocommit=True) as c:
            schema.apply(c)
            for site, gw in (A, B):
                out = d / gw
                (out / "data").mkdir(parents=True)
                write_public_key(generate_key(out / "gateway.key"), out / "registered.pub")
                (out / "data" / "cloud_pubkey.pem").write_bytes((d / "cloud.key.pub").read_bytes())
                registry.add(c, site, str(out / "registered.pub"))
        wait_subscribed(broker.port, "edge-ems/v1/probe/probe-gw/event")
        for site, gw in (A, B):
            out = d / gw
            procs[gw] = subprocess.Popen([sys.executable, "-m", "controller.cli", "sim", "--scenario", site, "--hours", "3",
                                          "--speed", str(SPEED), "--strategy", "rule", "--mqtt", broker.url + "?confirm=cloud",
                                          "--out", str(out), "--data-dir", str(out / "data")], cwd=REPO,
                                         stdout=open(out / "sim.log", "wb"), stderr=subprocess.STDOUT)
        conn = psycopg.connect(pg.dsn, autocommit=True)
        # the gateways' loops run (and their clocks can be read) once their first telemetry is stored
        wait_for(lambda: conn.execute("SELECT count(DISTINCT gateway_id) FROM telemetry").fetchone()[0] == 2, 300,
                 "telemetry of both gateways")
        yield {"dir": d, "pg": pg, "broker": broker, "conn": conn}
    finally:
        for p in procs.values():
            p.kill()
            p.wait(10)
        ingest.stop()
        broker.kill()
        pg.stop()


def clock(fleet, gw):
    """The simulated gateway's UTC now: its latest stored record's time + SPEED x the time since it arrived
    (`--clock gateway` does the same for a gateway at real time). A little behind: the command is issued
    in its recent past, well inside its ttl."""
    t, age = fleet["conn"].execute("SELECT extract(epoch FROM t)::float8, extract(epoch FROM now() - received_at)::float8 "
                                   "FROM telemetry WHERE gateway_id = %s ORDER BY t DESC LIMIT 1", (gw,)).fetchone()
    return t + SPEED * age


def command(fleet, gw, kind, args, **kw):
    argv = ["command", "--gateway", gw, "--type", kind, "--args", json.dumps(args), "--key", str(fleet["dir"] / "cloud.key"),
            "--mqtt", fleet["broker"].url, "--issued-s", str(kw.get("issued_s", clock(fleet, gw))), "--wait", "60",
            "--ttl", "3600"]
    rc, out, err = _cli(fleet["pg"].dsn, *argv)
    return rc, (json.loads(out.splitlines()[-1]) if out.strip() else None), err


def publish(fleet, site, gw, envelope: bytes):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t-attacker", protocol=MQTTProtocolVersion.MQTTv5)
    c.connect("127.0.0.1", fleet["broker"].port)
    c.loop_start()
    c.publish(f"edge-ems/v1/{site}/{gw}/cmd", envelope, qos=1).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def result_of(conn, gw, cmd_id):
    return conn.execute("SELECT verdict, reason FROM command_results WHERE gateway_id = %s AND command_id = %s",
                        (gw, cmd_id)).fetchone()


def test_accepted_refused_by_cloud_wrong_gateway_and_replay(fleet):
    conn = fleet["conn"]
    rc, out, err = command(fleet, A[1], "reserve_soc", {"reserve_pct": 40})
    assert rc == 0 and out["status"] == "accepted" and out["counter"] == 1, (out["reason"], err)
    first = out
    # out of the site profile's SOC window (gansu-edge: 10..95 %): refused here, never published
    rc, out, err = command(fleet, A[1], "reserve_soc", {"reserve_pct": 99})
    assert rc == 1 and out["status"] == "refused_by_cloud" and "out of limits" in out["reason"], (out, err)
    # a ttl the gateway would refuse
    rc, _, err = _cli(fleet["pg"].dsn, "command", "--gateway", A[1], "--type", "mode", "--args", '{"mode":"auto"}',
                      "--key", str(fleet["dir"] / "cloud.key"), "--mqtt", fleet["broker"].url, "--ttl", "90000")
    assert rc == 2 and "--ttl" in err
    # the envelope signed for A, delivered to B (a misrouted or replayed command): B refuses it
    envelope = conn.execute("SELECT envelope FROM commands WHERE id = %s", (first["id"],)).fetchone()[0]
    publish(fleet, *B, envelope.encode())
    v = wait_for(lambda: result_of(conn, B[1], first["id"]), 120, "B's verdict")
    assert v[0] == "refused" and v[1].startswith("wrong gateway: 'gs-qy-gw-07' is not 'imm-gw-01'"), v
    # the same envelope again to A: its counter is burnt
    publish(fleet, *A, envelope.encode())
    wait_for(lambda: conn.execute("SELECT count(*) FROM command_results WHERE gateway_id = %s AND command_id = %s",
                                  (A[1], first["id"])).fetchone()[0] == 2, 120, "A's second verdict")
    reasons = sorted(r for (r,) in conn.execute("SELECT reason FROM command_results WHERE gateway_id = %s AND "
                                                "command_id = %s", (A[1], first["id"])).fetchall())
    assert reasons == ["ok", "replayed: counter 1 <= last 1"]
    # the next command takes the next counter and is accepted
    rc, out, err = command(fleet, A[1], "mode", {"mode": "auto"})
    assert rc == 0 and out["counter"] == 3 and out["status"] == "accepted", (out, err)
    audit = conn.execute("SELECT counter, type, status, envelope IS NOT NULL FROM commands WHERE gateway_id = %s "
                         "ORDER BY counter", (A[1],)).fetchall()
    assert audit == [(1, "reserve_soc", "accepted", True), (2, "reserve_soc", "refused_by_cloud", False),
                     (3, "mode", "accepted", True)]
    # the gateway applied the accepted ones (its event log, through the ingest)
    wait_for(lambda: conn.execute("SELECT count(*) FROM events WHERE gateway_id = %s AND event = 'command_applied'",
                                  (A[1],)).fetchone()[0] >= 2, 60, "command_applied events")


def _cli(dsn, *argv):
    """edge-ems-cloud in this process (`python -m cloud.cli` runs as a subprocess in tests/test_cloud_ingest.py)."""
    import contextlib
    import io
    from cloud.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            rc = main(["--db", dsn, *argv])
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def test_registry_bad_inputs_exit_2_naming_the_problem(fleet):
    dsn, d = fleet["pg"].dsn, fleet["dir"]
    rc, _, err = _cli(dsn, "gateway", "add", "--profile", A[0], "--pubkey", str(d / A[1] / "registered.pub"))
    assert rc == 2 and "already registered" in err
    rc, _, err = _cli(dsn, "gateway", "add", "--profile", "no-such-site", "--pubkey", str(d / A[1] / "registered.pub"))
    assert rc == 2 and "site profile no-such-site" in err
    (d / "garbage.pub").write_text("not a key")
    rc, _, err = _cli(dsn, "gateway", "add", "--profile", "nordic-wind", "--pubkey", str(d / "garbage.pub"))
    assert rc == 2 and "garbage.pub" in err and "Ed25519" in err
    rc, _, err = _cli(dsn, "gateway", "add", "--profile", "nordic-wind", "--pubkey", str(d / A[1] / "registered.pub"))
    assert rc == 2 and "already registered for gateway 'gs-qy-gw-07'" in err
    rc, _, err = _cli(dsn, "gateway", "rotate-key", "--id", "nobody", "--pubkey", str(d / "cloud.key.pub"))
    assert rc == 2 and "not registered" in err
    rc, _, err = _cli(dsn, "command", "--gateway", "nobody", "--type", "mode", "--args", "{}", "--key",
                      str(d / "cloud.key"), "--mqtt", fleet["broker"].url)
    assert rc == 2 and "'nobody' is not registered" in err
    rc, _, err = _cli(dsn, "command", "--gateway", A[1], "--type", "mode", "--args", "{not json", "--key",
                      str(d / "cloud.key"), "--mqtt", fleet["broker"].url)
    assert rc == 2 and "--args: not JSON" in err
    rc, _, err = _cli("host=127.0.0.1 port=1 connect_timeout=2", "gateway", "list")
    assert rc == 3 and "database" in err
    rc, out, _ = _cli(dsn, "gateway", "list")
    assert rc == 0 and "gs-qy-gw-07" in out and "imm-gw-01" in out
