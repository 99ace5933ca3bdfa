"""Appending (code, value) rows to a cycle's fixed-size event array."""
from numba import njit

from controller.core.layout import MAX_EVENTS


@njit(cache=True)
def emit(events, n, code, val):
    """Append one event; beyond MAX_EVENTS a cycle the rest are dropped (n stays at the cap)."""
    if n < MAX_EVENTS:
        events[n, 0] = code
        events[n, 1] = val
        return n + 1
    return n
