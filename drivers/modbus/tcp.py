"""Modbus TCP: one connection per host:port, shared by every unit behind it, with the RTU bus's interface.

SunSpec PCSs and inverters usually sit on Ethernet, often several units behind one gateway address, so
a :class:`ModbusTcpBus` is to a ``host:port`` what :class:`~drivers.modbus.bus.ModbusBus` is to a serial
port: one lock, one connection, the same ``read``/``write``/``cycle``/``acquire_for`` and the same two
failure categories (drivers/modbus/errors.py), so :class:`~drivers.modbus.device.ModbusDevice` runs on
either unchanged.

Client library: pymodbus's synchronous ``ModbusTcpClient`` (pymodbus >= 3.11, pure Python, no required
dependencies). Why: it is the most used and most actively maintained Modbus stack in Python (Home
Assistant's Modbus integration runs on it), its sync client raises distinct exceptions for a missing
reply (``ModbusIOException``) and a broken connection (``ConnectionException``) and returns exception
replies as PDUs with their code, which is exactly the split we need; and it is already the library of
our test servers and the lab, so the project knows one Modbus stack, not two. pyModbusTCP was the
alternative (smaller, stable API) but reports every failure as ``None`` plus a last-error code, which
would have to be decoded back into the same categories.

Behaviour that is ours, not the library's:
- Per-request timeout and our own retries (the client is built with ``retries=0``), like the RTU bus.
- A request that timed out may still be answered late; a new connection cannot deliver that stale reply
  as the answer to the next request, so a timeout closes the socket and the next request reconnects at
  once. A connection that cannot be made is retried with a growing wait (``reopen`` backoff) while every
  transaction fails fast with :class:`NotConnected`.
- Exception codes 0x0A/0x0B (a gateway saying its serial target is absent) are "nobody answered".
"""
from __future__ import annotations

import logging
import threading
import time

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.modbus.backoff import Backoff
from drivers.modbus.bus import BusCycle, BusStats
from drivers.modbus.errors import (GATEWAY_PATH_UNAVAILABLE, GATEWAY_TARGET_NO_RESPONSE, ExceptionReply,
                                   NoAnswer, NotConnected)

log = logging.getLogger(__name__)
# pymodbus logs every timeout and refused connection at ERROR; this bus reports each failure itself,
# categorised and backed off, so the library's own lines would only repeat them once per probe.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
MBAP_BYTES = 7  # MBAP header (transaction, protocol, length, unit) in front of every PDU


