"""Give back the pages of numba's compiler (LLVM) once every kernel is loaded.

Why: numba links even cached kernels through LLVM (llvmlite's libllvmlite.so, ~180 MB on disk). Loading
them faults in ~65 MB of that library's code and read-only data, which then stay mapped in the controller
for its whole life although no scan cycle ever executes a byte of it: a cycle calls the kernels' native
code straight from numba's dispatcher. Those pages count in the process's RSS, and the kernel is slow to
reclaim them (mapped executable pages are protected from reclaim). On a 1-2 GB gateway that is the largest
single item of the controller's footprint.

What: for each mapping of libllvmlite.so that has no write permission and holds no anonymous
(copy-on-write) page, ``madvise(MADV_DONTNEED)`` unmaps its pages from this process. For such a mapping
this is lossless: every page is an unmodified copy of the file, so a later access (a kernel compiled at
run time) simply faults it back in from the file. Mappings with private modifications (relocated
.data.rel.ro, .data, .bss) are never touched. The page cache itself is not dropped.

Linux only (reads /proc/self/smaps); elsewhere it does nothing. EDGE_EMS_KEEP_LLVM_PAGES=1 turns it off
(tools/bench/memory.py measures both ways).
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

MADV_DONTNEED = 4        # the same value on x86_64 and aarch64 (asm-generic)
LIBRARY = "libllvmlite.so"


@dataclass
class Mapping:
    start: int
    end: int
    perms: str
    path: str
    rss_kb: int = 0
    anonymous_kb: int = 0


def mappings(smaps_text: str, library: str = LIBRARY) -> list[Mapping]:
    """The mappings of `library` in a /proc/PID/smaps text, with their Rss and Anonymous (kB)."""
    found: list[Mapping] = []
    current = None
    for line in smaps_text.splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            path = head[5] if len(head) == 6 else ""
            current = None
            if os.path.basename(path.strip()) == library:
                lo, hi = head[0].split("-")
                current = Mapping(int(lo, 16), int(hi, 16), head[1], path.strip())
                found.append(current)
        elif current is not None and line.startswith(("Rss:", "Anonymous:")):
            kb = int(line.split()[1])
            if line.startswith("Rss:"):
                current.rss_kb = kb
            else:
                current.anonymous_kb = kb
    return found


def releasable(maps: list[Mapping]) -> list[Mapping]:
    """Mappings whose pages are all clean copies of the file: no write permission, no anonymous page."""
    return [m for m in maps if "w" not in m.perms and m.anonymous_kb == 0 and m.rss_kb > 0]


def release_llvm_pages() -> float:
    """Unmap the clean pages of libllvmlite.so from this process; returns the MB of RSS given back.
    Call it once every kernel is loaded (after controller.warmup and the first cycle)."""
    if os.environ.get("EDGE_EMS_KEEP_LLVM_PAGES") == "1":
        return 0.0
    try:
        with open("/proc/self/smaps") as f:
            text = f.read()
    except OSError:
        return 0.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released_kb = 0
    for m in releasable(mappings(text)):
        if libc.madvise(m.start, m.end - m.start, MADV_DONTNEED) == 0:
            released_kb += m.rss_kb
    return released_kb / 1024.0


def release_after_first_cycle():
    """A ScanLoop hook: after the first cycle (every kernel loaded, params built) release_llvm_pages(); a
    no-op from then on. `run` adds it on field and simulated sites alike."""
    done = []

    def hook(loop, image, cmd, events, n):
        if not done:
            done.append(release_llvm_pages())
    return hook
