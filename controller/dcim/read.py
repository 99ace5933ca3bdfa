"""`python -m controller.dcim.read --host H [--port P] [--unit U]`: every register of the DCIM map, decoded,
as one JSON object; what a DCIM integrator (and tests/test_dcim_*.py, from another process) reads.

    {"values": {"soc": 54.0, "pv_kw": 0.0, "soh": null, ...}, "raw": {"soc": [540], ...}, "fc": 3}

`null` is the documented not-available pattern. `--fc 4` reads input registers (the same map).
`--write NAME=VALUE` (repeatable) writes engineering values with FC6 first and prints
{"writes": [{"name", "value", "words", "ok", "exception_code"}]}. A pymodbus client; exit 1 when the
server does not answer, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import sys

from controller.dcim.regmap import MAP_PATH, MapError, decode, encode, load_map


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controller.dcim.read", description=__doc__.split("\n")[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=502)
    ap.add_argument("--unit", type=int, default=1)
    ap.add_argument("--fc", type=int, choices=(3, 4), default=3)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--map", default=str(MAP_PATH))
    ap.add_argument("--write", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args(argv)
    try:
        rmap = load_map(args.map)
    except MapError as exc:
        print(f"dcim read: {exc}", file=sys.stderr)
        return 2
    from pymodbus.client import ModbusTcpClient
    client = ModbusTcpClient(args.host, port=args.port, timeout=args.timeout, retries=0)
    if not client.connect():
        print(f"dcim read: cannot connect to {args.host}:{args.port}", file=sys.stderr)
        return 1
    try:
        if args.write:
            return _writes(client, rmap, args)
        out = {"values": {}, "raw": {}, "fc": args.fc}
        words: dict[int, int] = {}
        for start, count in rmap.ranges():
            read = client.read_holding_registers if args.fc == 3 else client.read_input_registers
            rr = read(start, count=count, device_id=args.unit)
            if rr.isError():
                print(json.dumps({"error": str(rr), "exception_code": getattr(rr, "exception_code", None),
                                  "start": start, "count": count}))
                return 1
            words.update(zip(range(start, start + count), rr.registers))
        for r in rmap.registers:
            raw = [words[a] for a in range(r.address, r.address + r.words)]
            out["raw"][r.name] = raw
            out["values"][r.name] = decode(r, raw)
        print(json.dumps(out))
        return 0
    except Exception as exc:                      # a dead server: one line, exit 1
        print(f"dcim read: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _writes(client, rmap, args) -> int:
    results = []
    for spec in args.write:
        name, sep, text = spec.partition("=")
        try:
            reg = rmap.by_name(name)
            value = float(text)
        except (KeyError, ValueError):
            print(f"dcim read: --write {spec!r}: expected NAME=NUMBER with NAME in the map", file=sys.stderr)
            return 2
        words = encode(reg, value)
        if len(words) == 1:
            rr = client.write_register(reg.address, words[0], device_id=args.unit)
        else:
            rr = client.write_registers(reg.address, words, device_id=args.unit)
        results.append({"name": name, "value": value, "words": words, "ok": not rr.isError(),
                        "exception_code": getattr(rr, "exception_code", None) if rr.isError() else None})
    print(json.dumps({"writes": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
