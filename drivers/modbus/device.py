"""ModbusDevice: one unit on a ModbusBus, built from a profile, speaking canonical points.

It keeps the latest raw value of every register point with the cycle time it was read, and turns them
into canonical values with a quality at every ``acquire``: fresh -> OK, failed this cycle -> ERROR,
older than its max age -> STALE. Field faults never raise out of ``acquire``/``actuate``.

Writes follow the reads' backoff: a unit that stopped answering gets no write until a backoff probe read
succeeds (the latest pending value is kept and sent then), so one silent unit costs at most one timeout
per backoff window, not a timeout per write per cycle. Which canonical commands the profile can express is
fixed when the device is built (``supported_commands``); others are dropped without a word per cycle.
"""
from __future__ import annotations

import logging
import math
import struct

import minimalmodbus
import serial

from drivers.base import CANONICAL_COMMANDS, QUALITY_ERROR, QUALITY_OK, QUALITY_STALE, Sink
from drivers.modbus import commands as cmd
from drivers.modbus import sunspec
from drivers.modbus.backoff import Backoff
from drivers.modbus.bus import ModbusBus, get_bus
from drivers.modbus.errors import DEVICE_ANSWERED
from drivers.modbus.decode import decode_raw, is_not_implemented
from drivers.modbus.plan import Block, plan
from drivers.modbus.profile import DeviceProfile, PointSpec, load_profile

log = logging.getLogger(__name__)
FIELD_FAULTS = (minimalmodbus.ModbusException, serial.SerialException, OSError, ValueError, struct.error)
NOT_IMPLEMENTED = object()


