"""One RS-485 port: a pyserial object, one lock, and the cycle order (writes first, reads last).

minimalmodbus is not thread-safe and a half-duplex bus carries one transaction at a time, so every
transaction on a port goes through that port's lock. Ports are opened with ``serial.serial_for_url``
so a device server (``socket://``), a loopback (``loop://``) or a pty path all work unchanged.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import minimalmodbus
import serial

# Exception responses: the device is alive and answered; retrying the same request is pointless.
DEVICE_ANSWERED = (minimalmodbus.SlaveReportedException,)
# No or broken answer: worth a retry, and the line may still carry a late or partial reply.
LINE_FAULTS = (minimalmodbus.NoResponseError, minimalmodbus.InvalidResponseError, minimalmodbus.LocalEchoError)


@dataclass
class BusStats:
    transactions: int = 0
    failures: int = 0
    retries: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    busy_s: float = 0.0


class ModbusBus:
    """A serial port shared by several Modbus devices, polled in cycles.

    ``cycle(now)`` flushes every device's pending writes, then runs every device's due reads. Devices
    attached with :meth:`attach` call it from their ``acquire``; the bus runs one cycle per scan cycle
    however many of its devices call it (see :meth:`acquire_for`).
    """

    def __init__(self, url: str, baud: int = 9600, parity: str = "N", stopbits: int = 1, bytesize: int = 8,
                 late_reply_guard_s: float = 0.05, port: serial.SerialBase | None = None):
        self.url = url
        self.baud = baud
        self.serial = port or serial.serial_for_url(url, baudrate=baud, parity=parity, stopbits=stopbits,
                                                    bytesize=bytesize, timeout=0.2, write_timeout=2.0)
        self.lock = threading.Lock()
        self.late_reply_guard_s = late_reply_guard_s
        self.stats = BusStats()
        self._instruments: dict[int, minimalmodbus.Instrument] = {}
        self._devices: list = []
        self._served: set[int] = set()

    # --- transactions -------------------------------------------------------------------------
    def _instrument(self, unit: int) -> minimalmodbus.Instrument:
        inst = self._instruments.get(unit)
        if inst is None:
            inst = minimalmodbus.Instrument(self.serial, unit, mode=minimalmodbus.MODE_RTU)
            self._instruments[unit] = inst
        return inst

    def _drain(self) -> None:
        """Swallow a late or partial reply so it cannot be taken for the next device's answer."""
        self.serial.timeout = self.late_reply_guard_s
        while self.serial.read(256):
            pass

    def _transact(self, unit: int, timeout_s: float, retries: int, call, request_len: int, response_len: int):
        with self.lock:
            inst = self._instrument(unit)
            last: Exception | None = None
            for attempt in range(retries + 1):
                self.serial.timeout = timeout_s
                t0 = time.monotonic()
                self.stats.transactions += 1
                self.stats.request_bytes += request_len
                if attempt:
                    self.stats.retries += 1
                try:
                    result = call(inst)
                    self.stats.response_bytes += response_len
                    return result
                except DEVICE_ANSWERED:
                    self.stats.failures += 1
                    raise
                except LINE_FAULTS as exc:
                    self.stats.failures += 1
                    last = exc
                    self._drain()
                finally:
                    self.stats.busy_s += time.monotonic() - t0
            assert last is not None
            raise last

    def read(self, unit: int, function: int, start: int, count: int, timeout_s: float = 0.2,
             retries: int = 1) -> list[int]:
        """``count`` raw registers (FC3 holding / FC4 input) from ``unit``; raises on failure."""
        return self._transact(unit, timeout_s, retries,
                              lambda inst: inst.read_registers(start, count, functioncode=function),
                              8, 5 + 2 * count)

    def write(self, unit: int, start: int, registers: list[int], timeout_s: float = 0.2, retries: int = 1) -> None:
        """FC16 write of ``registers`` (raw words) to ``unit``; raises on failure."""
        self._transact(unit, timeout_s, retries, lambda inst: inst.write_registers(start, list(registers)),
                       9 + 2 * len(registers), 8)

    # --- cycle ----------------------------------------------------------------------------------
    def attach(self, device) -> None:
        self._devices.append(device)

    def detach(self, device) -> None:
        self._devices = [d for d in self._devices if d is not device]
        self._served.discard(id(device))

    def cycle(self, now_s: float) -> None:
        """Writes of every device first, then every device's reads that are due."""
        for dev in self._devices:
            dev.flush_writes(now_s)
        for dev in self._devices:
            dev.poll(now_s)

    def acquire_for(self, device, now_s: float) -> None:
        """Run a bus cycle unless this device has not yet consumed the current one.

        The scan loop calls ``acquire`` on every device once per cycle, in any order; the first call of
        a cycle starts the bus cycle and the others find their readings already there.
        """
        key = id(device)
        if key in self._served or not self._served:
            self._served = set()
            self.cycle(now_s)
        self._served.add(key)

    def close(self) -> None:
        with self.lock:
            self.serial.close()


_BUSES: dict[str, ModbusBus] = {}
_BUSES_LOCK = threading.Lock()


def get_bus(url: str, baud: int = 9600, **kwargs) -> ModbusBus:
    """The one :class:`ModbusBus` for ``url`` in this process (devices on one port share it)."""
    with _BUSES_LOCK:
        bus = _BUSES.get(url)
        if bus is None or not bus.serial.is_open:
            bus = _BUSES[url] = ModbusBus(url, baud=baud, **kwargs)
        elif bus.baud != baud:
            raise ValueError(f"{url} is already open at {bus.baud} baud, not {baud}")
        return bus


def release_bus(url: str) -> None:
    with _BUSES_LOCK:
        bus = _BUSES.pop(url, None)
    if bus is not None:
        bus.close()
