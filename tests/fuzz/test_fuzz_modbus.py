"""Fuzz: Modbus field I/O - the RTU reply bytes a slave returns (drivers/modbus/bus.py over minimalmodbus),
the register words every device profile decodes (drivers/modbus/device.py, decode.py, sunspec.py), and
the register codec itself.

Contracts (docs/fuzzing.md):
- RTU frames: `ModbusBus.read` returns exactly `count` words in 0..65535, or raises a
  minimalmodbus.ModbusException (DEVICE_ANSWERED: an exception reply; LINE_FAULTS: no / garbled reply;
  NotConnected). Any other exception type is a crash: the bus does not drain the line or retry on it,
  and callers that catch "the two kinds of failure" (drivers/modbus/errors.py) do not see it.
  `ModbusBus.write` the same (returns None).
- Register maps: for every profile in profiles/devices, a ModbusDevice whose unit answers fuzzed words
  (sentinels, extreme scale factors, float32 inf/NaN, wrong counts, a broken SunSpec model chain, an
  exception or a timeout) never raises from `acquire` or `actuate` (drivers/base.py: "never raise for a
  field fault"); every value it sinks is a float. A value the registers cannot give is NaN with
  QUALITY_ERROR or is left out, never an exception.
- Codec: `decode_raw` of any words of the right count gives a number; `encode_raw(decode_raw(w)) == w`
  (the simulator encodes with the exact inverse of what the driver decodes).
"""
from __future__ import annotations

import math
import struct

import minimalmodbus
import pytest
from hypothesis import example, given, strategies as st

import fuzz_harness as H
from drivers.base import QUALITY_ERROR, QUALITY_OK, QUALITY_STALE
from drivers.modbus import sunspec
from drivers.modbus.bus import ModbusBus
from drivers.modbus.decode import ORDERS, TYPES, decode_raw, encode_raw, register_count
from drivers.modbus.device import ModbusDevice
from drivers.modbus.errors import ExceptionReply, NoAnswer
from drivers.modbus.profile import PROFILE_DIR, load_profile

PROFILES = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def crc(frame: bytes) -> bytes:
    return minimalmodbus._calculate_crc(frame)


class FakePort:
    """A serial port that answers every request with the bytes it was given (then nothing)."""

    def __init__(self, reply: bytes):
        self.reply = bytearray(reply)
        self.is_open, self.port, self.baudrate, self.timeout = True, None, 115200, 0.2
        self.written = b""

    def open(self):
        self.is_open = True

    def close(self):
        self.is_open = False

    def write(self, data):
        self.written += bytes(data)
        return len(data)

    def read(self, n):
        out = bytes(self.reply[:n])
        del self.reply[:n]
        return out

    def reset_input_buffer(self):
        pass

    def reset_output_buffer(self):
        pass

    def flush(self):
        pass


@st.composite
def rtu_replies(draw, unit: int, function: int, count: int):
    """A reply to FC3/FC4 (count registers) or FC16: well formed with fuzzed fields and a valid CRC,
    an exception reply, a mutated good one, or junk."""
    how = draw(st.sampled_from(("fields", "fields", "exception", "mutate", "junk", "empty")))
    if function == 16:
        good = bytes([unit, 16]) + struct.pack(">HH", 0, count)
    else:
        good = bytes([unit, function, 2 * count]) + bytes(draw(st.binary(min_size=2 * count, max_size=2 * count)))
    if how == "empty":
        return b""
    if how == "junk":
        return draw(st.binary(max_size=260))
    if how == "mutate":
        return draw(H.mutated(good + crc(good), 4))
    if how == "exception":
        body = bytes([draw(st.sampled_from([unit, unit, 0, 255])), (function | 0x80) & 0xFF,
                      draw(st.integers(0, 255))])
    else:
        body = bytearray(good)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(body) - 1))
            body[i] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            body = body[:draw(st.integers(0, len(body)))] + draw(st.binary(max_size=8))
        body = bytes(body)
    tail = crc(body) if draw(st.integers(0, 4)) else draw(st.binary(min_size=2, max_size=2))
    return body + tail + (draw(st.binary(max_size=4)) if draw(st.integers(0, 5)) == 0 else b"")


@st.composite
def rtu_cases(draw):
    unit = draw(st.integers(1, 247))
    function = draw(st.sampled_from((3, 4, 16)))
    count = draw(st.integers(1, 125 if function != 16 else 123))
    return unit, function, count, draw(rtu_replies(unit, function, count))


