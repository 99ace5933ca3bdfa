"""Virtual Modbus RTU devices on real serial bytes: a pymodbus RTU server behind a pseudo-terminal pair.

The controller's real driver (minimalmodbus on pyserial) opens one end of a pty pair; a pymodbus RTU
server holding the registers of one or more device profiles listens on the other. Between the two
sits :class:`WireBridge`, a byte pump that can pace bytes at a baud rate (a pty has none, so without
it a bench would measure nothing real) and inject faults per unit id: no answer, CRC error, garbage,
a slow reply, a device that disappears and returns.

    with SimBus(baud=9600) as sim:
        sim.add_device(1, "eastron_sdm630", {"power_kw": 12.5})
        sim.start()
        ... open sim.client_path with serial_for_url ...
        sim.set_values(1, {"power_kw": -3.0}); sim.fault(1, "silent"); sim.fault(1, None)
"""
from __future__ import annotations

import asyncio
import heapq
import os
import random
import select
import threading
import time
import tty
from dataclasses import dataclass, field

from drivers.modbus import sunspec
from drivers.modbus.decode import TYPES, encode_raw, unscaled
from drivers.modbus.profile import DeviceProfile, load_profile

FAULTS = ("silent", "crc", "garbage", "slow")
_INT_LIMITS = {"int16": (-32767, 32767), "uint16": (0, 65534), "enum16": (0, 65534), "bitfield16": (0, 65534),
               "sunssf": (-10, 10), "int32": (-(2 ** 31) + 1, 2 ** 31 - 1), "uint32": (0, 2 ** 32 - 2),
               "acc32": (0, 2 ** 32 - 1), "bitfield32": (0, 2 ** 32 - 2)}
_SENTINEL_RAW = {"int16": -32768, "sunssf": -32768, "uint16": 0xFFFF, "enum16": 0xFFFF, "bitfield16": 0xFFFF,
                 "int32": -(2 ** 31), "uint32": 0xFFFFFFFF, "bitfield32": 0xFFFFFFFF, "acc32": 0,
                 "float32": float("nan")}


# --- register images ------------------------------------------------------------------------------------
def _source_values(profile: DeviceProfile, values: dict) -> dict:
    """Register-point values, filling sources of derived points given only as their canonical result."""
    out = dict(values)
    for d in profile.derived:
        if d.name not in values or values[d.name] is None:
            continue
        v = float(values[d.name])
        if d.op == "mean":
            for s in d.of:
                out.setdefault(s, v)
        elif d.op == "sum":
            for s in d.of:
                out.setdefault(s, v / len(d.of))
        elif d.op == "nonzero":
            out.setdefault(d.of[0], 1500.0 if v else 0.0)
        elif d.op in ("bit_set", "bit_clear"):
            word = int(out.get(d.of[0], 0) or 0)
            on = bool(v) if d.op == "bit_set" else not bool(v)
            out[d.of[0]] = float(word | (1 << d.bit) if on else word & ~(1 << d.bit))
        elif d.op == "pct_of":
            base = out.get(d.of[1])
            if base:
                out.setdefault(d.of[0], v / float(base) * 100.0)
    return out


def _choose_sf(values: list[float], type_name: str) -> int:
    """Smallest exponent that fits every value sharing one SunSpec scale factor into its type."""
    lo, hi = _INT_LIMITS[type_name]
    for sf in range(-2, 7):  # real devices rarely go finer than 10^-2
        if all(lo <= round(v / 10.0 ** sf) <= hi for v in values):
            return sf
    raise ValueError(f"values {values} do not fit {type_name} with any scale factor")


