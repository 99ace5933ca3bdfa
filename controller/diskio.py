"""Small helpers for the data directory's writers (ledger, recording segments, the spool's reserve).

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


def fsync_dir(path) -> None:
    """Make a file's creation (or size change) in `path` durable; best effort - a directory that cannot be
    opened or synced costs only the durability of that name, never the caller's record."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
