"""The laptop end of the gateway's serial console, on one side of a socat pty pair.

A pty pair has no baud rate: bytes move as fast as the kernel copies them, so a TUI that floods the
line would look fine. This relay paces what it takes off the line at the UART's real rate (8N1: 10 bits
a byte, 11,520 B/s at 115200), reading no faster than that, so the pty's buffer fills and the writer
blocks exactly as it would behind a real UART; what it reads goes to its stdout (the terminal emulator:
a tmux pane in the tests), its stdin (keys) goes back down the line. It counts the bytes, which is the
figure docs/bench.md quotes.

    python -m tools.bench.serial_line --port /tmp/x/tty-laptop --baud 115200 --stats /tmp/x/line.json

`--stats` is rewritten (atomically) every 0.2 s: {"bytes": N, "t": monotonic seconds, "baud": B}.
`SerialLine` is the same thing in a thread, without a terminal (tools/bench/tui.py).
"""
from __future__ import annotations

import argparse
import json
import os
import select
import sys
import termios
import threading
import time
import tty

BAUDS = {9600: termios.B9600, 19200: termios.B19200, 38400: termios.B38400, 57600: termios.B57600,
         115200: termios.B115200}
CHUNK = 64                       # bytes taken off the line at a time (~5.6 ms at 115200)


def open_line(path: str, baud: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = BAUDS[baud]
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return fd


class SerialLine:
    """Reads `fd` at no more than `baud`/10 bytes a second; counts bytes; `sink(data)` gets them."""

    def __init__(self, fd: int, baud: int = 115200, sink=None):
        self.fd = fd
        self.byte_s = 10.0 / baud
        self.sink = sink
        self.bytes = 0
        self.free_at = 0.0
        self.stop = False
        self._thread = None

    def pump_once(self, timeout_s: float) -> bool:
        now = time.monotonic()
        if self.free_at > now:                    # the line is still shifting out the last chunk
            time.sleep(min(timeout_s, self.free_at - now))
            return False
        r, _, _ = select.select([self.fd], [], [], timeout_s)
        if not r:
            return False
        try:
            data = os.read(self.fd, CHUNK)
        except OSError:                           # the other end closed (EIO on a pty)
            self.stop = True
            return False
        if not data:
            self.stop = True
            return False
        now = time.monotonic()
        self.free_at = max(self.free_at, now) + len(data) * self.byte_s
        self.bytes += len(data)
        if self.sink is not None:
            self.sink(data)
        return True

    def start(self) -> "SerialLine":
        def run():
            while not self.stop:
                self.pump_once(0.2)
        self._thread = threading.Thread(target=run, name="serial-line", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop = True
        if self._thread is not None:
            self._thread.join(timeout=2.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", required=True, help="the laptop side of the pty pair")
    ap.add_argument("--baud", type=int, default=115200, choices=sorted(BAUDS))
    ap.add_argument("--stats", default=None, help="write {bytes, t, baud} here every 0.2 s")
    args = ap.parse_args(argv)
    fd = open_line(args.port, args.baud)
    out = sys.stdout.fileno()
    line = SerialLine(fd, args.baud, sink=lambda data: os.write(out, data))
    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    if saved is not None:
        tty.setraw(stdin)
    next_stats = 0.0
    try:
        while not line.stop:
            line.pump_once(0.05)
            r, _, _ = select.select([stdin], [], [], 0)
            if r:
                keys = os.read(stdin, 256)
                if not keys:
                    break
                os.write(fd, keys)
            now = time.monotonic()
            if args.stats and now >= next_stats:
                next_stats = now + 0.2
                tmp = args.stats + ".tmp"
                with open(tmp, "w") as f:
                    json.dump({"bytes": line.bytes, "t": now, "baud": args.baud}, f)
                os.replace(tmp, args.stats)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
