"""What the parts of the IPC server share: the limits and ring sizes, the connection record and the
number formatting of every message (one place, so a snapshot and an export round alike)."""
from __future__ import annotations

import math
import socket
import time
from dataclasses import replace
from datetime import datetime, timezone

from controller.core import layout as L
from controller.ipc.ratelimit import SESSION_BURST, SESSION_RATE, UNAUTH_CONN_BURST, UNAUTH_CONN_RATE, TokenBucket

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024            # a request line longer than this closes the connection
SKIP_ABOVE = 64 * 1024          # a subscriber with this much unsent gets no new snapshot
DROP_ABOVE = 1024 * 1024        # ... and one that lets this much pile up is disconnected
HISTORY_STEP_S = 60.0           # history ring: one sample per simulated/real minute
HISTORY_N = 24 * 60             # 24 h
HISTORY_FIELDS = ("soc_pct", "pv_kw", "battery_kw", "grid_kw", "genset_kw", "load_kw")
EXPORT_RING_STEP_S = 10.0       # export source when the loop has no recording: one row / 10 s, 24 h
EXPORT_RING_N = 24 * 360
# The MPC's plan in force, as the step keeps it in its state (controller/core/mpc_strategy.py): only
# present in builds with the MPC strategy, hence looked up by name.
PLAN_FIELDS = tuple((n, getattr(L, "S_" + n.upper())) for n in (
    "plan_count", "plan_t_s", "plan_grid_kw", "plan_export_kw", "plan_battery_kw", "plan_diesel_kw",
    "plan_diesel_on", "plan_soc_end_pct") if hasattr(L, "S_" + n.upper()))
PLAN_SLOTS = [i for _n, i in PLAN_FIELDS]
EXPORT_TAIL_N = 512             # with a recording: every cycle not yet flushed to it (it flushes every 256)


def _stats_copy(stats):
    """The loop's cycle statistics, copied in the cycle (cheap); quantiles are computed later, in the
    server thread, when a snapshot is serialised."""
    return replace(stats, counts=stats.counts.copy())


def _iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _f(x) -> float | None:
    x = float(x)
    return round(x, 4) if math.isfinite(x) else None



class _Conn:
    def __init__(self, sock: socket.socket, uid: int | None, pid: int | None):
        self.sock = sock
        self.uid, self.pid = uid, pid
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.hz = 0.0
        self.next_send = 0.0
        self.session_until = 0.0     # monotonic; 0 = not logged in
        self.closed = False
        now = time.monotonic()
        self.bucket = TokenBucket(UNAUTH_CONN_RATE, UNAUTH_CONN_BURST, now)       # without a session
        self.session_bucket = TokenBucket(SESSION_RATE, SESSION_BURST, now)       # with one
        self.limited = 0             # requests refused in a row by a rate limit ...
        self.limited_bytes = 0       # ... and their bytes (a flood past these is dropped)

    def in_session(self, now: float) -> bool:
        return bool(self.session_until) and now <= self.session_until

    @property
    def who(self) -> str:
        return f"tui(uid={self.uid},pid={self.pid})"
