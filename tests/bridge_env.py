"""The bridge's test harness: `edge-ems bridge` as a real process, and the cabinet's side of the MQTT topics
(what the gateway would consume and send) on the tests' Mosquitto (tests/uplink_broker.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from drivers.isotime import utc_iso
from uplink_broker import wait_for

ROOT = Path(__file__).resolve().parents[1]
SITE, GATEWAY = "test-site", "gw-1"
BASE = f"edge-ems/v1/{SITE}/{GATEWAY}"


class Cabinet:
    """Subscribes compute/power and compute/job as the gateway does, publishes compute/defer and the retained
    compute/headroom as the gateway's compute hook does."""

    def __init__(self, port: int):
        self.lock = threading.Lock()
        self.got: dict[str, list[bytes]] = {"compute/power": [], "compute/job": []}
        self.subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cabinet-{time.monotonic_ns()}",
                             protocol=MQTTProtocolVersion.MQTTv5)
        self.c.on_connect = lambda c, u, f, rc, p: (c.subscribe([(f"{BASE}/compute/power", 0),
                                                                 (f"{BASE}/compute/job", 1)]), None)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        wait_for(self.subscribed.is_set, 10, "the cabinet's subscription")

    def _on_message(self, client, userdata, msg):
        kind = msg.topic[len(BASE) + 1:]
        with self.lock:
            self.got.setdefault(kind, []).append(bytes(msg.payload))

    def messages(self, kind: str) -> list[bytes]:
        with self.lock:
            return list(self.got[kind])

    def jobs(self, job_id: str) -> list[dict]:
        return [d for d in map(json.loads, self.messages("compute/job")) if d["id"] == job_id]

    def wait_job(self, job_id: str, timeout: float = 20.0, **want) -> dict:
        """The first compute/job announcement of `job_id` whose fields match `want`."""
        def match():
            for d in self.jobs(job_id):
                if all(d.get(k) == v for k, v in want.items()):
                    return d
            return None
        return wait_for(match, timeout, f"compute/job {job_id} with {want} (got {self.jobs(job_id)[-3:]})")

    def defer(self, job: str, action: str, reason: str, resume_by_s: float | None = None,
              t_s: float | None = None) -> None:
        d = {"v": 1, "t": utc_iso(time.time() if t_s is None else t_s), "job": job, "action": action,
             "reason": reason}
        if resume_by_s is not None:
            d["resume_by"] = utc_iso(resume_by_s)
        self.c.publish(f"{BASE}/compute/defer", json.dumps(d), qos=1).wait_for_publish(5)

    def headroom(self, now_kw: float, short_kw: float, hourly_kw=(), valid_s: float = 120.0) -> None:
        t = time.time()
        d = {"v": 1, "t": utc_iso(t), "clock": "synchronised", "valid_until": utc_iso(t + valid_s),
             "now_kw": now_kw, "windows_kw": {}, "hourly_kw": list(hourly_kw), "short_kw": short_kw,
             "soc_pct": 50.0, "reserve_pct": 35.0, "basis": "test"}
        self.c.publish(f"{BASE}/compute/headroom", json.dumps(d), qos=1, retain=True).wait_for_publish(5)

    def close(self) -> None:
        self.c.publish(f"{BASE}/compute/headroom", b"", qos=1, retain=True).wait_for_publish(5)  # clear it
        self.c.loop_stop()
        self.c.disconnect()


class BridgeProcess:
    """`python -m controller.cli bridge --config FILE` with its stderr collected."""

    def __init__(self, config: Path, env: dict | None = None):
        self.config = Path(config)
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "bridge", "--config", str(config)],
                                     cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, text: str, timeout: float = 20.0) -> str:
        def found():
            assert self.proc.poll() is None or any(text in l for l in self.lines), \
                f"the bridge exited {self.proc.returncode}:\n{self.stderr()}"
            return next((l for l in self.lines if text in l), None)
        return wait_for(found, timeout, f"the bridge to say {text!r}:\n{self.stderr()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._t.join(5)
        return self.proc.returncode


def actions(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def network_inputs(listeners=()):
    """The gateway's own consumer of these payloads (controller/netinputs.py) on a profile with a compute
    device on a network bus, as a field site has it."""
    from controller.netinputs import NetworkInputs
    cfg = {"buses": {"net": {"kind": "network"}},
           "devices": [{"name": "compute", "role": "compute", "bus": "net", "simulated": False}]}
    return NetworkInputs(cfg, listeners=listeners)