@H.budget(ci=300, long=15000)
@given(rtu_cases())
@example((1, 3, 2, bytes([1, 3, 4, 0, 1, 0, 2]) + crc(bytes([1, 3, 4, 0, 1, 0, 2]))))     # good
@example((1, 3, 2, bytes([1, 0x83, 2]) + crc(bytes([1, 0x83, 2]))))                      # exception 2
@example((1, 3, 2, bytes([1, 3, 3, 0, 1, 0]) + crc(bytes([1, 3, 3, 0, 1, 0]))))           # odd byte count
def test_rtu_reply_bytes(case):
    H.hit("modbus.rtu_frames")
    unit, function, count, reply = case
    bus = ModbusBus("fuzz://port", port=FakePort(reply), late_reply_guard_s=0.0)
    try:
        if function == 16:
            assert bus.write(unit, 0, list(range(count)), timeout_s=0.01, retries=0) is None
        else:
            regs = bus.read(unit, function, 0, count, timeout_s=0.01, retries=0)
            assert len(regs) == count and all(type(r) is int and 0 <= r <= 0xFFFF for r in regs), regs
    except minimalmodbus.ModbusException:
        pass                                   # the documented kinds: answered / nobody answered


# -- register maps: every profile, fuzzed words --------------------------------------------------------
WORD_EDGES = [0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0xFFFE, 0x7F80, 0xFF80, 0x7FC0, 0x0400, 0x7F7F, 0x00FF]
words = st.one_of(st.sampled_from(WORD_EDGES), st.integers(0, 0xFFFF))
# SunSpec defines -10..10; a map may hold anything (0x7FFF: 10.0 ** 32767 overflowed the scan cycle)
SF_EDGES = [0x7FFF, 0x8001, 400, 0xFFFF - 400, 308, 0xFFFF - 330, 11, 0xFFFF - 10, 0x8000]
scale_factors = st.one_of(st.sampled_from(SF_EDGES), st.integers(-10, 10), st.integers(-32768, 32767))


class FakeBus:
    """What ModbusDevice needs of a bus (ModbusBus / ModbusTcpBus): reads answered from a word memory that
    hypothesis fills on demand, sometimes a wrong count, an exception reply or no answer."""

    def __init__(self, data, memory: dict[int, int], faults: bool):
        self.data, self.memory, self.faults = data, memory, faults
        self.url = "fuzz://bus"
        self.writes = []
        self._devices = []

    def attach(self, device):
        self._devices.append(device)

    def detach(self, device):
        self._devices.remove(device)

    def acquire_for(self, device, now_s):
        device.poll(now_s)

    def read(self, unit, function, start, count, timeout_s=0.2, retries=1):
        if not 0 <= start <= 0xFFFF or not 1 <= count <= 125 or start + count > 0x10000:
            raise ValueError(f"register range {start}+{count} outside 0..65535")   # what minimalmodbus says
        if self.faults:
            fault = self.data.draw(st.integers(0, 30), label="fault")
            if fault == 0:
                raise NoAnswer("fuzz: no answer")
            if fault == 1:
                raise ExceptionReply("fuzz: exception 2", 2)
            if fault == 2:
                return self.data.draw(st.lists(st.integers(0, 0xFFFF), max_size=count + 2), label="wrong count")
        out = []
        for a in range(start, start + count):
            if a not in self.memory:
                self.memory[a] = self.data.draw(words, label=f"word {a}")
            out.append(self.memory[a])
        return out

    def write(self, unit, start, registers, timeout_s=0.2, retries=1):
        assert 0 <= start <= 0xFFFF and all(0 <= w <= 0xFFFF for w in registers), (start, registers)
        self.writes.append((start, list(registers)))


def sunspec_memory(data, profile) -> dict[int, int]:
    """A SunSpec map at 40000 with the profile's models, model ids/lengths sometimes fuzzed, and every
    scale-factor register fuzzed towards the extremes."""
    mem = {40000: 0x5375, 40001: 0x6E53}
    models = list(profile.sunspec_models) or [1, 103]
    if data.draw(st.integers(0, 3), label="chain fuzz") == 0:
        models = data.draw(st.lists(st.sampled_from(models + [0, 0xFFFE, 999]), max_size=70), label="models")
    base = 40000
    for m, off, length in sunspec.chain_layout([m for m in models if m in sunspec.MODEL_LENGTHS] or [1]):
        if data.draw(st.integers(0, 9), label="len fuzz") == 0:
            length = data.draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 25000]), label="length")
        mem[base + off], mem[base + off + 1] = m, length
    for p in profile.points:
        if p.model in sunspec.MODEL_LENGTHS and p.sf_offset is not None:
            start = next((base + off + 2 for m, off, _ in sunspec.chain_layout(
                [m for m in models if m in sunspec.MODEL_LENGTHS] or [1]) if m == p.model), None)
            if start is not None:
                mem[start + p.sf_offset] = data.draw(scale_factors, label="sf") & 0xFFFF
    return mem


