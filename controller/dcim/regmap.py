"""The DCIM register map (profiles/dcim/registers.toml): load, check, encode and decode one value, and the
table of docs/dcim.md.

The map is data so that the integrator's document, the server and the reader tool cannot disagree: the
server compiles its per-cycle mapping from it (controller/dcim/block.py), `python -m controller.dcim.read`
decodes with it, and `python -m controller.dcim.regmap --markdown` prints the table docs/dcim.md carries
(tests/test_dcim_map.py compares them). Encoding conventions are in the TOML file's header.

Only the standard library here: the reader tool runs on a DCIM engineer's laptop too.
"""
from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 gateways
    import tomli as tomllib

MAP_PATH = Path(__file__).resolve().parent.parent.parent / "profiles" / "dcim" / "registers.toml"
TYPES = {"uint16": 1, "int16": 1, "uint32": 2, "float32": 2}       # words per type
# "not available" raw words (SunSpec "not implemented"; OpenEMS's undefined float32 is NaN too)
NA_WORDS = {"uint16": (0xFFFF,), "int16": (0x8000,), "uint32": (0xFFFF, 0xFFFF), "float32": (0x7FC0, 0x0000)}
# the representable raw range, the not-available pattern left out (a value beyond it saturates)
RAW_RANGE = {"uint16": (0, 0xFFFE), "int16": (-0x7FFF, 0x7FFF), "uint32": (0, 0xFFFFFFFE)}
SOURCE_KINDS = ("point", "cmd", "param", "const", "derived")
WRITE_KINDS = ("mode", "reserve_soc", "battery_kw")
KEYS = {"address", "name", "type", "unit", "scale", "source", "access", "write", "codes", "bits", "doc"}
MAX_ADDRESS = 9999


class MapError(ValueError):
    """The register map file is wrong (a build defect, not a site problem): names the entry and key."""


@dataclass(frozen=True)
class Register:
    address: int
    name: str
    type: str
    source: str
    unit: str = ""
    scale: float = 1.0
    access: str = "r"
    write: str = ""
    codes: tuple = ()          # enum: the name of each raw value
    bits: tuple = ()           # bit field: the name of each bit
    doc: str = ""

    @property
    def words(self) -> int:
        return TYPES[self.type]

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def ref(self) -> str:
        return self.source.split(":", 1)[1]

    @property
    def writable(self) -> bool:
        return self.access == "rw"


@dataclass(frozen=True)
class RegisterMap:
    version: int
    registers: tuple[Register, ...]

    @property
    def size(self) -> int:
        """Registers from address 0 to the last word of the last entry."""
        last = max(self.registers, key=lambda r: r.address)
        return last.address + last.words

    def by_name(self, name: str) -> Register:
        for r in self.registers:
            if r.name == name:
                return r
        raise KeyError(name)

    def ranges(self, max_count: int = 100) -> list[tuple[int, int]]:
        """(start, count) reads covering every entry, each at most max_count registers, no entry split."""
        out: list[list[int]] = []
        for r in sorted(self.registers, key=lambda r: r.address):
            end = r.address + r.words
            if out and r.address - (out[-1][0] + out[-1][1]) <= 16 and end - out[-1][0] <= max_count:
                out[-1][1] = end - out[-1][0]
            else:
                out.append([r.address, r.words])
        return [(a, n) for a, n in out]


