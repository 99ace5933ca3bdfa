"""The Modbus TCP server thread (pymodbus), its supervision by the scan cycle, and what it answers.

pymodbus's asyncio server runs in a thread of its own with its own event loop (pymodbus >= 3.11
`SimDevice` with an `action` callback: every access to the register block goes through `_action`, which
copies the requested words from the latest published block, or hands a write to the WriteGate). Nothing in
this thread can reach the scan cycle: the loop's hook only swaps a reference (block.py) and looks at
`thread.is_alive()` once a cycle. A thread that dies (a bind that fails, a defect, `inject_fault` in the
tests) raises the host alarm `dcim_server_down` with its error and is started again after a growing wait
(0.5 s doubling to 30 s; reset after 30 s up); the alarm clears when the new one listens.

Answers: the configured unit id only (another gets 0x0B, "gateway target device failed to respond", as
a Modbus TCP gateway answers for an absent unit; the project's own TCP driver reads it as "nobody
answered"); FC3 and FC4 read the same map; coils and discrete inputs are illegal addresses; at most
`max_clients` connections (one more is closed at once), TCP keepalive on each, and one idle for
IDLE_CLOSE_S is closed, so a peer that vanished does not hold a slot.
"""
from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import socket
import struct
import threading
import time

from controller.dcim.writes import ILLEGAL_ADDRESS, WriteGate

log = logging.getLogger("edge_ems.dcim")
IDLE_CLOSE_S = 300.0
BIT_FCS = (1, 2, 5, 15)
RESTART_MAX_S = 30.0
UP_RESET_S = 30.0
PEER: contextvars.ContextVar[str] = contextvars.ContextVar("dcim_peer", default="?")


class Publisher:
    """The latest block: (bytes, published monotonic s, entries not available once stale). One reference,
    replaced whole by the scan thread and read whole by the server thread."""

    def __init__(self, builder, max_age_s: float, clock=time.monotonic):
        self.builder, self.max_age_s, self.clock = builder, float(max_age_s), clock
        self.latest: tuple | None = None
        self._empty = builder.empty()
        self._stale: tuple[bytes | None, bytes] = (None, b"")
        self.age_word = builder.word_of.get("age")

    def publish(self, block: bytes, stale_na: int) -> None:
        self.latest = (block, self.clock(), stale_na)

    def read(self, address: int, count: int) -> list[int]:
        """`count` words from `address` of the latest block as the DCIM should see it now."""
        latest = self.latest
        if latest is None:
            return list(struct.unpack_from(f">{count}H", self._empty, 2 * address))
        block, t_pub, stale_na = latest
        age = max(0.0, self.clock() - t_pub)
        if age > self.max_age_s:
            held, view = self._stale              # the block itself, not its id(): a freed block's address
            if held is not block:                  # is reused and would serve an older heartbeat
                view = self.builder.stale_view(block, stale_na)
                self._stale = (block, view)
            block = view
        out = list(struct.unpack_from(f">{count}H", block, 2 * address))
        a = self.age_word
        if a is not None and address <= a < address + count:
            out[a - address] = min(int(age * 10.0), 0xFFFE)
        return out


def interface_address(name: str) -> str:
    """The IPv4 address of a network interface (Linux SIOCGIFADDR); OSError when it has none."""
    import fcntl
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
    return socket.inet_ntoa(packed[20:24])


def resolve_bind(bind: str) -> str:
    from controller.dcim.config import bind_kind
    if bind_kind(bind) == "interface":
        try:
            return interface_address(bind)
        except OSError as exc:
            raise OSError(f"interface {bind!r} has no IPv4 address ({exc.strerror or exc})") from None
    return bind


