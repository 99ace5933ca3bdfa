"""Keeping the uplink's background threads out of the scan cycle's way (measured: tools/bench/uplink.py)."""
from __future__ import annotations

import os
import sys
import threading

GIL_SWITCH_S = 0.0005


def protect_scan_cycle() -> None:
    """Let the scan loop's thread take the GIL back within 0.5 ms instead of CPython's default 5 ms.

    The uplink's threads (spool writer, MQTT, batch building) run Python between their GIL-free parts
    (SQLite steps, zlib, socket I/O). With the default switch interval a cycle that wakes while they run
    waits up to 5 ms for the GIL: tools/bench/uplink.py measured the scan cycle's p99 going from 0.84 ms
    to 4.46 ms during a full-speed drain; with 0.5 ms (and nice +10) the ratio fell to 1.3-1.6 (README)."""
    if sys.getswitchinterval() > GIL_SWITCH_S:
        sys.setswitchinterval(GIL_SWITCH_S)


UPLINK_NICE = 10


def lower_this_thread() -> None:
    """Give the calling background thread nice +10 (Linux: nice is per thread), so on a busy CPU the
    scheduler prefers the scan loop's thread; the uplink only needs what the loop leaves idle."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPLINK_NICE)
    except (AttributeError, OSError):           # not Linux, or not permitted: run at normal priority
        pass
