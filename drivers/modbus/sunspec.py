"""SunSpec discovery: find the 'SunS' marker, walk the model chain, place model-relative points.

SunSpec devices do not have fixed addresses: the same model sits at a different register on every
vendor's map, so a profile names points by (model, offset) and discovery turns them into registers.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from drivers.modbus.profile import PointSpec

SUNS_MARKER = (0x5375, 0x6E53)  # 'SunS'
BASE_ADDRESSES = (40000, 0, 50000)  # the order the spec says to probe
END_MODEL_ID = 0xFFFF
MAX_MODELS = 64  # a chain longer than this is a broken map, not a device

# Fixed model lengths (registers after the 2-register header) of the models this project places.
# From the SunSpec Information Model Reference / pySunSpec2's model JSON.
MODEL_LENGTHS = {1: 66, 101: 50, 102: 50, 103: 50, 120: 26, 121: 30, 122: 44, 123: 24, 124: 24,
                 701: 153, 704: 65, 713: 7}

Read = Callable[[int, int, int], list[int]]  # (function, start, count) -> registers
# Scale factors the SunSpec Information Model defines (sunssf: -10..10). A register outside it is a
# broken or hostile map, not a value: 10.0 ** 32767 raised OverflowError into the scan cycle.
SF_MIN, SF_MAX = -10, 10


class SunSpecError(IOError):
    """No 'SunS' marker, or a model chain that does not end properly."""


def discover(read: Read, function: int = 3) -> tuple[int, dict[int, int]]:
    """(base address, {model id: register of its first data word}) for the device behind ``read``.

    A read that fails with an exception response at one base is normal (the device has no registers
    there); any other failure propagates so the bus scheduler can back off.
    """
    base = None
    for candidate in BASE_ADDRESSES:
        try:
            if tuple(read(function, candidate, 2)) == SUNS_MARKER:
                base = candidate
                break
        except _exception_response_types():
            continue
    if base is None:
        raise SunSpecError("no 'SunS' marker at 40000, 0 or 50000")
    models: dict[int, int] = {}
    address = base + 2
    for _ in range(MAX_MODELS):
        model_id, length = read(function, address, 2)
        if model_id == END_MODEL_ID:
            return base, models
        models.setdefault(model_id, address + 2)  # first instance wins (repeating models: not placed)
        address += 2 + length
    raise SunSpecError(f"model chain from {base} has no end marker within {MAX_MODELS} models")


def _exception_response_types():
    import minimalmodbus
    return (minimalmodbus.IllegalRequestError, minimalmodbus.SlaveReportedException)


def place(points: tuple[PointSpec, ...], models: dict[int, int]) -> tuple[list[PointSpec], list[PointSpec]]:
    """(placed points, points whose model the device lacks). Scale-factor registers become hidden points."""
    placed: dict[str, PointSpec] = {}
    missing = []
    for p in points:
        if p.model not in models:
            missing.append(p)
            continue
        start = models[p.model]
        placed[p.name] = dataclasses.replace(p, register=start + p.offset)
        if p.sf_offset is not None:
            sf_name = sf_point_name(p.model, p.sf_offset)
            if sf_name not in placed:
                placed[sf_name] = PointSpec(name=sf_name, function=p.function, type="sunssf", fast=p.fast,
                                            register=start + p.sf_offset, model=p.model, offset=p.sf_offset,
                                            extra=True)
            elif p.fast and not placed[sf_name].fast:
                placed[sf_name] = dataclasses.replace(placed[sf_name], fast=True)
    return list(placed.values()), missing


def sf_ok(sf) -> bool:
    """A scale factor a value may be multiplied by (an int in SF_MIN..SF_MAX)."""
    return isinstance(sf, int) and SF_MIN <= sf <= SF_MAX


def sf_point_name(model: int, offset: int) -> str:
    return f"_sf_{model}_{offset}"


def chain_layout(models: list[int], lengths: dict[int, int] | None = None) -> list[tuple[int, int, int]]:
    """[(model id, header register offset from base, length)] for a chain starting at base+2.

    Used by the simulator to build a SunSpec map with exactly the layout discovery expects.
    """
    lengths = {**MODEL_LENGTHS, **(lengths or {})}
    out, offset = [], 2
    for m in models:
        out.append((m, offset, lengths[m]))
        offset += 2 + lengths[m]
    out.append((END_MODEL_ID, offset, 0))
    return out
