"""The lab's network side: a local Mosquitto, and publisher processes (the compute platform's bridge, the
cloud's market feed) that put on MQTT what the physics process hands them.

    python -m tools.sim.lab_mqtt CONFIG.json LINK_FD

A publisher is its own process for the same reason every lab device is: SIGSTOP of it is the compute
platform (or the market feed) gone quiet, while the broker and the controller's connection stay up.
Payloads are built by the physics process (tools/sim/lab_physics.py); this process only publishes.
"""
from __future__ import annotations

import getpass
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from tools.sim.lab_link import LinkClosed, child_link_from_env

log = logging.getLogger("lab.mqtt")
MOSQUITTO = "/usr/sbin/mosquitto"
QUEUE_MAX = 100                 # QoS 1 messages kept by paho while the broker is away


def parse_url(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    if u.scheme != "mqtt" or not u.hostname:
        raise ValueError(f"--mqtt {url!r}: expected mqtt://HOST:PORT (the lab speaks plain MQTT to a local broker)")
    return u.hostname, u.port or 1883


def accepting(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def start_mosquitto(workdir: Path, port: int, timeout_s: float = 15.0, preexec_fn=None) -> subprocess.Popen:
    """Mosquitto on 127.0.0.1:port, no persistence, anonymous (a lab broker; never on another interface).
    ``preexec_fn``: the lab's, so the broker ends with the lab even when the lab is SIGKILLed."""
    if not os.path.exists(MOSQUITTO):
        raise RuntimeError(f"{MOSQUITTO} not found: install the mosquitto package (`make install` does)")
    if accepting("127.0.0.1", port):
        raise RuntimeError(f"port 127.0.0.1:{port} is already in use: stop that broker, or give --mqtt URL to use it")
    conf = workdir / "mosquitto.conf"
    # `user`: as root, mosquitto would switch to the mosquitto user, which clears the parent-death signal
    conf.write_text(f"persistence false\nuser {getpass.getuser()}\nlog_dest file {workdir / 'mosquitto.log'}\nlog_type error\n"
                    f"log_type warning\nlistener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=preexec_fn)
    deadline = time.monotonic() + timeout_s
    while not accepting("127.0.0.1", port):
        if proc.poll() is not None:
            log_path = workdir / "mosquitto.log"
            raise RuntimeError(f"mosquitto exited {proc.returncode}: "
                               f"{log_path.read_text()[-400:] if log_path.exists() else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{port} within {timeout_s} s")
        time.sleep(0.05)
    return proc


def serve(cfg: dict, link) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = parse_url(cfg["url"])
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-ems-lab-{cfg['name']}-{os.getpid()}")
    client.max_queued_messages_set(QUEUE_MAX)
    client.reconnect_delay_set(0.2, 5.0)
    client.connect_async(host, port, keepalive=30)
    client.loop_start()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    published = failed = 0
    link.send({"op": "ready", "pid": os.getpid()})
    try:
        while not stopping:
            try:
                r, _, _ = select.select([link], [], [], 0.5)
            except InterruptedError:
                continue
            link.flush()
            if not r:
                continue
            for msg in link.recv():
                if msg.get("op") == "publish":
                    payload = msg["payload"]
                    body = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
                    info = client.publish(msg["topic"], body, qos=int(msg.get("qos", 0)),
                                          retain=bool(msg.get("retain", False)))
                    if info.rc == mqtt.MQTT_ERR_SUCCESS:
                        published += 1
                    else:
                        failed += 1
                elif msg.get("op") == "stats":
                    link.send({"op": "stats", "published": published, "failed": failed,
                               "connected": client.is_connected()})
    except LinkClosed:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s lab-mqtt %(levelname)s %(message)s")
    with open(argv[0]) as f:
        cfg = json.load(f)
    return serve(cfg, child_link_from_env(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
