"""One lab device process: the Modbus units of one RS-485 segment (RTU on the server end of a socat pty pair)
or of the Ethernet segment (Modbus TCP on 127.0.0.1), as a pymodbus server.

    python -m tools.sim.lab_modbus CONFIG.json LINK_FD

The register images, the encoders and the write -> actuation logic are tools/sim/wire.py's, imported, so a
lab device answers exactly what the ``--wire`` simulator's does; only the transport differs. The physics
process sends register values every second over the link; this process sends back every accepted write
as an actuation and appends it to ``applied.jsonl``. Being its own OS process is the point: SIGSTOP or
SIGTERM of it is that segment's devices gone, while the socat pair (and so the controller's open port)
stays.

Faults set by the lab's control socket act per unit inside the server: ``silent`` (no reply to anything,
the client times out) and ``no-writes`` (reads answered, writes never acknowledged nor applied). A request
that must go unanswered raises pymodbus' NoSuchIdException, which its request handler turns into no
reply at all when ``ignore_missing_devices`` is set.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import sys
import threading
import time

from drivers.isotime import utc_iso
from drivers.modbus.profile import load_profile
from tools.sim.lab_link import LinkClosed, child_link_from_env
from tools.sim.wire import RegisterEncoder, WireModbusServer, WireSite, WireUnit

log = logging.getLogger("lab.modbus")
UNIT_FAULTS = ("silent", "no-writes")
APPLIED_MAX_BYTES = 64 * 1024 * 1024      # applied.jsonl is rotated once (to .1) beyond this


class LabModbusServer(WireModbusServer):
    """WireModbusServer on the lab's transport: a serial path (the socat pair's server end) or a TCP address."""

    def __init__(self, transport: str, *, path: str | None = None, address: tuple[str, int] | None = None,
                 baud: int = 9600):
        super().__init__(baud=None)
        self.bridge.close()      # SimBus's private pty bridge is not used: the lab's wire is socat's pair / TCP
        self.transport = transport
        self.path = path
        self.address = address
        self.baud = baud
        self.faults: dict[int, str] = {}
        self.unanswered: dict[int, int] = {}

    def _make_action(self, unit_id: int):
        inner = super()._make_action(unit_id)

        async def action(function_code, start_address, address, count, registers, set_values):
            kind = self.faults.get(unit_id)
            if kind == "silent" or (kind == "no-writes" and set_values is not None):
                from pymodbus.exceptions import NoSuchIdException
                self.unanswered[unit_id] = self.unanswered.get(unit_id, 0) + 1
                raise NoSuchIdException(f"lab fault {kind} on unit {unit_id}")
            return await inner(function_code, start_address, address, count, registers, set_values)
        return action

    def fault(self, unit: int, kind: str | None, delay_s: float = 0.0) -> None:
        if kind is not None and kind not in UNIT_FAULTS:
            raise ValueError(f"unknown fault {kind!r} (one of {', '.join(UNIT_FAULTS)})")
        if kind is None:
            self.faults.pop(unit, None)
        else:
            self.faults[unit] = kind

    def start(self, timeout_s: float = 20.0) -> "LabModbusServer":
        self._thread = threading.Thread(target=self._run, name=f"lab-modbus-{self.transport}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"pymodbus {self.transport} server did not start within {timeout_s} s")
        if self._error:
            raise RuntimeError(f"pymodbus {self.transport} server failed: {self._error}") from self._error
        return self

    async def _serve(self) -> None:
        from pymodbus import FramerType
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self.transport == "rtu":
            server = ModbusSerialServer(self._sim_devices(), framer=FramerType.RTU, port=self.path,
                                        baudrate=self.baud, ignore_missing_devices=True)
        else:
            server = ModbusTcpServer(self._sim_devices(), address=self.address, ignore_missing_devices=True)
        await server.serve_forever(background=True)
        self._ready.set()
        await self._stop.wait()
        await server.shutdown()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=5)


class _SiteProxy:
    """What WireSite._on_write calls on SimSite, forwarded to the physics process over the link."""

    def __init__(self, link, pv_rated_kw: float):
        self.link = link
        self.pv_rated_kw = pv_rated_kw

    def actuate_pcs(self, kw: float) -> None:
        self.link.send({"op": "actuate", "what": "pcs", "kw": kw})

    def actuate_genset(self, run: bool) -> None:
        self.link.send({"op": "actuate", "what": "genset", "run": bool(run)})

    def actuate_pv_limit(self, kw: float) -> None:
        self.link.send({"op": "actuate", "what": "pv_limit", "kw": kw})


class WriteSide:
    """The attributes WireSite's write logic uses (units, server, site, _applied), so that logic runs
    here unchanged, imported from wire.py: ``_on_write`` and ``_init_writable`` are WireSite's own."""

    _on_write = WireSite._on_write
    _init_writable = WireSite._init_writable

    def __init__(self, segment: str, server: LabModbusServer, units: dict, site: _SiteProxy, applied_path: str):
        self.segment = segment
        self.server = server
        self.units = units
        self.site = site
        self.applied_path = applied_path
        self.applied_n = 0

    def _applied(self, u: WireUnit, what: str, value: float) -> None:
        """One accepted setpoint -> one line of applied.jsonl (a single O_APPEND write: processes don't mix)."""
        self.applied_n += 1
        now = time.time()
        line = json.dumps({"t": utc_iso(now), "t_s": round(now, 3), "segment": self.segment, "device": u.name,
                           "role": u.role, "unit": u.unit, "what": what, "value": round(float(value), 4)},
                          separators=(",", ":")) + "\n"
        try:
            if os.path.exists(self.applied_path) and os.path.getsize(self.applied_path) > APPLIED_MAX_BYTES:
                os.replace(self.applied_path, self.applied_path + ".1")
            fd = os.open(self.applied_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:       # the lab's disk is not the device's concern: the write still acts
            log.warning("applied.jsonl: %s", exc)


def build(cfg: dict, link) -> tuple[LabModbusServer, WriteSide]:
    if cfg["transport"] == "rtu":
        server = LabModbusServer("rtu", path=cfg["path"], baud=int(cfg.get("baud", 9600)))
    else:
        server = LabModbusServer("tcp", address=(cfg["host"], int(cfg["port"])))
    units = {}
    for d in cfg["units"]:
        prof = load_profile(d["profile"])
        full_scale = d["full_scale"]
        enc = RegisterEncoder(prof, full_scale)
        units[int(d["unit"])] = WireUnit(d["name"], d["role"], int(d["unit"]), prof, enc)
        server.add_device(int(d["unit"]), prof, full_scale)
    side = WriteSide(cfg["name"], server, units, _SiteProxy(link, float(cfg["pv_rated_kw"])), cfg["applied"])
    server.on_write = side._on_write
    side._init_writable()
    return server, side


def _first_values(link, timeout_s: float = 60.0) -> list:
    """Messages up to and including the first register values: no request is answered with zeros."""
    deadline = time.monotonic() + timeout_s
    got: list = []
    while time.monotonic() < deadline:
        select.select([link], [], [], 0.5)
        got += link.recv()
        if any(m.get("op") == "put" for m in got):
            return got
    raise TimeoutError(f"no register values from the physics process within {timeout_s} s")


def serve(cfg: dict, link) -> int:
    server, side = build(cfg, link)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ctl_faults: dict[int, str] = {}
    scenario_silent: set[int] = set()

    def apply_faults() -> None:
        for unit in side.units:
            kind = ctl_faults.get(unit) or ("silent" if unit in scenario_silent else None)
            server.fault(unit, kind)

    try:
        pending = _first_values(link)
    except LinkClosed:
        return 0
    started = False
    try:
        while not stop.is_set():
            if pending:
                msgs, pending = pending, []
            else:
                if not started:
                    server.start()
                    started = True
                    link.send({"op": "ready", "pid": os.getpid()})
                r, _, _ = select.select([link], [], [], 0.5)
                link.flush()
                if not r:
                    continue
                msgs = link.recv()
            for msg in msgs:
                op = msg.get("op")
                if op == "put":
                    for unit, updates in msg["units"].items():
                        if int(unit) in side.units:
                            server.put(int(unit), [(int(fc), int(reg), words) for fc, reg, words in updates])
                    scenario_silent = set(msg.get("scenario_silent", ()))
                    apply_faults()
                elif op == "fault":
                    unit, kind = int(msg["unit"]), msg.get("kind")
                    if kind is None:
                        ctl_faults.pop(unit, None)
                    else:
                        ctl_faults[unit] = kind
                    apply_faults()
                elif op == "stats":
                    link.send({"op": "stats", "requests": server.requests, "unanswered": server.unanswered,
                               "applied": side.applied_n, "faults": server.faults})
    except LinkClosed:
        pass                     # the physics process ended: so does the device
    finally:
        if started:
            server.close()
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s lab-modbus %(levelname)s %(message)s")
    with open(argv[0]) as f:
        cfg = json.load(f)
    return serve(cfg, child_link_from_env(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
