"""edge-ems controller.

Numba's on-disk cache keys a kernel on its own source file, not on the module constants it imports
(point indices, layouts): a changed catalogue could silently load a kernel compiled for the old one.
So the cache lives in a directory named after a hash of every kernel source and layout file; a new
version compiles into a fresh directory, and an unchanged one starts warm. Must run before numba loads.
"""
import hashlib
import os
from pathlib import Path


def _set_numba_cache_dir() -> None:
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    # every kernel source, the planner's package included (its layout.py is imported by the others)
    for path in sorted([*(here / "core").rglob("*.py"), here / "points.py"]):
        digest.update(path.relative_to(here).as_posix().encode())
        digest.update(path.read_bytes())
    base = os.environ.get("EDGE_EMS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edge-ems")
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, f"numba-{digest.hexdigest()[:16]}")


_set_numba_cache_dir()
