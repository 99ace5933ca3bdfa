"""Canonical commands -> register writes, one small function per handler kind named in a profile.

Each handler returns [(start register, raw words)] to write with FC16, in order. They hold no state and
do no I/O, so what goes on the wire for a command can be checked without a device.
"""
from __future__ import annotations

import math

from drivers.modbus.decode import encode_raw, unscaled


def _finite(value: float, what: str) -> None:
    """A NaN or infinite command has no register image: min/max would clamp NaN to a full +100 %."""
    if not math.isfinite(value):
        raise ValueError(f"{what}: {value!r} is not a setpoint")


def ones_complement(word: int) -> int:
    return ~word & 0xFFFF


def deepsea_key_writes(params: dict, value: float) -> list[tuple[int, list[int]]]:
    """Deep Sea GenComm system control: key then its ones' complement, written together.

    GenComm ignores a key without the matching complement in the next register, which is what makes a
    stray write unable to start an engine. ``run`` >= 0.5 sends ``on_keys`` in order, else ``off_keys``.
    """
    _finite(value, "run")
    keys = params["on_keys"] if value >= 0.5 else params["off_keys"]
    return [(params["key_register"], [k & 0xFFFF, ones_complement(k)]) for k in keys]


def register_writes(params: dict, value: float, byte_order: str, word_order: str) -> list[tuple[int, list[int]]]:
    """A plain setpoint register: value / scale, encoded in the device's byte and word order."""
    type_name = params["type"]
    raw = unscaled(value, type_name, float(params.get("scale", 1.0)))
    return [(params["register"], encode_raw(raw, type_name, byte_order, word_order))]


def sunspec_storage_writes(params: dict, value_kw: float, model_start: int, max_kw: float,
                           rate_sf: int) -> list[tuple[int, list[int]]]:
    """SunSpec model 124: StorCtl_Mod = both limits, OutWRte = +p %, InWRte = -p % of WChaMax.

    Positive ``value_kw`` discharges (generator convention). Setting both rates with opposite signs
    forces the power rather than only capping it (the approach of Fronius' and SMA's SunSpec notes).
    """
    _finite(value_kw, "setpoint_kw")
    if not max_kw > 0 or not math.isfinite(max_kw):
        raise ValueError("WChaMax unknown or zero: cannot express a setpoint as a percentage")
    pct = max(-100.0, min(100.0, value_kw / max_kw * 100.0))
    raw = max(-32767, min(32767, int(round(pct / 10.0 ** rate_sf))))
    mode = encode_raw(int(params.get("mode_value", 3)), "uint16")
    rates = encode_raw(raw, "int16") + encode_raw(-raw, "int16")
    out_offset = params.get("out_offset", 10)
    return [(model_start + params.get("mode_offset", 3), mode), (model_start + out_offset, rates)]


def sunspec_wmaxlim_writes(params: dict, value_kw: float, model_start: int, wmax_kw: float,
                           pct_sf: int) -> list[tuple[int, list[int]]]:
    """SunSpec model 123: WMaxLimPct = limit / WMax (model 121) x 100 %, then WMaxLim_Ena = 1.

    One FC16 write of offsets 3..7 (WMaxLimPct, WMaxLimPct_WinTms, _RvrtTms, _RmpTms = 0: at once, no
    revert, no ramp; WMaxLim_Ena = 1), so the inverter never sees a new percentage without the enable.
    """
    _finite(value_kw, "limit_kw")
    if not wmax_kw > 0 or not math.isfinite(wmax_kw):
        raise ValueError("WMax unknown or zero: cannot express a PV limit as a percentage")
    pct = max(0.0, min(100.0, value_kw / wmax_kw * 100.0))
    raw = max(0, min(65534, int(round(pct / 10.0 ** pct_sf))))
    return [(model_start + params.get("pct_offset", 3), [raw, 0, 0, 0, 1])]
