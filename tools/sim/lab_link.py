"""The lab's pipes between the physics process and each device process: length-prefixed JSON on a socketpair.

Why not multiprocessing queues or pipes: a device process stopped with ``kill -STOP`` (the way a test makes
a device vanish) stops reading, and a blocking send would then stall the physics, i.e. every other device.
Here the sender never blocks: a message that does not fit is kept as the one pending tail (bounded), and
while a tail is pending newer messages are dropped and counted - a device that wakes up gets fresh
register values within a second, it does not need the ones it slept through. JSON, not pickles, so a
device process never unpickles what another process wrote.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import threading

HEADER = struct.Struct("!I")
MAX_MESSAGE = 4 * 1024 * 1024     # a register image is a few kB; anything larger is a bug, not data
MAX_PENDING = 1024 * 1024         # bytes kept for a reader that stopped reading


class LinkClosed(Exception):
    pass


class Link:
    """One end of a socketpair. ``send`` never blocks; ``recv`` returns the complete messages available."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.setblocking(False)
        self._out = bytearray()
        self._in = bytearray()
        self._lock = threading.Lock()    # device processes send from the Modbus server's thread too
        self.sent = 0
        self.dropped = 0
        self.closed = False

    @classmethod
    def pair(cls) -> tuple["Link", socket.socket]:
        """(parent Link, child socket): the child socket's fd is passed to the child process."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        b.set_inheritable(True)
        return cls(a), b

    @classmethod
    def from_fd(cls, fd: int) -> "Link":
        return cls(socket.socket(fileno=fd))

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg) -> bool:
        """Queue one message; False when it was dropped (the peer is not reading, or is gone)."""
        data = json.dumps(msg, separators=(",", ":")).encode()
        with self._lock:
            if self.closed:
                self.dropped += 1
                return False
            self._flush_locked()
            if self._out and len(self._out) + len(data) > MAX_PENDING:
                self.dropped += 1
                return False
            self._out += HEADER.pack(len(data)) + data
            self._flush_locked()
            self.sent += 1
            return True

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        while self._out and not self.closed:
            try:
                n = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.closed = True
                self._out.clear()
                return
            del self._out[:n]

    def recv(self) -> list:
        """Every complete message received so far (non-blocking). Raises LinkClosed at end of stream."""
        eof = False
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            self._in += chunk
        out = []
        while len(self._in) >= HEADER.size:
            (n,) = HEADER.unpack_from(self._in)
            if n > MAX_MESSAGE:
                raise LinkClosed(f"message of {n} bytes announced (limit {MAX_MESSAGE}): stream corrupt")
            if len(self._in) < HEADER.size + n:
                break
            out.append(json.loads(bytes(self._in[HEADER.size:HEADER.size + n])))
            del self._in[:HEADER.size + n]
        if eof and not out:
            self.closed = True
            raise LinkClosed("peer closed the link")
        return out

    def close(self) -> None:
        with self._lock:
            self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def child_link_from_env(argv_fd: str) -> Link:
    """The device process's end: the fd number given on its command line."""
    fd = int(argv_fd)
    os.set_inheritable(fd, False)
    return Link.from_fd(fd)
