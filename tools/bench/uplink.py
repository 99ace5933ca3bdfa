"""Uplink benchmarks against a real Mosquitto on 127.0.0.1 (started here, stopped at the end).

    python -m tools.bench.uplink p99  [--days 14] [--hours 0.25] [--rounds 4] [--speed 100] [--rate 0]
                                      [--mode process|thread|both]
    python -m tools.bench.uplink day  [--hours 24] [--speed 1000] [--telemetry-batch N]
    python -m tools.bench.uplink week [--rate KIB_S]

``p99``: the scan cycle's p99 while the spool drains a backlog at full speed (no rate limit) against the
same run with an empty spool (the uplink connected and publishing live in both). Cycle time = wall time
of ``ScanLoop.cycle`` (acquire, step, actuate, record, every hook, the uplink's included), only cycles
that ran while rows were still pending count for the drain run. The simulated site runs at ``--speed``
(default 100x: a 10 ms period, so the loop idles between cycles as the 1 s gateway loop does); the
broker and the confirming cloud consumer run in their own processes. Runs alternate (baseline, drain,
baseline, drain...) so load drifts hit both. Prints both p99s per round, the per-round ratio
draining / idle, its median over rounds and its spread. ``--mode both`` interleaves the worker process
(the default wiring) with the old in-process thread in every round, same process, same broker.

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

from uplink_broker import Broker, Subscriber, lower_autogroup, wait_for  # noqa: E402

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
             rate: float = 0.0, process: bool = True) -> dict:
    from controller.uplink import make_uplink_hook
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    scn = load_scenario(SCENARIO)
    if backlog_days:
        s = Spool(data_dir, scn.site["site"]["name"], scn.site["site"]["gateway_id"], quota_bytes=1 << 30)
        offline_days(s, backlog_days)
        s.close()
    hook, up = make_uplink_hook(scn.site, broker.url + "?confirm=cloud", data_dir, quota_bytes=1 << 30,
                                drain=DrainPolicy(rate_bytes_s=rate), clock_status="sim", start=False,
                                process=process)
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
    cpu = uplink_threads_cpu_s()
    up.close(drain_timeout_s=120.0)
    return {"backlog_rows": backlog, "cycles": len(samples), "draining_cycles": len(draining), "wall_s": wall,
            "p99_all_ms": percentile([dt for dt, _ in samples], 99, 1e3), "p99_draining_ms": percentile(draining, 99, 1e3),
            "rows_left_at_end": left, "uplink_threads_cpu_s": cpu, "mqtt": up.stats()["mqtt"]}


UPLINK_THREADS = ("spool-writer", "uplink-mqtt", "uplink-supervisor")


def uplink_threads_cpu_s() -> float:
    """CPU seconds used so far by this process's uplink threads (spool writer, MQTT or supervisor):
    the work that shares the scan loop's interpreter (Linux /proc; 10 ms ticks)."""
    import os
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for t in threading.enumerate():
        if t.name in UPLINK_THREADS and t.native_id is not None:
            try:
                with open(f"/proc/self/task/{t.native_id}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
    return total / tick


def _phased_run(broker: Broker, seed_spool: Path, data_dir: Path, hours: float, speed: float, phase_s: float,
                settle_s: float, process: bool) -> dict:
    """One run over a pre-filled backlog, the drain switched on and off every ``phase_s`` of wall time
    (``MqttUplink.paused``: no new offers; acks still taken), so draining and idle
    cycles interleave within seconds under the same machine load. Cycles within ``settle_s`` after a
    switch (the broker and the consumer still busy with what was sent) and after the backlog is gone
    are not counted."""
    import shutil
    from controller.uplink import make_uplink_hook
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    scn = load_scenario(SCENARIO)
    data_dir.mkdir(parents=True)
    for f in seed_spool.parent.glob(seed_spool.name + "*"):
        shutil.copy(f, data_dir / f.name)
    hook, up = make_uplink_hook(scn.site, broker.url + "?confirm=cloud", data_dir, quota_bytes=1 << 30,
                                drain=DrainPolicy(rate_bytes_s=0), clock_status="sim", start=False, process=process)
    backlog = up.spool.pending_rows
    samples: list[tuple[float, bool]] = []
    state = {"cycle": None, "t0": 0.0, "paused": False, "switched": 0.0}

    def pause(on: bool) -> None:
        if on == state["paused"]:
            return
        state["paused"] = on
        state["switched"] = time.perf_counter()
        if process:
            up.mqtt.pause(on)
        else:
            up.mqtt.paused = on

    def timer(loop, image, cmd, events, n):
        if state["cycle"] is None:
            state["cycle"] = loop.cycle
            up.mqtt.start()
            wait_for(up.mqtt.connected.is_set, 10, "uplink connected")
            state["t0"] = state["switched"] = time.perf_counter()

            def timed_cycle():
                t = time.perf_counter()
                state["cycle"]()
                t1 = time.perf_counter()
                if up.spool.pending_rows > 0 and t - state["switched"] >= settle_s:
                    samples.append((t1 - t, not state["paused"]))
                pause(int((t1 - state["t0"]) / phase_s) % 2 == 1 and up.spool.pending_rows > 0)
            loop.cycle = timed_cycle

    try:
        run_sim(scn, hours=hours, seed=1, hooks=[hook, timer], speed=speed)
    finally:
        pause(False)
    left = up.spool.pending_rows
    cpu = uplink_threads_cpu_s()
    up.close(drain_timeout_s=120.0)
    drain = [dt for dt, d in samples if d]
    idle = [dt for dt, d in samples if not d]
    return {"backlog_rows": backlog, "rows_left_at_end": left, "draining_cycles": len(drain), "idle_cycles": len(idle),
            "p99_draining_ms": percentile(drain, 99, 1e3), "p99_idle_ms": percentile(idle, 99, 1e3),
            "p50_draining_ms": percentile(drain, 50, 1e3), "p50_idle_ms": percentile(idle, 50, 1e3),
            "uplink_threads_cpu_s": cpu, "mqtt": up.stats()["mqtt"]}


def warm_up() -> None:
    """A short unmeasured run first: numba kernels compiled lazily in a first cycle (a cold cache) would
    otherwise make the first measured run skip to its end."""
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    t0 = time.perf_counter()
    run_sim(load_scenario(SCENARIO), hours=0.05, seed=1)
    print(f"warm-up run: {time.perf_counter() - t0:.1f} s", flush=True)


def bench_phased(days: float, hours: float, rounds: int, speed: float, phase_s: float,
                 modes: tuple[str, ...] = ("process",)) -> dict:
    """``p99 --phase-s P``: per round and mode one phased run (see _phased_run); the ratio draining p99 /
    idle p99 of each run, its median over rounds and its spread."""
    runs = {m: [] for m in modes}
    warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        seed_dir = Path(tmp) / "seed"
        s = Spool(seed_dir, "gansu-edge", "gs-gw-01", quota_bytes=1 << 30)
        t0 = time.perf_counter()
        offline_days(s, days)
        s.close()
        print(f"backlog: {days} days offline spooled in {time.perf_counter() - t0:.1f} s", flush=True)
        broker = Broker(Path(tmp) / "broker", nice=10, sched_idle=True).start()   # the cloud: remote in the field
        sub = consumer_process(broker.port)
        try:
            for r in range(rounds):
                for m in modes:
                    x = _phased_run(broker, seed_dir / "uplink-spool.sqlite", Path(tmp) / f"{m}{r}", hours, speed,
                                    phase_s, min(0.2, phase_s / 4), m == "process")
                    x["ratio"] = x["p99_draining_ms"] / x["p99_idle_ms"]
                    print(f"round {r} {m:7s}: p99 draining {x['p99_draining_ms']:.3f} ms ({x['draining_cycles']} "
                          f"cycles) vs idle {x['p99_idle_ms']:.3f} ms ({x['idle_cycles']} cycles), ratio "
                          f"{x['ratio']:.2f}; p50 {x['p50_draining_ms']:.3f} vs {x['p50_idle_ms']:.3f} ms; backlog "
                          f"{x['backlog_rows']} rows, {x['rows_left_at_end']} left at the end, "
                          f"{x['mqtt']['batches']} batches; uplink threads in the controller used "
                          f"{x['uplink_threads_cpu_s']:.2f} CPU s", flush=True)
                    runs[m].append(x)
        finally:
            print("cloud consumer:", stop_consumer(sub))
            broker.kill()
    out = {"rounds": rounds, "backlog_days": days, "sim_hours": hours, "speed": speed, "phase_s": phase_s}
    for m, xs in runs.items():
        ratios = [x["ratio"] for x in xs]
        out[m] = {"ratio_median": round(float(np.median(ratios)), 3),
                  "ratio_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
                  "ratios": [round(v, 3) for v in ratios],
                  "p99_draining_ms": [round(x["p99_draining_ms"], 3) for x in xs],
                  "p99_idle_ms": [round(x["p99_idle_ms"], 3) for x in xs],
                  "cycles_draining_idle": [[x["draining_cycles"], x["idle_cycles"]] for x in xs],
                  "rows_drained": [x["backlog_rows"] - x["rows_left_at_end"] for x in xs],
                  "uplink_threads_cpu_s": [round(x["uplink_threads_cpu_s"], 2) for x in xs]}
    print(json.dumps(out))
    return out


def consumer_process(port: int) -> subprocess.Popen:
    """The confirming cloud consumer in its own process: its JSON work must not share our GIL; like the
    broker it stands in for a remote machine, so it runs SCHED_IDLE: it must not take this box's CPU
    from the scan loop (in the field it has none of it)."""
    p = subprocess.Popen(["chrt", "--idle", "0", "nice", "-n", "10", sys.executable,
                          str(ROOT / "tests" / "uplink_broker.py"), str(port)], start_new_session=True,
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lower_autogroup(p.pid)
    if p.stdout.readline().strip() != "subscribed":
        raise RuntimeError("cloud consumer process did not subscribe")
    return p


def stop_consumer(p: subprocess.Popen) -> dict:
    p.send_signal(signal.SIGTERM)
    try:
        out = p.communicate(timeout=10)[0].strip().splitlines()
    except subprocess.TimeoutExpired:          # still busy with a backlog at SCHED_IDLE: no summary
        p.kill()
        p.communicate()
        return {"stopped": "killed after 10 s"}
    return json.loads(out[-1]) if out else {}


def bench_p99(days: float, hours: float, rounds: int, speed: float, rate: float = 0.0,
              modes: tuple[str, ...] = ("process",)) -> dict:
    """Per round and per mode (``process``: the MQTT side in the worker process, the default;
    ``thread``: in a thread of the controller, as before the worker): an idle run, then a draining run.
    Reports per mode the median over rounds of the per-round ratio draining p99 / idle p99 and its spread."""
    runs = {m: [] for m in modes}
    warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "broker", nice=10, sched_idle=True).start()   # the cloud: remote in the field
        sub = consumer_process(broker.port)
        try:
            for r in range(rounds):
                for m in modes:
                    proc = m == "process"
                    b = _sim_run(broker, Path(tmp) / f"base-{m}{r}", hours, 0, speed, process=proc)
                    d = _sim_run(broker, Path(tmp) / f"drain-{m}{r}", hours, days, speed, rate, process=proc)
                    ratio = d["p99_draining_ms"] / b["p99_all_ms"]
                    print(f"round {r} {m:7s}: idle p99 {b['p99_all_ms']:.3f} ms ({b['cycles']} cycles); draining "
                          f"p99 {d['p99_draining_ms']:.3f} ms ({d['draining_cycles']} of {d['cycles']} cycles "
                          f"draining, backlog {d['backlog_rows']} rows, {d['mqtt']['batches']} batches, "
                          f"{d['rows_left_at_end']} left at the end, uplink threads {d['uplink_threads_cpu_s']:.2f} "
                          f"CPU s); ratio {ratio:.2f}", flush=True)
                    runs[m].append((b, d, ratio))
        finally:
            print("cloud consumer:", stop_consumer(sub))
            broker.kill()
    out = {"rounds": rounds, "backlog_days": days, "sim_hours": hours, "speed": speed,
           "drain_cap_bytes_s": rate or "none"}
    for m, rs in runs.items():
        ratios = [x for _, _, x in rs]
        out[m] = {"idle_p99_ms_median": round(float(np.median([b["p99_all_ms"] for b, _, _ in rs])), 3),
                  "draining_p99_ms_median": round(float(np.median([d["p99_draining_ms"] for _, d, _ in rs])), 3),
                  "ratio_median": round(float(np.median(ratios)), 3),
                  "ratio_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
                  "ratios": [round(x, 3) for x in ratios],
                  "idle_rounds_ms": [round(b["p99_all_ms"], 3) for b, _, _ in rs],
                  "draining_rounds_ms": [round(d["p99_draining_ms"], 3) for _, d, _ in rs],
                  "draining_cycles": [d["draining_cycles"] for _, d, _ in rs]}
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


def bench_day(hours: float, speed: float, telemetry_batch: int | None = None) -> dict:
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
            kw = {} if telemetry_batch is None else {"telemetry_batch": telemetry_batch}
            hook, up = make_uplink_hook(scn.site, url, Path(tmp) / "data", clock_status="sim", **kw)
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
                   "telemetry_batch": up.mqtt.drain.telemetry_batch_min,
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
    # SIGTERM (timeout, kill) unwinds like Ctrl-C: the broker and the consumer run in sessions of their
    # own (start_new_session) and are stopped only by the finally blocks
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
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
    p.add_argument("--mode", choices=("process", "thread", "both"), default="process",
                   help="where the MQTT side runs: the worker process (default), a controller thread (as "
                        "before the worker), or both interleaved in each round")
    p.add_argument("--phase-s", type=float, default=0.0,
                   help="> 0: one run per round and mode over the backlog with the drain switched on and off "
                        "every PHASE_S wall seconds, draining vs idle cycles compared within the run "
                        "(full speed; --rate ignored)")
    p = sub.add_parser("day")
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--speed", type=float, default=1000.0,
                   help="1000: records leave one by one as in real time (flat out they would be batched)")
    p.add_argument("--telemetry-batch", type=int, default=None,
                   help="1-min summaries per message (default: make_uplink_hook's, 5; 1: each alone)")
    p = sub.add_parser("week")
    p.add_argument("--rate", type=float, default=0.0, help="drain cap KiB/s (default: DrainPolicy's)")
    a = ap.parse_args(argv)
    if a.what == "p99":
        modes = ("process", "thread") if a.mode == "both" else (a.mode,)
        if a.phase_s > 0:
            bench_phased(a.days, a.hours, a.rounds, a.speed, a.phase_s, modes)
        else:
            bench_p99(a.days, a.hours, a.rounds, a.speed, a.rate, modes)
    elif a.what == "day":
        bench_day(a.hours, a.speed, a.telemetry_batch)
    else:
        bench_week(a.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
