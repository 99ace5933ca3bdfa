"""Uplink benchmarks against a real Mosquitto on 127.0.0.1 (started here, stopped at the end).

    python -m tools.bench.uplink p99  [--days 14] [--hours 0.25] [--rounds 4] [--speed 100] [--rate 0]
    python -m tools.bench.uplink day  [--hours 24] [--speed 1000]
    python -m tools.bench.uplink week [--rate KIB_S]

``p99``: the scan cycle's p99 while the spool drains a backlog at full speed (no rate limit) against the
same run with an empty spool (the uplink connected and publishing live in both). Cycle time = wall time
of ``ScanLoop.cycle`` (acquire, step, actuate, record, every hook, the uplink's included), only cycles
that ran while rows were still pending count for the drain run. The simulated site runs at ``--speed``
(default 100x: a 10 ms period, so the loop idles between cycles as the 1 s gateway loop does); the
broker and the confirming cloud consumer run in their own processes. Runs alternate (baseline, drain,
baseline, drain...) so load drifts hit both. Prints both p99s (median over rounds) and the ratio.

``day``: a simulated day (``gansu-edge``, seed 1, default settings, 1000x) published over mutual TLS through a
byte-counting TCP relay: bytes each way on the TCP connection (TLS records, MQTT framing, payloads;
TCP/IP headers not included), per record kind, plus the keepalive pings of a real-time day, which a
fast simulated day cannot show (86400 / keepalive PINGREQ+PINGRESP pairs, each in its own TLS record).

``week``: a week offline (records shaped like the real ones, values as random walks so zlib sees
realistic entropy) held in the spool under the default quota, then drained at the default rate limit
to a confirming cloud consumer; prints spool size, drain time, messages, raw and wire bytes.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))          # the test peers: Broker (certificates), Subscriber

from uplink_broker import Broker, Subscriber, wait_for  # noqa: E402

from tools.bench.common import percentile  # noqa: E402

from controller.uplink.client import BrokerConfig, MqttUplink  # noqa: E402
from controller.uplink.drain import DrainPolicy  # noqa: E402
from controller.uplink.spool import DEFAULT_QUOTA, Spool  # noqa: E402
from controller.uplink.summary import KEY_POINTS  # noqa: E402
from controller.uplink.topics import ALARM, EVENT, INTERVAL, TELEMETRY, Topics  # noqa: E402

SCENARIO = "gansu-edge"
# TLS 1.3 record overhead (5 header + 1 content type + 16 AEAD tag) around one MQTT ping packet (2 bytes)
TLS_RECORD_OVERHEAD = 22


def offline_days(spool: Spool, days: float, t0: float = 1.75e9, seed: int = 1) -> dict:
    """Spool what a gateway produces with the link down: a 1-min summary every minute, a 15-min interval
    every quarter hour, an event every 2 h and an alarm raise/clear twice a day. Values are random walks
    rounded like the real summaries (3 decimals), so compression ratios are not flattered."""
    rng = random.Random(seed)
    level = {p: rng.uniform(5, 200) for p in KEY_POINTS}
    counts = {TELEMETRY: 0, INTERVAL: 0, EVENT: 0, ALARM: 0}
    for m in range(int(days * 1440)):
        t = t0 + 60 * m
        pts = {}
        for p in KEY_POINTS:
            level[p] += rng.gauss(0, 1.5)
            mean = level[p]
            lo, hi = mean - abs(rng.gauss(0, 2)), mean + abs(rng.gauss(0, 2))
            pts[p] = {"mean": round(mean, 3), "min": round(lo, 3), "max": round(hi, 3), "n": 60}
        spool.put(TELEMETRY, t, {"start_s": t - 60, "end_s": t, "cycles": 60, "points": pts,
                                 "battery_cmd_kw_mean": round(rng.uniform(-200, 200), 3), "mode_worst": "normal"})
        counts[TELEMETRY] += 1
        if m % 15 == 0:
            e = {k: round(rng.uniform(0, 60), 4) for k in (
                "grid_import_kwh", "grid_export_kwh", "pv_kwh", "genset_kwh", "battery_discharge_kwh",
                "battery_charge_kwh", "it_kwh", "load_kwh", "grid_co2_kg")}
            spool.put(INTERVAL, t, {"start_s": t - 900, "end_s": t, "covered_s": 900.0, **e,
                                    "diesel_co2_kg": 0.0, "co2_kg": e["grid_co2_kg"],
                                    "renewable_share": round(rng.random(), 4), "provisional": True})
            counts[INTERVAL] += 1
        if m % 120 == 0:
            spool.put(EVENT, t, {"event": "genset_start", "code": 5, "value": round(rng.uniform(0, 60), 4)})
            counts[EVENT] += 1
        if m % 720 == 0:
            spool.put(ALARM, t, {"alarm": "grid_lost", "state": "raised" if m % 1440 == 0 else "cleared",
                                 "severity": "warning", "value": 11})
            counts[ALARM] += 1
    if not spool.flush(120):
        raise RuntimeError("spool writer did not commit the backlog within 120 s")
    return counts


def _sim_run(broker: Broker, data_dir: Path, hours: float, backlog_days: float, speed: float,
             rate: float = 0.0) -> dict:
    from controller.uplink import make_uplink_hook
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    scn = load_scenario(SCENARIO)
    if backlog_days:
        s = Spool(data_dir, scn.site["site"]["name"], scn.site["site"]["gateway_id"], quota_bytes=1 << 30)
        offline_days(s, backlog_days)
        s.close()
    hook, up = make_uplink_hook(scn.site, broker.url + "?confirm=cloud", data_dir, quota_bytes=1 << 30,
                                drain=DrainPolicy(rate_bytes_s=rate), clock_status="sim", start=False)
    backlog = up.spool.pending_rows
    samples: list[tuple[float, bool]] = []
    last = [None]

    def timer(loop, image, cmd, events, n):
        if last[0] is None:                       # first cycle: kernels warm; start MQTT, time cycles
            last[0] = loop.cycle
            up.mqtt.start()
            wait_for(up.mqtt.connected.is_set, 10, "uplink connected")

            def timed_cycle():
                t = time.perf_counter()
                last[0]()
                samples.append((time.perf_counter() - t, up.spool.pending_rows > 0))
            loop.cycle = timed_cycle

    t0 = time.perf_counter()
    run_sim(scn, hours=hours, seed=1, hooks=[hook, timer], speed=speed)
    wall = time.perf_counter() - t0
    draining = [dt for dt, d in samples if d]
    left = up.spool.pending_rows
    up.close(drain_timeout_s=120.0)
    return {"backlog_rows": backlog, "cycles": len(samples), "draining_cycles": len(draining), "wall_s": wall,
            "p99_all_ms": percentile([dt for dt, _ in samples], 99, 1e3), "p99_draining_ms": percentile(draining, 99, 1e3),
            "rows_left_at_end": left, "mqtt": up.stats()["mqtt"]}


def consumer_process(port: int) -> subprocess.Popen:
    """The confirming cloud consumer in its own process: its JSON work must not share our GIL."""
    p = subprocess.Popen(["nice", "-n", "10", sys.executable, str(ROOT / "tests" / "uplink_broker.py"), str(port)],
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if p.stdout.readline().strip() != "subscribed":
        raise RuntimeError("cloud consumer process did not subscribe")
    return p


def stop_consumer(p: subprocess.Popen) -> dict:
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=10)[0].strip().splitlines()
    return json.loads(out[-1]) if out else {}


def bench_p99(days: float, hours: float, rounds: int, speed: float, rate: float = 0.0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "broker", nice=10).start()     # the cloud side: remote in the field
        sub = consumer_process(broker.port)
        try:
            base, drain = [], []
            for r in range(rounds):
                b = _sim_run(broker, Path(tmp) / f"base{r}", hours, 0, speed)
                d = _sim_run(broker, Path(tmp) / f"drain{r}", hours, days, speed, rate)
                print(f"round {r}: baseline p99 {b['p99_all_ms']:.3f} ms ({b['cycles']} cycles); draining p99 "
                      f"{d['p99_draining_ms']:.3f} ms ({d['draining_cycles']} of {d['cycles']} cycles draining, "
                      f"backlog {d['backlog_rows']} rows, {d['mqtt']['batches']} batches)", flush=True)
                base.append(b)
                drain.append(d)
        finally:
            print("cloud consumer:", stop_consumer(sub))
            broker.kill()
    pb = float(np.median([b["p99_all_ms"] for b in base]))
    pd = float(np.median([d["p99_draining_ms"] for d in drain]))
    out = {"baseline_p99_ms": round(pb, 3), "draining_p99_ms": round(pd, 3), "ratio": round(pd / pb, 3),
           "baseline_rounds_ms": [round(b["p99_all_ms"], 3) for b in base],
           "draining_rounds_ms": [round(d["p99_draining_ms"], 3) for d in drain],
           "rounds": rounds, "backlog_days": days, "sim_hours": hours, "speed": speed,
           "drain_cap_bytes_s": rate or "none"}
    print(json.dumps(out))
    return out


class CountingRelay:
    """A TCP relay 127.0.0.1:port -> target that counts the bytes going each way."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.up = self.down = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _pipe(self, reader, writer, up: bool):
        try:
            while data := await reader.read(65536):
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, reader, writer):
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, w2, True), self._pipe(r2, writer, False))

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def bench_day(hours: float, speed: float) -> dict:
    from controller.uplink import make_uplink_hook
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    scn = load_scenario(SCENARIO)
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "broker").start()
        sub = Subscriber(broker.port)
        relay = CountingRelay(broker.tls_port)
        try:
            wait_for(sub.subscribed.is_set, 10, "subscriber")
            url = broker.tls_url.replace(f":{broker.tls_port}", f":{relay.port}")
            hook, up = make_uplink_hook(scn.site, url, Path(tmp) / "data", clock_status="sim")
            wait_for(up.mqtt.connected.is_set, 10, "uplink connected")
            connect_up, connect_down = relay.up, relay.down
            t0 = time.perf_counter()
            run_sim(scn, hours=hours, seed=1, hooks=[hook], speed=speed)
            t1 = time.perf_counter()
            drained = up.close(drain_timeout_s=60.0)
            print(f"sim {t1 - t0:.1f} s, final drain {time.perf_counter() - t1:.1f} s", flush=True)
            wait_for(lambda: relay.up > 0, 1, "bytes")
            time.sleep(0.5)
            kinds = {}
            for rec in sub.first.values():
                kinds[rec["kind"]] = kinds.get(rec["kind"], 0) + 1
            st = up.stats()["mqtt"]
            keepalive = 30
            pings = 86400 / keepalive * hours / 24
            ping_bytes = pings * 2 * (2 + TLS_RECORD_OVERHEAD)
            scale = 24.0 / hours
            out = {"scenario": SCENARIO, "sim_hours": hours, "speed": speed, "drained": drained, "records": kinds,
                   "messages": st["messages"], "batches": st["batches"],
                   "tcp_up_bytes": relay.up, "tcp_down_bytes": relay.down,
                   "connect_bytes_up_down": [connect_up, connect_down],
                   "mqtt_wire_bytes_records": st["wire_bytes"],
                   "keepalive_bytes_est": round(ping_bytes),
                   "bytes_per_day_total": round((relay.up + relay.down) * scale + ping_bytes * scale),
                   }
        finally:
            relay.close()
            sub.close()
            broker.kill()
    print(json.dumps(out))
    return out