def register_image(profile: DeviceProfile, values: dict, sunspec_base: int = 40000) -> dict[int, dict[int, int]]:
    """{function code: {register: word}} that the driver would decode back into ``values``.

    ``values`` maps point names (canonical or extra) to engineering values; None writes the
    not-implemented sentinel. Points not given read 0.
    """
    vals = _source_values(profile, values)
    bo, wo = profile.byte_order, profile.word_order
    image: dict[int, dict[int, int]] = {3: {}, 4: {}}

    def put(function: int, register: int, words: list[int]) -> None:
        for i, w in enumerate(words):
            image[function][register + i] = w

    placed = list(profile.points)
    if profile.discovery == "sunspec":
        function = profile.points[0].function
        layout = sunspec.chain_layout(list(profile.sunspec_models))
        starts = {m: sunspec_base + off + 2 for m, off, _length in layout}
        put(function, sunspec_base, list(sunspec.SUNS_MARKER))
        for m, off, length in layout:
            put(function, sunspec_base + off, [m, length])
            for i in range(length):
                image[function].setdefault(sunspec_base + off + 2 + i, 0)
        placed, _missing = sunspec.place(profile.points, {m: s for m, s in starts.items() if m != sunspec.END_MODEL_ID})
        # one exponent per scale-factor register, fitting all the points that share it
        sfs: dict[str, int] = {}
        for p in placed:
            if p.type == "sunssf":
                users = [q for q in profile.points if q.model == p.model and q.sf_offset == p.offset]
                raw = [float(vals[q.name]) / q.scale for q in users if vals.get(q.name) is not None]
                sfs[p.name] = _choose_sf(raw or [0.0], users[0].type)
                put(function, p.register, encode_raw(sfs[p.name], "sunssf", bo, wo))
    for c in profile.commands:  # writable registers must exist, or the device answers "illegal address"
        if c.handler == "deepsea_key":
            put(3, c.params["key_register"], [0, 0])
        elif c.handler == "register":
            put(3, c.params["register"], [0] * TYPES[c.params["type"]][0])
    ratio = {name: float(vals.get(name) or 1.0) for p in profile.points for name in p.multiply_by}
    for p in placed:
        if p.type == "sunssf" or p.register is None:
            continue
        v = vals.get(p.name, 0.0)
        if v is None:
            put(p.function, p.register, encode_raw(_SENTINEL_RAW[p.type], p.type, bo, wo))
            continue
        v = float(v)
        for name in p.multiply_by:
            v /= ratio[name] or 1.0
        sf = sfs.get(sunspec.sf_point_name(p.model, p.sf_offset)) if p.sf_offset is not None else None
        put(p.function, p.register, encode_raw(unscaled(v, p.type, p.scale, sf), p.type, bo, wo))
    return image


# --- the wire -----------------------------------------------------------------------------------------------
@dataclass
class Fault:
    kind: str | None = None   # None, or one of FAULTS
    delay_s: float = 0.0      # for "slow"


