"""Register words <-> numbers: the only place that knows about byte order, word order and sentinels.

Kept free of I/O so the decoder can be property-tested and fuzzed on its own, and so the simulator can
encode with exactly the inverse of what the driver decodes.
"""
from __future__ import annotations

import math
import struct

# type name -> (registers, struct code for the big-endian byte image)
TYPES: dict[str, tuple[int, str]] = {
    "uint16": (1, ">H"),
    "int16": (1, ">h"),
    "enum16": (1, ">H"),
    "bitfield16": (1, ">H"),
    "sunssf": (1, ">h"),   # SunSpec scale factor: an int16 exponent of ten
    "uint32": (2, ">I"),
    "int32": (2, ">i"),
    "acc32": (2, ">I"),    # SunSpec accumulator
    "bitfield32": (2, ">I"),
    "float32": (2, ">f"),
}
ORDERS = ("big", "little")

# SunSpec "not implemented" values, as the raw integer image of the registers.
_SUNSPEC_NOT_IMPLEMENTED = {
    "int16": 0x8000, "sunssf": 0x8000, "uint16": 0xFFFF, "enum16": 0xFFFF, "bitfield16": 0xFFFF,
    "int32": 0x80000000, "uint32": 0xFFFFFFFF, "bitfield32": 0xFFFFFFFF, "acc32": 0,
}


def register_count(type_name: str) -> int:
    return TYPES[type_name][0]


def _reorder(data: bytes, byte_order: str, word_order: str) -> bytes:
    """Swap words and/or the bytes inside words; the operation is its own inverse."""
    words = [data[i:i + 2] for i in range(0, len(data), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return b"".join(words)


def registers_to_bytes(registers: list[int] | tuple[int, ...]) -> bytes:
    return b"".join(int(r & 0xFFFF).to_bytes(2, "big") for r in registers)


def bytes_to_registers(data: bytes) -> list[int]:
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


def decode_raw(registers, type_name: str, byte_order: str = "big", word_order: str = "big"):
    """The unscaled value of ``registers`` (as they came off the wire) for ``type_name``."""
    count, code = TYPES[type_name]
    if len(registers) != count:
        raise ValueError(f"{type_name} needs {count} registers, got {len(registers)}")
    data = _reorder(registers_to_bytes(registers), byte_order, word_order)
    return struct.unpack(code, data)[0]


def encode_raw(value, type_name: str, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """Registers (wire order) holding the unscaled ``value``; the exact inverse of :func:`decode_raw`."""
    _count, code = TYPES[type_name]
    if code == ">f":
        data = struct.pack(code, float(value))
    else:
        data = struct.pack(code, int(value))
    return bytes_to_registers(_reorder(data, byte_order, word_order))


def is_not_implemented(registers, type_name: str, byte_order: str = "big", word_order: str = "big") -> bool:
    """SunSpec's 'this device does not have the value' markers (float32: NaN)."""
    data = _reorder(registers_to_bytes(registers), byte_order, word_order)
    if type_name == "float32":
        return math.isnan(struct.unpack(">f", data)[0])
    sentinel = _SUNSPEC_NOT_IMPLEMENTED.get(type_name)
    return sentinel is not None and int.from_bytes(data, "big") == sentinel


def scaled(raw, scale: float = 1.0, sf: int | None = None) -> float:
    """Engineering value: raw x scale x 10^sf (sf from a SunSpec scale-factor register, if any)."""
    value = float(raw) * scale
    if sf:
        value *= 10.0 ** sf
    return value


def unscaled(value: float, type_name: str, scale: float = 1.0, sf: int | None = None):
    """Raw register value for an engineering value: the inverse of :func:`scaled`, rounded for ints.
    Raises ValueError for a value no register holds (NaN, infinite: int() of them is no answer)."""
    raw = float(value) / scale
    if sf:
        raw /= 10.0 ** sf
    if type_name == "float32":
        return raw
    if not math.isfinite(raw):
        raise ValueError(f"{value!r} cannot be written to a {type_name} register")
    return int(round(raw))
