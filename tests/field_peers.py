"""Real peers for the driver tests: a socat pty pair, and tests/modbus_peer.py as a separate process.

    with socat_pair(tmp_path) as (device_end, host_end), \
         ModbusPeer(units, rtu=device_end) as peer:
        bus = ModbusBus(host_end)            # the driver opens the other end
        peer.silent(4, True)                 # the unit stops answering

The peer prints {"ready": true} once its server listens; every wait here is on that line or on a file
appearing, bounded by a timeout, never a fixed sleep.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path


PEER = Path(__file__).resolve().parent / "modbus_peer.py"
REPO = PEER.parents[1]


def _wait_for(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)        # polling a file system condition; nothing to wait on


@contextlib.contextmanager
def socat_pair(tmp_path: Path):
    """(device end, host end): two linked ptys made by socat, raw, no echo."""
    assert shutil.which("socat"), "socat is missing: `make test` installs it (Makefile DEBS)"
    dev, host = tmp_path / "pty-device", tmp_path / "pty-host"
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={dev}", f"pty,raw,echo=0,link={host}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: dev.exists() and host.exists(), 10.0, "socat did not create the pty pair")
        yield str(dev), str(host)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


class ModbusPeer:
    """tests/modbus_peer.py in its own process: RTU on ``rtu`` (a pty path) or TCP on 127.0.0.1:``tcp``."""

    def __init__(self, units: dict, *, rtu: str | None = None, tcp: int | None = None, gateway: bool = False,
                 baud: int = 9600):
        self.args = [sys.executable, str(PEER), "--units", json.dumps({str(k): v for k, v in units.items()}),
                     "--baud", str(baud)]
        self.args += ["--rtu", rtu] if rtu else ["--tcp", str(tcp)]
        if gateway:
            self.args.append("--gateway")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> "ModbusPeer":
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        reply = self._line(timeout_s)
        if reply.get("ready") is not True:
            raise RuntimeError(f"modbus peer did not start: {reply}")
        return self

    def _line(self, timeout_s: float = 10.0) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            raise TimeoutError("modbus peer did not answer")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            raise RuntimeError(f"modbus peer exited: {err[-2000:]}")
        return json.loads(line)

    def command(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = self._line()
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def silent(self, unit: int, on: bool = True) -> None:
        self.command(op="silent", unit=unit, on=on)

    def set_values(self, unit: int, values: dict) -> None:
        self.command(op="set", unit=unit, values=values)

    def writes(self, unit: int) -> list:
        return self.command(op="writes", unit=unit)["writes"]

    def requests(self, unit: int) -> int:
        return self.command(op="requests", unit=unit)["requests"]

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> "ModbusPeer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
