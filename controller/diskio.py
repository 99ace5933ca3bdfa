"""Small helpers for the data directory's append-only writers (ledger, recording segments).

A disk that fills mid-record returns a short write count first and ENOSPC only on the next call; the
writers must see both as a failed record, never a silently truncated one.
"""
from __future__ import annotations

import os


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written; a write that makes no progress is ENOSPC."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(28, "short write")
        view = view[n:]
