"""Rate limits on the socket. Anyone who can open it can flood it; the server thread shares the
interpreter (and its lock) with the scan cycle, so what a flood may cost is bounded here, by token
buckets, before a request is parsed:

- a connection without a PIN session has its own bucket AND draws from one bucket shared by every
  connection without a session (200 connections do not get 200 times the rate);
- a connection with a session has a generous bucket of its own;
- a connection that goes on sending while limited (``FLOOD_DROP_*``) is dropped;
- new connections have a bucket of their own and a ceiling (``MAX_CONNS``);
- refusals by connections without a session go to the audit log (hence the uplink's spool) only within
  ``AUDIT_UNAUTH_*``; past it they are only counted, by kind.

Snapshots a client subscribed to are not requests and are never limited. The numbers are far above
what a field TUI sends (a subscribe, a history every 30 s, an audit fetch at most every 2 s, a key press
now and then): docs/tui.md lists them."""
from __future__ import annotations

# requests of a connection without a PIN session: per connection, and shared by all such connections
UNAUTH_CONN_RATE, UNAUTH_CONN_BURST = 5.0, 20.0
UNAUTH_SHARED_RATE, UNAUTH_SHARED_BURST = 20.0, 60.0
# requests of a connection with a session (not shared: each needed the PIN)
SESSION_RATE, SESSION_BURST = 50.0, 200.0
# what a request costs in tokens (the rest cost 1): these build replies of up to ~100 KB
OP_COST = {"history": 5.0, "audit": 5.0}
# a connection refused this many requests in a row, or sending this many bytes while limited, is dropped
FLOOD_DROP_REQUESTS = 100
FLOOD_DROP_BYTES = 256 * 1024
# new connections: a bucket and a ceiling on those open at once
ACCEPT_RATE, ACCEPT_BURST = 10.0, 50.0
MAX_CONNS = 64
# refusals of connections without a session that become audit records (the rest are counted by kind)
AUDIT_UNAUTH_RATE, AUDIT_UNAUTH_BURST = 0.1, 30.0


class TokenBucket:
    """`rate` tokens a second up to `burst`; starts full. Not thread-safe: the server thread owns it."""

    __slots__ = ("rate", "burst", "tokens", "t")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.t = float(burst), now

    def _refill(self, now: float) -> None:
        if now > self.t:
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now

    def has(self, now: float, n: float = 1.0) -> bool:
        self._refill(now)
        return self.tokens >= n

    def take(self, now: float, n: float = 1.0) -> bool:
        if self.has(now, n):
            self.tokens -= n
            return True
        return False

    def wait_s(self, n: float = 1.0) -> float:
        """Seconds until `n` tokens are there (after a refill)."""
        return max(0.0, (n - self.tokens) / self.rate)


def describe() -> str:
    """The limits in one line (the refusal's text points at them)."""
    return (f"without a PIN session {UNAUTH_CONN_RATE:g} requests/s per connection (burst {UNAUTH_CONN_BURST:g}) "
            f"and {UNAUTH_SHARED_RATE:g}/s over all such connections (burst {UNAUTH_SHARED_BURST:g})")