def bench_week(rate_kib_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "spool", SCENARIO, "gw-week", quota_bytes=DEFAULT_QUOTA)
        t0 = time.perf_counter()
        counts = offline_days(spool, 7)
        fill_s = time.perf_counter() - t0
        held = spool.stats()
        broker = Broker(Path(tmp) / "broker").start()
        sub = Subscriber(broker.port, ack=True)
        try:
            wait_for(sub.subscribed.is_set, 10, "subscriber")
            rate = rate_kib_s * 1024
            up = MqttUplink(spool, Topics(SCENARIO, "gw-week"), BrokerConfig.from_url(broker.url + "?confirm=cloud"),
                            drain=DrainPolicy(rate_bytes_s=rate, burst_bytes=min(rate, DrainPolicy.burst_bytes))
                            if rate else DrainPolicy()).start()
            t0 = time.perf_counter()
            wait_for(lambda: spool.pending_rows == 0, 3600, "week drained")
            drain_s = time.perf_counter() - t0
            up.stop()
            s = up.stats
            assert len(sub.seqs()) == spool.last_seq
        finally:
            sub.close()
            broker.kill()
            spool.close()
    out = {"records": counts, "fill_s": round(fill_s, 2), "spool_bytes": held["bytes"], "quota_bytes": DEFAULT_QUOTA,
           "evicted": held["evicted"], "rate_kib_s": rate_kib_s or DrainPolicy.rate_bytes_s / 1024,
           "drain_s": round(drain_s, 2), "messages": s.messages, "batches": s.batches, "raw_bytes": s.raw_bytes,
           "payload_bytes": s.payload_bytes, "wire_bytes": s.wire_bytes,
           "zlib_ratio": round(s.raw_bytes / max(1, s.payload_bytes), 2)}
    print(json.dumps(out))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("p99")
    p.add_argument("--days", type=float, default=14.0, help="backlog to drain (days offline)")
    p.add_argument("--hours", type=float, default=0.25, help="simulated hours per run")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--speed", type=float, default=100.0,
                   help="simulated seconds per wall second (100: a 10 ms period, so the loop idles between "
                        "cycles as the 1 s gateway loop does; 0: flat out, no idle time at all)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="drain cap in bytes/s (0: none, full speed; DrainPolicy's default is 32768)")
    p = sub.add_parser("day")
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--speed", type=float, default=1000.0,
                   help="1000: records leave one by one as in real time (flat out they would be batched)")
    p = sub.add_parser("week")
    p.add_argument("--rate", type=float, default=0.0, help="drain cap KiB/s (default: DrainPolicy's)")
    a = ap.parse_args(argv)
    if a.what == "p99":
        bench_p99(a.days, a.hours, a.rounds, a.speed, a.rate)
    elif a.what == "day":
        bench_day(a.hours, a.speed)
    else:
        bench_week(a.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
