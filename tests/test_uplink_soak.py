"""End to end: `edge-ems sim --mqtt` killed with SIGKILL at random moments and restarted, the broker
killed and restarted; a week offline held under the quota and drained while live alarms go first."""
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from controller.uplink.client import BrokerConfig, MqttUplink
from controller.uplink.drain import DrainPolicy
from controller.uplink.proc import UplinkProcess
from controller.uplink.spool import DEFAULT_QUOTA, Spool
from controller.uplink.topics import ALARM, Topics
from tools.bench.uplink import offline_days
from uplink_broker import Broker, Subscriber, wait_for

SITE, GW = "gansu-edge", None


def _spool_state(data_dir):
    db = sqlite3.connect(os.path.join(data_dir, "uplink-spool.sqlite"))
    last = int(db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])
    pending = db.execute("SELECT count(*) FROM records").fetchone()[0]
    db.close()
    return last, pending


def _sim(url, data_dir, hours, out):
    return subprocess.Popen([sys.executable, "-m", "controller.cli", "sim", "--scenario", "gansu-edge",
                             "--hours", str(hours), "--seed", "3", "--mqtt", url, "--data-dir", str(data_dir)],
                            stdout=open(out, "w"), stderr=subprocess.STDOUT, cwd=os.path.dirname(os.path.dirname(__file__)))


def _sigkill_run(tmp_path, kills, hours, seed, broker_restart=True):
    rng = random.Random(seed)
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, ack=True)            # the cloud confirms what it stored (confirm=cloud)
    url = broker.url + "?confirm=cloud"
    data = tmp_path / "data"
    try:
        wait_for(sub.subscribed.is_set, 10, "subscriber")
        boots = []
        for k in range(kills):
            before = len(sub.seqs())
            # runs to be killed are long enough that they cannot finish before the random moment
            p = _sim(url, data, 24 * hours, tmp_path / f"run{k}.log")
            wait_for(lambda: len(sub.seqs()) > before + 5 or p.poll() is not None, 120, "records from this boot")
            time.sleep(rng.uniform(0.0, 1.5))            # a random moment, not a wait for a condition
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            boots.append(p.returncode)
            status = wait_for(lambda: [s for t, s in sub.retained.items() if t.endswith("/status")], 10, "status")
            wait_for(lambda: next(iter(sub.retained.values())).get("state") == "offline", 10, "last will offline")
        p = _sim(url, data, hours, tmp_path / "final.log")
        if broker_restart:                               # the broker dies for a stretch mid-run
            before = len(sub.seqs())
            wait_for(lambda: p.poll() is not None or len(sub.seqs()) > before + 10, 120, "final run publishing")
            broker.kill()
            time.sleep(2.0)                              # ~1 h of simulated time at full speed
            broker.start()
        assert p.wait(300) == 0, (tmp_path / "final.log").read_text()[-3000:]
        last, pending = _spool_state(data)
        assert pending == 0, "the final run drained its spool before exiting"
        wait_for(lambda: len(sub.seqs()) >= last, 20, "all seqs at the subscriber")
        got = sub.seqs()
        assert got == set(range(1, last + 1)), f"missing {sorted(set(range(1, last + 1)) - got)[:10]}"
        sub.assert_in_order()
        dups = len(sub.raw) - len(sub.first)
        boot_ids = {r["boot_id"] for r in sub.first.values()}
        print(f"sigkill soak: {kills} kills, {last} seqs, {dups} duplicates dropped, {len(boot_ids)} boots")
        assert len(boot_ids) >= 2 and all(rc == -signal.SIGKILL for rc in boots)
    finally:
        sub.close()
        broker.kill()


def test_sim_sigkilled_at_random_moments_and_broker_restarted_every_seq_once_in_order(tmp_path):
    _sigkill_run(tmp_path, kills=3, hours=2, seed=int(os.environ.get("UPLINK_SOAK_SEED", "6")))


@pytest.mark.slow
def test_sigkill_soak_long(tmp_path):
    _sigkill_run(tmp_path, kills=12, hours=24, seed=int(time.time()))


@pytest.mark.parametrize("rate", [512 * 1024])
@pytest.mark.parametrize("mode", ["process", "thread"])
def test_week_offline_under_quota_drains_with_live_alarms_first(tmp_path, rate, mode):
    """process: the MQTT side in the worker process at SCHED_IDLE (the default wiring); thread: in-process."""
    spool = Spool(tmp_path / "spool", SITE, "gw-week", quota_bytes=DEFAULT_QUOTA)
    offline_days(spool, 7)                       # records shaped like the real ones, values as random walks
    held = spool.stats()
    assert held["evicted"] == 0 and held["bytes"] < DEFAULT_QUOTA and not spool.alarm
    week_rows = held["pending_rows"]
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, ack=True)
    try:
        wait_for(sub.subscribed.is_set, 10, "subscriber")
        # confirm=cloud: "drained" means the cloud confirmed every record, not just the broker
        cls = UplinkProcess if mode == "process" else MqttUplink
        up = cls(spool, Topics(SITE, "gw-week"), BrokerConfig.from_url(broker.url + "?confirm=cloud"),
                 drain=DrainPolicy(rate_bytes_s=rate, burst_bytes=rate)).start()
        t0 = time.monotonic()
        wait_for(lambda: len(sub.seqs()) > week_rows // 10, 60, "drain under way")
        latencies = []
        for _ in range(3):                           # live alarms while the backlog drains
            n = len(sub.records(ALARM))
            t_put = time.monotonic()
            spool.put(ALARM, time.time(), {"alarm": "bms_lost", "state": "raised", "severity": "critical", "value": 0})
            wait_for(lambda: len(sub.records(ALARM)) > n, 5, "live alarm within seconds")
            latencies.append(time.monotonic() - t_put)
        wait_for(lambda: spool.pending_rows == 0, 120, "week drained")
        drain_s = time.monotonic() - t0
        up.stop()
        s = up.stats
        assert len(sub.seqs()) == spool.last_seq
        sub.assert_in_order()
        print(f"\nweek offline ({mode}): {week_rows} records, spool {held['bytes'] / 1e6:.2f} MB (quota "
              f"{DEFAULT_QUOTA / 1e6:.0f} MB); drained in {drain_s:.1f} s at a {rate / 1024:.0f} KiB/s cap: "
              f"{s.messages} messages ({s.batches} batches), raw {s.raw_bytes / 1e6:.2f} MB -> wire "
              f"{s.wire_bytes / 1e6:.2f} MB (zlib x{s.raw_bytes / max(1, s.payload_bytes):.1f}); "
              f"live alarm latency max {max(latencies) * 1000:.0f} ms")
        assert max(latencies) < 2.0
    finally:
        sub.close()
        broker.kill()
        spool.close()
