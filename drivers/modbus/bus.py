"""One RS-485 port: a pyserial object, one lock, and the scan cycle's reads.

minimalmodbus is not thread-safe and a half-duplex bus carries one transaction at a time, so every
transaction on a port goes through that port's lock. Ports are opened with ``serial.serial_for_url``
so a device server (``socket://``), a loopback (``loop://``) or a pty path all work unchanged.

A port that cannot be opened (the USB adapter is missing at boot, or unplugged later) does not stop the
gateway: the bus exists, every transaction fails fast with :class:`NotConnected` (a line fault, so its
devices go ERROR then STALE), and opening is retried with a growing wait.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import minimalmodbus
import serial

from drivers.modbus.backoff import Backoff
from drivers.modbus.errors import DEVICE_ANSWERED, LINE_FAULTS, NotConnected

__all__ = ["BusCycle", "BusStats", "DEVICE_ANSWERED", "LINE_FAULTS", "ModbusBus", "get_bus", "release_bus"]


@dataclass
class BusStats:
    transactions: int = 0
    failures: int = 0
    retries: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    busy_s: float = 0.0
    opens: int = 0              # successful (re)opens of the port or connection
    open_failures: int = 0


class BusCycle:
    """The scan-cycle side of a bus, shared by the RTU port and the TCP connection.

    ``cycle(now)`` runs every attached device's due reads, once per scan cycle however many of its devices
    call it (see :meth:`acquire_for`). Writes are not part of it: a device flushes its commands from its own
    ``actuate``, once per cycle, right after the step that computed them (and not at all while it is
    backed off), so a silent unit costs one probe per backoff window instead of a timeout per cycle.
    """

    _devices: list
    _served: set

    def attach(self, device) -> None:
        self._devices.append(device)

    def detach(self, device) -> None:
        self._devices = [d for d in self._devices if d is not device]
        self._served.discard(id(device))

    def cycle(self, now_s: float) -> None:
        """Every attached device's reads that are due."""
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


class ModbusBus(BusCycle):
    """A serial port shared by several Modbus devices, polled in cycles (see :class:`BusCycle`)."""

    def __init__(self, url: str, baud: int = 9600, parity: str = "N", stopbits: int = 1, bytesize: int = 8,
                 late_reply_guard_s: float = 0.05, port: serial.SerialBase | None = None,
                 reopen: Backoff | None = None, lazy: bool = False):
        """``lazy``: a port that does not open is kept and retried (the field factory's way); otherwise
        the open error is raised here, as a one-shot command (read, scan) wants."""
        self.url = url
        self.baud = baud
        self.lock = threading.Lock()
        self.late_reply_guard_s = late_reply_guard_s
        self.stats = BusStats()
        self.open_error = ""            # why the port is not open ("" when it is)
        self.closed = False
        self._reopen = reopen or Backoff(base_s=1.0, cap_s=30.0, threshold=1)
        self._instruments: dict[int, minimalmodbus.Instrument] = {}
        self._devices: list = []
        self._served: set[int] = set()
        self._bad_url = ""
        if port is not None:
            self.serial = port
            return
        try:
            self.serial = serial.serial_for_url(url, baudrate=baud, parity=parity, stopbits=stopbits,
                                                bytesize=bytesize, timeout=0.2, write_timeout=2.0,
                                                do_not_open=True)
        except (serial.SerialException, ValueError) as exc:     # an unknown URL scheme, a bad parameter
            if not lazy:
                raise
            self._bad_url = f"{url}: cannot open: {exc}"
            self.serial = serial.Serial()                       # never opens; every transaction says why
        if not self._open() and not lazy:
            raise serial.SerialException(self.open_error)

    # --- the port ---------------------------------------------------------------------------------
    def _open(self) -> bool:
        if self._bad_url:
            self.open_error = self._bad_url
            self._reopen.failed(time.monotonic())
            return False
        try:
            self.serial.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            self.open_error = f"{self.url}: cannot open: {exc}"
            self.stats.open_failures += 1
            self._reopen.failed(time.monotonic())
            return False
        self.open_error = ""
        self.stats.opens += 1
        self._reopen.succeeded()
        self._instruments = {}
        return True

    def _ensure_open(self) -> None:
        if self.serial.is_open:
            return
        if self.closed:
            raise NotConnected(f"{self.url}: bus closed")
        if not self._reopen.ready(time.monotonic()) or not self._open():
            raise NotConnected(self.open_error or f"{self.url}: not open")

    def _lost(self, exc: Exception) -> NotConnected:
        """The port failed under a transaction (adapter unplugged): close it; reopening is backed off."""
        try:
            self.serial.close()
        except (serial.SerialException, OSError):
            pass
        self.open_error = f"{self.url}: port lost: {exc}"
        self._reopen.failed(time.monotonic())
        return NotConnected(self.open_error)

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
            self._ensure_open()
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
                    try:
                        self._drain()
                    except (serial.SerialException, OSError) as lost:
                        raise self._lost(lost) from exc
                except minimalmodbus.ModbusException:
                    self.stats.failures += 1
                    raise
                except (serial.SerialException, OSError) as exc:   # the port itself, not the device
                    self.stats.failures += 1
                    raise self._lost(exc) from exc
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

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.serial.close()


_BUSES: dict[str, ModbusBus] = {}
_BUSES_LOCK = threading.Lock()


def get_bus(url: str, baud: int = 9600, **kwargs) -> ModbusBus:
    """The one :class:`ModbusBus` for ``url`` in this process (devices on one port share it)."""
    with _BUSES_LOCK:
        bus = _BUSES.get(url)
        if bus is None or bus.closed:
            bus = _BUSES[url] = ModbusBus(url, baud=baud, **kwargs)
        elif bus.baud != baud:
            raise ValueError(f"{url} is already open at {bus.baud} baud, not {baud}")
        return bus


def release_bus(url: str) -> None:
    with _BUSES_LOCK:
        bus = _BUSES.pop(url, None)
    if bus is not None:
        bus.close()
