"""The uplink against a real Mosquitto on 127.0.0.1: TLS with client certificates and a password,
retained status and last will, at-least-once through broker restarts without persistence."""
import json
import threading
import time

import pytest

from controller.uplink.client import BrokerConfig, MqttUplink
from controller.uplink.spool import Spool
from controller.uplink.topics import ALARM, EVENT, INTERVAL, TELEMETRY, Topics
from uplink_broker import Broker, Subscriber, wait_for

SITE, GW = "inner-mongolia-mine", "imm-gw-01"


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.kill()


@pytest.fixture
def subscriber(broker):
    s = Subscriber(broker.port)
    wait_for(s.subscribed.is_set, 10, "subscriber connected")
    yield s
    s.close()


def start_uplink(tmp_path, url, **kw):
    spool = Spool(tmp_path / "spool", SITE, GW, clock_status="test")
    up = MqttUplink(spool, Topics(SITE, GW), BrokerConfig.from_url(url), backoff_base_s=0.05,
                    backoff_cap_s=0.5, **kw).start()
    return spool, up


def test_mutual_tls_with_password_live_records_and_retained_status(broker, subscriber, tmp_path):
    spool, up = start_uplink(tmp_path, broker.tls_url)
    try:
        wait_for(up.connected.is_set, 10, "TLS connect")
        assert up.stats.protocol == "5"
        for i in range(5):
            spool.put(TELEMETRY, 1.7e9 + 60 * i, {"i": i})
        spool.put(ALARM, 1.7e9, {"alarm": "grid_lost", "state": "raised"})
        wait_for(lambda: len(subscriber.seqs()) == 6, 10, "6 records")
        wait_for(lambda: spool.pending_rows == 0, 10, "acks deleted the rows")
        status = subscriber.retained[f"edge-ems/v1/{SITE}/{GW}/status"]
        assert status["state"] == "online" and status["boot_id"] == spool.boot_id
        rec = subscriber.records(ALARM)[0]
        assert {"gateway", "boot_id", "seq", "t", "clock", "body"} <= set(rec)
        assert rec["gateway"] == GW and rec["t"].endswith("Z")
    finally:
        up.stop()
        spool.close()
    # a clean stop publishes a retained "offline"
    wait_for(lambda: subscriber.retained.get(f"edge-ems/v1/{SITE}/{GW}/status", {}).get("state") == "offline",
             10, "retained offline")


def test_tls_refuses_a_client_without_certificate(broker, tmp_path):
    url = broker.tls_url.split("&cert=")[0]          # CA only, no client certificate
    spool, up = start_uplink(tmp_path, url)
    try:
        wait_for(lambda: up.stats.connect_failures >= 2, 10, "refused TLS handshakes")
        assert not up.connected.is_set()
    finally:
        up.stop()
        spool.close()


def test_wrong_password_is_refused(broker, tmp_path):
    url = broker.tls_url.replace(":s3cret-pass@", ":wrong@")
    spool, up = start_uplink(tmp_path, url)
    try:
        wait_for(lambda: up.stats.connect_failures >= 2, 10, "refused logins")
        assert not up.connected.is_set()
    finally:
        up.stop()
        spool.close()


def test_nothing_listening_means_not_delivered(broker, tmp_path):
    """MQTT v5 PUBACK 0x10 (no matching subscribers) keeps the record in the spool until the cloud listens."""
    spool, up = start_uplink(tmp_path, broker.url)
    try:
        wait_for(up.connected.is_set, 10, "connect")
        spool.put(EVENT, 1.7e9, {"event": "x"})
        wait_for(lambda: up.stats.nacks >= 1, 10, "a 0x10 PUBACK")
        assert spool.pending_rows >= 1
        sub = Subscriber(broker.port, client_id="late-cloud")
        try:
            wait_for(lambda: sub.seqs(), 10, "delivery once someone listens")
            wait_for(lambda: spool.pending_rows == 0, 10, "acked and deleted")
        finally:
            sub.close()
    finally:
        up.stop()
        spool.close()