def load_map(path: str | Path = MAP_PATH) -> RegisterMap:
    """Parse and check the map: types, sources, unique names, no overlapping words, rw entries typed."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MapError(f"{path}: {exc}") from None
    version = doc.get("map", {}).get("version")
    if type(version) is not int:
        raise MapError(f"{path}: [map] version must be an integer")
    regs: list[Register] = []
    used: dict[int, str] = {}
    for i, raw in enumerate(doc.get("registers", [])):
        where = f"{path}: registers[{i}] ({raw.get('name', '?')})"
        extra = set(raw) - KEYS
        if extra:
            raise MapError(f"{where}: unknown keys {sorted(extra)}")
        for key in ("address", "name", "type", "source", "doc"):
            if key not in raw:
                raise MapError(f"{where}: {key} missing")
        typ = raw["type"]
        if typ not in TYPES:
            raise MapError(f"{where}: type must be one of {', '.join(TYPES)}, got {typ!r}")
        addr = raw["address"]
        if type(addr) is not int or not 0 <= addr <= MAX_ADDRESS - TYPES[typ]:
            raise MapError(f"{where}: address must be an integer 0..{MAX_ADDRESS}")
        kind, sep, ref = str(raw["source"]).partition(":")
        if not sep or kind not in SOURCE_KINDS or not ref:
            raise MapError(f"{where}: source must be KIND:NAME with KIND one of {', '.join(SOURCE_KINDS)}")
        scale = raw.get("scale", 1)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise MapError(f"{where}: scale must be a positive number")
        if typ == "float32" and scale != 1:
            raise MapError(f"{where}: a float32 carries the value itself (scale 1)")
        access = raw.get("access", "r")
        write = raw.get("write", "")
        if access not in ("r", "rw"):
            raise MapError(f"{where}: access must be 'r' or 'rw'")
        if (access == "rw") != bool(write) or (write and write not in WRITE_KINDS):
            raise MapError(f"{where}: an rw register names its write ({', '.join(WRITE_KINDS)}), an r one none")
        if access == "rw" and TYPES[typ] != 1:
            raise MapError(f"{where}: writable registers are one word (FC6 writes them atomically)")
        codes, bits = raw.get("codes", []), raw.get("bits", [])
        for key, names in (("codes", codes), ("bits", bits)):
            if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
                raise MapError(f"{where}: {key} must be a list of names")
        if codes and bits:
            raise MapError(f"{where}: an enum (codes) or a bit field (bits), not both")
        if len(bits) > 16 * TYPES[typ]:
            raise MapError(f"{where}: {len(bits)} bits do not fit in a {typ}")
        for w in range(addr, addr + TYPES[typ]):
            if w in used:
                raise MapError(f"{where}: address {w} already used by {used[w]}")
            used[w] = raw["name"]
        if any(r.name == raw["name"] for r in regs):
            raise MapError(f"{where}: duplicate name")
        regs.append(Register(addr, raw["name"], typ, str(raw["source"]), str(raw.get("unit", "")), float(scale),
                             access, write, tuple(codes), tuple(bits), str(raw["doc"])))
    if not regs:
        raise MapError(f"{path}: no [[registers]]")
    return RegisterMap(version, tuple(sorted(regs, key=lambda r: r.address)))


def const_value(reg: Register) -> float:
    """A const:VALUE source's number (decimal, 0x hex or a float)."""
    try:
        return float(int(reg.ref, 0))
    except ValueError:
        return float(reg.ref)


def encode(reg: Register, value: float | None) -> list[int]:
    """One value -> its words; None or NaN -> the not-available pattern. (The server encodes a whole block
    at once with numpy, block.py; this is the reference the tests hold it to.)"""
    if value is None or not math.isfinite(value):
        return list(NA_WORDS[reg.type])
    if reg.type == "float32":
        hi, lo = struct.unpack(">HH", struct.pack(">f", value))
        return [hi, lo]
    lo_raw, hi_raw = RAW_RANGE[reg.type]
    raw = min(max(int(round(value * reg.scale)), lo_raw), hi_raw)
    if reg.type == "uint32":
        return [raw >> 16, raw & 0xFFFF]
    return [raw & 0xFFFF]


def decode(reg: Register, words) -> float | int | None:
    """Words -> the engineering value (raw / scale; an int for an integer type of scale 1), None when not
    available."""
    words = [int(w) & 0xFFFF for w in words]
    if reg.type == "float32":
        value = struct.unpack(">f", struct.pack(">HH", *words))[0]
        return None if math.isnan(value) else value
    if tuple(words) == NA_WORDS[reg.type]:
        return None
    if reg.type == "uint32":
        raw = words[0] << 16 | words[1]
    elif reg.type == "int16":
        raw = words[0] - 0x10000 if words[0] >= 0x8000 else words[0]
    else:
        raw = words[0]
    return raw / reg.scale if reg.scale != 1 else raw


def markdown(rmap: RegisterMap) -> str:
    """The register table of docs/dcim.md."""
    lines = ["| address | name | type | unit | scale | access | source | meaning |",
             "| ---: | --- | --- | --- | ---: | --- | --- | --- |"]
    for r in rmap.registers:
        addr = f"{r.address}" if r.words == 1 else f"{r.address}-{r.address + r.words - 1}"
        scale = "" if r.type == "float32" else f"{r.scale:g}"
        access = "r" if not r.writable else f"rw ({r.write})"
        meaning = r.doc
        if r.codes:
            meaning += "; values: " + ", ".join(f"{i} {c}" for i, c in enumerate(r.codes))
        if r.bits:
            meaning += "; bits: " + ", ".join(f"{i} {c}" for i, c in enumerate(r.bits))
        lines.append(f"| {addr} | `{r.name}` | {r.type} | {r.unit} | {scale} | {access} | `{r.source}` | "
                     f"{meaning.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m controller.dcim.regmap",
                                 description="check the DCIM register map; print its table for docs/dcim.md")
    ap.add_argument("--map", default=str(MAP_PATH))
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    try:
        rmap = load_map(args.map)
    except MapError as exc:
        print(f"edge-ems dcim: {exc}", file=sys.stderr)
        return 2
    if args.markdown:
        sys.stdout.write(markdown(rmap))
    else:
        print(f"{args.map}: ok, version {rmap.version}, {len(rmap.registers)} entries, {rmap.size} registers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
