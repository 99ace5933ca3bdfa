"""A free TCP port on 127.0.0.1 for a server another process will bind (the lab's Modbus TCP device, a test's
Mosquitto, Prometheus, PostgreSQL, slurmctld).

Why not ``bind(("127.0.0.1", 0))``: that port comes from the kernel's ephemeral range, the same range every
outgoing connection on the machine takes its source port from. Between closing the probe and the server's
own bind (a Python child needs a second to import) an MQTT client or an HTTP request elsewhere may take the
port, and the server fails with "address in use" (seen in CI: the lab's eth0 device). A port below the
ephemeral range is never handed out implicitly, so only another explicit chooser can collide; this one picks
at random among those ports, skips any it handed out before in this process, and probes each with a bind.
"""
from __future__ import annotations

import random
import socket

LOWEST = 20000
_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768                     # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to on ``host`` now, outside the ephemeral range (falls back to ``bind(0)``
    when that range leaves no room below it)."""
    top = _ephemeral_low() - 1
    if top - LOWEST >= 100:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randint(LOWEST, top)
            if port in _given:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _given.add(port)
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    _given.add(port)
    return port
