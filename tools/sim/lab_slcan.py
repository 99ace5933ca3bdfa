"""The lab's BMS process: a USB-CAN adapter speaking slcan (Lawicel ASCII) on the server end of a socat pty pair.

    python -m tools.sim.lab_slcan CONFIG.json LINK_FD

The controller opens the other end with python-can's ``slcan`` interface (``channel`` = the pty path), which
writes ``C\\r``, ``S6\\r``, ``\\r``, ``O\\r`` on open and ``C\\r`` on shutdown and reads lines ending in
``\\r`` (or ``\\a`` for an error). Like a CANable or a Lawicel CANUSB, this adapter answers every command
(``\\r`` done, ``\\a`` refused), reports a version for ``V``/``v``/``N``, acknowledges a transmitted frame
with ``z\\r``/``Z\\r``, and forwards bus traffic (``tIIILDD..\\r``) only while the channel is open.

The frames themselves come from the physics process once a second, already encoded by cantools from the
Pylontech/SMA DBC (wire.py's WireBms, in the physics process). This process only turns them into ASCII,
so SIGSTOP / SIGTERM of it is exactly the adapter (or the BMS behind it) going quiet.

Writes to the pty never block: with no reader, socat's buffers fill and frames are dropped (counted), as
a real adapter drops what the host does not collect.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import tty

from tools.sim.lab_link import LinkClosed, child_link_from_env

log = logging.getLogger("lab.slcan")
BITRATE_CMDS = {f"S{i}" for i in range(10)}
VERSION = {"V": "V1013", "v": "vLAB1", "N": "NLAB0"}


class SlcanPort:
    """The adapter's side of the pty: Lawicel command handling and frame output."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(self.fd)
        except Exception:       # a pty already in raw mode from socat's options
            pass
        self.open = False
        self.listen_only = False
        self.bitrate_cmd = "S6"
        self.frames_out = 0
        self.frames_dropped = 0
        self.frames_in = 0
        self.commands = 0
        self._buf = bytearray()

    def fileno(self) -> int:
        return self.fd

    def _write(self, data: bytes) -> bool:
        try:
            return os.write(self.fd, data) == len(data)
        except (BlockingIOError, OSError):
            return False

    def on_readable(self) -> None:
        try:
            chunk = os.read(self.fd, 4096)
        except (BlockingIOError, OSError):
            return
        self._buf += chunk
        while True:
            i = self._buf.find(b"\r")
            if i < 0:
                if len(self._buf) > 256:        # no CR in 256 bytes: line noise, as an adapter would, drop it
                    self._buf.clear()
                return
            line = self._buf[:i].decode("ascii", "replace")
            del self._buf[:i + 1]
            self._command(line)

    def _command(self, line: str) -> None:
        self.commands += 1
        if not line:
            reply = ""                          # python-can's empty data-bitrate line: nothing to answer
        elif line in ("O", "L"):
            self.open, self.listen_only = True, line == "L"
            reply = "\r"
        elif line == "C":
            self.open = False
            reply = "\r"
        elif line in BITRATE_CMDS or (line.startswith("s") and len(line) == 5) or line in ("Y2", "Y5"):
            reply = "\r" if not self.open else "\a"       # Lawicel: bitrate only while closed
            if not self.open and line.startswith("S"):
                self.bitrate_cmd = line
        elif line in VERSION:
            reply = VERSION[line] + "\r"
        elif line == "F":
            reply = "F00\r"
        elif line[0] in "tTrR":
            if self.open and not self.listen_only:
                self.frames_in += 1
                reply = "z\r" if line[0] in "tr" else "Z\r"
            else:
                reply = "\a"
        elif line[0] in "XZMmW":
            reply = "\r"                        # auto-poll, timestamps, acceptance filters: accepted
        else:
            reply = "\a"
        if reply:
            self._write(reply.encode())

    def frames(self, frames: list) -> None:
        if not self.open:
            return
        for can_id, data_hex in frames:
            data = bytes.fromhex(data_hex)
            line = (f"t{can_id:03X}{len(data):d}" if can_id <= 0x7FF else f"T{can_id:08X}{len(data):d}")
            if self._write((line + data.hex().upper() + "\r").encode()):
                self.frames_out += 1
            else:
                self.frames_dropped += 1

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def serve(cfg: dict, link) -> int:
    port = SlcanPort(cfg["path"])
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    link.send({"op": "ready", "pid": os.getpid()})
    try:
        while not stopping:
            try:
                r, _, _ = select.select([link, port], [], [], 0.5)
            except InterruptedError:
                continue
            link.flush()
            if port in r:
                port.on_readable()
            if link in r:
                for msg in link.recv():
                    if msg.get("op") == "frames":
                        port.frames(msg["frames"])
                    elif msg.get("op") == "stats":
                        link.send({"op": "stats", "open": port.open, "bitrate": port.bitrate_cmd,
                                   "frames_out": port.frames_out, "frames_dropped": port.frames_dropped,
                                   "frames_in": port.frames_in, "commands": port.commands})
    except LinkClosed:
        pass
    finally:
        port.close()
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s lab-slcan %(levelname)s %(message)s")
    with open(argv[0]) as f:
        cfg = json.load(f)
    return serve(cfg, child_link_from_env(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
