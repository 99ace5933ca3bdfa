"""The cloud's ingest against a real Mosquitto and a real PostgreSQL: records stored once under their key,
receipts after the commit, every signed ledger line verified against the registered key (tampered, re-keyed,
foreign lines quarantined and alarmed), rotate-key keeping old lines verifiable, bounded decoding."""
import base64
import json
import threading
import time
import zlib
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cloud.records import MAX_RAW_BYTES, MessageError, decode, parse_topic
from controller.carbon.hook import uplink_body
from controller.carbon.keys import generate_key, write_public_key
from controller.carbon.ledger import LedgerWriter, parse_line
from controller.uplink.drain import encode_batch
from pg_env import Ingest, Postgres, cloud_cli, wait_subscribed
from uplink_broker import Broker, wait_for

SITE, GW, BOOT = "gansu-edge", "gs-qy-gw-07", "b00t0000cafe0001"
T0 = 1_780_000_200.0 - (1_780_000_200.0 % 900)       # on the 15-minute grid


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("cloud")
    pg = Postgres().start()
    broker = Broker(d / "broker").start()
    key = generate_key(d / "gateway.key")
    write_public_key(key, d / "gateway.pub")
    r = cloud_cli(pg.dsn, "gateway", "add", "--profile", SITE, "--pubkey", str(d / "gateway.pub"))
    assert r.returncode == 0, r.stderr
    ingest = Ingest(pg.dsn, broker.url, workers=1, group="t-ingest", log=d / "ingest.log").start()
    wait_subscribed(broker.port, f"edge-ems/v1/{SITE}/probe-gw/event")
    pub = Publisher(broker.port)
    try:
        yield {"dir": d, "pg": pg, "broker": broker, "key": key, "ingest": ingest, "pub": pub}
    finally:
        pub.close()
        ingest.stop()
        broker.kill()
        pg.stop()


class Publisher:
    """A stand-in gateway: publishes records as controller/uplink does, collects the cloud's receipts."""

    def __init__(self, port: int):
        self.receipts: list = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t-gateway", protocol=MQTTProtocolVersion.MQTTv5)
        self.c.on_connect = lambda c, *a: (c.subscribe("edge-ems/v1/+/+/ack", qos=1), self.ready.set())
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(10)

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.receipts.extend(tuple(r) for r in json.loads(msg.payload)["acks"])

    def send(self, kind: str, records: list[dict], site=SITE, gw=GW, raw: bytes | None = None) -> None:
        base = f"edge-ems/v1/{site}/{gw}/{kind}"
        if raw is not None:
            payload, topic = raw, base
        elif len(records) == 1:
            payload, topic = json.dumps(records[0], separators=(",", ":")).encode(), base
        else:
            payload = encode_batch(kind, [(r["seq"], json.dumps(r, separators=(",", ":")).encode()) for r in records])
            topic = base + "/batch"
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def record(kind, seq, body, t_s=T0, gw=GW, site=SITE, boot=BOOT):
    t = datetime.fromtimestamp(t_s, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"v": 1, "site": site, "gateway": gw, "boot_id": boot, "seq": seq, "kind": kind, "t": t, "t_s": t_s,
            "clock": "sim", "body": body}