class ModbusDevice:
    """A Device (drivers.base) on a Modbus bus: RTU (ModbusBus) or TCP (drivers.modbus.tcp.ModbusTcpBus)."""

    def __init__(self, name: str, profile: DeviceProfile, bus, unit: int, *,
                 timeout_s: float | None = None, retries: int | None = None,
                 fast_max_age_s: float | None = None, slow_max_age_s: float | None = None,
                 backoff: Backoff | None = None, emit_extras: bool = False, refresh_s: float = 10.0):
        if not 1 <= unit <= 247:
            raise ValueError(f"unit id {unit} outside 1..247")
        self.name = name
        self.kind = profile.kind
        self.profile = profile
        self.bus = bus
        self.unit = unit
        self.timeout_s = profile.timeout_s if timeout_s is None else timeout_s
        self.retries = profile.retries if retries is None else retries
        self.fast_max_age_s = profile.fast_max_age_s if fast_max_age_s is None else fast_max_age_s
        self.slow_max_age_s = profile.slow_max_age_s if slow_max_age_s is None else slow_max_age_s
        self.backoff = backoff or Backoff()
        # writes: their own backoff, threshold 1 (the first unanswered write already waits), so a unit that
        # answers reads and not writes does not cost a timeout every cycle
        self.write_backoff = Backoff(threshold=1)
        self.write_failures = 0
        self.last_write_error = ""
        self.emit_extras = emit_extras
        self.refresh_s = refresh_s
        self.models: dict[int, int] = {}
        self._points: dict[str, PointSpec] = {}
        self._fast: list[Block] = []
        self._slow: list[Block] = []
        self._slow_next = 0
        self._raw: dict[str, tuple[object, float]] = {}   # name -> (raw value or NOT_IMPLEMENTED, t read)
        self._failed: set[str] = set()                    # points whose read failed in the last cycle
        self._pending: dict[str, float] = {}
        self._written: dict[str, tuple[float, float]] = {}  # command -> (value, t written)
        self._specs = {c.name: c for c in profile.commands}
        self.supported_commands: frozenset[str] = frozenset(self._specs)
        self.last_error = ""                              # why the last read failed ("" after a good one)
        self.writes_deferred = 0                          # flushes skipped because the unit is backed off
        # bus cycles: reads due (not backed off), all blocks read, some failed, skipped while backed off
        self.polls_due = self.polls_ok = self.polls_failed = self.polls_skipped = 0
        self._refused: set[str] = set()                   # commands the unit answered with an exception
        lacking = [c for c in CANONICAL_COMMANDS.get(self.kind, ()) + CANONICAL_COMMANDS.get(f"{self.kind}_kw", ())
                   if c not in self.supported_commands]
        if lacking:
            log.info("%s: profile %s has no %s command; it is not sent to this device", name, profile.name,
                     ", ".join(lacking))
        if profile.discovery == "none":
            self._set_plan(list(profile.points))
        bus.attach(self)

    # --- planning -------------------------------------------------------------------------------
    @property
    def placed(self) -> bool:
        return bool(self._points)

    def _set_plan(self, points: list[PointSpec]) -> None:
        self._points = {p.name: p for p in points}
        self._fast, self._slow = plan(points, self.profile.max_registers_per_read, self.profile.max_gap_registers)

    def blocks(self) -> tuple[list[Block], list[Block]]:
        """(fast, slow) read blocks; empty until SunSpec discovery has placed the points."""
        return self._fast, self._slow

    def _discover(self) -> None:
        function = self.profile.points[0].function
        _base, self.models = sunspec.discover(
            lambda fc, start, count: self.bus.read(self.unit, fc, start, count, self.timeout_s, self.retries),
            function)
        placed, missing = sunspec.place(self.profile.points, self.models)
        for p in missing:
            log.warning("%s: model %s not on the device; %s is not available", self.name, p.model, p.name)
        self._set_plan(placed)

    # --- bus cycle hooks (called by ModbusBus.cycle) --------------------------------------------------
    def poll(self, now_s: float) -> None:
        """Run this cycle's reads: all fast blocks and the next slow block, unless backed off."""
        self._failed = set()
        if not self.backoff.ready(now_s):
            self.polls_skipped += 1
            return
        self.polls_due += 1
        probing = self.backoff.active
        if not self.placed:
            try:
                self._discover()
            except FIELD_FAULTS as exc:
                log.info("%s: discovery failed: %s", self.name, exc)
                self.last_error = f"SunSpec discovery failed: {exc}"
                self._failed = {p.name for p in self.profile.points}
                self.backoff.failed(now_s)
                self.polls_failed += 1
                return
        due = list(self._fast)
        if self._slow:
            due.append(self._slow[self._slow_next % len(self._slow)])
            self._slow_next += 1
        retries = 0 if probing else self.retries
        for block in due:
            try:
                regs = self.bus.read(self.unit, block.function, block.start, block.count, self.timeout_s, retries)
            except DEVICE_ANSWERED as exc:  # alive but refuses this block: the profile does not fit
                log.warning("%s: block %s@%d refused: %s", self.name, block.function, block.start, exc)
                self.last_error = f"block FC{block.function}@{block.start} refused: {exc}"
                self._failed.update(p.name for p in block.points)
                continue
            except FIELD_FAULTS as exc:
                log.info("%s: read failed: %s", self.name, exc)
                self.last_error = str(exc) or type(exc).__name__
                for b in due[due.index(block):]:
                    self._failed.update(p.name for p in b.points)
                self.backoff.failed(now_s)
                self.polls_failed += 1
                return
            self._store(block, regs, now_s)
        if not self._failed:
            self.last_error = ""
            self.polls_ok += 1
        else:
            self.polls_failed += 1
        self.backoff.succeeded()

    def comm_stats(self) -> dict:
        return {"polls_due": self.polls_due, "polls_ok": self.polls_ok, "polls_failed": self.polls_failed,
                "polls_skipped": self.polls_skipped, "writes_deferred": self.writes_deferred,
                "backed_off": self.backoff.active, "last_error": self.last_error,
                "write_failures": self.write_failures, "last_write_error": self.last_write_error}

    def _store(self, block: Block, regs: list[int], now_s: float) -> None:
        bo, wo = self.profile.byte_order, self.profile.word_order
        sunspec_sentinels = self.profile.sentinels == "sunspec"
        for p in block.points:
            words = regs[p.register - block.start: p.register - block.start + p.count]
            if (sunspec_sentinels or p.type == "float32") and is_not_implemented(words, p.type, bo, wo):
                self._raw[p.name] = (NOT_IMPLEMENTED, now_s)
            else:
                self._raw[p.name] = (decode_raw(words, p.type, bo, wo), now_s)

    def flush_writes(self, now_s: float) -> None:
        """Send pending commands, unless the unit is backed off (then they wait, latest value wins).

        A unit that does not answer a write is backed off like one that does not answer a read; one that
        answers with an exception refuses that command (logged once), and the others still go out.
        """
        if not self._pending:
            return
        if self.backoff.active or not self.write_backoff.ready(now_s):
            # the last read got no answer (wait for a probe read), or the unit answers reads but not writes
            # (its own backoff, which a good read does not reset): keep the latest values, try later
            self.writes_deferred += 1
            return
        for name in list(self._pending):
            value = self._pending[name]
            try:
                for start, words in self._command_writes(name, value):
                    # no retry inside the cycle: a write that times out costs one timeout, and the next
                    # attempt waits for the write backoff (a retry here doubled the stall every time)
                    self.bus.write(self.unit, start, words, self.timeout_s, 0)
            except DEVICE_ANSWERED as exc:
                if name not in self._refused:
                    self._refused.add(name)
                    log.warning("%s: write %s=%s refused: %s", self.name, name, value, exc)
                del self._pending[name]
                continue
            except FIELD_FAULTS as exc:
                log.info("%s: write %s=%s failed: %s", self.name, name, value, exc)
                if not isinstance(exc, ValueError):     # ValueError: not expressible yet, not the wire
                    self.write_backoff.failed(now_s)
                    self.write_failures += 1
                    self.last_write_error = str(exc) or type(exc).__name__
                    return
                continue
            self.write_backoff.succeeded()
            self.last_write_error = ""
            self._refused.discard(name)
            del self._pending[name]
            self._written[name] = (value, now_s)

    def _command_writes(self, name: str, value: float) -> list[tuple[int, list[int]]]:
        spec = next(c for c in self.profile.commands if c.name == name)
        if spec.handler == "deepsea_key":
            return cmd.deepsea_key_writes(spec.params, value)
        if spec.handler == "register":
            return cmd.register_writes(spec.params, value, self.profile.byte_order, self.profile.word_order)
        if spec.handler == "sunspec_wmaxlim":
            return self._wmaxlim_writes(spec, value)
        model = spec.params.get("model", 124)
        if model not in self.models:
            raise ValueError(f"SunSpec model {model} not discovered yet")
        max_point = self._value(spec.params.get("max_point", "wchamax_kw"), now_s=math.inf)
        max_kw = 0.0 if max_point is None or math.isnan(max_point[0]) else max_point[0]
        sf_raw = self._raw.get(sunspec.sf_point_name(model, spec.params.get("rate_sf_offset", 23)))
        rate_sf = 0 if sf_raw is None or sf_raw[0] is NOT_IMPLEMENTED else sf_raw[0]
        if not sunspec.sf_ok(rate_sf):
            raise ValueError(f"InOutWRte_SF {rate_sf} outside {sunspec.SF_MIN}..{sunspec.SF_MAX}")
        return cmd.sunspec_storage_writes(spec.params, value, self.models[model], max_kw, rate_sf)

    def _wmaxlim_writes(self, spec, value: float) -> list[tuple[int, list[int]]]:
        model = spec.params.get("model", 123)
        if model not in self.models:
            raise ValueError(f"SunSpec model {model} not discovered yet")
        wmax = self._value(spec.params.get("max_point", "wmax_kw"), now_s=math.inf)
        sf_raw = self._raw.get(sunspec.sf_point_name(model, spec.params.get("pct_sf_offset", 21)))
        if sf_raw is None or not isinstance(sf_raw[0], int):     # never guess a scale factor
            raise ValueError("WMaxLimPct_SF not read yet")
        if not sunspec.sf_ok(sf_raw[0]):
            raise ValueError(f"WMaxLimPct_SF {sf_raw[0]} outside {sunspec.SF_MIN}..{sunspec.SF_MAX}")
        wmax_kw = 0.0 if wmax is None or math.isnan(wmax[0]) else wmax[0]
        return cmd.sunspec_wmaxlim_writes(spec.params, value, self.models[model], wmax_kw, int(sf_raw[0]))

    # --- values ---------------------------------------------------------------------------------------
    def _max_age(self, p: PointSpec) -> float:
        return self.fast_max_age_s if p.fast else self.slow_max_age_s

    def _value(self, name: str, now_s: float) -> tuple[float, float, int] | None:
        """(engineering value, t, quality) of a register point; None when the device lacks it."""
        p = self._points.get(name)
        if p is None:
            return None if self.placed else (math.nan, now_s, QUALITY_STALE)
        raw_t = self._raw.get(name)
        if raw_t is not None and raw_t[0] is NOT_IMPLEMENTED:
            return None
        if raw_t is None:
            value, t = math.nan, now_s
            quality = QUALITY_ERROR if name in self._failed else QUALITY_STALE
        else:
            raw, t = raw_t
            value = float(raw) * p.scale
            if p.sf_offset is not None:
                sf = self._raw.get(sunspec.sf_point_name(p.model, p.sf_offset))
                if sf is None or sf[0] is NOT_IMPLEMENTED:
                    return None if sf is not None else (math.nan, now_s, QUALITY_STALE)
                if not sunspec.sf_ok(sf[0]):            # outside -10..10: no value, not an overflow
                    return math.nan, t, QUALITY_ERROR
                value *= 10.0 ** sf[0]
            if name in self._failed:
                quality = QUALITY_ERROR
            else:
                quality = QUALITY_OK if now_s - t <= self._max_age(p) else QUALITY_STALE
        for ref in p.multiply_by:
            other = self._value(ref, now_s)
            if other is None:
                continue
            value *= other[0]
            t = min(t, other[1])
            quality = max(quality, other[2])
        return value, t, quality

    def _derived(self, d, now_s: float) -> tuple[float, float, int] | None:
        parts = [self._value(n, now_s) for n in d.of]
        if any(x is None for x in parts):
            return None
        values = [x[0] for x in parts]
        t = min(x[1] for x in parts)
        quality = max(x[2] for x in parts)
        if d.op == "mean":
            value = sum(values) / len(values)
        elif d.op == "sum":
            value = sum(values)
        elif d.op == "nonzero":
            value = float(values[0] != 0) if not math.isnan(values[0]) else math.nan
        elif d.op == "pct_of":
            value = values[0] * values[1] / 100.0
        else:  # bit_set / bit_clear
            if not math.isfinite(values[0]):           # a float32 word holding inf has no bits to test
                value = math.nan
            else:
                bit = (int(values[0]) >> d.bit) & 1
                value = float(bit if d.op == "bit_set" else 1 - bit)
        return value, t, quality

    def readings(self, now_s: float, extras: bool = True) -> dict[str, tuple[float, float, int]]:
        """Every point's (value, t, quality) as of ``now_s``; not-implemented points are left out."""
        out = {}
        for p in self.profile.points:
            if p.extra and not extras:
                continue
            v = self._value(p.name, now_s)
            if v is not None:
                out[p.name] = v
        for d in self.profile.derived:
            if d.extra and not extras:
                continue
            v = self._derived(d, now_s)
            if v is not None:
                out[d.name] = v
        return out

    # --- Device contract --------------------------------------------------------------------------------
    def acquire(self, now_mono_s: float, sink: Sink) -> None:
        try:
            self.bus.acquire_for(self, now_mono_s)
        except FIELD_FAULTS as exc:  # the port itself went away (USB adapter unplugged...)
            log.warning("%s: bus %s failed: %s", self.name, self.bus.url, exc)
            self._failed = set(self._points)
        for point, (value, t, quality) in self.readings(now_mono_s, extras=self.emit_extras).items():
            sink(self.name, point, value, t, quality)

    def actuate(self, commands: dict[str, float], now_mono_s: float) -> None:
        for name, value in commands.items():
            spec = self._specs.get(name)
            if spec is None:            # not expressible by this profile: known since start-up
                continue
            last = self._written.get(name)
            edge_only = spec.handler == "deepsea_key"
            if last is not None and last[0] == value and (edge_only or now_mono_s - last[1] < self.refresh_s):
                self._pending.pop(name, None)
                continue
            self._pending[name] = value
        try:
            self.flush_writes(now_mono_s)
        except FIELD_FAULTS as exc:
            log.warning("%s: actuate failed: %s", self.name, exc)

    def close(self) -> None:
        self.bus.detach(self)


def open_device(name: str, profile: str | DeviceProfile, port_url: str, unit: int, baud: int | None = None,
                **kwargs) -> ModbusDevice:
    """A ModbusDevice on the shared bus for ``port_url`` (opened on first use)."""
    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    bus = get_bus(port_url, baud or prof.baud)
    return ModbusDevice(name, prof, bus, unit, **kwargs)