def _feeder(spool, stop, counts, period_s=0.002):
    kinds = (TELEMETRY, TELEMETRY, TELEMETRY, EVENT, INTERVAL, TELEMETRY, ALARM)
    i = 0
    while not stop.is_set():
        kind = kinds[i % len(kinds)]
        spool.put(kind, 1.7e9 + i, {"i": i, "pad": "x" * 200})
        counts[kind] = counts.get(kind, 0) + 1
        i += 1
        time.sleep(period_s)


def test_cloud_confirm_keeps_rows_until_the_receipt_and_resends_without_one(broker, tmp_path):
    """confirm=cloud: a PUBACK alone deletes nothing; no receipt -> offered again after the timeout."""
    deaf = Subscriber(broker.port, client_id="cloud-no-receipts")
    wait_for(deaf.subscribed.is_set, 10, "subscriber")
    spool, up = start_uplink(tmp_path, broker.url + "?confirm=cloud", cloud_ack_timeout_s=0.5)
    try:
        wait_for(up.connected.is_set, 10, "connect")
        for i in range(20):
            spool.put(TELEMETRY, 1.7e9 + 60 * i, {"i": i})
        wait_for(lambda: len(deaf.seqs()) == 20, 10, "20 records delivered")
        wait_for(lambda: up.stats.resends >= 2, 10, "resends without a receipt")
        assert spool.pending_rows == 20 and len(deaf.raw) > 20      # kept, sent again
        deaf.close()
        cloud = Subscriber(broker.port, client_id="cloud-with-receipts", ack=True)
        try:
            wait_for(lambda: spool.pending_rows == 0, 15, "receipts delete the rows")
            assert cloud.seqs() >= set(range(1, 21)) and up.stats.cloud_acks >= 1
        finally:
            cloud.close()
    finally:
        up.stop()
        spool.close()


@pytest.mark.parametrize("restarts", [3])
def test_broker_killed_and_restarted_without_persistence_loses_nothing(broker, tmp_path, restarts):
    """SIGKILL of a broker without persistence: what it had PUBACKed but not yet written to the cloud is
    gone with it, so the gateway runs confirm=cloud and offers again everything without a receipt."""
    subscriber = Subscriber(broker.port, client_id="cloud-acking", ack=True)
    wait_for(subscriber.subscribed.is_set, 10, "subscriber connected")
    spool, up = start_uplink(tmp_path, broker.url + "?confirm=cloud")
    stop, counts = threading.Event(), {}
    feeder = threading.Thread(target=_feeder, args=(spool, stop, counts), daemon=True)
    feeder.start()
    try:
        for k in range(restarts):
            wait_for(lambda: len(subscriber.seqs()) > 200 * (k + 1), 20, "traffic before the kill")
            broker.kill()                                  # SIGKILL, no persistence: its state is gone
            wait_for(lambda: not up.connected.is_set(), 10, "uplink notices")
            n_before = spool.last_seq
            wait_for(lambda: spool.last_seq > n_before + 100, 10, "spooling while the broker is down")
            broker.start()
            wait_for(up.connected.is_set, 20, "reconnect with back-off")
        stop.set()
        feeder.join(5)
        spool.flush()
        last = spool.last_seq
        wait_for(lambda: spool.pending_rows == 0, 30, "backlog drained")
        wait_for(lambda: len(subscriber.seqs()) >= last, 10, "all at the subscriber")
        assert subscriber.seqs() == set(range(1, last + 1)), "every committed seq exactly once after de-dup"
        subscriber.assert_in_order()
        assert up.stats.connects >= restarts + 1 and up.stats.batches > 0
        print(f"\nbroker SIGKILLed {restarts}x: {last} seqs, all once after de-dup, "
              f"{len(subscriber.raw) - len(subscriber.first)} duplicates dropped")
    finally:
        stop.set()
        up.stop()
        spool.close()
        subscriber.close()


