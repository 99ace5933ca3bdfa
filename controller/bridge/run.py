"""`edge-ems bridge --config bridge.toml`: the bridge's loop, and its command-line block.

One thread does the work (the MQTT client's own thread only queues what arrives): every
``power_period_s`` it samples Prometheus and publishes compute/power; every ``queue_period_s`` it reads
the scheduler's queue, publishes the compute/job announcements that are due and runs the guards; in
between it applies each compute/defer request (reading the queue afresh first, so a job that just
started is suspended, not held) and keeps the latest compute/headroom.

Exit codes: 0 on SIGTERM / SIGINT, 2 on a bad configuration (every problem, file:line: key) or a
scheduler whose commands are not there. Prometheus, the broker or slurmctld being down is not an exit:
the bridge says so on stderr once, retries every period and says when it is back.
"""
from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time

from controller.schema import ProfileError

from controller.bridge.actions import ActionLog, HoldBook
from controller.bridge.adapter import AdapterError
from controller.bridge.config import load_bridge_config
from controller.bridge.defer import DeferApplier
from controller.bridge.jobs import Announcer
from controller.bridge.messages import HEADROOM, MessageError, parse_defer, parse_headroom
from controller.bridge.mqtt import BridgeMqtt
from controller.bridge.power import PowerSampler
from controller.bridge.prom import PromClient


def _say(msg: str) -> None:
    print(f"edge-ems bridge: {msg}", file=sys.stderr, flush=True)


class Trouble:
    """A failing peer reported once when it starts failing and once when it is back, not every period."""

    def __init__(self, name: str):
        self.name, self.failing, self.count = name, False, 0

    def bad(self, msg: str) -> None:
        self.count += 1
        if not self.failing:
            _say(f"{self.name}: {msg} (retrying every period; said once)")
        self.failing = True

    def good(self) -> None:
        if self.failing:
            _say(f"{self.name}: back after {self.count} failed attempt(s)")
        self.failing, self.count = False, 0


