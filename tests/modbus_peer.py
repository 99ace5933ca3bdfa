"""A Modbus device process for the driver tests: a pymodbus RTU server on a pty end, or a TCP server.

Run as its own process (``python tests/modbus_peer.py``) so the driver under test shares nothing with it
but the wire. Units are given as JSON {unit: {"profile": NAME, "values": {point: value}}}; the register
image comes from the simulator's encoder (tools/sim/modbus_server.register_image), the exact inverse of
the driver's decoder. Control is one JSON line per command on stdin, one JSON line back on stdout:

    {"op": "silent", "unit": 4, "on": true}     the unit stops answering (as if unplugged) / answers again
    {"op": "set", "unit": 1, "values": {...}}   new engineering values
    {"op": "writes", "unit": 4}                 -> {"writes": [[start, [words]], ...]}
    {"op": "requests", "unit": 4}               -> {"requests": n} (requests the unit answered)

Units not listed never answer (RTU), or get exception 0x0B like a TCP gateway would with ``--gateway``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.sim.modbus_server import register_image  # noqa: E402
from drivers.modbus.profile import load_profile  # noqa: E402


class Peer:
    def __init__(self, units: dict):
        self.lock = threading.Lock()
        self.units = {}
        for unit, spec in units.items():
            prof = load_profile(spec["profile"])
            values = dict(spec.get("values", {}))
            self.units[int(unit)] = {"profile": prof, "values": values, "banks": register_image(prof, values),
                                     "writes": [], "requests": 0, "silent": False}

    def devices(self, gateway: bool = False):
        from pymodbus.constants import ExcCodes
        from pymodbus.exceptions import NoSuchIdException
        from pymodbus.simulator import DataType, SimData, SimDevice

        async def absent(*_args):           # pymodbus routes unknown ids to device 0: make it nobody
            if gateway:
                return ExcCodes.GATEWAY_NO_RESPONSE
            raise NoSuchIdException("no such unit")
        whole = [SimData(address=0, count=65535, values=0, datatype=DataType.REGISTERS)]
        out = [SimDevice(id=0, simdata=([SimData(address=0, count=16, values=False, datatype=DataType.BITS)],
                                        [SimData(address=0, count=16, values=False, datatype=DataType.BITS)],
                                        whole, list(whole)), action=absent)]
        for unit_id, u in self.units.items():
            blocks = []
            for fc in (3, 4):
                regs = u["banks"][fc]
                lo, hi = (min(regs), max(regs)) if regs else (0, 0)
                blocks.append([SimData(address=lo, count=hi - lo + 1, values=0, datatype=DataType.REGISTERS)])
            bits = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]
            bits2 = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]

            def action(function_code, start_address, address, count, registers, set_values, unit_id=unit_id):
                u = self.units[unit_id]
                with self.lock:
                    if u["silent"]:
                        raise NoSuchIdException(f"unit {unit_id} silenced")   # the server sends nothing
                    bank = u["banks"][4 if function_code == 4 else 3]
                    if set_values is not None:
                        words = [int(v) & 0xFFFF for v in set_values]
                        for i, w in enumerate(words):
                            bank[address + i] = w
                        u["writes"].append([address, words])
                        del u["writes"][:-200]
                    for i in range(count):
                        registers[address - start_address + i] = bank.get(address + i, 0)
                    u["requests"] += 1
                return None

            async def async_action(*args, _action=action):
                return _action(*args)
            out.append(SimDevice(id=unit_id, simdata=(bits, bits2, blocks[0], blocks[1]), action=async_action))
        return out

    def command(self, cmd: dict) -> dict:
        u = self.units[int(cmd["unit"])]
        with self.lock:
            if cmd["op"] == "silent":
                u["silent"] = bool(cmd["on"])
                return {"ok": True}
            if cmd["op"] == "set":
                u["values"].update(cmd["values"])
                image = register_image(u["profile"], u["values"])
                for fc in (3, 4):
                    u["banks"][fc].update(image[fc])
                return {"ok": True}
            if cmd["op"] == "writes":
                return {"writes": list(u["writes"])}
            if cmd["op"] == "requests":
                return {"requests": u["requests"]}
        return {"error": f"unknown op {cmd['op']!r}"}


def _control(peer: Peer, loop, stop) -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = peer.command(json.loads(line))
        except Exception as exc:            # a bad command is the test's bug: say it, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    loop.call_soon_threadsafe(stop.set)     # stdin closed: the test is done


async def serve(args, peer: Peer) -> None:
    from pymodbus import FramerType
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer

    if args.rtu:
        server = ModbusSerialServer(peer.devices(), framer=FramerType.RTU, port=args.rtu, baudrate=args.baud,
                                    ignore_missing_devices=True)
    else:
        server = ModbusTcpServer(peer.devices(args.gateway), address=("127.0.0.1", args.tcp),
                                 ignore_missing_devices=True)
    await server.serve_forever(background=True)
    stop = asyncio.Event()
    threading.Thread(target=_control, args=(peer, asyncio.get_running_loop(), stop), daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)
    await stop.wait()
    await server.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtu", help="serve Modbus RTU on this serial path (one end of a socat pty pair)")
    ap.add_argument("--tcp", type=int, help="serve Modbus TCP on 127.0.0.1:PORT")
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--gateway", action="store_true", help="unknown units get exception 0x0B (TCP)")
    ap.add_argument("--units", required=True, help="JSON {unit: {profile, values}}")
    args = ap.parse_args()
    asyncio.run(serve(args, Peer(json.loads(args.units))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
