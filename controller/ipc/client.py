"""The client side (the TUI, tests, tools): a blocking line-JSON client with a non-blocking feed for a
render loop. Imports nothing of the server, so `edge-ems tui` stays light."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path


class IpcClient:
    """A small blocking client (the TUI, tests, tools). `recv()` returns the next message or None."""

    def __init__(self, path: str | Path, timeout_s: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self.sock.connect(str(path))
        self.buf = bytearray()
        self.hello = self.recv(timeout_s)
        self._id = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, obj: dict) -> int:
        self._id += 1
        obj = {**obj, "id": obj.get("id", self._id)}
        self.sock.sendall((json.dumps(obj) + "\n").encode())
        return obj["id"]

    def _pop(self) -> dict | None:
        if b"\n" in self.buf:
            line, _, rest = bytes(self.buf).partition(b"\n")
            self.buf = bytearray(rest)
            return json.loads(line)
        return None

    def recv(self, timeout_s: float | None = None) -> dict | None:
        msg = self._pop()
        if msg is not None:
            return msg
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 5.0)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                raise ConnectionError("controller closed the socket")
            self.buf += data
            msg = self._pop()
            if msg is not None:
                return msg

    def feed(self) -> list[dict]:
        """Non-blocking: read what is there and return every whole message."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("controller closed the socket")
                self.buf += data
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            self.sock.setblocking(True)
        out = []
        while (msg := self._pop()) is not None:
            out.append(msg)
        return out

    def request(self, obj: dict, timeout_s: float = 10.0) -> dict:
        """Send and wait for the reply with the same id (other messages in between are dropped)."""
        rid = self.send(obj)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self.recv(deadline - time.monotonic())
            if msg is not None and msg.get("id") == rid and msg.get("type") != "hello":
                return msg
        raise TimeoutError(f"no reply to {obj.get('op')} within {timeout_s} s")

    def close(self) -> None:
        self.sock.close()