SETPOINTS = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, -0.0, 1e12, -1e12, 1e300, float("inf"),
                                                              float("-inf"), float("nan")]))


@H.budget(ci=160, long=8000)
@given(st.sampled_from(PROFILES), st.data())
def test_register_maps_decode_or_refuse(name, data):
    H.hit("modbus.register_maps")
    profile = _profile(name)
    memory = sunspec_memory(data, profile) if profile.discovery == "sunspec" else {}
    bus = FakeBus(data, memory, faults=data.draw(st.booleans(), label="faults"))
    dev = ModbusDevice("dev", profile, bus, 1)
    got = []
    sink = lambda dev_name, point, value, t, q: got.append((point, value, q))   # noqa: E731
    for cycle in range(3):
        dev.acquire(float(cycle), sink)
        cmds = {c: data.draw(SETPOINTS, label=c) for c in sorted(dev.supported_commands)}
        dev.actuate(cmds, float(cycle))
    for point, value, q in got:
        assert type(value) is float and q in (QUALITY_OK, QUALITY_STALE, QUALITY_ERROR), (point, value, q)


_PROFILES = {}


def _profile(name):
    if name not in _PROFILES:
        _PROFILES[name] = load_profile(name)
    return _PROFILES[name]


# -- the codec ------------------------------------------------------------------------------------------
@H.budget(ci=300, long=20000)
@given(st.sampled_from(sorted(TYPES)), st.sampled_from(ORDERS), st.sampled_from(ORDERS), st.data())
def test_register_codec_round_trips(type_name, bo, wo, data):
    H.hit("modbus.codec")
    n = register_count(type_name)
    regs = data.draw(st.lists(words, min_size=n, max_size=n))
    raw = decode_raw(regs, type_name, bo, wo)
    assert isinstance(raw, (int, float))
    if type_name == "float32" and math.isnan(raw):
        return                                  # NaN payload bits are not preserved by float()
    assert encode_raw(raw, type_name, bo, wo) == regs
    with pytest.raises(ValueError):
        decode_raw(regs + [0], type_name, bo, wo)


# -- regressions of what the fuzzing found ----------------------------------------------------------------
class _Draws:
    """A stand-in for st.data() that answers every draw by its label (a fixed map for a regression)."""

    def __init__(self, **by_label):
        self.by_label = by_label

    def draw(self, strategy, label=None):
        return self.by_label.get(label, 100)


@pytest.mark.parametrize("sf", [0x7FFF, 0xFFFF - 400, 11])
def test_sunspec_scale_factor_outside_minus10_to_10_is_nan_error_not_overflow(sf):
    """Found by test_register_maps_decode_or_refuse: a SunSpec sunssf register of 32767 made _value compute
    10.0 ** 32767 (OverflowError out of acquire, i.e. into the scan cycle); -400 gave 0.0 silently."""
    draws = _Draws(sf=sf, **{"chain fuzz": 5, "len fuzz": 5})
    profile = _profile("sunspec_storage_pcs")
    dev = ModbusDevice("pcs", profile, FakeBus(draws, sunspec_memory(draws, profile), False), 1)
    got = {}
    dev.acquire(0.0, lambda _d, point, value, t, q: got.__setitem__(point, (value, q)))
    assert math.isnan(got["power_kw"][0]) and got["power_kw"][1] == QUALITY_ERROR
    dev.actuate({"setpoint_kw": 10.0}, 0.0)            # InOutWRte_SF out of range: not written, no raise
    assert not dev.bus.writes or all(start != 0 for start, _ in dev.bus.writes)


def test_non_finite_setpoints_have_no_register_image():
    """unscaled(inf) raised OverflowError (not a field fault: it escaped actuate); NaN clamped to +100 %
    in the SunSpec percentage writes."""
    from drivers.modbus.commands import deepsea_key_writes, sunspec_storage_writes, sunspec_wmaxlim_writes
    from drivers.modbus.decode import unscaled
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError):
            unscaled(bad, "int16")
        with pytest.raises(ValueError):
            sunspec_storage_writes({}, bad, 40000, 100.0, 0)
        with pytest.raises(ValueError):
            sunspec_wmaxlim_writes({}, bad, 40000, 100.0, 0)
        with pytest.raises(ValueError):
            deepsea_key_writes({"key_register": 1, "on_keys": [1], "off_keys": [2]}, bad)
