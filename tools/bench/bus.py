"""Bus efficiency: polling time per cycle against the wire-time floor, at 9600 baud.

    python -m tools.bench.bus [--baud 9600] [--cycles 30]

The reference site (site meter SDM630, PV meter SDM120, SunSpec PCS, Deep Sea genset, Modbus BMS) is
served by the simulator's pymodbus RTU server behind a WireBridge that paces bytes at the baud rate, so
the measured time includes real serial timing plus every overhead of our driver. The floor is what the
same transactions cost on an ideal wire: (request + response bytes) x 11 bits / baud plus two 3.5-
character silences per transaction (before the request, before the response). Goal: ratio <= 1.3.
"""
from __future__ import annotations

import argparse
import json
import time

from drivers.modbus.bus import ModbusBus
from drivers.modbus.device import ModbusDevice
from drivers.modbus.profile import load_profile
from tools.sim.modbus_server import SimBus

REFERENCE_SITE = [  # (device name, profile, unit, canonical values)
    ("site_meter", "eastron_sdm630", 1, {"power_kw": 35.0, "voltage_v": 230.0, "current_a": 150.0}),
    ("pv_meter", "eastron_sdm120", 2, {"power_kw": 4.2, "voltage_v": 231.0}),
    ("pcs", "sunspec_storage_pcs", 3, {"power_kw": -20.0, "soc_pct": 60.0, "wchamax_kw": 100.0, "state": 4}),
    ("genset", "deepsea_gencomm", 4, {"power_kw": 0.0, "fuel_pct": 80.0}),
    ("bms", "generic_modbus_bms", 5, {"soc_pct": 60, "voltage_v": 52.0, "current_a": -10.0}),
]


def floor_s(transactions: int, wire_bytes: int, baud: int) -> float:
    char_s = 11.0 / baud
    gap_s = max(3.5 * char_s, 0.00175)
    return wire_bytes * char_s + 2 * gap_s * transactions


def run(baud: int = 9600, cycles: int = 30) -> dict:
    with SimBus(baud=baud) as sim:
        for _name, profile, unit, values in REFERENCE_SITE:
            sim.add_device(unit, profile, values)
        sim.start()
        bus = ModbusBus(sim.client_path, baud=baud)
        devices = [ModbusDevice(name, load_profile(profile), bus, unit, timeout_s=1.0)
                   for name, profile, unit, _ in REFERENCE_SITE]
        for i in range(3):  # SunSpec discovery and the first pass over slow blocks are not steady state
            bus.cycle(float(i))
        per_cycle, floors, tx = [], [], 0
        for i in range(cycles):
            before = (bus.stats.transactions, bus.stats.request_bytes + bus.stats.response_bytes,
                      bus.stats.failures)
            t0 = time.monotonic()
            bus.cycle(10.0 + i)
            per_cycle.append(time.monotonic() - t0)
            n = bus.stats.transactions - before[0]
            tx += n
            floors.append(floor_s(n, bus.stats.request_bytes + bus.stats.response_bytes - before[1], baud))
            if bus.stats.failures != before[2]:
                raise RuntimeError("a transaction failed during the bench; the figure would be meaningless")
        bus.close()
    total, floor = sum(per_cycle), sum(floors)
    return {"baud": baud, "cycles": cycles, "devices": len(REFERENCE_SITE),
            "transactions_per_cycle": tx / cycles, "poll_ms_per_cycle": 1000 * total / cycles,
            "floor_ms_per_cycle": 1000 * floor / cycles, "max_poll_ms": 1000 * max(per_cycle),
            "ratio": total / floor}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.bus", description=__doc__.splitlines()[0])
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--cycles", type=int, default=30)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    r = run(args.baud, args.cycles)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"reference site, {r['devices']} devices at {r['baud']} baud, {r['cycles']} cycles: "
              f"{r['transactions_per_cycle']:.1f} transactions/cycle")
        print(f"polling {r['poll_ms_per_cycle']:.1f} ms/cycle (max {r['max_poll_ms']:.1f}) vs wire floor "
              f"{r['floor_ms_per_cycle']:.1f} ms/cycle -> ratio {r['ratio']:.2f} (goal <= 1.3)")
    return 0 if r["ratio"] <= 1.3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