class WireBridge(threading.Thread):
    """Two pty pairs joined by a byte pump: host (controller) end <-> device (server) end.

    With ``baud`` set, each chunk occupies the shared half-duplex wire for len x 11 / baud seconds, and a
    request reaches the device only after a 3.5-character silence (when an RTU slave can know the frame
    ended). Faults apply to the unit addressed by the latest request.
    """

    def __init__(self, baud: int | None = None, seed: int = 0):
        super().__init__(name="wire-bridge", daemon=True)
        self.baud = baud
        self._char_s = 11.0 / baud if baud else 0.0
        self._gap_s = max(3.5 * self._char_s, 0.00175) if baud else 0.0
        self._host_master, self._host_slave = os.openpty()
        self._dev_master, self._dev_slave = os.openpty()
        for fd in (self._host_slave, self._dev_slave):
            tty.setraw(fd)
        for fd in (self._host_master, self._dev_master):
            os.set_blocking(fd, False)
        self.host_path = os.ttyname(self._host_slave)
        self.device_path = os.ttyname(self._dev_slave)
        self.faults: dict[int, Fault] = {}
        self.known_units: set[int] | None = None  # None: forward everything
        self.unit: int | None = None
        self._rng = random.Random(seed)
        self._queue: list[tuple[float, int, int, bytes]] = []
        self._seq = 0
        self._wire_free_s = 0.0
        self._last_host_rx_s = -1.0
        self._stop_r, self._stop_w = os.pipe()
        self._running = True

    def set_fault(self, unit: int, kind: str | None, delay_s: float = 0.0) -> None:
        if kind is not None and kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r} (one of {FAULTS})")
        self.faults[unit] = Fault(kind, delay_s)

    def _schedule(self, due_s: float, fd: int, data: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (due_s, self._seq, fd, data))

    def _on_wire(self, now_s: float, n: int) -> float:
        if not self.baud:
            return now_s
        start = max(now_s, self._wire_free_s)
        self._wire_free_s = start + n * self._char_s
        return self._wire_free_s

    def _from_host(self, data: bytes, now_s: float) -> None:
        if now_s - self._last_host_rx_s > 0.0015:  # a new frame starts with its unit id
            self.unit = data[0]
        self._last_host_rx_s = now_s
        fault = self.faults.get(self.unit, Fault())
        end_s = self._on_wire(now_s, len(data))
        if fault.kind == "silent" or (self.known_units is not None and self.unit not in self.known_units):
            return  # nobody on the wire answers (pymodbus 3.16's SimDevice server would send an exception)
        self._schedule(end_s + self._gap_s, self._dev_master, data)

    def _from_device(self, data: bytes, now_s: float) -> None:
        fault = self.faults.get(self.unit, Fault())
        if fault.kind == "crc":
            data = data[:-1] + bytes([data[-1] ^ 0x5A])
        elif fault.kind == "garbage":
            data = bytes(self._rng.randrange(256) for _ in range(len(data)))
        end_s = self._on_wire(now_s, len(data))
        self._schedule(end_s + (fault.delay_s if fault.kind == "slow" else 0.0), self._host_master, data)

    def run(self) -> None:
        fds = [self._host_master, self._dev_master, self._stop_r]
        while self._running:
            timeout = max(0.0, self._queue[0][0] - time.monotonic()) if self._queue else None
            readable, _, _ = select.select(fds, [], [], timeout)
            now = time.monotonic()
            for fd in readable:
                if fd == self._stop_r:
                    return
                try:
                    data = os.read(fd, 4096)
                except (BlockingIOError, OSError):
                    continue
                if data:
                    (self._from_host if fd == self._host_master else self._from_device)(data, now)
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                _due, _seq, fd, data = heapq.heappop(self._queue)
                try:
                    os.write(fd, data)
                except OSError:
                    pass

    def close(self) -> None:
        self._running = False
        os.write(self._stop_w, b"x")
        if self.is_alive():
            self.join(timeout=2)
        for fd in (self._host_master, self._host_slave, self._dev_master, self._dev_slave, self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass


# --- the server -------------------------------------------------------------------------------------------
@dataclass
class _Unit:
    profile: DeviceProfile
    banks: dict[int, dict[int, int]]
    values: dict = field(default_factory=dict)
    writes: list = field(default_factory=list)


class SimBus:
    """Virtual devices (one pymodbus RTU server, many unit ids) behind a WireBridge.

    Register values live in plain dicts owned here; the server's access hook copies them into
    pymodbus' registers on every read and records every write, so values can change between requests
    from the simulator's thread without restarting the server.
    """

    def __init__(self, baud: int | None = None, seed: int = 0):
        self.bridge = WireBridge(baud=baud, seed=seed)
        self.baud = baud or 9600
        self.units: dict[int, _Unit] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def client_path(self) -> str:
        """What the controller opens (a /dev/pts path; pyserial's serial_for_url takes it as is)."""
        return self.bridge.host_path

    def add_device(self, unit: int, profile: str | DeviceProfile, values: dict | None = None) -> None:
        prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
        if self._thread is not None:
            raise RuntimeError("add devices before start()")
        self.units[unit] = _Unit(prof, register_image(prof, values or {}), dict(values or {}))

    def set_values(self, unit: int, values: dict) -> None:
        """Change engineering values (merged over what the unit holds)."""
        u = self.units[unit]
        u.values.update(values)
        image = register_image(u.profile, u.values)
        given = _touched_registers(u.profile, values)
        with self._lock:
            for fc, regs in image.items():
                for reg, word in regs.items():
                    if reg in given.get(fc, ()):
                        u.banks[fc][reg] = word

    def set_registers(self, unit: int, function: int, start: int, words: list[int]) -> None:
        with self._lock:
            for i, w in enumerate(words):
                self.units[unit].banks[function][start + i] = w & 0xFFFF

    def registers(self, unit: int, function: int, start: int, count: int) -> list[int]:
        with self._lock:
            return [self.units[unit].banks[function].get(start + i, 0) for i in range(count)]

    def writes(self, unit: int) -> list[tuple[int, list[int]]]:
        """(start register, words) of every write the unit received, in order."""
        with self._lock:
            return list(self.units[unit].writes)

    def fault(self, unit: int, kind: str | None, delay_s: float = 0.0) -> None:
        """Inject a wire fault for ``unit`` (None clears it: the device is back)."""
        self.bridge.set_fault(unit, kind, delay_s)

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> "SimBus":
        self.bridge.known_units = set(self.units)
        self.bridge.start()
        self._thread = threading.Thread(target=self._run, name="sim-modbus-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("pymodbus server did not start")
        if self._error:
            raise RuntimeError("pymodbus server failed") from self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    def _sim_devices(self):
        from pymodbus.simulator import DataType, SimData, SimDevice

        devices = []
        for unit_id, u in self.units.items():
            blocks = []
            for fc in (3, 4):
                regs = u.banks[fc]
                if regs:
                    lo, hi = min(regs), max(regs)
                    blocks.append([SimData(address=lo, count=hi - lo + 1, values=0, datatype=DataType.REGISTERS)])
                else:
                    blocks.append([SimData(address=0, count=1, values=0, datatype=DataType.REGISTERS)])
            bits = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]
            bits2 = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]
            devices.append(SimDevice(id=unit_id, simdata=(bits, bits2, blocks[0], blocks[1]),
                                     action=self._make_action(unit_id)))
        return devices

    def _make_action(self, unit_id: int):
        async def action(function_code, start_address, address, count, registers, set_values):
            u = self.units[unit_id]
            bank = u.banks[4 if function_code == 4 else 3]
            with self._lock:
                if set_values is not None:
                    words = [int(v) & 0xFFFF for v in set_values]
                    for i, w in enumerate(words):
                        bank[address + i] = w
                    u.writes.append((address, words))
                for i in range(count):
                    registers[address - start_address + i] = bank.get(address + i, 0)
            return None
        return action

    async def _serve(self) -> None:
        from pymodbus import FramerType
        from pymodbus.server import ModbusSerialServer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = ModbusSerialServer(self._sim_devices(), framer=FramerType.RTU, port=self.bridge.device_path,
                                    baudrate=self.baud, ignore_missing_devices=True)
        await server.serve_forever(background=True)
        self._ready.set()
        await self._stop.wait()
        await server.shutdown()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.bridge.close()

    def __enter__(self) -> "SimBus":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _touched_registers(profile: DeviceProfile, values: dict) -> dict[int, set[int]]:
    """Registers that ``values`` determine, so set_values leaves the others (written setpoints, SunSpec
    headers) alone. A SunSpec scale factor that changes drags in every point sharing it."""
    names = set(_source_values(profile, values))
    points = list(profile.points)
    if profile.discovery == "sunspec":
        points, _ = sunspec.place(profile.points, _models_at(profile))
        sfs = {(p.model, p.sf_offset) for p in profile.points if p.name in names and p.sf_offset is not None}
        names |= {p.name for p in profile.points if (p.model, p.sf_offset) in sfs}
        names |= {sunspec.sf_point_name(m, o) for m, o in sfs}
    out: dict[int, set[int]] = {3: set(), 4: set()}
    for p in points:
        if p.name in names:
            out[p.function].update(range(p.register, p.register + TYPES[p.type][0]))
    return out


def _models_at(profile: DeviceProfile, base: int = 40000) -> dict[int, int]:
    layout = sunspec.chain_layout(list(profile.sunspec_models))
    return {m: base + off + 2 for m, off, _l in layout if m != sunspec.END_MODEL_ID}