class DcimServer:
    def __init__(self, bind: str, port: int, unit_id: int, max_clients: int, size: int, publisher: Publisher,
                 gate: WriteGate, *, alarms=None, restart_delay_s: float = 0.5):
        self.bind, self.port, self.unit_id, self.max_clients = bind, int(port), int(unit_id), int(max_clients)
        self.size, self.publisher, self.gate, self.alarms = size, publisher, gate, alarms
        self.restart_delay_s = float(restart_delay_s)
        self._delay = self.restart_delay_s
        self._thread: threading.Thread | None = None
        self._listening = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fault: asyncio.Future | None = None
        self._stopping = False
        self._up_since: float | None = None
        self._down_since: float | None = None
        self._restart_at = 0.0
        self.address: tuple[str, int] | None = None
        self._modbus = None                            # the pymodbus server of the running thread
        self.last_error = ""
        self.starts = 0
        self.deaths = 0
        self.restarts = 0
        self.requests = 0
        self.refused_clients = 0
        self.idle_closed = 0
        self.connections = 0

    # -- lifecycle (scan thread / main thread) ------------------------------------------------------
    def start(self, wait_s: float = 3.0) -> bool:
        """Start the thread; True once it listens (within wait_s), False if it did not (yet)."""
        self._spawn()
        deadline = time.monotonic() + wait_s
        while not self._listening.is_set() and self._thread.is_alive() and time.monotonic() < deadline:
            self._listening.wait(0.02)
        return self._listening.is_set()

    def _spawn(self) -> None:
        self._listening = threading.Event()
        self.starts += 1
        self._thread = threading.Thread(target=self._main, name=f"dcim-modbus-{self.starts}", daemon=True)
        self._thread.start()

    @property
    def listening(self) -> bool:
        return self._listening.is_set() and self._thread is not None and self._thread.is_alive()

    def supervise(self, now: float | None = None) -> None:
        """Called by the scan cycle's hook: a dead thread is alarmed and started again (never blocks)."""
        if self._stopping or self._thread is None:
            return
        now = time.monotonic() if now is None else now
        if self._thread.is_alive():
            if self._listening.is_set():
                if self._up_since is None:
                    self._up_since = now
                    if self.alarms is not None:
                        self.alarms.clear("dcim_server_down")
                elif now - self._up_since >= UP_RESET_S:
                    self._delay = self.restart_delay_s
            return
        if self._down_since is None:                   # just found dead
            self._down_since, self._up_since = now, None
            self.deaths += 1
            self._restart_at = now + self._delay
            self._delay = min(max(self._delay * 2.0, 0.5), RESTART_MAX_S)
            if self.alarms is not None:
                self.alarms.raise_("dcim_server_down", self.last_error or "the server thread ended")
            log.error("dcim: Modbus TCP server down (%s); restart in %.1f s", self.last_error,
                      self._restart_at - now)
        elif now >= self._restart_at:
            self._down_since = None
            self.restarts += 1
            self._spawn()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping = True
        loop, fault = self._loop, self._fault
        if loop is not None and fault is not None:
            try:
                loop.call_soon_threadsafe(lambda: fault.done() or fault.set_result(None))
            except RuntimeError:                       # the loop already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout_s)

    def active_connections(self) -> int:
        m = self._modbus
        return len(m.active_connections) if m is not None and self.listening else 0

    def inject_fault(self, exc: BaseException) -> None:
        """Make the server thread die with `exc` (tests: the supervision must notice and restart it)."""
        loop, fault = self._loop, self._fault
        if loop is not None and fault is not None:
            loop.call_soon_threadsafe(lambda: fault.done() or fault.set_exception(exc))

    # -- the server thread ---------------------------------------------------------------------------
    def _main(self) -> None:
        from controller.uplink.priority import lower_this_thread
        lower_this_thread()
        try:
            asyncio.run(self._serve())
            if not self._stopping:
                self.last_error = "the server stopped by itself"
        except BaseException as exc:                   # noqa: BLE001 - recorded; the supervision restarts us
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            if not self._stopping:
                log.error("dcim: server thread failed: %s", self.last_error)
        finally:
            self._loop = self._fault = self._modbus = None

    async def _serve(self) -> None:
        host = resolve_bind(self.bind)
        probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:                                           # a clear error (in use, not our address) before pymodbus
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, self.port))
        except OSError as exc:
            hint = (" (a port below 1024 needs CAP_NET_BIND_SERVICE: AmbientCapabilities= in the unit, docs/dcim.md)"
                    if exc.errno == errno.EACCES and self.port < 1024 else "")
            raise OSError(f"cannot listen on {host}:{self.port}: {exc.strerror or exc}{hint}") from None
        finally:
            probe.close()
        server = _make_server(self, host)
        await server.serve_forever(background=True)
        self._modbus = server
        self._loop = asyncio.get_running_loop()
        self._fault = self._loop.create_future()
        self.address = (host, self.port)
        self.last_error = ""
        self._listening.set()
        log.info("dcim: Modbus TCP on %s:%d unit %d", host, self.port, self.unit_id)
        idle = asyncio.create_task(self._close_idle(server))
        try:
            await self._fault
        finally:
            idle.cancel()
            await server.shutdown()

    async def _close_idle(self, server) -> None:
        while True:
            await asyncio.sleep(10.0)
            now = time.monotonic()
            for conn in list(server.active_connections.values()):
                if now - getattr(conn, "last_rx", now) > IDLE_CLOSE_S and conn.transport is not None:
                    self.idle_closed += 1
                    conn.transport.close()

    async def _action(self, fc, start_address, address, count, registers, set_values):
        self.requests += 1
        if fc in BIT_FCS:                              # no coils, no discrete inputs
            return _exc(ILLEGAL_ADDRESS)
        if set_values is not None:
            return _exc(self.gate.handle(fc, address, list(set_values), PEER.get()))
        if fc == 6:                                    # FC6's echo reads back what was written
            return None
        registers[address - start_address:address - start_address + count] = self.publisher.read(address, count)
        return None

    def stats(self) -> dict:
        return {"listening": self.listening, "address": f"{self.address[0]}:{self.address[1]}" if self.address
                else None, "unit_id": self.unit_id, "starts": self.starts, "deaths": self.deaths,
                "restarts": self.restarts, "requests": self.requests, "connections": self.connections,
                "refused_clients": self.refused_clients, "idle_closed": self.idle_closed,
                "last_error": self.last_error, "writes": self.gate.stats()}