def iso(t_s):
    return datetime.fromtimestamp(t_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ledger(path, key, gw=GW):
    return LedgerWriter(path, key, {"gateway_id": gw, "site": SITE, "interval_s": 900}, lambda: "simulated")


def interval_body(t_start, k=0):
    """An interval record as controller/carbon/intervals.py settles it (the fields uplink_body and the
    ledger's type check read)."""
    return {"t_start": iso(t_start), "t_end": iso(t_start + 900), "covered_s": 900.0, "partial": False,
            "energy_kwh": {"sources": {"pv": 10.0 + k, "pv_direct": 8.0, "battery_discharge": 2.5, "grid": 3.25,
                                       "diesel": 0.0},
                           "sinks": {"it": 12.0, "cooling": 2.0, "aux": 0.75, "battery_charge": 1.0 + k, "export": 0.0,
                                     "curtailment": 0.0}},
            "co2_kg": {"scope1_diesel": 0.0, "scope2_location": 1.8, "scope2_market": 1.1, "loads_location": 1.8,
                       "loads_market": 1.1},
            "renewable_kwh": 10.0, "diesel_l": 0.0}


def signed(writer, t_start, k=0):
    payload = writer.append("interval", interval_body(t_start, k))
    return uplink_body(payload, writer.last_line)


def db(env):
    return psycopg.connect(env["pg"].dsn, autocommit=True)


def test_decoding_is_bounded_and_names_the_problem():
    t = parse_topic(f"edge-ems/v1/{SITE}/{GW}/telemetry/batch")
    assert (t.kind, t.batch) == ("telemetry", True)
    for bad in ("edge-ems/v1/a/b", "other/v1/a/b/telemetry", f"edge-ems/v1/{SITE}/{GW}/nonsense",
                f"edge-ems/v1/{SITE}/{GW}/status/batch"):
        with pytest.raises(MessageError):
            parse_topic(bad)
    bomb = zlib.compress(b"[" + b" " * (MAX_RAW_BYTES + 10) + b"]")
    with pytest.raises(MessageError, match="decompressed"):
        decode(t, bomb)
    with pytest.raises(MessageError, match="nested deeper"):
        decode(parse_topic(f"edge-ems/v1/{SITE}/{GW}/event"), b'{"a":' * 50 + b"1" + b"}" * 50)
    with pytest.raises(MessageError, match="not JSON"):
        decode(parse_topic(f"edge-ems/v1/{SITE}/{GW}/event"), b'{"seq": NaN}')
    recs = [record("telemetry", 5, {}), record("telemetry", 6, {})]
    raw = encode_batch("telemetry", [(r["seq"], json.dumps(r).encode()) for r in recs])
    hacked = json.loads(zlib.decompress(raw))
    hacked["count"] = 7
    with pytest.raises(MessageError, match="count"):
        decode(t, zlib.compress(json.dumps(hacked).encode()))
    # a record naming another gateway than its topic: bad, and never stored under the other gateway's key
    dec = decode(parse_topic(f"edge-ems/v1/{SITE}/{GW}/event"), json.dumps(record("event", 3, {}, gw="gw-x")).encode())
    assert not dec.good and dec.bad[0].key is None and "differ from the topic" in str(dec.bad[0])
    assert dec.receipt == ("event", 3, 3)


def test_records_stored_once_receipts_after_commit_lines_verified(env):
    d, pub = env["dir"], env["pub"]
    w = ledger(d / "ledger", env["key"])
    good = [signed(w, T0 + 900 * k, k) for k in range(4)]
    seq = iter(range(1, 10_000))
    # telemetry in a batch, an alarm and an event alone, good intervals alone and in a batch; then everything again
    tele = [record("telemetry", next(seq), {"start_s": T0 + 60 * i, "end_s": T0 + 60 * (i + 1), "points": {}})
            for i in range(5)]
    alarm = record("alarm", next(seq), {"alarm": "grid_lost", "state": "raised", "severity": "warning", "value": 3})
    event = record("event", next(seq), {"event": "genset_start", "code": 5, "value": 31.0})
    ivs = [record("interval", next(seq), b) for b in good]
    prov = record("interval", next(seq), {"start_s": T0, "end_s": T0 + 900, "co2_kg": 1.0, "provisional": True})
    # tampered: a number inside the signed line changed (signature kept)
    w2 = ledger(d / "ledger-b", env["key"])
    b = signed(w2, T0 + 9000)
    payload, head, sig = parse_line(b["ledger_line"].encode())
    line = b["ledger_line"].replace('"grid":3.25', '"grid":0.25')
    assert line != b["ledger_line"]
    tampered = record("interval", next(seq), {**b, "ledger_line": line})
    # the summary changed on the way, the line intact
    b2 = signed(w2, T0 + 9900)
    summary_changed = record("interval", next(seq), {**b2, "grid_import_kwh": 0.0})
    # signed by another key than the registered one
    other = ledger(d / "ledger-c", generate_key(d / "other.key"))
    foreign = record("interval", next(seq), signed(other, T0 + 10800))
    # written by another gateway's ledger
    w_other_gw = ledger(d / "ledger-d", env["key"], gw="someone-else")
    wrong_gw = record("interval", next(seq), signed(w_other_gw, T0 + 11700))
    bad_ones = [tampered, summary_changed, foreign, wrong_gw]
    for _ in range(2):                                           # the second round: all duplicates
        pub.send("telemetry", tele)
        pub.send("alarm", [alarm])
        pub.send("event", [event])
        pub.send("interval", ivs[:1])
        pub.send("interval", ivs[1:] + [prov])
        for r in bad_ones:
            pub.send("interval", [r])
    unknown = record("event", 1, {"event": "x"}, gw="not-registered")
    pub.send("event", [unknown], gw="not-registered")
    want = {("telemetry", tele[0]["seq"], tele[-1]["seq"]), ("alarm", alarm["seq"], alarm["seq"]),
            ("event", event["seq"], event["seq"]), ("interval", ivs[0]["seq"], ivs[0]["seq"]),
            ("interval", ivs[1]["seq"], prov["seq"]), *{("interval", r["seq"], r["seq"]) for r in bad_ones}}
    wait_for(lambda: want <= set(pub.receipts) and ("event", 1, 1) in pub.receipts, 60, "receipts for every message")
    with db(env) as c:
        # a receipt is sent only after the commit: every record it covers is in the database now
        rows = c.execute("SELECT stored_in, count(*) FROM uplink_records WHERE gateway_id = %s GROUP BY 1",
                         (GW,)).fetchall()
        assert dict(rows) == {"telemetry": 5, "alarms": 1, "events": 1, "intervals": 4, "provisional_intervals": 1,
                              "rejected": 4}
        dup = c.execute("SELECT count(*) FROM (SELECT gateway_id, boot_id, seq FROM uplink_records "
                        "GROUP BY 1, 2, 3 HAVING count(*) > 1) x").fetchone()[0]
        assert dup == 0
        reasons = dict(c.execute("SELECT seq, reason FROM rejected WHERE gateway_id = %s", (GW,)).fetchall())
        assert "signature does not verify" in reasons[tampered["seq"]]
        assert "summary differs from the signed ledger line in grid_import_kwh" in reasons[summary_changed["seq"]]
        assert "signature does not verify" in reasons[foreign["seq"]]
        assert "written by gateway 'someone-else'" in reasons[wrong_gw["seq"]]
        alarms = c.execute("SELECT alarm, value->>'seq' FROM alarms WHERE source = 'cloud' AND gateway_id = %s",
                           (GW,)).fetchall()
        assert sorted(alarms) == sorted(("ledger_line_rejected", str(r["seq"])) for r in bad_ones), \
            "one alarm per quarantined line, none for the duplicates"
        assert c.execute("SELECT alarm FROM alarms WHERE gateway_id = 'not-registered'").fetchall() == [("unknown_gateway",)]
        # what is stored verifies, with the signed figures
        pubkey = Ed25519PublicKey.from_public_bytes(bytes(c.execute(
            "SELECT pubkey FROM gateway_keys WHERE gateway_id = %s", (GW,)).fetchone()[0]))
        stored = c.execute("SELECT line, grid_import_kwh, pv_kwh, scope2_market_kg FROM intervals WHERE gateway_id = %s "
                           "ORDER BY t_start", (GW,)).fetchall()
        for (line, grid, pv, s2m), k in zip(stored, range(4)):
            p, head, sig = parse_line(line.encode())
            pubkey.verify(sig, head)
            assert (grid, pv, s2m) == (3.25, 10.0 + k, 1.1)
    log = (d / "ingest.log").read_text()
    assert log.count("rejected edge-ems/v1") >= 5 and "signature does not verify" in log


def test_rotate_key_keeps_old_lines_verifiable_and_retires_the_old_key(env):
    d, pub = env["dir"], env["pub"]
    t_rot = T0 + 86400
    new = generate_key(d / "gateway-2.key")
    write_public_key(new, d / "gateway-2.pub")
    r = cloud_cli(env["pg"].dsn, "gateway", "rotate-key", "--id", GW, "--pubkey", str(d / "gateway-2.pub"),
                  "--at", iso(t_rot))
    assert r.returncode == 0, r.stderr
    old_w, new_w = ledger(d / "l-old", env["key"]), ledger(d / "l-new", new)
    boot = "b00t0000cafe0002"
    before = record("interval", 1, signed(old_w, t_rot - 900), boot=boot)       # old key, before: verifies
    after_old = record("interval", 2, signed(old_w, t_rot), boot=boot)         # old key after rotation: refused
    after_new = record("interval", 3, signed(new_w, t_rot + 900), boot=boot)   # new key: verifies
    for r in (before, after_old, after_new):
        pub.send("interval", [r])
    wait_for(lambda: {("interval", s, s) for s in (1, 2, 3)} <= set(pub.receipts), 60, "receipts")
    with db(env) as c:
        got = dict(c.execute("SELECT seq, key_fingerprint FROM intervals WHERE boot_id = %s", (boot,)).fetchall())
        assert set(got) == {1, 3} and got[1] != got[3]
        reason = c.execute("SELECT reason FROM rejected WHERE boot_id = %s AND seq = 2", (boot,)).fetchone()[0]
        assert "signature does not verify with the registered key" in reason and "valid at" in reason
    listing = json.loads(cloud_cli(env["pg"].dsn, "gateway", "list", "--json").stdout)
    keys = next(g for g in listing if g["gateway"] == GW)["keys"]
    assert len(keys) == 2 and keys[0]["valid_to"] is not None and keys[1]["valid_to"] is None
    # a rotation at a time not after the current key's start is refused
    r = cloud_cli(env["pg"].dsn, "gateway", "rotate-key", "--id", GW, "--pubkey", str(d / "gateway.pub"), "--at", iso(T0))
    assert r.returncode == 2 and "already registered" in r.stderr


def test_ingest_killed_mid_stream_loses_and_doubles_nothing(env):
    """SIGKILL the ingest while batches flow, start it again: its persistent session hands over what it had not
    PUBACKed (the PUBACK follows the commit), the key drops what it had; every seq once."""
    pub, boot = env["pub"], "b00t0000cafe0003"
    n_msgs, per = 60, 20
    for m in range(n_msgs):
        pub.send("telemetry", [record("telemetry", m * per + i + 1, {"start_s": T0, "end_s": T0 + 60, "points": {}},
                                      boot=boot) for i in range(per)])
        if m == n_msgs // 3:
            env["ingest"].kill()
            env["ingest"].start()
    total = n_msgs * per
    with db(env) as c:
        wait_for(lambda: c.execute("SELECT count(*) FROM telemetry WHERE boot_id = %s", (boot,)).fetchone()[0] >= total,
                 90, "every record after the kill")
        n, lo, hi = c.execute("SELECT count(*), min(seq), max(seq) FROM telemetry WHERE boot_id = %s", (boot,)).fetchone()
        assert (n, lo, hi) == (total, 1, total)
    wait_for(lambda: {("telemetry", m * per + 1, m * per + per) for m in range(n_msgs)} <= set(pub.receipts), 60,
             "a receipt for every message")


def test_a_dead_worker_process_is_logged_and_started_again(env):
    """The --workers parent starts a worker that ended (here: SIGKILL) again and says so; records keep coming."""
    import os
    import signal as sig
    parent = env["ingest"].proc.pid
    children = [int(p) for p in open(f"/proc/{parent}/task/{parent}/children").read().split()]
    assert len(children) == 1
    os.kill(children[0], sig.SIGKILL)
    log = env["dir"] / "ingest.log"
    wait_for(lambda: f"(pid {children[0]}) ended with -9" in log.read_text(), 30, "the parent noticing")
    boot = "b00t0000cafe0004"
    env["pub"].send("event", [record("event", 1, {"event": "after_restart"}, boot=boot)])
    with db(env) as c:
        wait_for(lambda: c.execute("SELECT count(*) FROM events WHERE boot_id = %s", (boot,)).fetchone()[0] == 1, 60,
                 "the restarted worker storing")
    assert "starting it again" in log.read_text()