class Bridge:
    def __init__(self, cfg: dict, mqtt=None, adapter=None, prom=None, clock=time.time, mono=time.monotonic):
        self.cfg, self.clock, self.mono = cfg, clock, mono
        b = cfg["bridge"]
        self.mqtt = mqtt or BridgeMqtt(b["mqtt"], b["site"], b["gateway"], b["client_id"])
        self.sampler = None
        if cfg["power"]["query"]:
            p = cfg["prometheus"]
            prom = prom or PromClient(p["url"], p["timeout_s"], p["max_bytes"])
            self.sampler = PowerSampler(prom, cfg["power"]["query"], p["source"])
        self.adapter = adapter
        if self.adapter is None and cfg["slurm"] is not None:
            from controller.bridge.slurm import SlurmAdapter
            self.adapter = SlurmAdapter(cfg["slurm"])
        self.log = ActionLog(b["action_log"], clock=clock)
        self.announcer = Announcer(b["announce_every_s"])
        self.applier = None
        if self.adapter is not None:
            self.applier = DeferApplier(self.adapter, self.log, HoldBook(b["state_file"]), b, cfg["slurm"], clock())
        self.trouble = {k: Trouble(k) for k in ("prometheus", "scheduler", "mqtt", "messages")}
        self.stop_event = threading.Event()
        self.stats = {"power_published": 0, "power_skipped": 0, "jobs_published": 0, "requests": 0,
                      "bad_messages": 0}

    # -- periodic work -------------------------------------------------------------------------------
    def power_once(self) -> bytes | None:
        rep = self.sampler.sample(self.clock())
        if rep.payload is None:
            self.stats["power_skipped"] += 1
            self.trouble["prometheus"].bad("; ".join(rep.errors)[:400])
            return None
        self.trouble["prometheus"].good()
        if self.mqtt.publish("compute/power", rep.payload):
            self.stats["power_published"] += 1
        return rep.payload

    def read_queue(self) -> dict | None:
        try:
            jobs = self.adapter.jobs(self.clock())
        except AdapterError as exc:
            self.trouble["scheduler"].bad(str(exc))
            return None
        self.trouble["scheduler"].good()
        return {j.id: j for j in jobs}

    def queue_once(self) -> None:
        jobs = self.read_queue()
        if jobs is None:
            return
        now = self.clock()
        self.applier.tick(jobs, now)
        if self.mqtt.connected.is_set():       # not sent is not marked sent: announced after the reconnect
            for d, payload in self.announcer.due(list(jobs.values()), now):
                if self.mqtt.publish("compute/job", payload):
                    self.stats["jobs_published"] += 1
                else:                           # lost the connection meanwhile: due again next poll
                    self.announcer.sent.pop(d["id"], None)
        for msg in self.announcer.refused:
            _say(f"compute/job not sent, the gateway would refuse it: {msg}")
        self.announcer.refused.clear()

    def handle(self, kind: str, payload: bytes) -> None:
        try:
            if kind == HEADROOM:
                h = parse_headroom(payload)
                if self.applier is not None:
                    self.applier.headroom_received(h, self.clock())
                return
            req = parse_defer(payload)
        except MessageError as exc:
            self.stats["bad_messages"] += 1
            _say(f"bad message ignored: {exc}")
            return
        self.stats["requests"] += 1
        if self.applier is None:
            self.log.write("refuse", req.job, "no scheduler adapter configured ([slurm] missing)")
            return
        jobs = self.read_queue()
        if jobs is None:
            self.log.write("refuse", req.job, f"{req.action}: the scheduler's queue cannot be read")
            return
        self.applier.request(req, jobs, self.clock())

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> int:
        b = self.cfg["bridge"]
        self.mqtt.start()
        what = [f"{len(self.cfg['power']['query'])} power queries every {b['power_period_s']:g} s"
                if self.sampler else "no power queries"]
        if self.adapter is not None:
            s = self.cfg["slurm"]
            rule = {"partition": s["deferrable_partitions"], "qos": s["deferrable_qos"],
                    "comment": [s["comment_tag"]]}[s["deferrable_by"]]
            what.append(f"slurm queue every {b['queue_period_s']:g} s, deferrable by {s['deferrable_by']} "
                        f"{', '.join(rule)}, suspend_running={str(s['suspend_running']).lower()}")
        _say(f"started: {'; '.join(what)}; topics {self.mqtt.topics.base}/compute/*")
        now = self.mono()
        next_power = now if self.sampler else float("inf")
        next_queue = now if self.adapter else float("inf")
        was_connected = False
        while not self.stop_event.is_set():
            now = self.mono()
            wait = max(0.0, min(next_power, next_queue) - now)
            try:
                kind, payload = self.mqtt.inbox.get(timeout=min(wait, 0.5))
            except queue.Empty:
                pass
            else:
                try:
                    self.handle(kind, payload)
                except Exception as exc:        # a bug in a handler must not end the bridge: said, loop goes on
                    _say(f"internal error handling {kind}: {type(exc).__name__}: {exc}")
            connected = self.mqtt.connected.is_set()
            if connected != was_connected:
                _say(f"mqtt: {'connected to' if connected else 'disconnected from'} "
                     f"{self.mqtt.broker.host}:{self.mqtt.broker.port}")
                was_connected = connected
            now = self.mono()
            if now >= next_power:
                self.power_once()
                next_power = max(next_power + b["power_period_s"], now)
            if now >= next_queue:
                self.queue_once()
                next_queue = max(next_queue + b["queue_period_s"], now)
        self.mqtt.stop()
        _say(f"stopped: {json.dumps(self.stats, sort_keys=True)}")
        return 0


def main(config: str, check: bool = False) -> int:
    try:
        cfg = load_bridge_config(config)
    except ProfileError as exc:
        print(f"edge-ems bridge: {len(exc.problems)} problem(s) in {config}, nothing was started:", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    try:
        bridge = Bridge(cfg)
    except (AdapterError, ValueError, OSError) as exc:
        print(f"edge-ems bridge: {exc}", file=sys.stderr)
        return 2
    if check:
        print(f"{config}: ok")
        return 0

    def stop(signum, frame):
        bridge.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return bridge.run()

