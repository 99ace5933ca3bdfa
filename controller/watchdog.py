"""systemd notification: READY once the kernels are loaded and the first cycle ran, WATCHDOG on each
healthy cycle. A loop that hangs, or keeps missing its period, stops notifying and systemd restarts it
(WatchdogSec in tools/gateway/edge-ems.service). No dependency: the protocol is one datagram.
"""
from __future__ import annotations

import os
import socket
import time


class SystemdNotifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET; silently does nothing when not under systemd."""

    def __init__(self, min_interval_s: float = 1.0):
        self.address = os.environ.get("NOTIFY_SOCKET") or None
        if self.address and self.address.startswith("@"):
            self.address = "\0" + self.address[1:]     # abstract namespace
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self.address else None
        self.ready_sent = False
        self.min_interval_s = min_interval_s
        self._last = -1e9
        self.sent = 0

    def notify(self, message: str) -> None:
        if self.sock is None:
            return
        try:     # never blocks: a receiver that stops reading (full queue) costs a ping, not the cycle
            self.sock.sendto(message.encode(), socket.MSG_DONTWAIT, self.address)
            self.sent += 1
        except OSError:
            pass  # systemd gone or busy: nothing to tell, and never a reason to stop controlling

    def hook(self, loop, image, cmd, events, n) -> None:
        """ScanLoop hook: READY after the first cycle, then WATCHDOG while the loop keeps its period."""
        if not self.ready_sent:
            self.notify(f"READY=1\nSTATUS=controlling, period {loop.period_s} s\nMAINPID={os.getpid()}")
            self.ready_sent = True
        now = time.monotonic()
        if loop.late_cycles == 0 and now - self._last >= self.min_interval_s:
            self.notify("WATCHDOG=1")
            self._last = now

    def stopping(self) -> None:
        self.notify("STOPPING=1")