def _exc(code):
    if code is None:
        return None
    from pymodbus.constants import ExcCodes
    return ExcCodes(code)


def _make_server(owner: DcimServer, host: str):
    """pymodbus's ModbusTcpServer on our SimDevice, with a connection handler that enforces max_clients,
    sets TCP keepalive, stamps activity (idle close) and names the peer for the write audit."""
    from pymodbus.constants import ExcCodes
    from pymodbus.server import ModbusTcpServer
    from pymodbus.server.requesthandler import ServerRequestHandler
    from pymodbus.simulator import DataType, SimData, SimDevice

    class Handler(ServerRequestHandler):
        def callback_connected(self) -> None:
            super().callback_connected()
            self.last_rx = time.monotonic()
            transport = self.transport
            peer = transport.get_extra_info("peername") if transport is not None else None
            self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                    for opt, val in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
                        if hasattr(socket, opt):
                            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)
                except OSError:
                    pass
            if len(self.server.active_connections) > owner.max_clients:
                owner.refused_clients += 1
                log.warning("dcim: connection from %s refused: %d clients already", self.peer, owner.max_clients)
                transport.close()
                return
            owner.connections += 1

        def callback_data(self, data: bytes, addr=None) -> int:
            self.last_rx = time.monotonic()
            return super().callback_data(data, addr)

        async def handle_request(self):
            PEER.set(getattr(self, "peer", "?"))
            await super().handle_request()

    class Server(ModbusTcpServer):
        def callback_new_connection(self):
            return Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)

    async def absent(*_args):
        return ExcCodes.GATEWAY_NO_RESPONSE

    def blocks():
        none = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]   # refused in _action
        regs = [SimData(address=0, count=owner.size, values=0xFFFF, datatype=DataType.REGISTERS)]
        return (list(none), list(none), regs, [SimData(address=0, count=owner.size, values=0xFFFF,
                                                       datatype=DataType.REGISTERS)])
    devices = [SimDevice(id=0, simdata=blocks(), action=absent),
               SimDevice(id=owner.unit_id, simdata=blocks(), action=owner._action)]
    return Server(devices, address=(host, owner.port))
