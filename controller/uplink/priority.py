"""Keeping the uplink out of the scan cycle's way (measured: tools/bench/uplink.py).

The MQTT side runs in a worker process (worker.py) at SCHED_IDLE; what stays in the controller (the
spool writer, the worker's supervisor) runs at nice +10 with a short GIL switch interval."""
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


def background_process() -> str:
    """The uplink worker process (worker.py) runs as pure background: nice +10 and, on Linux,
    ``SCHED_IDLE`` for this thread and every thread it starts afterwards (they inherit it).

    Why SCHED_IDLE and not only nice: with nice +10 the kernel (EEVDF) lets a running background task
    finish its slice before a waking nice-0 task gets the core, so on a busy CPU a scan cycle waited
    up to ~3 ms behind the drain (tools/bench/uplink.py). A SCHED_IDLE task is preempted at once when
    a normal task wakes. It is not starved: it gets whatever the loop leaves idle (over 99 % of a core
    with a 1 s period) and a small share even on a saturated CPU. Returns the policy it got.

    With autogroups (``kernel.sched_autogroup_enabled``, desktops and test boxes) the kernel first shares
    the CPU between sessions: as part of the controller's session the drain would spend the session's
    share and the scan loop would wait longer behind other sessions; so the worker takes a session of
    its own (``setsid``) at autogroup nice 19. Its death is still tied to the controller (worker.py)."""
    try:
        os.setsid()                              # a session (and so a CPU autogroup) of its own, see below
        with open("/proc/self/autogroup", "w") as f:
            f.write("19")
    except OSError:
        pass
    try:
        os.nice(UPLINK_NICE)
    except OSError:
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):            # not Linux, or not permitted: nice only
        return "nice"