class ModbusTcpBus(BusCycle):
    """A Modbus TCP server (device or gateway) at ``host:port``, polled in cycles like a serial port."""

    def __init__(self, host: str, port: int = 502, *, connect_timeout_s: float = 1.0,
                 reopen: Backoff | None = None):
        self.host, self.port = host, int(port)
        self.url = f"tcp://{host}:{self.port}"
        self.lock = threading.Lock()
        self.stats = BusStats()
        self.open_error = ""
        self.closed = False
        self.connect_timeout_s = connect_timeout_s
        self._reopen = reopen or Backoff(base_s=1.0, cap_s=30.0, threshold=1)
        self._client = ModbusTcpClient(host, port=self.port, timeout=connect_timeout_s, retries=0)
        self._devices: list = []
        self._served: set[int] = set()

    # --- the connection -----------------------------------------------------------------------------
    def _ensure_connected(self) -> None:
        if self._client.connected:
            return
        if self.closed:
            raise NotConnected(f"{self.url}: bus closed")
        if not self._reopen.ready(time.monotonic()):
            raise NotConnected(self.open_error or f"{self.url}: not connected")
        self._client.comm_params.timeout_connect = self.connect_timeout_s
        if not self._client.connect():
            self.stats.open_failures += 1
            self._reopen.failed(time.monotonic())
            self.open_error = f"{self.url}: cannot connect"
            raise NotConnected(self.open_error)
        self.stats.opens += 1
        self.open_error = ""
        self._reopen.succeeded()

    def connect(self) -> bool:
        """Try to connect now (at start-up); False with ``open_error`` set when the server is not there."""
        with self.lock:
            try:
                self._ensure_connected()
            except NotConnected:
                return False
            return True

    def _transact(self, unit: int, function: int, timeout_s: float, retries: int, call,
                  request_len: int, response_len: int):
        with self.lock:
            last: Exception | None = None
            for attempt in range(retries + 1):
                self._ensure_connected()
                self._client.comm_params.timeout_connect = timeout_s   # the sync client's receive timeout
                t0 = time.monotonic()
                self.stats.transactions += 1
                self.stats.request_bytes += MBAP_BYTES + request_len
                if attempt:
                    self.stats.retries += 1
                try:
                    rsp = call(self._client)
                except ConnectionException as exc:           # the peer closed or reset the connection
                    self.stats.failures += 1
                    self._client.close()
                    last = NotConnected(f"{self.url}: connection lost: {exc}")
                    continue                                  # the next attempt reconnects once
                except ModbusIOException as exc:             # no (matching) reply within the timeout
                    self.stats.failures += 1
                    self._client.close()                      # a late reply must not answer the next request
                    last = NoAnswer(f"{self.url} unit {unit}: no answer: {exc}")
                    continue
                except (ModbusException, OSError, ValueError) as exc:   # a frame pymodbus could not decode
                    self.stats.failures += 1
                    self._client.close()
                    last = NoAnswer(f"{self.url} unit {unit}: bad reply: {exc}")
                    continue
                finally:
                    self.stats.busy_s += time.monotonic() - t0
                if rsp.isError():
                    self.stats.failures += 1
                    code = int(getattr(rsp, "exception_code", 0))
                    if code in (GATEWAY_PATH_UNAVAILABLE, GATEWAY_TARGET_NO_RESPONSE):
                        raise NoAnswer(f"{self.url} unit {unit}: gateway reports no answer (exception {code})")
                    raise ExceptionReply(f"{self.url} unit {unit}: exception {code} to function {function}", code)
                self.stats.response_bytes += MBAP_BYTES + response_len
                return rsp
            assert last is not None
            raise last

    # --- the RTU bus's interface --------------------------------------------------------------------
    def read(self, unit: int, function: int, start: int, count: int, timeout_s: float = 0.2,
             retries: int = 1) -> list[int]:
        """``count`` raw registers (FC3 holding / FC4 input) from ``unit``; raises on failure."""
        if function not in (3, 4):
            raise ValueError(f"read function {function}: expected 3 or 4")
        fn = ModbusTcpClient.read_holding_registers if function == 3 else ModbusTcpClient.read_input_registers
        rsp = self._transact(unit, function, timeout_s, retries,
                             lambda c: fn(c, start, count=count, device_id=unit), 5, 2 + 2 * count)
        regs = list(rsp.registers)[:count]
        if len(regs) != count:
            raise NoAnswer(f"{self.url} unit {unit}: {len(regs)} registers in the reply, asked for {count}")
        return regs

    def write(self, unit: int, start: int, registers: list[int], timeout_s: float = 0.2, retries: int = 1) -> None:
        """FC16 write of ``registers`` (raw words) to ``unit``; raises on failure."""
        words = [int(w) & 0xFFFF for w in registers]
        self._transact(unit, 16, timeout_s, retries,
                       lambda c: c.write_registers(start, words, device_id=unit), 6 + 2 * len(words), 5)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self._client.close()


_BUSES: dict[tuple[str, int], ModbusTcpBus] = {}
_BUSES_LOCK = threading.Lock()


def get_tcp_bus(host: str, port: int = 502, **kwargs) -> ModbusTcpBus:
    """The one :class:`ModbusTcpBus` for ``host:port`` in this process (units behind it share it)."""
    key = (host, int(port))
    with _BUSES_LOCK:
        bus = _BUSES.get(key)
        if bus is None or bus.closed:
            bus = _BUSES[key] = ModbusTcpBus(host, port, **kwargs)
        return bus


def release_tcp_bus(host: str, port: int = 502) -> None:
    with _BUSES_LOCK:
        bus = _BUSES.pop((host, int(port)), None)
    if bus is not None:
        bus.close()