@pytest.mark.parametrize("url, says", [
    ("http://127.0.0.1:1883", "mqtt://HOST:PORT or mqtts://HOST:PORT"),
    ("mqtt://127.0.0.1:1883?keepalive=soon", "keepalive must be a whole number"),
    ("mqtt://127.0.0.1:1883?confirm=maybe", "confirm must be broker or cloud"),
    ("mqtt://127.0.0.1:1883?protocol=4", "protocol must be auto, 5 or 3.1.1"),
])
def test_a_bad_broker_url_is_refused_with_what_was_expected(url, says):
    with pytest.raises(ValueError, match=says):
        BrokerConfig.from_url(url)


def test_gateway_run_publishes_to_the_cloud(tmp_path, capsys):
    """`edge-ems run --mqtt` (the systemd entry point) syncs like `sim --mqtt`: status, 1-min telemetry and
    the ledger's signed 15-min intervals reach a subscriber, in order."""
    from controller.cli import main
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port)
    try:
        wait_for(sub.subscribed.is_set, 10, "subscriber")
        rc = main(["run", "--site", "inner-mongolia-mine", "--cycles", "1000", "--speed", "0", "--socket", "none",
                   "--out", str(tmp_path / "run"), "--mqtt", broker.url])
        assert rc == 0
        wait_for(lambda: len(sub.records("interval")) >= 1 and len(sub.records("telemetry")) >= 15, 30,
                 "telemetry and a ledger interval")
        assert any(r["body"].get("provisional") is False and "ledger_line" in r["body"]
                   for r in sub.records("interval"))
        assert all(r["gateway"] == "imm-gw-01" and r["clock"] == "sim" for r in sub.records("telemetry"))
        sub.assert_in_order()
    finally:
        sub.close()
        broker.kill()


def test_telemetry_is_held_and_sent_in_batches_alarms_are_not(broker, subscriber, tmp_path):
    """telemetry_batch_min: 1-min summaries wait until 5 are there (one zlib batch); an alarm never
    waits; a lone summary goes after telemetry_hold_max_s; a stop with a drain timeout sends the rest."""
    from controller.uplink.drain import DrainPolicy
    spool = Spool(tmp_path / "spool", SITE, GW, clock_status="test")
    up = MqttUplink(spool, Topics(SITE, GW), BrokerConfig.from_url(broker.url),
                    drain=DrainPolicy(telemetry_batch_min=5, telemetry_hold_max_s=1.5)).start()
    try:
        wait_for(up.connected.is_set, 10, "connect")
        for i in range(3):
            spool.put(TELEMETRY, 1.7e9 + 60 * i, {"i": i})
        spool.put(ALARM, 1.7e9, {"alarm": "grid_lost", "state": "raised"})
        wait_for(lambda: subscriber.records(ALARM), 5, "the alarm at once")
        time.sleep(0.3)
        assert subscriber.records(TELEMETRY) == [], "3 of 5 summaries: held"
        for i in range(3, 5):
            spool.put(TELEMETRY, 1.7e9 + 60 * i, {"i": i})
        wait_for(lambda: len(subscriber.records(TELEMETRY)) == 5, 5, "5 summaries")
        topics = {t for t, r in subscriber.raw if r["kind"] == TELEMETRY}
        assert topics == {f"edge-ems/v1/{SITE}/{GW}/telemetry/batch"}, topics
        t0 = time.monotonic()
        spool.put(TELEMETRY, 1.7e9 + 300, {"i": 5})
        wait_for(lambda: len(subscriber.records(TELEMETRY)) == 6, 5, "a lone summary after the hold limit")
        assert time.monotonic() - t0 >= 1.2
        spool.put(TELEMETRY, 1.7e9 + 360, {"i": 6})
        t0 = time.monotonic()
        assert up.stop(drain_timeout_s=5.0), "the stop's drain sends held telemetry"
        assert time.monotonic() - t0 < 1.2
        wait_for(lambda: len(subscriber.records(TELEMETRY)) == 7, 5, "the last summary")
        subscriber.assert_in_order()
    finally:
        up.stop()
        spool.close()
