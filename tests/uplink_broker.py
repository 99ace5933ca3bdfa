"""Test peers for the uplink: a real Mosquitto on 127.0.0.1 (plain + mutual-TLS listeners, certificates
made here with `cryptography`), a de-duplicating subscriber, and bounded waiting helpers."""
from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.uplink.drain import decode_message
from tools.netport import free_port

MOSQUITTO = "/usr/sbin/mosquitto"
USER, PASSWORD = "gw", "s3cret-pass"


def wait_for(cond, timeout: float, what: str, poll: float = 0.02):
    """Await a condition (bounded in time); returns its value or raises AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def lower_autogroup(pid: int) -> None:
    """Autogroup nice 19 for a process that started its own session (Linux with autogroups; else a no-op)."""
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write("19")
    except OSError:
        pass


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_certs(d: Path) -> dict:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-ems test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn, server):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    paths = {n: d / f"{n}.pem" for n in ("ca", "server", "server_key", "client", "client_key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, server in (("server", True), ("client", False)):
        key, cert = leaf("127.0.0.1" if server else "imm-gw-01", server)
        paths[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, paths[f"{name}_key"])
    return {k: str(v) for k, v in paths.items()}


class Broker:
    """Mosquitto without persistence: a plain listener and a mutual-TLS + password listener."""

    def __init__(self, workdir: Path, nice: int = 0, sched_idle: bool = False):
        self.nice = nice
        self.sched_idle = sched_idle
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.tls_port = free_port(), free_port()
        self.certs = make_certs(self.dir / "certs")
        pw = self.dir / "passwd"
        pw.write_text(f"{USER}:{PASSWORD}\n")
        subprocess.run(["mosquitto_passwd", "-U", str(pw)], check=True, capture_output=True)
        os.chmod(pw, 0o600)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(f"""persistence false
user {getpass.getuser()}
per_listener_settings true
log_dest file {self.dir / 'mosquitto.log'}
log_type error
log_type warning
max_queued_messages 100000
listener {self.port} 127.0.0.1
allow_anonymous true
listener {self.tls_port} 127.0.0.1
allow_anonymous false
password_file {pw}
cafile {self.certs['ca']}
certfile {self.certs['server']}
keyfile {self.certs['server_key']}
require_certificate true
""")
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _accepting(self) -> bool:
        for port in (self.port, self.tls_port):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                return False
        return True

    def start(self) -> "Broker":
        # nice > 0 / sched_idle: on a shared test box the broker stands in for a remote one, it must not
        # crowd the loop (SCHED_IDLE: preempted at once when a normal task wakes, see uplink/priority.py)
        idle = ["chrt", "--idle", "0"] if self.sched_idle else []
        self.proc = subprocess.Popen([*idle, "nice", "-n", str(self.nice), MOSQUITTO, "-c", str(self.conf)],
                                     start_new_session=self.sched_idle,     # its own CPU autogroup too
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.sched_idle:
            lower_autogroup(self.proc.pid)
        self.starts += 1
        wait_for(lambda: self.proc.poll() is not None or self._accepting(), 10, "mosquitto to listen")
        assert self.proc.poll() is None, (self.dir / "mosquitto.log").read_text() if (self.dir / "mosquitto.log").exists() else "mosquitto died"
        return self

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        c = self.certs
        return (f"mqtts://{USER}:{PASSWORD}@127.0.0.1:{self.tls_port}"
                f"?ca={c['ca']}&cert={c['client']}&key={c['client_key']}")


class Subscriber:
    """The cloud's consumer: subscribes to everything of the gateway, de-duplicates by (gateway, seq).
    ``ack=True``: confirms every message it stored on ``.../ack`` (the gateway's ``confirm=cloud``)."""

    def __init__(self, port: int, topic: str = "edge-ems/v1/#", client_id: str = "cloud-test", ack: bool = False):
        self.ack = ack
        self.acks_sent = 0
        self.conflicts: list[tuple[dict, dict]] = []   # same (gateway, seq), different content
        self.lock = threading.Lock()
        self.raw: list[tuple[str, dict]] = []           # every record as received, duplicates included
        self.first: dict[tuple[str, int], dict] = {}   # (gateway, seq) -> first copy
        self.order: dict[str, list[int]] = defaultdict(list)   # kind -> seqs, first occurrences, in order
        self.retained: dict[str, dict] = {}
        self.subscribed = threading.Event()
        self.arrival: dict[int, float] = {}
        self.messages = 0
        self.topic = topic
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_disconnect = lambda *a: self.subscribed.clear()
        self.c.reconnect_delay_set(0.05, 0.5)
        self.c.connect_async("127.0.0.1", port, keepalive=10)
        self.c.loop_start()

    def _on_connect(self, client, userdata, flags, rc, props):
        client.subscribe(self.topic, qos=1)
        self.subscribed.set()

    def _on_message(self, client, userdata, msg):
        topic = msg.topic
        with self.lock:
            self.messages += 1
            if topic.endswith("/status"):
                self.retained[topic] = json.loads(msg.payload) if msg.payload else {}
                return
            if topic.endswith("/cmd") or topic.endswith("/ack"):
                return
            recs = decode_message(topic, msg.payload)
            for rec in recs:
                self.raw.append((topic, rec))
                key = (rec["gateway"], rec["seq"])
                if key in self.first:
                    if rec != self.first[key]:          # a seq reused for another record: a real bug
                        self.conflicts.append((self.first[key], rec))
                else:
                    self.first[key] = rec
                    self.order[rec["kind"]].append(rec["seq"])
                    self.arrival[rec["seq"]] = time.monotonic()
        if self.ack and recs:                           # stored (in memory): confirm the message
            base = "/".join(topic.split("/")[:4])
            client.publish(f"{base}/ack", json.dumps({"acks": [[recs[0]["kind"], recs[0]["seq"],
                                                                recs[-1]["seq"]]]}), qos=1)
            self.acks_sent += 1

    def seqs(self) -> set[int]:
        with self.lock:
            return {seq for _, seq in self.first}

    def records(self, kind: str) -> list[dict]:
        with self.lock:
            return [r for r in self.first.values() if r["kind"] == kind]

    def assert_in_order(self) -> None:
        """Per topic (kind) the first copies arrived in seq order, and no seq named two records."""
        with self.lock:
            assert not self.conflicts, f"seq reused for different records: {self.conflicts[:2]}"
            for kind, seqs in self.order.items():
                assert seqs == sorted(seqs), f"{kind}: out of order after de-dup: " \
                    f"{[(a, b) for a, b in zip(seqs, seqs[1:]) if b < a][:5]}"

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _subscribe_forever(port: int) -> None:
    """``python tests/uplink_broker.py PORT``: an acking cloud consumer in its own process (benchmarks keep
    the consumer's JSON work off the gateway's GIL); prints its counts as JSON on SIGTERM."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    sub = Subscriber(port, client_id=f"cloud-proc-{os.getpid()}", ack=True)
    wait_for(sub.subscribed.is_set, 10, "subscriber connected")
    print("subscribed", flush=True)
    done.wait()
    sub.close()
    print(json.dumps({"records": len(sub.first), "duplicates": len(sub.raw) - len(sub.first),
                      "acks": sub.acks_sent}), flush=True)


if __name__ == "__main__":
    import sys
    _subscribe_forever(int(sys.argv[1]))
